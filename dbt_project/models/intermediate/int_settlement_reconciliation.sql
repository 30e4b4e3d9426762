-- One row per settlement file line, reconciled against the payment's capture webhook: did the
-- processor settle what it told us it captured, in the same currency? A finding for finance
-- (a status per line), not a build failure: a mismatch is data about the processor, not a bug.
--   matched            capture found, same currency, same amount
--   currency_mismatch  capture found in another currency (amounts are then not comparable)
--   amount_mismatch    capture found, same currency, different amount (amount_diff_minor says by how much)
--   not_captured       the payment is known (authorised) but no capture event was received
--   unknown_payment    no webhook event at all for that payment id
-- Amounts are compared in minor units of the line's own currency, never summed across currencies.
with settlements as (
    select * from {{ ref('stg_settlement_file_rows') }}
),

events as (
    select payment_id, event_id, event_type, amount_minor, currency, occurred_at
    from {{ ref('stg_webhook_events') }}
),

captures as (
    select distinct on (payment_id) payment_id, amount_minor, currency, occurred_at as captured_at
    from events
    where event_type = 'payment.captured'
    order by payment_id, occurred_at, event_id
),

known as (
    select distinct payment_id from events
)

select
    s.source_file,
    s.line_no,
    s.processor,
    s.payout_id,
    s.payment_id,
    s.amount_minor as settled_amount_minor,
    s.fee_minor,
    s.currency as settled_currency,
    c.amount_minor as captured_amount_minor,
    c.currency as captured_currency,
    case when c.currency = s.currency then s.amount_minor - c.amount_minor end as amount_diff_minor,
    case
        when c.payment_id is not null and c.currency <> s.currency then 'currency_mismatch'
        when c.payment_id is not null and c.amount_minor <> s.amount_minor then 'amount_mismatch'
        when c.payment_id is not null then 'matched'
        when k.payment_id is not null then 'not_captured'
        else 'unknown_payment'
    end as reconciliation_status,
    c.captured_at,
    s.settled_at,
    s.arrived_at
from settlements s
left join captures c on c.payment_id = s.payment_id
left join known k on k.payment_id = s.payment_id
