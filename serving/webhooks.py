"""The webhook receiver: ``POST /webhooks/stripe`` and ``POST /webhooks/standard``.

``build_router(settings)`` returns an ``APIRouter`` with its own lifespan, so the scoring app
mounts it with one ``include_router`` line, and ``create_webhook_app`` serves it alone (tests,
the load benchmark, or a receiver deployed apart from scoring).

Order of work per request, and why:

1. read the body as a stream and stop at ``max_body_bytes`` (a 413 before buffering a flood);
2. verify the signature on those raw bytes (``riskloop.core.signatures``), before any parsing, so an
   unauthenticated sender can reach neither the JSON parser nor the database;
3. parse, take the event id (Stripe: body ``id``; Standard Webhooks: ``webhook-id``), then
   tokenise any card number and drop CVV/track/PIN fields (``riskloop.core.pan``): only the scrubbed
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from riskloop.core import migrations
from riskloop.core.config import Settings, get_settings
from riskloop.core.db import dsn
from riskloop.core.pan import PanKeyMissing, tokenizer
from riskloop.core.redact import register
from riskloop.core.signatures import Rejection, Scheme, StandardVerifier, WebhookSettings, verify_stripe
from riskloop.data.inbox import INBOX, INSERT, inbox_event

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
        # The children each answer touches, resolved once (``labels()`` per request is a locked lookup).
        self.stored = {p: self.events.labels(processor=p, outcome="stored") for p in _FAST_PATHS.values()}
        self.duplicates = {p: self.events.labels(processor=p, outcome="duplicate") for p in _FAST_PATHS.values()}
        self.latency_of = {p: self.latency.labels(processor=p) for p in _FAST_PATHS.values()}


@dataclass
class _Pending:
    row: tuple[str, str, str, datetime, datetime, str]
    future: asyncio.Future[bool]


class StoreUnavailable(Exception):
    """The inbox could not commit; the event was not stored (the sender should retry)."""


class InboxWriter:
    """One async connection, one task: takes every queued row, inserts them in one statement,
    commits, then resolves each waiter with whether its row was new (False: a duplicate).

    The connection is in autocommit mode, so a batch is **one** round trip: the single
    ``INSERT … RETURNING`` is its own transaction, committed (and flushed to the WAL, with
    ``synchronous_commit=on``) before Postgres sends the result. An explicit transaction cost
    three (BEGIN, INSERT, COMMIT) and was a third of the receiver's CPU under load (py-spy,
    docs/benchmarks/history.md "Webhooks"). The statement is prepared server-side on first use."""

    _INSERT = INSERT

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
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=3, autocommit=True)
        return self._conn

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                conn = await self._connection()
                cols = list(zip(*(p.row for p in batch), strict=True))
                # autocommit: the statement has committed when its result arrives; only then may
                # anyone answer 2xx
                cur = await conn.execute(self._INSERT, [list(c) for c in cols], prepare=True)
                inserted = {tuple(r) for r in await cur.fetchall()}
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


class _TooLarge(Exception):
    pass


async def _read_body(receive: Callable[[], Awaitable[dict]], declared: str | None, limit: int) -> bytes:
    """The request body from ASGI ``receive``, refused (:class:`_TooLarge`) as soon as the declared
    length or the bytes read pass ``limit``; :class:`_Disconnected` if the client goes away first.
    One reader for the FastAPI routes (``request.receive``) and :class:`WebhookFastPath`."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, extra headers


def _reject(st: Any, processor: str, client: str, exc: Rejection) -> Answer:
    st.webhook_metrics.rejections.labels(processor=processor, reason=exc.reason).inc()
    log.warning("webhook rejected: processor=%s reason=%s status=%d client=%s: %s",
                processor, exc.reason, exc.status, client, exc.detail)
    return exc.status, {"error": exc.reason, "detail": exc.detail}, {}


