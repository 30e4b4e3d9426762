with source as (
    select * from {{ source('raw', 'credit_applications') }}
),

renamed as (
    select
        application_id,
        customer_id,
        amount_minor::bigint as amount_minor,
        currency,
        term_months::integer as term_months,
        annual_income_minor::bigint as annual_income_minor,
        debt_to_income::double precision as debt_to_income,
        n_delinquencies::integer as n_delinquencies,
        credit_history_months::integer as credit_history_months,
        utilization::double precision as utilization,
        age_band,
        applied_at,
        _loaded_at as loaded_at
    from source
)

select * from renamed
