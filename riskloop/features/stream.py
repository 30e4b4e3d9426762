"""The real-time path: accepted payment webhooks → windowed counts/sums → Feast push → online store.

``riskloop stream`` runs :class:`StreamConsumer`, a process apart from the receiver, so the
receiver's hot path is unchanged: it answers after its durable commit and never waits on Feast.
The consumer tails the committed ``raw.webhook_inbox`` (``riskloop.data.inbox``): woken by the inbox's
``NOTIFY``, it reads every row whose inserting transaction id is below the horizon of finished
transactions, parses the payment authorisations, adds them to ``realtime.payment_events`` (its
indexed projection of the inbox, keyed like it), recomputes the windows of every card and
customer the new events touched and pushes those rows to the views' push sources.

Why windows are recomputed from Postgres rather than kept in in-memory rings: one windowed query
per entity and round (all touched keys at once, an index range scan each on (key, occurred_at))
costs less than the push, needs no state to seed or rebuild after a restart, and gives late or
out-of-order events exactly the batch answer, because both evaluate the same spec
(``riskloop.core.windows``) over the same committed events as of the key's latest event time. Rings
would need the same query to be seeded anyway and would have to be re-sorted on every late event.

A round costs a handful of round trips whatever its size, because on a busy machine each one
waits for the scheduler: the horizon, the inbox page(s), the payments' insert with both window
queries in one pipeline, the online write of both views with its commit in one pipeline (in Feast's
layout and encoding, ``riskloop.features.online_write``), and the offset.

Partitions: ``riskloop stream --partitions N --partition i`` runs one of N consumers that split the
keys: each card and customer is recomputed and pushed only by its owner (:func:`partition_of`),
while every partition stores every payment, so an owner's window query sees all of its keys'
events. Each partition has its own offset row and lock (:func:`partition_name`); consumers of one
name split different ways refuse to run together (infra/streaming.md).

Delivery: at least once, and idempotent. The offset (``realtime.stream_offsets``: every inbox row
with ``_xid`` below it is processed) advances only after the push, so a crash replays the last
round; replaying inserts nothing new into ``payment_events`` (its key is the inbox's) and pushes
the same values again. A replayed webhook never reaches the consumer (the inbox deduplicates it).
One consumer per name and partition (a session advisory lock), so pushes to a key are never reordered.

Online values are as of the entity's latest payment (``event_timestamp`` in the online store):
a card that stops paying keeps its last counts until its next payment or the view's 24 h TTL.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from riskloop.core import windows
from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.storable import find_unstorable
from riskloop.data.inbox import CHANNEL, INBOX, XID_COLUMN
from riskloop.features import suppression

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

STATE_SCHEMA = "realtime"
OFFSETS_TABLE = f"{STATE_SCHEMA}.stream_offsets"
# The event type each processor sends for an accepted (authorised) payment; other events of the
# payment (captures, refunds, disputes) do not add a payment to the windows.
PAYMENT_TYPES = {"stripe": "charge.succeeded", "standard": "payment.authorized"}
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_MAX_AMOUNT = 999_999_999_999_999_999
_MAX_UNIX = 999_999_999_999
_DECODER = json.JSONDecoder(parse_float=Decimal)  # one decoder: json.loads(parse_float=…) builds one per call


@dataclass(frozen=True)
class Payment:
    """An accepted payment as the windows see it; the same fields ``int_inbox_payments`` parses."""

    processor: str
    event_id: str
    card_token: str | None
    customer_id: str | None
    amount_minor: int
    occurred_at: datetime
    currency: str | None = None  # ISO 4217, upper-cased; None: counts, sums in no currency
    payment_id: str = ""  # the processor's payment id (int_payments merges copies of a payment on it)
    terminal_id: str | None = None


def _path(doc: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def _key(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _currency(value: Any) -> str | None:
    """Three ASCII letters, upper-cased (Stripe sends ``eur``), else None: dbt's rule."""
    return value.upper() if isinstance(value, str) and _CURRENCY.fullmatch(value) else None


