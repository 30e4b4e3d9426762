-- Analysts' verdicts as fraud label signals: one row per payment of a decision linked to a case
-- closed fraud_confirmed (is_fraud true) or legitimate (false), known when the case was closed.
-- inconclusive gives no row (no label). A payment scored twice (a retried request) can sit in two
-- cases: fraud wins, at the first time it was confirmed; else legitimate, at its first verdict.
-- Precedence against the other signals (chargebacks first) is int_fraud_labels'.
with events as (
    select * from {{ ref('stg_case_events') }}
),

decisions as (
    select * from {{ ref('stg_decision_log') }}
),

verdicts as (
    select case_id, disposition, event_at as closed_at
    from events
    where event_kind = 'closed' and disposition in ('fraud_confirmed', 'legitimate')
),

linked as (
    select
        d.payment_id,
        v.disposition = 'fraud_confirmed' as is_fraud,
        v.closed_at
    from events as e
    inner join verdicts as v on v.case_id = e.case_id
    inner join decisions as d on d.decision_id = e.decision_id
    where e.event_kind = 'decision_added' and d.payment_id is not null
)

select
    payment_id,
    'case'::text as source,
    bool_or(is_fraud) as is_fraud,
    coalesce(min(closed_at) filter (where is_fraud), min(closed_at)) as known_at
from linked
group by payment_id
