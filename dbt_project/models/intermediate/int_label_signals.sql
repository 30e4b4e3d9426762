-- Every fraud-label signal riskloop has, each with its source's precedence (1 = highest): the input
-- of int_fraud_labels, which picks one label per payment.
--
-- The signal contract (each model in the list below): columns payment_id text, source text,
-- is_fraud boolean, known_at timestamptz: "as of known_at, payment_id is (not) fraud, according to
-- source". known_at is when riskloop learned it (an arrival time, never the event's own time), so
-- the label delay logic downstream never uses a label early. Any number of rows per payment; a row
-- without a payment, a verdict or a time is not a signal. One source per model.
--
-- Precedence is the model's position in the list, highest first (this is the one place that
-- orders the sources):
--   1. int_label_signals_chargebacks (source 'chargeback'): the card scheme's ruling on a dispute.
--      A lost chargeback outranks any in-house opinion (an analyst's 'legitimate', a passed step-up),
--      and a won one clears an in-house 'fraud'.
--   2. int_case_label_signals (source 'case'): an analyst's disposition of the payment's case
--      (fraud_confirmed or legitimate; inconclusive is no signal), known when the case was closed.
--   3. int_step_up_label_signals (source 'step_up'): a failed challenge, known when the channel
--      reported it; the weakest evidence (the customer may have fumbled the code), so any analyst
--      or scheme verdict on the payment outranks it.
{{ config(materialized='view') }}
{%- set signal_models = ['int_label_signals_chargebacks', 'int_case_label_signals', 'int_step_up_label_signals'] %}

{% for model in signal_models %}
select payment_id::text as payment_id, source::text as source, is_fraud::boolean as is_fraud,
       known_at::timestamptz as known_at, {{ loop.index }}::integer as precedence
from {{ ref(model) }}
where payment_id is not null and is_fraud is not null and known_at is not null
{{ "union all" if not loop.last }}
{% endfor %}
