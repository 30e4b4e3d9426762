{#- A JSON value that is a non-empty string, as text; anything else (number, object, null, "") is
    null: the inbox's ids and keys, read as riskloop.features.stream reads them. -#}
{% macro inbox_text(j) -%}
    case when jsonb_typeof({{ j }}) = 'string' and {{ j }} #>> '{}' <> '' then {{ j }} #>> '{}' end
{%- endmacro %}
