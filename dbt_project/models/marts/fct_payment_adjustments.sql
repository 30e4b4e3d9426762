-- One row per payment of fct_transactions with what the ledger says happened to its money after the
-- authorisation: captured, refunded to the cardholder, reversed by a chargeback, and what a fraud on
-- it can still cost (a refunded fraud is a smaller loss). From the double-entry ledger
-- (stg_ledger_entries), whose journals per payment are (debit / credit):
--   capture     customer:<id>   / merchant:<terminal>
--   refund      merchant:<t>    / customer:<id>
--   chargeback  merchant:<t>    / chargebacks
-- so captured = debits of the customer account, refunded = credits of the customer account,
-- reversed = credits of the chargebacks account. Only lines in the payment's own currency count
-- (minor units are never added across currencies); a payment without ledger lines has zeros.
with payments as (
    select payment_id, amount_minor, currency, is_fraud, fraud_known_at from {{ ref('fct_transactions') }}
),

ledger as (
    select
        l.payment_id,
        sum(l.amount_minor) filter (where l.account like 'customer:%' and l.amount_minor > 0) as captured_minor,
        -sum(l.amount_minor) filter (where l.account like 'customer:%' and l.amount_minor < 0) as refunded_minor,
        -sum(l.amount_minor) filter (where l.account = 'chargebacks' and l.amount_minor < 0) as reversed_minor,
        count(*) as n_ledger_entries,
        max(l.posted_at) as last_posted_at
    from {{ ref('stg_ledger_entries') }} l
    join payments p on p.payment_id = l.payment_id and p.currency = l.currency
    group by l.payment_id
)

select
    p.payment_id::text as payment_id,
    p.currency::text as currency,
    p.amount_minor::bigint as amount_minor,
    coalesce(l.captured_minor, 0)::bigint as captured_minor,
    coalesce(l.refunded_minor, 0)::bigint as refunded_minor,
    coalesce(l.reversed_minor, 0)::bigint as reversed_minor,
    (coalesce(l.captured_minor, 0) - coalesce(l.refunded_minor, 0) - coalesce(l.reversed_minor, 0))::bigint
        as net_settled_minor,
    greatest(p.amount_minor - coalesce(l.refunded_minor, 0), 0)::bigint as net_amount_at_risk_minor,
    p.is_fraud::integer as is_fraud,
    p.fraud_known_at::timestamptz as fraud_known_at,
    coalesce(l.n_ledger_entries, 0)::bigint as n_ledger_entries,
    l.last_posted_at::timestamptz as last_posted_at
from payments p
left join ledger l on l.payment_id = p.payment_id
