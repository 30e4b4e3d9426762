-- One row per reported step-up outcome (renamed serving.decision_outcomes).
with source as (
    select * from {{ source('serving', 'decision_outcomes') }}
),

renamed as (
    select
        outcome_id,
        decision_id,
        outcome as step_up_outcome,
        recorded_at,
        occurred_at
    from source
)

select * from renamed
