with source as (
    select * from {{ source('raw', 'dispute_outcomes') }}
),

renamed as (
    select
        dispute_id,
        payment_id,
        status as dispute_status,
        fraud_confirmed as is_fraud_confirmed,
        reason_code,
        amount_minor::bigint as amount_minor,
        currency,
        opened_at,
        closed_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
