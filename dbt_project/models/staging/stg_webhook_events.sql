with source as (
    select * from {{ source('raw', 'webhook_events') }}
),

renamed as (
    select
        event_id,
        event_type,
        processor,
        payment_id,
        dispute_id,
        card_token,
        customer_id,
        terminal_id,
        amount_minor::bigint as amount_minor,
        currency,
        occurred_at,
        received_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
