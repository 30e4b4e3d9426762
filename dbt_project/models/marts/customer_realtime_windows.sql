{{ config(post_hook=[index_entity_time('customer_id'), "analyze {{ this }}"]) }}
-- The customer's real-time windows in batch: the feature view customer_realtime's batch source (riskloop/core/windows.py).
{{ realtime_window_mart('customer') }}
