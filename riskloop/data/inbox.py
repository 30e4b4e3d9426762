"""The webhook inbox table (``raw.webhook_inbox``): its DDL, and what lets a consumer tail it.

The receiver (``serving.webhooks``) writes it; dbt reads it as the source ``receiver.webhook_inbox``
(so ingestion creates it too, before dbt runs); the real-time stream (``riskloop.features.stream``) tails
it. Two additions beyond the contract columns of ``riskloop.core.schema.WEBHOOK_INBOX`` serve the tail:

- ``_xid``: the inserting transaction's id (``xid8``, never wraps). Rows with ``_xid`` below the
  ``xmin`` of a fresh snapshot come from transactions that have all ended, so no row can still
  appear there; a consumer that remembers "everything below X is processed" never skips an event
  that commits late (an identity column would: ids are taken before commit, in another order).
- a statement-level trigger that ``NOTIFY``s :data:`CHANNEL` on insert, delivered at commit, so the
  consumer wakes at once instead of polling (it still polls, slowly, in case a notice is missed).

The DDL runs only for what is missing: ``alter table`` and ``create trigger`` take locks that
would stall the receiver's inserts if every loader re-ran them.
"""

from __future__ import annotations

from riskloop.core.schema import RAW_SCHEMA, WEBHOOK_INBOX

INBOX = f"{RAW_SCHEMA}.{WEBHOOK_INBOX.name}"
CHANNEL = "riskloop_webhook_inbox"
XID_COLUMN = "_xid"
_TRIGGER = "webhook_inbox_notify"
_NOTIFY_FN = "notify_webhook_inbox"

