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

import json
from typing import Any

from psycopg import sql

from riskloop.core.pan import InvalidPan, PanKeyMissing, PanTokenizer, may_hold_pan, scrub
from riskloop.core.schema import RAW_SCHEMA, WEBHOOK_INBOX
from riskloop.core.signatures import Rejection, Scheme
from riskloop.core.storable import find_unstorable

INBOX = f"{RAW_SCHEMA}.{WEBHOOK_INBOX.name}"
CHANNEL = "riskloop_webhook_inbox"
XID_COLUMN = "_xid"
# The one insert of inbox rows (processor, event_id, event_type, signed_at, received_at, body as arrays):
# a replayed event id inserts nothing; the rows returned are the new ones.
INSERT = sql.SQL(
    "insert into {} ({}) select * from unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], "
    "%s::timestamptz[], %s::text[]) on conflict do nothing returning processor, event_id"
).format(sql.Identifier(RAW_SCHEMA, WEBHOOK_INBOX.name), sql.SQL(", ").join(map(sql.Identifier, WEBHOOK_INBOX.column_names)))
_TRIGGER = "webhook_inbox_notify"
_NOTIFY_FN = "notify_webhook_inbox"



def inbox_event(scheme: Scheme, body: bytes, event_id: str | None, pan: PanTokenizer | None) -> tuple[str, str, str]:
    """An authenticated webhook body → ``(event_id, event_type, body to store)``, or :class:`Rejection`
    (a 4xx, 422 for text Postgres cannot store (``riskloop.core.storable``); a 503 when card data
    arrives without a tokenisation key). The one rule for what enters the inbox, whoever writes it:
    the receiver (``serving.webhooks``) and a topic bridge (``riskloop.data.inbox_bridge``).

    ``event_id``: Standard Webhooks' ``webhook-id`` (verified with the signature); None for Stripe,
    whose id is the body's. The stored body is the text itself when it holds no card data, else the
    payload re-serialised with card numbers tokenised — under any name, in any string — and CVV/track/PIN
    dropped (``riskloop.core.pan``)."""
    try:
        text = body.decode("utf-8")
        payload = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejection(400, "invalid_json", "body is not a UTF-8 JSON document") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str) or not payload["type"]:
        raise Rejection(400, "invalid_event", "body must be a JSON object with a string 'type'")
    if scheme == "stripe":
        event_id = payload.get("id")
        if not isinstance(event_id, str) or not event_id or len(event_id) > 256:
            raise Rejection(400, "invalid_event", "stripe event needs a string 'id'")
    if not event_id:
        raise Rejection(400, "missing_header", "no event id")
    # The inbox keeps the text, but dbt casts it to jsonb and the stream consumer parses it: a body
    # Postgres cannot store as jsonb would stop both at this row, so it never enters.
    if (problem := find_unstorable(payload) or find_unstorable(event_id, "event id")) is not None:
        raise Rejection(422, "unstorable_text", problem)
    return event_id, payload["type"], _scrub_cards(pan, payload, text)


def _scrub_cards(pan: PanTokenizer | None, payload: dict[str, Any], text: str) -> str:
    # The body's text is the cheap pre-check: without a run of 12 digits (or a \u escape that could
    # spell one) no string in it can hold a card number, and only the named fields are looked at.
    free_text = may_hold_pan(text) or "\\u" in text
    try:
        scrubbed, changed = scrub(payload, pan, free_text=free_text)
    except InvalidPan as exc:
        raise Rejection(422, "invalid_pan", str(exc)) from None
    except PanKeyMissing as exc:
        raise Rejection(503, "pan_tokenization_unavailable", str(exc)) from None
    if not changed:
        return text
    return json.dumps(scrubbed, separators=(",", ":"), ensure_ascii=False)
