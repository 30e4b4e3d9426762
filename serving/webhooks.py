"""The webhook receiver: ``POST /webhooks/stripe`` and ``POST /webhooks/standard``.

``build_router(settings)`` returns an ``APIRouter`` with its own lifespan, so the scoring app
mounts it with one ``include_router`` line, and ``create_webhook_app`` serves it alone (tests,
the load benchmark, or a receiver deployed apart from scoring).

Order of work per request, and why:

1. read the body as a stream and stop at ``max_body_bytes`` (a 413 before buffering a flood);
2. verify the signature on those raw bytes (``riskloop.webhooks``), before any parsing, so an
   unauthenticated sender can reach neither the JSON parser nor the database;
3. parse, take the event id (Stripe: body ``id``; Standard Webhooks: ``webhook-id``), then
   tokenise any card number and drop CVV/track/PIN fields (``riskloop.pan``): only the scrubbed
   body is stored (a body without card data is stored byte for byte as signed); a Luhn-invalid
   card number is a 422 and nothing is written;
4. hand the row to :class:`InboxWriter` and wait until its transaction has **committed**: only
   then answer 2xx, so an acknowledged event survives a crash. The writer commits concurrent
   requests together (group commit), which is what lets one process keep up with many senders
   while every answer still means "durable".

``raw.webhook_inbox`` has the primary key ``(processor, event_id)``: a replay (processors retry
until they see a 2xx) hits ``ON CONFLICT DO NOTHING`` and answers 200 ``{"duplicate": true}``.
Every rejection is a 4xx with ``{"error": <reason>, "detail": …}``, one log line, one increment of
``riskloop_webhook_rejections_total{processor,reason}`` and no row anywhere. A database outage is
not a rejection: 503, so the processor retries later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg import sql

from riskloop.config import Settings, get_settings
from riskloop.db import dsn
from riskloop.inbox import INBOX, ensure_inbox
from riskloop.pan import InvalidPan, PanKeyMissing, PanTokenizer, scrub, tokenizer
from riskloop.schema import RAW_SCHEMA, WEBHOOK_INBOX
from riskloop.webhooks import Rejection, Scheme, StandardVerifier, WebhookSettings, verify_stripe

log = logging.getLogger(__name__)


class WebhookMetrics:
    """Counters registered on the given registry (the scoring app's, so ``/metrics`` shows them)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = registry
        self.rejections = Counter("riskloop_webhook_rejections", "Webhooks refused (4xx), nothing written.",
                                  ["processor", "reason"], registry=registry)
        self.events = Counter("riskloop_webhook_events", "Verified webhooks answered 2xx.",
                              ["processor", "outcome"], registry=registry)
        self.store_errors = Counter("riskloop_webhook_store_errors", "Inbox commits that failed (503).",
                                    registry=registry)
        self.latency = Histogram("riskloop_webhook_latency_seconds", "Request read to durable answer.",
                                 ["processor"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))


@dataclass
class _Pending:
    row: tuple[str, str, str, datetime, datetime, str]
    future: asyncio.Future[bool]


class StoreUnavailable(Exception):
    """The inbox could not commit; the event was not stored (the sender should retry)."""


class InboxWriter:
    """One async connection, one task: takes every queued row, inserts them in one statement,
    commits, then resolves each waiter with whether its row was new (False: a duplicate)."""

    _INSERT = sql.SQL(
        "insert into {} ({}) select * from unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], "
        "%s::timestamptz[], %s::text[]) on conflict do nothing returning processor, event_id"
    ).format(sql.Identifier(RAW_SCHEMA, WEBHOOK_INBOX.name),
             sql.SQL(", ").join(map(sql.Identifier, WEBHOOK_INBOX.column_names)))

    def __init__(self, conninfo: str, batch_max: int = 512) -> None:
        self._conninfo, self._batch_max = conninfo, batch_max
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-inbox-writer")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():  # nobody will write these: tell their senders to retry
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(StoreUnavailable("receiver shutting down"))
        if self._conn is not None:
            await self._conn.close()

    async def write(self, row: tuple[str, str, str, datetime, datetime, str]) -> bool:
        """Queue ``row`` and wait for its commit; True if inserted, False if the key existed."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(row, fut))
        return await fut

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=3)
        return self._conn

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                conn = await self._connection()
                cols = list(zip(*(p.row for p in batch), strict=True))
                async with conn.transaction():
                    cur = await conn.execute(self._INSERT, [list(c) for c in cols])
                    inserted = {tuple(r) for r in await cur.fetchall()}
                # the transaction block has committed here: only now may anyone answer 2xx
            except (psycopg.Error, OSError) as exc:
                log.error("webhook inbox commit of %d events failed: %s", len(batch), exc)
                if self._conn is not None:
                    with suppress(Exception):
                        await self._conn.close()
                self._conn = None
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(StoreUnavailable(str(exc)))
                continue
            self.batches += 1
            for p in batch:
                key = (p.row[0], p.row[1])
                new = key in inserted
                inserted.discard(key)  # the same id twice in one batch: the second is the duplicate
                if not p.future.done():
                    p.future.set_result(new)


def _scrub_cards(pan: PanTokenizer | None, payload: dict[str, Any], text: str) -> str:
    """The body to store: ``text`` itself when it holds no card data, else the payload re-serialised
    with PANs tokenised and CVV/track/PIN dropped. Raises :class:`Rejection` (nothing is stored)."""
    try:
        scrubbed, changed = scrub(payload, pan)
    except InvalidPan as exc:
        raise Rejection(422, "invalid_pan", str(exc)) from None
    except PanKeyMissing as exc:
        raise Rejection(503, "pan_tokenization_unavailable", str(exc)) from None
    if not changed:
        return text
    return json.dumps(scrubbed, separators=(",", ":"), ensure_ascii=False)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def build_router(settings: Settings | None = None, webhook_settings: WebhookSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> APIRouter:
    """The receiver's routes and lifespan. ``clock`` (unix seconds) judges signature age and stamps
    arrival; tests pin it to a published example's timestamp."""
    settings = settings or get_settings()
    cfg = webhook_settings or WebhookSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = app.state
        shared = getattr(st, "metrics", None)  # the scoring app's per-app registry, when mounted there
        if shared is not None and getattr(shared, "registry", None) is not None:
            registry = shared.registry
        else:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        st.webhook_metrics = WebhookMetrics(registry)
        st.webhook_cfg = cfg
        st.webhook_stripe_secrets = cfg.secrets("stripe")
        st.webhook_standard = StandardVerifier(cfg.secrets("standard"), cfg.tolerance_s)
        try:
            st.webhook_pan = tokenizer(settings)
        except PanKeyMissing as exc:  # bodies with card data get a 503 (never stored in clear)
            log.error("webhooks carrying card numbers will be refused: %s", exc)
            st.webhook_pan = None
        for scheme in ("stripe", "standard"):
            if not cfg.secrets(scheme):  # type: ignore[arg-type]
                log.warning("no %s webhook secret (RISKLOOP_WEBHOOK_SECRETS_%s): every %s webhook will be rejected",
                            scheme, scheme.upper(), scheme)
        try:
            with psycopg.connect(dsn(settings), connect_timeout=3, autocommit=True) as conn:
                ensure_inbox(conn)
        except psycopg.Error as exc:  # the writer reconnects per batch; events get 503 meanwhile
            log.error("could not ensure %s at startup: %s", INBOX, exc)
        st.webhook_writer = InboxWriter(dsn(settings), batch_max=cfg.batch_max)
        st.webhook_writer.start()
        try:
            yield
        finally:
            await st.webhook_writer.close()

    router = APIRouter(lifespan=lifespan, tags=["webhooks"])

    def reject(request: Request, processor: str, exc: Rejection) -> JSONResponse:
        request.app.state.webhook_metrics.rejections.labels(processor=processor, reason=exc.reason).inc()
        client = request.client.host if request.client else "-"
        log.warning("webhook rejected: processor=%s reason=%s status=%d client=%s: %s",
                    processor, exc.reason, exc.status, client, exc.detail)
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status)

    async def receive(request: Request, scheme: Scheme) -> Response:
        st = request.app.state
        t0 = time.perf_counter()
        now = clock()
        cfg_: WebhookSettings = st.webhook_cfg
        try:
            try:
                body = await _read_body(request, cfg_.max_body_bytes)
            except _TooLarge:
                raise Rejection(413, "body_too_large", f"body over {cfg_.max_body_bytes} bytes") from None
            if scheme == "stripe":
                signed_at = verify_stripe(body, request.headers.get("stripe-signature"), st.webhook_stripe_secrets,
                                          now, cfg_.tolerance_s)
                event_id = None
            else:
                headers = {k: request.headers.get(k, "") for k in ("webhook-id", "webhook-timestamp",
                                                                    "webhook-signature")}
                event_id, signed_at = st.webhook_standard.verify(body, headers, now)
            # authenticated from here on: parse
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
            if "\x00" in text:
                raise Rejection(400, "invalid_json", "NUL characters are not stored")
            text = _scrub_cards(st.webhook_pan, payload, text)
        except Rejection as exc:
            return reject(request, scheme, exc)

        row = (scheme, event_id, payload["type"], datetime.fromtimestamp(signed_at, UTC),
               datetime.fromtimestamp(now, UTC), text)
        try:
            new = await st.webhook_writer.write(row)
        except StoreUnavailable as exc:
            st.webhook_metrics.store_errors.inc()
            log.error("webhook %s/%s not stored, answering 503: %s", scheme, event_id, exc)
            return JSONResponse({"error": "store_unavailable", "detail": "retry later"}, status_code=503,
                                headers={"Retry-After": "5"})
        st.webhook_metrics.events.labels(processor=scheme, outcome="stored" if new else "duplicate").inc()
        st.webhook_metrics.latency.labels(processor=scheme).observe(time.perf_counter() - t0)
        return JSONResponse({"received": True, "id": event_id, "duplicate": not new}, status_code=200)

    @router.post("/webhooks/stripe")
    async def stripe_webhook(request: Request) -> Response:
        """Stripe events (``Stripe-Signature``). 200 once durably stored (or already stored)."""
        return await receive(request, "stripe")

    @router.post("/webhooks/standard")
    async def standard_webhook(request: Request) -> Response:
        """Standard Webhooks events (``webhook-id``/``-timestamp``/``-signature``)."""
        return await receive(request, "standard")

    return router


def create_webhook_app(settings: Settings | None = None, webhook_settings: WebhookSettings | None = None, *,
                       clock: Callable[[], float] = time.time) -> FastAPI:
    """The receiver alone (no model, no feature store), with its own ``/metrics``."""
    app = FastAPI(title="riskloop webhooks", version="0.1.0")
    app.include_router(build_router(settings, webhook_settings, clock=clock))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(request.app.state.webhook_metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
