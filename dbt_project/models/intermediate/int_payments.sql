-- One row per authorised payment, pivoted from its webhook events. The authorisation event
-- fixes who/where/how much; the later events only add lifecycle timestamps.
with events as (
    select * from {{ ref('stg_webhook_events') }}
),

authorizations as (
    select distinct on (payment_id)
        payment_id,
        processor,
        customer_id,
        terminal_id,
        card_token,
        amount_minor,
        currency,
        occurred_at as authorized_at,
        received_at as authorization_received_at
    from events
    where event_type = 'payment.authorized'
    order by payment_id, occurred_at, event_id
),

lifecycle as (
    select
        payment_id,
        min(occurred_at) filter (where event_type = 'payment.captured') as captured_at,
        min(occurred_at) filter (where event_type = 'payment.refunded') as refunded_at,
        min(occurred_at) filter (where event_type = 'dispute.opened') as dispute_opened_at,
        min(occurred_at) filter (where event_type = 'dispute.closed') as dispute_closed_at
    from events
    group by payment_id
)

select
    a.payment_id,
    -- The numeric id the processor embeds in its payment id ("pay_000123" -> 123), which is
    -- the simulator's ground-truth transaction id; any other id shape gets a stable 63-bit hash.
    case
        when a.payment_id ~ '^[A-Za-z_-]*[0-9]{1,18}$'
            then substring(a.payment_id from '([0-9]{1,18})$')::bigint
        else ('x' || substr(md5(a.payment_id), 1, 16))::bit(64)::bigint & 9223372036854775807
    end as transaction_id,
    a.processor,
    a.customer_id,
    a.terminal_id,
    a.card_token,
    a.amount_minor,
    a.currency,
    a.authorized_at,
    a.authorization_received_at,
    l.captured_at,
    l.refunded_at,
    l.dispute_opened_at,
    l.dispute_closed_at
from authorizations a
left join lifecycle l on l.payment_id = a.payment_id