def _integral(value: Any, upper: int) -> int | None:
    """A JSON number with an integral value in [0, upper] (``100``, ``100.0``, ``1e2``), else None.
    Floats are parsed as Decimal, so the test is exact like Postgres' numeric."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    if isinstance(value, Decimal) and (not value.is_finite() or value != value.to_integral_value()):
        return None
    return int(value) if 0 <= value <= upper else None


def parse_payment(processor: str, event_id: str, event_type: str, body: str) -> Payment | None:
    """The payment an inbox row announces, or None (not an authorisation, or no payment id, valid
    amount or time: then it is no payment of the fact ``int_payments`` either).

    The rules of ``dbt_project/models/intermediate/int_inbox_payments.sql`` (the batch path), field
    by field; tests/test_realtime.py checks that both read the same events the same way.
    """
    if PAYMENT_TYPES.get(processor) != event_type:
        return None
    try:
        doc = _DECODER.decode(body)
    except ValueError:
        return None
    # The receiver refuses such text, but a row stored before it did would fail the state insert on
    # every round and stall the consumer: it is no payment here (dbt's jsonb cast cannot read it either).
    if "\\u" in body and (problem := find_unstorable(doc)) is not None:
        log.warning("stream: inbox event %s/%s skipped: %s", processor, event_id, problem)
        return None
    if processor == "stripe":
        payment = _path(doc, "data", "object", "id")
        terminal = _path(doc, "data", "object", "metadata", "terminal_id")
        card = _path(doc, "data", "object", "payment_method_details", "card", "fingerprint")
        customer = _path(doc, "data", "object", "customer")
        amount = _path(doc, "data", "object", "amount")
        currency = _path(doc, "data", "object", "currency")
        created = _integral(_path(doc, "created"), _MAX_UNIX)
        occurred = datetime.fromtimestamp(created, timezone.utc) if created is not None else None
    else:
        payment = _path(doc, "data", "payment_id")
        terminal = _path(doc, "data", "terminal_id")
        card = _path(doc, "data", "card_token")
        if card is None:
            card = _path(doc, "data", "card", "pan_token")
        customer = _path(doc, "data", "customer_id")
        amount = _path(doc, "data", "amount_minor")
        currency = _path(doc, "data", "currency")
        stamp = _path(doc, "timestamp")
        occurred = None
        if isinstance(stamp, str) and _RFC3339.fullmatch(stamp):
            try:
                occurred = datetime.fromisoformat(stamp)
            except ValueError:
                occurred = None
    amount_minor = _integral(amount, _MAX_AMOUNT)
    payment_id = _key(payment)
    if amount_minor is None or occurred is None or payment_id is None:
        return None
    return Payment(processor, event_id, _key(card), _key(customer), amount_minor, occurred, _currency(currency),
                   payment_id, _key(terminal))


def _scalar(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row[0]


def partition_of(key: str, partitions: int) -> int:
    """The partition that owns ``key``: CRC-32 of its UTF-8 bytes mod ``partitions``. Stable across
    processes, machines and Python versions (unlike ``hash``), so a bridge or a router upstream
    can compute the same split."""
    return zlib.crc32(key.encode()) % partitions


def partition_name(name: str, partition: int, partitions: int) -> str:
    """The consumer name of one partition (its offset row and lock): ``name`` itself when unsplit,
    else ``<name>.p<i>of<n>``."""
    return name if partitions == 1 else f"{name}.p{partition}of{partitions}"


def parse_partition_name(consumer: str) -> tuple[str, int, int] | None:
    """``(name, partition, partitions)`` of a consumer name from :func:`partition_name`."""
    m = re.fullmatch(r"(.+)\.p([0-9]+)of([0-9]+)", consumer)
    if m is None:
        return (consumer, 0, 1)
    i, n = int(m.group(2)), int(m.group(3))
    return (m.group(1), i, n) if 0 <= i < n else None


def application_name(name: str) -> str:
    """How pg_stat_activity shows a consumer's sessions (``riskloop status`` counts them)."""
    return f"riskloop-stream-{name}"[:63]


