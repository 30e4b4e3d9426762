{#- The batch path of the real-time windows (riskloop/core/windows.py is the one spec; riskloop.data.transform
    passes it as the var `realtime_windows`, there is deliberately no default): one row per
    payment of the entity, over the payment fact (int_payments: every payment, received live or only
    in a file, once however often it came, with the values of its first receipt), so every training
    row has its windows as of its own time. Each window covers (occurred_at - w, occurred_at] as RANGE frames,
    so ties (same-time payments) are in each other's windows, as in the stream's query. An
    aggregate's FILTER (the sums: windows.SUM_CURRENCY only) comes with its sql; no qualifying
    payment gives 0, not null, as in the stream.
    The stream (riskloop.features.stream) sees only the live webhooks: for an entity whose payments
    all came live, its pushed row equals this mart's row at the same event_timestamp. A payment known
    only from a file is in this mart (training sees it), but the stream never counted it: it reaches
    the online store when the mart is materialised, and a live payment after it is pushed with
    windows that miss it (windows.py says more). -#}
{% macro realtime_window_mart(entity_name) -%}
{%- set spec = var('realtime_windows') -%}
{%- set ents = spec['entities'] | selectattr('name', 'equalto', entity_name) | list -%}
{%- if ents | length != 1 -%}
    {{ exceptions.raise_compiler_error("realtime_windows has no entity " ~ entity_name) }}
{%- endif -%}
{%- set key = ents[0]['key'] -%}
with events as (
    select {{ key }}, authorized_at as occurred_at, amount_minor, currency from {{ ref('int_payments') }}
    where {{ key }} is not null
)

select
    {{ key }}::text as {{ key }},
    occurred_at::timestamptz as event_timestamp
{%- for a in spec['aggregates'] %}{% for w in spec['windows'] %},
    coalesce({{ a['sql'] }} over w_{{ w['name'] }}, 0) ::bigint as {{ entity_name }}_{{ a['name'] }}_{{ w['name'] }}
{%- endfor %}{% endfor %}
from events
window
{%- for w in spec['windows'] %}
    w_{{ w['name'] }} as (partition by {{ key }} order by occurred_at
        range between interval '{{ w['seconds'] - 1 }} seconds 999999 microseconds' preceding and current row)
    {{- "," if not loop.last }}
{%- endfor %}
{%- endmacro %}
