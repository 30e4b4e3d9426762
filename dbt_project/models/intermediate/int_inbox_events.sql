-- One row per webhook of the receiver's inbox that is a payment lifecycle event, parsed from the two
-- processors' bodies into the shape of the landed files' events (stg_webhook_events): riskloop's
-- event type, the payment (and dispute) it is about, who and where (card, customer, terminal), how
-- much and when. int_payments merges these with the files' events, one row per (processor, event_id).
--
-- Body paths (riskloop/simulator/webhooks.py writes them, as the processors do):
--   stripe   charge.*: data.object.id is the payment, .customer, .payment_method_details.card.fingerprint,
--            .metadata.terminal_id; charge.dispute.*: data.object.id is the dispute, .charge the payment;
--            time: created (unix seconds)
--   standard data.payment_id, .dispute_id, .card_token (or .card.pan_token, the receiver's token of a
--            card number), .customer_id, .terminal_id; time: timestamp (RFC 3339)
-- The field rules (JSON types, integral amounts, currencies, times) are those of
-- riskloop.features.stream.parse_payment, which int_inbox_payments (the authorisations) mirrors; a
-- field of the wrong JSON type is null here, never a failed build. An event without a payment id,
-- a valid amount or a valid time is dropped (it is about no payment riskloop can name).
--
-- Incremental: inbox rows are never updated (the receiver deduplicates on the key), so a run parses
-- only the rows received since the newest it has, less `incremental_lookback_hours` (received_at is
-- taken before the insert commits).
{{ config(materialized='incremental', unique_key=['processor', 'event_id'], incremental_strategy='delete+insert',
          on_schema_change='fail') }}

with inbox as (
    select * from {{ ref('stg_webhook_inbox') }}
    where processor in ('stripe', 'standard')
    {% if is_incremental() %}
      and received_at > (
          select coalesce(max(received_at), '-infinity'::timestamptz)
                 - interval '{{ var("incremental_lookback_hours") | int }} hours'
          from {{ this }})
    {% endif %}
),

typed_events as (
    select
        *,
        case
            when processor = 'standard' then event_type
            when event_type = 'charge.succeeded' then 'payment.authorized'
            when event_type = 'charge.captured' then 'payment.captured'
            when event_type = 'charge.refunded' then 'payment.refunded'
            when event_type = 'charge.dispute.created' then 'dispute.opened'
            when event_type = 'charge.dispute.closed' then 'dispute.closed'
        end as riskloop_event_type
    from inbox
),

fields as (
    select
        processor,
        event_id,
        riskloop_event_type as event_type,
        received_at,
        case when processor = 'standard' then body #> '{data,payment_id}'
             when riskloop_event_type like 'dispute.%' then body #> '{data,object,charge}'
             else body #> '{data,object,id}' end as payment_j,
        case when processor = 'standard' then body #> '{data,dispute_id}'
             when riskloop_event_type like 'dispute.%' then body #> '{data,object,id}' end as dispute_j,
        case when processor = 'stripe' then body #> '{data,object,payment_method_details,card,fingerprint}'
             else coalesce(body #> '{data,card_token}', body #> '{data,card,pan_token}') end as card_j,
        case when processor = 'stripe' then body #> '{data,object,customer}'
             else body #> '{data,customer_id}' end as customer_j,
        case when processor = 'stripe' then body #> '{data,object,metadata,terminal_id}'
             else body #> '{data,terminal_id}' end as terminal_j,
        case when processor = 'stripe' then body #> '{data,object,amount}'
             else body #> '{data,amount_minor}' end as amount_j,
        case when processor = 'stripe' then body -> 'created'
             else body -> 'timestamp' end as time_j,
        case when processor = 'stripe' then body #> '{data,object,currency}'
             else body #> '{data,currency}' end as currency_j
    from typed_events
    where riskloop_event_type in ('payment.authorized', 'payment.captured', 'payment.refunded',
                                  'dispute.opened', 'dispute.closed')
),

typed as (
    select
        processor,
        event_id,
        event_type,
        received_at,
        {{ inbox_text('payment_j') }} as payment_id,
        {{ inbox_text('dispute_j') }} as dispute_id,
        {{ inbox_text('card_j') }} as card_token,
        {{ inbox_text('customer_j') }} as customer_id,
        {{ inbox_text('terminal_j') }} as terminal_id,
        -- ISO 4217 letters, upper-cased (Stripe sends "eur"); anything else: no currency
        case when jsonb_typeof(currency_j) = 'string' and currency_j #>> '{}' ~ '^[A-Za-z]{3}$'
             then upper(currency_j #>> '{}') end as currency,
        -- nested CASE: AND does not promise to test the JSON type before the cast
        case when jsonb_typeof(amount_j) = 'number' then
            case when amount_j::numeric between 0 and 999999999999999999 and amount_j::numeric = trunc(amount_j::numeric)
                 then amount_j::numeric::bigint end
        end as amount_minor,
        case
            when processor = 'stripe' and jsonb_typeof(time_j) = 'number' then
                case when time_j::numeric between 0 and 999999999999 and time_j::numeric = trunc(time_j::numeric)
                     then to_timestamp(time_j::numeric::bigint) end
            -- RFC 3339 with seconds (hours 00-23, seconds 00-59: Postgres would also take 24:00 and :60)
            when processor = 'standard' and jsonb_typeof(time_j) = 'string' then
                case when time_j #>> '{}' ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$'
                          and pg_input_is_valid(time_j #>> '{}', 'timestamptz')
                     then (time_j #>> '{}')::timestamptz end
        end as occurred_at
    from fields
)

select
    processor, event_id, event_type, payment_id, dispute_id, card_token, customer_id, terminal_id,
    amount_minor, currency, occurred_at, received_at
from typed
where payment_id is not null and amount_minor is not null and occurred_at is not null