def consumer_progress(settings: Settings, name: str) -> dict[str, Any] | None:
    """The consumer's offset row (payments processed, when it last finished a round), or None when it
    never ran here or the warehouse does not answer."""
    try:
        with psycopg.connect(dsn(settings), connect_timeout=2, autocommit=True) as conn:
            if _scalar(conn, "select to_regclass(%s)", (OFFSETS_TABLE,)) is None:
                return None
            row = conn.execute(f"select events, updated_at from {OFFSETS_TABLE} where consumer = %s",
                               (name,)).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else {"events": int(row[0]), "updated_at": row[1].isoformat()}


class OnlinePush:
    """``FeatureStore.push(source, df, to=PushMode.ONLINE)`` with what is fixed per registry version
    resolved once, every push source's rows of a round written in one transaction.

    Feast's ``push`` re-resolves, on every call, the views a push source feeds (twice: once in
    ``push``, once in ``write_to_online_store``, each rebuilding Python objects from the cached
    registry proto), lists the feature services from the SQL registry *uncached* to find services
    with ``precompute_online`` (``_precompute_for_push``), converts the frame pandas → Arrow →
    protos and writes one ``INSERT`` per entity and feature (docs/benchmarks/history.md, "Real-time
    features"). Here the plan (views per push source, their online tables, precomputed services
    touching them) is rebuilt whenever the store's cached registry proto is replaced (Feast
    refreshes it after ``cache_ttl_seconds``; ``feast apply`` changes show up then, as they would
    for ``push`` with its default ``allow_registry_cache=True``), and a Postgres online store is
    written by :class:`riskloop.features.online_write.OnlineWriter`: one statement per view,
    Feast's own table layout and encoding.

    A push source that feeds anything but plain feature views (stream or label views) goes through
    ``FeatureStore.push`` unchanged; a view the direct writer does not handle (another online
    store, vectors, a created timestamp) through Feast's ``provider.ingest_df``.
    ``precompute_feature_service`` still runs for a service with ``precompute_online`` (none of
    riskloop's has it).
    """

    def __init__(self, store: "FeatureStore") -> None:
        from riskloop.features.online_write import DirectWriteUnsupported, OnlineWriter

        self.store = store
        try:
            self.writer: OnlineWriter | None = OnlineWriter(store)
        except DirectWriteUnsupported as exc:
            log.info("stream: Feast's own online write (%s)", exc)
            self.writer = None
        self._proto: object | None = None  # the registry proto the plan was built from
        self._views: dict[str, list[Any]] = {}  # push source -> the feature views it feeds
        self._targets: dict[str, Any] = {}  # view -> its online_write.Target, or None: Feast's ingest_df
        self._precompute: dict[str, list[str]] = {}  # push source -> services to recompute
        self._fallback: set[str] = set()  # push sources left to FeatureStore.push

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _plan(self, source: str) -> None:
        from feast.feature_view import FeatureView

        from riskloop.features.online_write import DirectWriteUnsupported

        registry = self.store.registry
        # What every cached registry read of Feast's does first: replace the proto once its TTL is over.
        refresh = getattr(registry, "_refresh_cached_registry_if_necessary", None)
        if refresh is not None:
            refresh()
        if getattr(registry, "cached_registry_proto", None) is not self._proto:
            self._views, self._targets, self._precompute, self._fallback = {}, {}, {}, set()
        if source in self._views or source in self._fallback:
            return
        # Feast's own resolution from the cached registry (PushSourceNotFoundException for an unknown source)
        views = list(self.store._fvs_for_push_source_or_raise(source, True))
        self._proto = getattr(registry, "cached_registry_proto", None)
        if any(type(v) is not FeatureView for v in views):  # stream or label views: Feast's push as is
            self._fallback.add(source)
            return
        self._views[source] = sorted(views, key=lambda v: v.name)
        for view in self._views[source]:
            target = None
            if self.writer is not None and not any(f.vector_index for f in view.features):
                try:
                    target = self.writer.target(view)
                except DirectWriteUnsupported as exc:
                    log.info("stream: Feast's own online write for %s (%s)", view.name, exc)
            self._targets[view.name] = target
        first = self._views[source][0].name  # Feast recomputes the services of the first view pushed
        self._precompute[source] = [
            svc.name for svc in registry.list_feature_services(self.store.project, allow_cache=True)
            if svc.precompute_online and any(p.name == first for p in svc.feature_view_projections)]

    def push_rows(self, batches: dict[str, tuple[list[str], list[tuple[Any, ...]]]]) -> None:
        """Push ``{push source: (column names, rows)}`` to the online store: every directly written
        view in one transaction, then anything left to Feast, in the given order."""
        import pandas as pd

        direct: list[tuple[Any, list[str], list[tuple[Any, ...]]]] = []
        frames: dict[str, Any] = {}
        for source, (columns, rows) in batches.items():
            self._plan(source)
            if not rows:
                log.warning("stream: nothing to push to %s (no rows)", source)
                continue
            views = [] if source in self._fallback else self._views[source]
            if views and all(self._targets[v.name] is not None for v in views):
                direct.extend((self._targets[v.name], columns, rows) for v in views)
            else:
                frames[source] = pd.DataFrame(rows, columns=columns)
        if direct and self.writer is not None:
            self.writer.write(direct)
            for source in batches.keys() - frames.keys():
                for service in self._precompute.get(source, ()):
                    self.store.precompute_feature_service(service)
        if frames:
            self.push(frames, direct=False)

    def push(self, frames: dict[str, Any], direct: bool = True) -> None:
        """Push each ``{push source name: DataFrame}`` to the online store, in the given order
        (``direct``: through :meth:`push_rows` where the views allow it)."""
        from feast.data_source import PushMode

        if direct:
            self.push_rows({s: (list(df.columns), list(df.itertuples(index=False, name=None)))
                            for s, df in frames.items()})
            return
        provider = self.store._get_provider()
        for source, df in frames.items():
            self._plan(source)
            if source in self._fallback:
                self.store.push(source, df, to=PushMode.ONLINE)
                continue
            for view in self._views[source]:
                self.store._validate_vector_features(view, df)
                names = [f.name for f in view.features]
                if df.empty or (names and df[names].isnull().all().all()):
                    log.warning("stream: nothing to write to %s (empty frame or all features null)", view.name)
                    continue
                provider.ingest_df(view, df)
            for service in self._precompute[source]:
                self.store.precompute_feature_service(service)


