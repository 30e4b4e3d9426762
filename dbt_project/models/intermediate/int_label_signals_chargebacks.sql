-- Fraud-label signals from the processors' chargebacks: one signal per disputed payment with a
-- verdict, in the signal contract of int_label_signals (payment_id, source, is_fraud, known_at).
--
-- A dispute is reported in two places: the dispute files (stg_dispute_file_rows, one row per status
-- change, known when its file arrived: arrived_at) and the outcomes feed (stg_dispute_outcomes, one
-- row per closed dispute, known at closed_at). Only a closed state (won or lost) is a verdict; an
-- opened row says nothing about fraud yet.
--   - Per dispute, the verdict is the one riskloop learned last (the latest arrival; a tie goes to
--     the later status change, then to the fraud verdict): a later row supersedes an earlier one,
--     so a dispute reported lost and later won is not fraud.
--   - A verdict is known since the first arrival of that verdict after the last arrival of a
--     different one (the same loss reported by the file and by the feed is known at the earlier).
--   - Per payment: fraud when any of its disputes' verdicts is a loss with fraud confirmed, known
--     at the earliest such verdict; else not fraud (won, or lost for another reason), known at the
--     latest verdict. A won dispute clears only its own verdict, not another dispute's fraud.
-- Times are arrival times, never the event's own time: the label delay logic downstream
-- (fraud_known_at) must only see a label once riskloop could have.
with reported as (
    select dispute_id, payment_id, dispute_status, is_fraud_confirmed, arrived_at as known_at, updated_at as status_at
    from {{ ref('stg_dispute_file_rows') }}
    union all
    select dispute_id, payment_id, dispute_status, is_fraud_confirmed, closed_at as known_at, closed_at as status_at
    from {{ ref('stg_dispute_outcomes') }}
),

verdicts as (
    select
        dispute_id,
        payment_id,
        known_at,
        status_at,
        (dispute_status = 'lost' and coalesce(is_fraud_confirmed, false)) as is_fraud
    from reported
    where dispute_status in ('won', 'lost') and known_at is not null and payment_id is not null
),

latest as (
    select distinct on (dispute_id) dispute_id, payment_id, is_fraud
    from verdicts
    order by dispute_id, known_at desc, status_at desc nulls last, is_fraud desc
),

dispute_labels as (
    select
        l.dispute_id,
        l.payment_id,
        l.is_fraud,
        min(v.known_at) as known_at
    from latest l
    join verdicts v on v.dispute_id = l.dispute_id and v.is_fraud = l.is_fraud
    where v.known_at >= coalesce(
        (select max(o.known_at) from verdicts o where o.dispute_id = l.dispute_id and o.is_fraud <> l.is_fraud),
        '-infinity'::timestamptz)
    group by l.dispute_id, l.payment_id, l.is_fraud
)

select
    payment_id::text as payment_id,
    'chargeback'::text as source,
    bool_or(is_fraud) as is_fraud,
    (case when bool_or(is_fraud) then min(known_at) filter (where is_fraud) else max(known_at) end)::timestamptz
        as known_at
from dispute_labels
group by payment_id
