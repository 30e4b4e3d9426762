-- One row per authorised payment, received live or in a file (int_payments: one row however often it
-- came), with the time riskloop first received it, its fraud label, the label's source and arrival time.
-- A payment without a customer, terminal or currency (a malformed live body) is left out: the features
-- key on them and amounts are nothing without a currency.
-- is_weekend / is_night are computed in UTC from tx_at, exactly as the serving API computes
-- them from a request, so training and serving see the same definition.
with payments as (
    select * from {{ ref('int_payments') }}
),

labels as (
    select * from {{ ref('int_fraud_labels') }}
)

select
    p.payment_id::text as payment_id,
    p.transaction_id::bigint as transaction_id,
    p.customer_id::text as customer_id,
    p.terminal_id::text as terminal_id,
    p.card_token::text as card_token,
    p.authorized_at::timestamptz as tx_at,
    {{ minor_to_major('p.amount_minor', 'p.currency') }}::double precision as amount,
    p.amount_minor::bigint as amount_minor,
    p.currency::text as currency,
    p.processor::text as processor,
    p.authorization_received_at::timestamptz as received_at,
    (case when extract(isodow from p.authorized_at at time zone 'UTC') in (6, 7) then 1 else 0 end)::integer
        as is_weekend,
    (case when extract(hour from p.authorized_at at time zone 'UTC') <= 6 then 1 else 0 end)::integer
        as is_night,
    (case when coalesce(l.is_fraud, false) then 1 else 0 end)::integer as is_fraud,
    (case when l.is_fraud then l.fraud_known_at end)::timestamptz as fraud_known_at,
    l.label_source::text as label_source,
    (case when p.refunded_at is not null then 1 else 0 end)::integer as refunded
from payments p
left join labels l on l.payment_id = p.payment_id
where p.customer_id is not null and p.terminal_id is not null and p.currency is not null
