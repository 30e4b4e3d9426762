-- One row per application whose repayment outcome is known (the credit model's label).
with outcomes as (
    select * from {{ ref('stg_credit_outcomes') }}
),

applications as (
    select application_id, applied_at from {{ ref('stg_credit_applications') }}
)

select
    o.application_id::text as application_id,
    a.applied_at::timestamptz as applied_at,
    (case when o.is_defaulted then 1 else 0 end)::integer as defaulted,
    o.observed_at::timestamptz as observed_at,
    o.true_default_probability::double precision as true_default_probability
from outcomes o
join applications a on a.application_id = o.application_id
