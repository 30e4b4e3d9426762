-- One fraud label per payment from its label signals (int_label_signals: every source, with its
-- precedence), and when it was known. Per payment the label is the highest-precedence source's
-- latest signal (a tie in time goes to fraud), whatever lower sources say: a lost chargeback
-- stays fraud after an analyst marks the payment legitimate.
-- fraud_known_at is set only for a fraud (features may only use a fraud label after it);
-- label_known_at is when the label, fraud or not, was known. This is the current label: a verdict
-- later overturned is replaced, not kept as history.
with chosen as (
    select distinct on (payment_id) payment_id, source, is_fraud, known_at
    from {{ ref('int_label_signals') }}
    order by payment_id, precedence, known_at desc, is_fraud desc
)

select
    payment_id,
    is_fraud,
    case when is_fraud then known_at end as fraud_known_at,
    source as label_source,
    known_at as label_known_at
from chosen
