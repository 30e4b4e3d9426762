-- One row per line of a processor's dispute report (renamed and typed raw.dispute_file_rows):
-- a dispute appears once per status change (opened, then won or lost).
with source as (
    select * from {{ source('batch_files', 'dispute_file_rows') }}
),

renamed as (
    select
        source_file,
        line_no::integer as line_no,
        processor,
        dispute_id,
        payment_id,
        status as dispute_status,
        fraud_confirmed as is_fraud_confirmed,
        reason_code,
        amount_minor::bigint as amount_minor,
        currency,
        updated_at,
        arrived_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
