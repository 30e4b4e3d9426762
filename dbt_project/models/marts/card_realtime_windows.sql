{{ config(post_hook=[index_entity_time('card_token'), "analyze {{ this }}"]) }}
-- The card's real-time windows in batch: the feature view card_realtime's batch source (riskloop/core/windows.py).
{{ realtime_window_mart('card') }}
