{{ config(post_hook=[index_entity_time('terminal_id'), "analyze {{ this }}"]) }}
{#-
Per terminal and UTC day D (event_timestamp = D's midnight): over the window
[D - delay - w, D - delay) for w in 1, 7, 30 days, the number of transactions and the share
of them that were fraud *as known before D* (fraud_known_at < D). The delay keeps recent
transactions, whose labels have not arrived yet, out of the denominator; the arrival
condition keeps labels that arrived late out of the numerator (no leakage).

Counts: one window pass over a dense terminal x day spine (ROWS frames are exact because
every day is present). Frauds: a join of the spine with the (few) fraudulent transactions.

Without the delay (the `recent` windows [D - w, D), w in 7, 14, 28): the frauds already
*reported* before D among the terminal's transactions of those days, their share of the
window's transactions, and the days since the latest such fraud (60 days back at most, else
null). A fraud reported two days after the payment is evidence against the terminal from the
day after its report, not a week later: the delayed windows above throw that away (the
handbook's compromised terminals stay compromised for 28 days). Point-in-time correct by the
same rule, fraud_known_at < D.
-#}
{% set delay = var('label_delay_days') | int %}
{% set windows = [1, 7, 30] %}
{% set recent = [7, 14, 28] %}
{% set lookback = 60 %}
with tx as (
    select terminal_id, tx_at, is_fraud, fraud_known_at from {{ ref('fct_transactions') }}
),

bounds as (
    select
        date_trunc('day', min(tx_at) at time zone 'UTC') as first_day,
        date_trunc('day', max(tx_at) at time zone 'UTC') as last_day
    from tx
),

days as (
    select (d at time zone 'UTC') as day
    from bounds, generate_series(first_day, last_day, interval '1 day') as d
),

terminals as (
    select distinct terminal_id from tx
),

daily as (
    select terminal_id, {{ utc_day('tx_at') }} as day, count(*) as n_tx
    from tx
    group by 1, 2
),

spine as (
    select t.terminal_id, d.day, coalesce(x.n_tx, 0) as n_tx
    from terminals t
    cross join days d
    left join daily x on x.terminal_id = t.terminal_id and x.day = d.day
),

counts as (
    select
        terminal_id,
        day,
        {% for w in windows %}
        coalesce(sum(n_tx) over (
            partition by terminal_id order by day
            rows between {{ delay + w }} preceding and {{ delay + 1 }} preceding
        ), 0) as nb_tx_{{ w }}d,
        {% endfor %}
        {% for w in recent %}
        coalesce(sum(n_tx) over (
            partition by terminal_id order by day
            rows between {{ w }} preceding and 1 preceding
        ), 0) as nb_recent_{{ w }}d{{ "," if not loop.last }}
        {% endfor %}
    from spine
),

frauds as (
    select terminal_id, tx_at, fraud_known_at
    from tx
    where is_fraud = 1 and fraud_known_at is not null
),

known_frauds as (
    select
        s.terminal_id,
        s.day,
        {% for w in windows %}
        count(*) filter (where f.tx_at >= s.day - {{ hours(delay + w) }}) as n_fraud_{{ w }}d{{ "," if not loop.last }}
        {% endfor %}
    from counts s
    join frauds f
      on f.terminal_id = s.terminal_id
     and f.tx_at >= s.day - {{ hours(delay + windows | max) }}
     and f.tx_at < s.day - {{ hours(delay) }}
     and f.fraud_known_at < s.day
    group by 1, 2
),

reported_frauds as (
    select
        s.terminal_id,
        s.day,
        {% for w in recent %}
        count(*) filter (where f.tx_at >= s.day - {{ hours(w) }}) as n_reported_{{ w }}d,
        {% endfor %}
        max(f.tx_at) as last_reported_fraud_at
    from counts s
    join frauds f
      on f.terminal_id = s.terminal_id
     and f.tx_at >= s.day - {{ hours(lookback) }}
     and f.tx_at < s.day
     and f.fraud_known_at < s.day
    group by 1, 2
)

select
    c.terminal_id::text as terminal_id,
    c.day::timestamptz as event_timestamp,
    {% for w in windows %}
    c.nb_tx_{{ w }}d::bigint as terminal_nb_tx_{{ w }}d,
    {% endfor %}
    {% for w in windows %}
    (case when c.nb_tx_{{ w }}d > 0
          then coalesce(k.n_fraud_{{ w }}d, 0)::double precision / c.nb_tx_{{ w }}d
          else 0 end)::double precision as terminal_risk_{{ w }}d,
    {% endfor %}
    {% for w in recent %}
    coalesce(r.n_reported_{{ w }}d, 0)::bigint as terminal_reported_frauds_{{ w }}d,
    (case when c.nb_recent_{{ w }}d > 0
          then coalesce(r.n_reported_{{ w }}d, 0)::double precision / c.nb_recent_{{ w }}d
          else 0 end)::double precision as terminal_reported_risk_{{ w }}d,
    {% endfor %}
    (extract(epoch from c.day - r.last_reported_fraud_at) / 86400.0)::double precision
        as terminal_days_since_reported_fraud
from counts c
left join known_frauds k on k.terminal_id = c.terminal_id and k.day = c.day
left join reported_frauds r on r.terminal_id = c.terminal_id and r.day = c.day
