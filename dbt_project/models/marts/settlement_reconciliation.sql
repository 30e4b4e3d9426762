-- The settlement reconciliation finance and on-call read: one row per settlement file line with its
-- status against the payment fact (int_settlement_reconciliation says how each status is decided).
-- The settlement_breaks check (riskloop.monitoring.reconciliation) pages on its break rate.
select
    source_file::text as source_file,
    line_no::integer as line_no,
    processor::text as processor,
    payout_id::text as payout_id,
    payment_id::text as payment_id,
    settled_amount_minor::bigint as settled_amount_minor,
    fee_minor::bigint as fee_minor,
    settled_currency::text as settled_currency,
    captured_amount_minor::bigint as captured_amount_minor,
    captured_currency::text as captured_currency,
    amount_diff_minor::bigint as amount_diff_minor,
    reconciliation_status::text as reconciliation_status,
    (reconciliation_status in ('amount_mismatch', 'unknown_payment', 'not_captured'))::boolean as is_break,
    captured_at::timestamptz as captured_at,
    settled_at::timestamptz as settled_at,
    arrived_at::timestamptz as arrived_at
from {{ ref('int_settlement_reconciliation') }}