_INSERT_EVENTS = (
    f"insert into {windows.EVENTS_TABLE} (processor, event_id, card_token, customer_id, amount_minor, occurred_at, "
    f"currency) select * from unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
    f"%s::timestamptz[], %s::text[]) on conflict do nothing")


class ConsumerBusy(RuntimeError):
    """Another consumer of the same name holds the lock (two would reorder pushes)."""


@dataclass
class RoundResult:
    rows: int = 0  # inbox rows read
    payments: int = 0  # of which accepted payments
    skipped: int = 0  # payment-typed rows without a valid amount/time (logged)
    pushed: int = 0  # entity rows pushed


class StreamConsumer:
    """Tails the inbox and pushes windows; :meth:`run_once` is one round, :meth:`run` loops.

    ``store`` defaults to ``riskloop.features.store.feature_store(settings)`` (opened once: its registry
    cache and online-store connection are reused by every push).
    """

    def __init__(self, settings: Settings, name: str = "default", store: "FeatureStore | None" = None,
                 partitions: int = 1, partition: int = 0) -> None:
        if partitions < 1 or not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} of {partitions}: need 0 <= partition < partitions")
        self.settings, self.base_name = settings, name
        self.partitions, self.partition = partitions, partition
        self.name = partition_name(name, partition, partitions)  # its offset row and its lock
        self._store = store
        self._owns_store = store is None
        self.application_name = application_name(self.name)
        self._conn: psycopg.Connection | None = None
        self._failures = 0  # consecutive failed attempts of :meth:`run` (its back-off)
        self._pusher: OnlinePush | None = None
        self._offset: int | None = None  # the stored offset, as this (lock-holding) consumer last wrote it
        self._ring = suppression.ring_or_none(settings)  # hashes the keys it pushes against the erased ones

    def owns(self, key: str) -> bool:
        """This consumer recomputes and pushes ``key``'s windows (each key has exactly one owner)."""
        return self.partitions == 1 or partition_of(key, self.partitions) == self.partition

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> "StreamConsumer":
        conn = psycopg.connect(dsn(self.settings), autocommit=True, application_name=self.application_name)
        try:
            locked = _scalar(conn, "select pg_try_advisory_lock(hashtext('riskloop.stream'), hashtext(%s))",
                             (self.name,))
            if not locked:
                raise ConsumerBusy(f"another stream consumer named {self.name!r} is running")
            self._lock_layout(conn)
            conn.execute(f"insert into {OFFSETS_TABLE} (consumer, next_xid) values (%s, %s::xid8) "
                         f"on conflict do nothing", (self.name, str(self._seed_offset(conn))))
            conn.execute("set synchronous_commit = off")  # the offset update turns it back on (see _apply)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        if self._store is None:
            from riskloop.features.store import feature_store

            self._store = feature_store(self.settings)
        return self

    def _lock_layout(self, conn: psycopg.Connection) -> None:
        """Refuse to run beside consumers of the same name split another way: a key would have two
        owners, whose pushes could land out of order. Every consumer of a name holds a shared lock
        keyed by its partition count; one of another count is a :class:`ConsumerBusy`."""
        key = f"riskloop.stream.layout:{self.base_name}"
        conn.execute("select pg_advisory_lock_shared(hashtext(%s), %s)", (key, self.partitions))
        other = conn.execute(
            "select objid::int from pg_locks where locktype = 'advisory' and objsubid = 2 and granted "
            "and database = (select oid from pg_database where datname = current_database()) "
            "and classid = hashtext(%s)::oid and objid <> %s::oid limit 1", (key, self.partitions)).fetchone()
        if other is not None:
            raise ConsumerBusy(f"stream consumers named {self.base_name!r} run with --partitions {other[0]}, "
                               f"not {self.partitions}: stop them first")

    def _seed_offset(self, conn: psycopg.Connection) -> int:
        """Where a partition that never ran starts: the lowest offset of a complete earlier layout
        of the same name (every key was pushed by its owner below it, and every consumer stores
        every event), so changing ``--partitions`` replays a little instead of the whole inbox;
        0 when there is none."""
        rows = conn.execute(f"select consumer, next_xid::text from {OFFSETS_TABLE} where consumer = %s "
                            f"or consumer like %s", (self.base_name, f"{self.base_name}.p%of%")).fetchall()
        layouts: dict[int, dict[int, int]] = {}
        for consumer, next_xid in rows:
            parsed = parse_partition_name(consumer)
            if parsed is not None and parsed[0] == self.base_name:
                layouts.setdefault(parsed[2], {})[parsed[1]] = int(next_xid)
        complete = [min(offsets.values()) for n, offsets in layouts.items() if len(offsets) == n]
        return max(complete, default=0)

    def close(self) -> None:
        self._offset = None
        if self._pusher is not None:
            self._pusher.close()
            self._pusher = None
        if self._conn is not None:
            self._conn.close()  # ends the session: the advisory lock goes with it
            self._conn = None

    def __enter__(self) -> "StreamConsumer":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            raise RuntimeError("StreamConsumer is not open")
        return self._conn

    # --- one round ------------------------------------------------------------------------------

    def offset(self) -> int:
        """Every inbox row with ``_xid`` below this is processed."""
        return int(_scalar(self.conn, f"select next_xid::text from {OFFSETS_TABLE} where consumer = %s", (self.name,)))

    def run_once(self, page: int | None = None) -> RoundResult:
        """Process every inbox row committed since the offset, in pages; push; advance the offset."""
        page = page or self.settings.stream_page_rows
        result = RoundResult()
        started = time.perf_counter()
        lo = self._offset if self._offset is not None else self.offset()
        hi = int(_scalar(self.conn, "select pg_snapshot_xmin(pg_current_snapshot())::text"))
        if hi <= lo:
            return result
        types = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(p), sql.Literal(t))
                                   for p, t in PAYMENT_TYPES.items())
        query = sql.SQL(
            "select {xid}::text, processor, event_id, event_type, body from {inbox} "
            "where {xid} >= %s::xid8 and ({xid}, processor, event_id) > (%s::xid8, %s, %s) and {xid} < %s::xid8 "
            "and (processor, event_type) in ({types}) order by {xid}, processor, event_id limit %s"
        ).format(xid=sql.Identifier(XID_COLUMN), inbox=sql.SQL(INBOX), types=types)
        cursor: tuple[str, str, str] = (str(lo), "", "")
        while True:
            rows = self.conn.execute(query, (cursor[0], *cursor, str(hi), page)).fetchall()
            if not rows:
                break
            result.rows += len(rows)
            payments = []
            for _xid, processor, event_id, event_type, body in rows:
                p = parse_payment(processor, event_id, event_type, body)
                if p is None:
                    result.skipped += 1
                    log.warning("stream: inbox event %s/%s (%s) has no payment id, valid amount or time: not a payment",
                                processor, event_id, event_type)
                else:
                    payments.append(p)
            result.payments += len(payments)
            result.pushed += self._apply(payments)
            cursor = (rows[-1][0], rows[-1][1], rows[-1][2])
            if len(rows) < page:
                break
        with self.conn.pipeline(), self.conn.transaction():  # one round trip; waits for the WAL flush
            self.conn.execute("set local synchronous_commit = on")
            self.conn.execute(f"update {OFFSETS_TABLE} set next_xid = %s::xid8, events = events + %s, "
                              f"updated_at = now() where consumer = %s", (str(hi), result.payments, self.name))
        self._offset = hi
        if result.rows:
            log.debug("stream: %d inbox rows, %d payments, %d skipped, %d entity rows pushed in %.3fs",
                      result.rows, result.payments, result.skipped, result.pushed, time.perf_counter() - started)
        return result

    def _apply(self, payments: list[Payment]) -> int:
        """Store the payments, recompute the windows of the touched keys this consumer owns, push
        them. Returns rows pushed. Every partition stores every payment (idempotent: the key is the
        inbox's), so each owner's window query sees all of its keys' events whoever stored them.

        The insert and the window queries go to the server in one pipeline (one round trip; one
        implicit transaction, so the queries see the insert). The insert's commit does not wait for
        its WAL flush (the session's ``synchronous_commit = off``): the offset update that follows the
        push waits for its own, which flushes everything before it in the same WAL, so a payment is
        durable before the offset moves past it."""
        if not payments:
            return 0
        cols = [list(c) for c in zip(*((p.processor, p.event_id, p.card_token, p.customer_id, p.amount_minor,
                                        p.occurred_at, p.currency) for p in payments), strict=True)]
        owned = {e: sorted(k for k in {getattr(p, e.key) for p in payments} - {None} if self.owns(k))
                 for e in windows.ENTITIES}
        # erased customers and cards are never pushed (riskloop.features.suppression): asked in the same pipeline
        touched = {e.key: keys for e, keys in owned.items() if keys}
        erased_query = suppression.erased_sql(self._ring, touched) if touched else None
        with self.conn.pipeline():
            self.conn.execute(_INSERT_EVENTS, cols)
            cursors = {e: self.conn.execute(windows.stream_sql(e), {"keys": keys}) for e, keys in owned.items() if keys}
            erased_cur = self.conn.execute(*erased_query) if erased_query else None
        batches = {windows.push_source_name(e): ([c.name for c in cur.description or ()], cur.fetchall())
                   for e, cur in cursors.items()}
        erased = suppression.check_erased(self._ring, touched, erased_cur.fetchall()) if erased_cur else {}
        for e in cursors:
            gone = erased.get(e.key)
            if gone:
                columns, rows = batches[windows.push_source_name(e)]
                at = columns.index(e.key)
                batches[windows.push_source_name(e)] = (columns, [r for r in rows if r[at] not in gone])
                log.info("stream: %d erased %s keys not pushed", len(gone), e.name)
        batches = {source: batch for source, batch in batches.items() if batch[1]}
        if batches:
            self.pusher.push_rows(batches)
        return sum(len(rows) for _, rows in batches.values())

    @property
    def pusher(self) -> OnlinePush:
        """The :class:`OnlinePush` of the current store (a new one when the store was rebuilt)."""
        if self._store is None:
            raise RuntimeError("StreamConsumer is not open")
        if self._pusher is None or self._pusher.store is not self._store:
            self._pusher = OnlinePush(self._store)
        return self._pusher

    # --- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Rounds until ``stop`` is set: a round at once on each inbox NOTIFY, and at least every
        ``stream_poll_s`` (a notice can be missed, e.g. across a reconnect).

        A lost database connection (a Postgres restart, a killed backend) is logged and retried
        every ``stream_poll_s`` with fresh connections, the Feast store's included (its online
        connection would be dead too); the round in flight is redone from the stored offset, so
        nothing is lost. Any other failure of a round (typically a push before ``feast apply`` has
        registered the push sources, as on a fresh ``riskloop up`` that receives webhooks before
        the first ingest) is logged with its traceback and retried the same way, backing off to
        30 s while it keeps failing: the offset has not moved, so the round is redone in full once
        the cause is gone. Only :class:`ConsumerBusy` (another consumer took the name) ends it.
        """
        stop = stop or threading.Event()
        self._failures = 0
        while not stop.is_set():
            try:
                if self._conn is None:
                    self.open()
                self._loop(stop)
            except ConsumerBusy:
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._failures += 1
                log.error("stream consumer %r lost the database (%s): reconnecting in %.1fs",
                          self.name, str(exc).strip() or type(exc).__name__, self._backoff())
            except Exception:  # noqa: BLE001 - logged in full; the round is redone from the offset
                self._failures += 1
                log.exception("stream consumer %r: a round failed; retrying in %.1fs from its offset",
                              self.name, self._backoff())
            else:
                continue
            self.close()
            if self._owns_store:
                self._store = None  # its online connection or cached registry may be what failed
            stop.wait(self._backoff())

    def _backoff(self) -> float:
        """``stream_poll_s``, doubled per consecutive failed attempt, at most 30 s."""
        poll = self.settings.stream_poll_s
        return min(poll * 2 ** max(self._failures - 1, 0), max(30.0, poll))

    def _loop(self, stop: threading.Event) -> None:
        with psycopg.connect(dsn(self.settings), autocommit=True, application_name=self.application_name) as listener:
            listener.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
            log.info("stream consumer %r tailing %s (offset %d)", self.name, INBOX, self.offset())
            while not stop.is_set():
                self.run_once()
                self._failures = 0
                for _ in listener.notifies(timeout=self.settings.stream_poll_s, stop_after=1):
                    pass
