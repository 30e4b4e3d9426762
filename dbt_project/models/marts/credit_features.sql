{{ config(post_hook=[index_entity_time('customer_id'), "analyze {{ this }}"]) }}
-- One row per credit application with the applicant's attributes at application time. KYC is
-- joined point-in-time (only a verification completed by applied_at counts); an applicant not
-- yet verified gets kyc_level 0 and pep 0, as the decision would have seen them.
with applications as (
    select * from {{ ref('stg_credit_applications') }}
),

kyc as (
    select * from {{ ref('stg_kyc_records') }}
)

select
    a.application_id::text as application_id,
    a.customer_id::text as customer_id,
    a.applied_at::timestamptz as event_timestamp,
    {{ minor_to_major('a.amount_minor', 'a.currency') }}::double precision as amount,
    a.term_months::integer as term_months,
    {{ minor_to_major('a.annual_income_minor', 'a.currency') }}::double precision as annual_income,
    a.debt_to_income::double precision as debt_to_income,
    a.n_delinquencies::integer as n_delinquencies,
    a.credit_history_months::integer as credit_history_months,
    a.utilization::double precision as utilization,
    (case k.verification_level when 'standard' then 1 when 'enhanced' then 2 else 0 end)::integer as kyc_level,
    (case when k.is_pep then 1 else 0 end)::integer as pep
from applications a
left join kyc k
  on k.customer_id = a.customer_id
 and k.verified_at <= a.applied_at
