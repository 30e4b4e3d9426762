-- A fraud label has an arrival time, and only a fraud has one; a label can not arrive before the payment.
select payment_id, is_fraud, fraud_known_at, tx_at
from {{ ref('fct_transactions') }}
where (is_fraud = 1 and fraud_known_at is null)
   or (is_fraud = 0 and fraud_known_at is not null)
   or fraud_known_at < tx_at
