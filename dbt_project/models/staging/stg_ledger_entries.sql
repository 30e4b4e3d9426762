with source as (
    select * from {{ source('raw', 'ledger_entries') }}
),

renamed as (
    select
        entry_id,
        journal_id,
        payment_id,
        account,
        amount_minor::bigint as amount_minor,
        currency,
        posted_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
