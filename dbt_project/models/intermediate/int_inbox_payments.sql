-- One row per accepted payment (authorisation) webhook of the receiver's inbox, parsed from the
-- two processors' bodies: who (card, customer), how much (minor units, in which currency) and
-- when it happened.
-- The same rules as riskloop.features.stream.parse_payment (the stream path); tests/test_realtime.py feeds
-- the same events through both. A field of the wrong JSON type is null here (never a failed
-- build; numbers count when integral, whatever their JSON spelling): an event without a valid amount or time is not a payment, a missing key only drops
-- the event from that entity's windows.
with inbox as (
    select * from {{ ref('stg_webhook_inbox') }}
    where (processor = 'stripe' and event_type = 'charge.succeeded')
       or (processor = 'standard' and event_type = 'payment.authorized')
),

fields as (
    select
        processor,
        event_id,
        case when processor = 'stripe' then body #> '{data,object,payment_method_details,card,fingerprint}'
             else coalesce(body #> '{data,card_token}', body #> '{data,card,pan_token}') end as card_j,
        case when processor = 'stripe' then body #> '{data,object,customer}'
             else body #> '{data,customer_id}' end as customer_j,
        case when processor = 'stripe' then body #> '{data,object,amount}'
             else body #> '{data,amount_minor}' end as amount_j,
        case when processor = 'stripe' then body -> 'created'
             else body -> 'timestamp' end as time_j,
        case when processor = 'stripe' then body #> '{data,object,currency}'
             else body #> '{data,currency}' end as currency_j
    from inbox
),

typed as (
    select
        processor,
        event_id,
        case when jsonb_typeof(card_j) = 'string' and card_j #>> '{}' <> '' then card_j #>> '{}' end as card_token,
        case when jsonb_typeof(customer_j) = 'string' and customer_j #>> '{}' <> '' then customer_j #>> '{}' end
            as customer_id,
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

select processor, event_id, card_token, customer_id, amount_minor, currency, occurred_at
from typed
where amount_minor is not null and occurred_at is not null
