"""A topic (Kafka, Kinesis, Pub/Sub…) → ``raw.webhook_inbox``, for a user whose processors' webhooks
already land on a topic: the same rows the receiver writes, so ``riskloop stream`` and dbt read
them unchanged (infra/streaming.md).

The bridge is given the records as a plain iterator of :class:`TopicRecord` (the client library's
consumer loop wraps its messages), so it depends on no broker client and is tested with a list.
Per record it does what the receiver does per request, with the same functions: verify the
signature (``riskloop.core.signatures``) against the record's own receipt time, then
``riskloop.data.inbox.inbox_event`` (event id, type, card data tokenised). Records are written in
batches, one ``INSERT … ON CONFLICT DO NOTHING`` each (the inbox's key, ``(processor, event_id)``,
makes a redelivered record a no-op), and ``commit`` (the topic's offset commit) is called with the
last position of a batch only after that batch is durable: at least once, never lost.

A record that fails verification or parsing is a bad record, not an outage: logged, returned in
:attr:`BridgeResult.rejected` (the caller's dead-letter topic), and passed over, so it never
blocks the ones behind it. A 5xx-class rejection (card data but no tokenisation key) and a
database error raise: nothing of the batch is committed to the topic, so it is redelivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.pan import PanKeyMissing, PanTokenizer, tokenizer
from riskloop.core.signatures import SCHEMES, Rejection, StandardVerifier, WebhookSettings, verify_stripe
from riskloop.data.inbox import INSERT, inbox_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicRecord:
    """One webhook as the topic carries it: exactly what the processor sent to the edge that
    produced the record."""

    processor: str  # the scheme that signs it: "stripe" or "standard"
    body: bytes  # the request body, byte for byte as signed
    headers: Mapping[str, str]  # its signature headers (Stripe-Signature, or webhook-id/-timestamp/-signature)
    received_at: datetime  # when the edge received it (e.g. the Kafka record timestamp): stored as received_at
    position: Any = None  # the source's offset or sequence number, handed back to ``commit``


@dataclass
class BridgeResult:
    stored: int = 0  # new inbox rows
    duplicates: int = 0  # already in the inbox (a redelivery, or the receiver got it too)
    rejected: list[tuple[Any, str, str]] = field(default_factory=list)  # (position, reason, detail)


class InboxBridge:
    """Writes :class:`TopicRecord` batches to the inbox over one autocommit connection."""

    def __init__(self, settings: Settings, webhook_settings: WebhookSettings | None = None, *,
                 batch_max: int = 500) -> None:
        self.settings = settings
        self.cfg = webhook_settings or WebhookSettings()
        self.batch_max = batch_max
        self._stripe = self.cfg.secrets("stripe")
        self._standard = StandardVerifier(self.cfg.secrets("standard"), self.cfg.tolerance_s)
        try:
            self._pan: PanTokenizer | None = tokenizer(settings)
        except PanKeyMissing as exc:  # a body with card data then raises (never stored in clear)
            log.warning("inbox bridge: records carrying card numbers will stop the bridge: %s", exc)
            self._pan = None
        self._conn: psycopg.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "InboxBridge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def row(self, record: TopicRecord) -> tuple[str, str, str, datetime, datetime, str]:
        """The inbox row of ``record``, or :class:`Rejection`. The signature's age is judged against
        the record's receipt time, not the bridge's clock: a topic replayed hours later still verifies,
        and a record signed long before the edge received it still does not."""
        body, now = record.body, record.received_at.timestamp()
        if len(body) > self.cfg.max_body_bytes:
            raise Rejection(413, "body_too_large", f"body over {self.cfg.max_body_bytes} bytes")
        headers = {k.lower(): v for k, v in record.headers.items()}
        if record.processor == "stripe":
            signed_at = verify_stripe(body, headers.get("stripe-signature"), self._stripe, now, self.cfg.tolerance_s)
            event_id = None
        elif record.processor == "standard":
            event_id, signed_at = self._standard.verify(body, headers, now)
        else:
            raise Rejection(404, "unknown_processor", f"processor must be one of {list(SCHEMES)}")
        event_id, event_type, text = inbox_event(record.processor, body, event_id, self._pan)  # type: ignore[arg-type]
        return (record.processor, event_id, event_type, datetime.fromtimestamp(signed_at, UTC),
                record.received_at.astimezone(UTC), text)

    def write(self, records: Iterable[TopicRecord]) -> BridgeResult:
        """One batch: verify and parse each record, insert the good ones in one statement (committed
        when it returns)."""
        result = BridgeResult()
        rows = []
        for record in records:
            try:
                rows.append(self.row(record))
            except Rejection as exc:
                if exc.status >= 500:
                    raise
                log.warning("inbox bridge: record %r rejected (%s): %s", record.position, exc.reason, exc.detail)
                result.rejected.append((record.position, exc.reason, exc.detail))
        if rows:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(dsn(self.settings), autocommit=True, application_name="riskloop-bridge")
            new = len(self._conn.execute(INSERT, [list(c) for c in zip(*rows, strict=True)]).fetchall())
            result.stored, result.duplicates = new, len(rows) - new
        return result

    def run(self, source: Iterable[TopicRecord | None], commit: Callable[[Any], None] = lambda position: None
            ) -> BridgeResult:
        """Drain ``source`` in batches of at most ``batch_max``; after each batch is in the inbox,
        ``commit`` its last position (the topic's offset). ``source`` yields None when its poll came
        back empty: what it has is written at once, so a quiet topic does not hold records back.
        Returns the totals."""
        total = BridgeResult()

        def flush(batch: list[TopicRecord]) -> None:
            r = self.write(batch)
            total.stored += r.stored
            total.duplicates += r.duplicates
            total.rejected.extend(r.rejected)
            commit(batch[-1].position)

        batch: list[TopicRecord] = []
        for record in source:
            if record is not None:
                batch.append(record)
            if batch and (record is None or len(batch) >= self.batch_max):
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        return total
