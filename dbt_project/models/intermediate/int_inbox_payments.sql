{{ config(materialized='view') }}
-- One row per accepted payment (authorisation) webhook of the receiver's inbox: who (card,
-- customer), how much (minor units, in which currency), when it happened, and which payment.
-- The same rules as riskloop.features.stream.parse_payment (the stream path), field by field (the
-- parsing itself is int_inbox_events'); tests/test_realtime.py feeds the same events through both.
-- A field of the wrong JSON type is null (never a failed build; numbers count when integral,
-- whatever their JSON spelling): an event without a payment id, a valid amount or a valid time is
-- not a payment, a missing card or customer only drops the event from that entity's windows.
select processor, event_id, payment_id, terminal_id, card_token, customer_id, amount_minor, currency, occurred_at
from {{ ref('int_inbox_events') }}
where event_type = 'payment.authorized'
