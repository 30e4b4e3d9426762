-- One row per case event (renamed and typed cases.case_events; the close's verdict out of its details).
with source as (
    select * from {{ source('cases', 'case_events') }}
),

renamed as (
    select
        event_id,
        seq as event_seq,
        case_id,
        at as event_at,
        actor,
        kind as event_kind,
        decision_id,
        details ->> 'disposition' as disposition,
        details ->> 'reason' as disposition_reason,
        details ->> 'source' as case_source
    from source
)

select * from renamed
