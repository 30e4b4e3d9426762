with source as (
    select * from {{ source('raw', 'credit_outcomes') }}
),

renamed as (
    select
        application_id,
        defaulted as is_defaulted,
        true_default_probability::double precision as true_default_probability,
        observed_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
