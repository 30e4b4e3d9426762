with source as (
    select * from {{ source('raw', 'kyc_records') }}
),

renamed as (
    select
        customer_id,
        verification_level,
        document_type,
        sanctions_screening,
        pep as is_pep,
        country as country_code,
        verified_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
