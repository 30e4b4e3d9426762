-- One row per line of a processor's settlement file (renamed and typed raw.settlement_file_rows).
-- A corrected file re-delivered under the same name has replaced its lines in raw already.
with source as (
    select * from {{ source('batch_files', 'settlement_file_rows') }}
),

renamed as (
    select
        source_file,
        line_no::integer as line_no,
        processor,
        payout_id,
        payment_id,
        amount_minor::bigint as amount_minor,
        fee_minor::bigint as fee_minor,
        currency,
        settled_at,
        arrived_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
