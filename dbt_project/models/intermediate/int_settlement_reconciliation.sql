-- One row per settlement file line, reconciled against the payment fact (int_payments: the payment's
-- authorisation and first capture, received live or in a file): did the processor settle what it told
-- us it captured, in the same currency? A finding for finance (a status per line), not a build
-- failure: a mismatch is data about the processor, not a bug. The settlement_breaks check pages
-- on-call when too many lines break.
--   matched            capture found, same currency, same amount
--   currency_mismatch  capture found in another currency (amounts are then not comparable)
--   amount_mismatch    capture found, same currency, different amount (amount_diff_minor says by how much)
--   not_captured       the payment is known (authorised) but no capture event was received
--   unknown_payment    no authorisation of that payment id was received, live or in a file
-- Amounts are compared in minor units of the line's own currency, never summed across currencies.
with settlements as (
    select * from {{ ref('stg_settlement_file_rows') }}
),

payments as (
    select payment_id, captured_at, captured_amount_minor, captured_currency from {{ ref('int_payments') }}
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
    p.captured_amount_minor,
    p.captured_currency,
    case when p.captured_currency = s.currency then s.amount_minor - p.captured_amount_minor end as amount_diff_minor,
    case
        when p.payment_id is null then 'unknown_payment'
        when p.captured_at is null then 'not_captured'
        when p.captured_currency is distinct from s.currency then 'currency_mismatch'
        when p.captured_amount_minor <> s.amount_minor then 'amount_mismatch'
        else 'matched'
    end as reconciliation_status,
    p.captured_at,
    s.settled_at,
    s.arrived_at
from settlements s
left join payments p on p.payment_id = s.payment_id
