-- Step-up challenges as fraud label signals: a failed challenge is a fraud signal (is_fraud true,
-- source 'step_up'), known when riskloop recorded it (recorded_at, never the channel's occurred_at:
-- a late report must not look known earlier than it was). A passed or abandoned challenge gives no
-- row: passing proves possession of the challenge factor, not a legitimate payment (account takeover
-- passes OTPs), and abandoning says nothing either way; a negative label from them would teach the
-- model that the step-up band is clean. One row per payment (a payment stepped up twice: its first failure).
with outcomes as (
    select * from {{ ref('stg_decision_outcomes') }}
),

decisions as (
    select * from {{ ref('stg_decision_log') }}
)

select
    d.payment_id,
    'step_up'::text as source,
    true as is_fraud,
    min(o.recorded_at) as known_at
from outcomes as o
inner join decisions as d on d.decision_id = o.decision_id
where o.step_up_outcome = 'failed' and d.payment_id is not null
group by d.payment_id
