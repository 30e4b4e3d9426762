{#- Time helpers that never depend on the session TimeZone: day boundaries are UTC midnights
    and windows are expressed in hours (an interval in "days" shifts by an hour across DST
    when the session is not in UTC). -#}

{% macro utc_day(ts) -%}
    (date_trunc('day', {{ ts }} at time zone 'UTC') at time zone 'UTC')
{%- endmacro %}

{#- Frame start of a window of `days` ending at and including the current row: (t - days, t]. -#}
{% macro window_preceding(days) -%}
    interval '{{ 24 * days - 1 }} hours 59 minutes 59.999999 seconds'
{%- endmacro %}

{% macro hours(days) -%}
    interval '{{ 24 * days }} hours'
{%- endmacro %}