async def handle(st: Any, scheme: Scheme, read_body: Callable[[int], Awaitable[bytes]],
                 header: Callable[[str], str | None], client: str) -> Answer:
    """One webhook, framework-free: read (bounded), verify, parse, scrub, commit; the answer to send.

    ``st`` is the app state the router's lifespan filled; ``read_body(limit)`` raises
    :class:`_TooLarge` past ``limit``; ``header(name)`` takes a lower-case name. Shared by the
    FastAPI routes and :class:`WebhookFastPath`, so both answer exactly alike."""
    t0 = time.perf_counter()
    now = st.webhook_clock()
    cfg_: WebhookSettings = st.webhook_cfg
    try:
        try:
            body = await read_body(cfg_.max_body_bytes)
        except _TooLarge:
            raise Rejection(413, "body_too_large", f"body over {cfg_.max_body_bytes} bytes") from None
        if scheme == "stripe":
            signed_at = verify_stripe(body, header("stripe-signature"), st.webhook_stripe_secrets, now,
                                      cfg_.tolerance_s)
            event_id = None
        else:
            headers = {k: header(k) or "" for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
            event_id, signed_at = st.webhook_standard.verify(body, headers, now)
        # authenticated from here on: parse, scrub
        event_id, event_type, text = inbox_event(scheme, body, event_id, st.webhook_pan)
    except Rejection as exc:
        return _reject(st, scheme, client, exc)

    row = (scheme, event_id, event_type, datetime.fromtimestamp(signed_at, UTC),
           datetime.fromtimestamp(now, UTC), text)
    try:
        new = await st.webhook_writer.write(row)
    except StoreUnavailable as exc:
        st.webhook_metrics.store_errors.inc()
        log.error("webhook %s/%s not stored, answering 503: %s", scheme, event_id, exc)
        return 503, {"error": "store_unavailable", "detail": "retry later"}, {"Retry-After": "5"}
    m: WebhookMetrics = st.webhook_metrics
    (m.stored if new else m.duplicates)[scheme].inc()
    m.latency_of[scheme].observe(time.perf_counter() - t0)
    return 200, {"received": True, "id": event_id, "duplicate": not new}, {}


class WebhookFastPath:
    """ASGI middleware answering ``POST /webhooks/{stripe,standard}`` itself, with :func:`handle`.

    Under load the framework around a webhook (Starlette's exception middlewares, FastAPI's
    routing, request and dependency machinery, ``JSONResponse``) cost about as much CPU as the
    receiver's own work (py-spy, docs/benchmarks/history.md "Webhooks"); this skips it. Every other request,
    and these paths with another method, goes on to the app. The FastAPI routes stay: they
    document the endpoints in OpenAPI and serve an app that mounts the router without this."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        scheme = _FAST_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if scheme is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw = scope["headers"]

        def header(name: str) -> str | None:
            key = name.encode("latin-1")
            for k, v in raw:
                if k == key:
                    return v.decode("latin-1")
            return None

        client = scope.get("client")
        try:
            status, content, extra = await handle(
                scope["app"].state, scheme, lambda limit: _read_body(receive, header("content-length"), limit),
                header, client[0] if client else "-")
        except _Disconnected:
            return  # nobody to answer; nothing was written (the body never arrived whole)
        body = json.dumps(content, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_FAST_PATHS: dict[str, Scheme] = {"/webhooks/stripe": "stripe", "/webhooks/standard": "standard"}


class _Disconnected(Exception):
    pass


def build_router(settings: Settings | None = None, webhook_settings: WebhookSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> APIRouter:
    """The receiver's routes and lifespan. ``clock`` (unix seconds) judges signature age and stamps
    arrival; tests pin it to a published example's timestamp."""
    settings = (settings or get_settings()).as_role("serving")  # appends to the inbox, alters nothing
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
        st.webhook_clock = clock
        st.webhook_stripe_secrets = cfg.secrets("stripe")
        register([*cfg.secrets("stripe"), *cfg.secrets("standard")])  # never logged (riskloop.core.redact)
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
        try:  # the inbox is the migrations' (`riskloop db upgrade`), never created by the receiver
            with psycopg.connect(dsn(settings), connect_timeout=3, autocommit=True) as conn:
                behind = migrations.pending_on(conn, settings)
            if behind is not None:
                log.error("%s; webhooks get 503 until it is", behind)
        except psycopg.Error as exc:  # the writer reconnects per batch; events get 503 meanwhile
            log.error("could not reach %s at startup: %s", INBOX, exc)
        st.webhook_writer = InboxWriter(dsn(settings), batch_max=cfg.batch_max)
        st.webhook_writer.start()
        try:
            yield
        finally:
            await st.webhook_writer.close()

    router = APIRouter(lifespan=lifespan, tags=["webhooks"])

    async def receive(request: Request, scheme: Scheme) -> Response:
        client = request.client.host if request.client else "-"
        try:
            status, content, headers = await handle(
                request.app.state, scheme,
                lambda limit: _read_body(request.receive, request.headers.get("content-length"), limit),
                request.headers.get, client)
        except _Disconnected:  # nobody to answer; nothing was written (the body never arrived whole)
            return Response(status_code=400)
        return JSONResponse(content, status_code=status, headers=headers)

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
    app.add_middleware(WebhookFastPath)
    app.include_router(build_router(settings, webhook_settings, clock=clock))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(request.app.state.webhook_metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
