{#- Post-hook for the feature marts: Feast's point-in-time joins and the online materialisation
    filter on (entity, event_timestamp). The index is left unnamed so Postgres picks a free name
    (the previous build's table still holds the old name until dbt drops its backup). -#}
{% macro index_entity_time(entity) -%}
    create index on {{ this }} ({{ entity }}, event_timestamp)
{%- endmacro %}
