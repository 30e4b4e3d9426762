-- One row per fraud decision, with the payment it decided (renamed and typed serving.decision_log;
-- only what the label signals need: the payment id is the request's transaction_id; the customer is
-- sealed in the log, riskloop.core.subject_keys).
with source as (
    select * from {{ source('serving', 'decision_log') }}
),

renamed as (
    select
        decision_id,
        request ->> 'transaction_id' as payment_id,
        request ->> 'card_token' as card_token,
        decided_at,
        decision,
        score
    from source
    where product = 'fraud'
)

select * from renamed
