-- One row per disputed payment: is it fraud (a lost dispute with fraud confirmed) and when
-- did riskloop learn it (the dispute's closed_at = label arrival). Features may only use a
-- label after fraud_known_at.
with disputes as (
    select * from {{ ref('stg_dispute_outcomes') }}
)

select
    payment_id,
    bool_or(dispute_status = 'lost' and is_fraud_confirmed) as is_fraud,
    min(closed_at) filter (where dispute_status = 'lost' and is_fraud_confirmed) as fraud_known_at,
    count(*) as n_disputes,
    min(opened_at) as first_dispute_opened_at
from disputes
group by payment_id
