-- A fraud label has an arrival time and a source, and only a fraud has an arrival time; a label can
-- not arrive before the payment, and a label's source is one of int_label_signals' sources.
select payment_id, is_fraud, fraud_known_at, label_source, tx_at
from {{ ref('fct_transactions') }}
where (is_fraud = 1 and (fraud_known_at is null or label_source is null))
   or (is_fraud = 0 and fraud_known_at is not null)
   or fraud_known_at < tx_at
   or (label_source is not null and label_source not in (select distinct source from {{ ref('int_label_signals') }}))
