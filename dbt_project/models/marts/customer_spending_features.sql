{{ config(post_hook=[index_entity_time('customer_id'), "analyze {{ this }}"]) }}
-- Per transaction: the customer's number of transactions and average amount over the 1, 7
-- and 30 days ending at and including it, i.e. (tx_at - w, tx_at], and the spread and maximum
-- of its amounts over the 30 days. No label is involved, so
-- no delay is needed. One sorted pass with RANGE frames instead of self-joins.
-- Money never mixes currencies: the amount statistics cover the customer's transactions in the
-- row's own currency (windows partitioned by customer and currency), so a payment is compared
-- with the customer's usual spend in that currency; the counts cover every currency (how often
-- the customer pays does not depend on what in).
with tx as (
    select customer_id, tx_at, currency, amount from {{ ref('fct_transactions') }}
)

select
    customer_id::text as customer_id,
    tx_at::timestamptz as event_timestamp,
    count(*) over w1 ::bigint as customer_nb_tx_1d,
    count(*) over w7 ::bigint as customer_nb_tx_7d,
    count(*) over w30 ::bigint as customer_nb_tx_30d,
    avg(amount) over a1 ::double precision as customer_avg_amount_1d,
    avg(amount) over a7 ::double precision as customer_avg_amount_7d,
    avg(amount) over a30 ::double precision as customer_avg_amount_30d,
    -- Spread of the customer's own amounts: with the mean, how unusual a new amount is for them
    -- (the handbook's compromised cards spend 5x their usual amounts). 0 for a single payment.
    coalesce(stddev_samp(amount) over a30, 0) ::double precision as customer_std_amount_30d,
    max(amount) over a30 ::double precision as customer_max_amount_30d
from tx
window
    w1 as (partition by customer_id order by tx_at range between {{ window_preceding(1) }} preceding and current row),
    w7 as (partition by customer_id order by tx_at range between {{ window_preceding(7) }} preceding and current row),
    w30 as (partition by customer_id order by tx_at range between {{ window_preceding(30) }} preceding and current row),
    a1 as (partition by customer_id, currency order by tx_at range between {{ window_preceding(1) }} preceding and current row),
    a7 as (partition by customer_id, currency order by tx_at range between {{ window_preceding(7) }} preceding and current row),
    a30 as (partition by customer_id, currency order by tx_at range between {{ window_preceding(30) }} preceding and current row)
