{#- Minor units -> major units with the ISO 4217 exponent of the currency (0 for JPY, 3 for KWD,
    2 for everything else), so a mixed-currency feed never produces 100x-off amounts. -#}
{% macro minor_to_major(amount_minor, currency) -%}
    ({{ amount_minor }}::double precision / case
        when {{ currency }} in ('BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF',
                                'UGX', 'UYI', 'VND', 'VUV', 'XAF', 'XOF', 'XPF') then 1
        when {{ currency }} in ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND') then 1000
        else 100 end)
{%- endmacro %}
