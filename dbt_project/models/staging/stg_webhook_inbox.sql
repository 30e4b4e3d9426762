with source as (
    select * from {{ source('receiver', 'webhook_inbox') }}
),

renamed as (
    select
        processor,
        event_id,
        event_type,
        signed_at,
        received_at,
        body::jsonb as body
    from source
)

select * from renamed
