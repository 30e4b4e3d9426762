"""The writer of ``serving.decision_log``, the append-only record of every decision (the table is
:mod:`riskloop.decisions.log`'s).

A decision is answered only once its row is committed (group commit): the request puts its row on
a bounded queue and waits; one background thread takes everything queued, writes it with one
``COPY`` in one transaction, commits, and then wakes each waiting request (one hop per event loop
per batch). While a batch commits the next one gathers, so the wait is about one commit, however
many requests arrive. The writer's session runs with ``synchronous_commit`` from the serving
settings (``off`` by default): the commit is in Postgres, which a kill of the serving process cannot
undo, without waiting for the WAL flush; a crash of Postgres itself can lose the last few hundred
milliseconds of commits (README, "What a decision's 200 promises").

A row that was not committed is never answered 200: the database down (the batch fails once, and
until a retry after a short backoff every new row fails at once) gives :class:`LogUnavailable`, a
commit slower than the commit timeout or a full queue gives the same, and each is a 503 with
``Retry-After``; nothing is kept in memory for later. A row whose request already gave up is not
written if the writer has not taken it yet (if it has, it may still commit: a logged decision nobody
was told of, never the reverse). A retried batch whose first commit did land fails its ``COPY`` on
the primary key and is then inserted with ``ON CONFLICT DO NOTHING``, which makes it harmless.

A batch Postgres refuses for what a row holds (a value it cannot store, which the request schemas
refuse but a row built elsewhere may still carry) is not retried as a whole: it is written again row
by row, each in a savepoint, and a row that still fails goes to :data:`DEAD_LETTERS_TABLE` with its
error in the same transaction, so the rest of the batch and every later row are written; that
row's request gets :class:`LogRefused` (a 500: the decision is set aside, not logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_dumps

from riskloop.core.storable import escape_unstorable
from riskloop.core.subject_keys import SubjectKeys
from riskloop.decisions.cases import CaseRules, link_batch
from riskloop.decisions.log import (
    CARD_LOCATIONS_TABLE,
    COLUMNS,
    DEAD_LETTERS_TABLE,
    DEVICES_TABLE,
    JSON_COLUMNS,
    OPTIONAL_COLUMNS,
    TABLE,
)
from serving.travel import latest_per_card

log = logging.getLogger(__name__)

INSERT = (f"insert into {TABLE} ({', '.join(COLUMNS)}) values ({', '.join(['%s'] * len(COLUMNS))}) "
          "on conflict (decision_id) do nothing")
COPY = f"copy {TABLE} ({', '.join(COLUMNS)}) from stdin"
INSERT_DEVICES = (f"insert into {DEVICES_TABLE} (customer_id, device_id) "
                  "select * from unnest(%s::text[], %s::text[]) on conflict do nothing")
# One row per card (latest_per_card): an upsert may not touch a row twice in one statement.
UPSERT_CARD_LOCATIONS = (
    f"insert into {CARD_LOCATIONS_TABLE} as t (card_token, country, seen_at) "
    "select * from unnest(%s::text[], %s::text[], %s::timestamptz[]) on conflict (card_token) do update "
    "set country = excluded.country, seen_at = excluded.seen_at, updated_at = clock_timestamp() "
    "where excluded.seen_at >= t.seen_at")
INSERT_DEAD_LETTER = f"insert into {DEAD_LETTERS_TABLE} (decision_id, product, error, row_json) values (%s, %s, %s, %s)"
# What a row can make Postgres (or the encoding before it) refuse, as opposed to a connection or
# server problem that a retry of the whole batch outlasts: text it cannot store (DataError), a
# constraint (IntegrityError), a value the encoders reject (ValueError, orjson's TypeError).
ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, ValueError, TypeError)


def _dumps(obj: Any) -> bytes:
    """The JSON columns' encoder: orjson, ~5× less CPU than ``json.dumps``, which was a quarter of
    the writer thread's time; the writer holds the GIL the serving loop needs (bench/decision_log_write.py).
    Like the columns' type, it takes only JSON values (numpy scalars as numbers); a NaN, which
    ``jsonb`` would refuse, is written as null."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


# Where the writer keeps a row's request as stored (its personal fields sealed, riskloop.core.subject_keys);
# ``request`` itself stays clear for the side tables and cases written in the same transaction.
SEALED = "_sealed_request"


def _stored(row: dict[str, Any], column: str) -> Any:
    if column == "request" and SEALED in row:
        return row[SEALED]
    return row.get(column) if column in OPTIONAL_COLUMNS else row[column]


def _params(row: dict[str, Any]) -> tuple:
    values = (_stored(row, c) for c in COLUMNS)
    return tuple(Jsonb(v) if c in JSON_COLUMNS and v is not None else v for c, v in zip(COLUMNS, values, strict=True))


def allowed_devices(batch: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The (customer, device) pairs of the batch's allowed fraud payments, as two columns."""
    customers, devices = [], []
    for r in batch:
        req = r.get("request") or {}
        if r["decision"] == "allow" and r.get("product", "fraud") == "fraud" and req.get("device_id"):
            customers.append(req["customer_id"])
            devices.append(req["device_id"])
    return customers, devices


def _link_cases(conn: psycopg.Connection, rules: CaseRules | None, batch: list[dict[str, Any]]) -> None:
    """The batch's review decisions into cases (riskloop.decisions.cases.link_batch), in savepoints of
    the batch's transaction: a committed review decision has its case, and a case step that fails
    never holds the decisions back (``riskloop cases sync`` links what it missed)."""
    if rules is not None:
        link_batch(conn, rules, batch)


def card_sightings(batch: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """The newest (card, country, time) of each card among the batch's fraud payments, as three columns."""
    return latest_per_card(r["request"] for r in batch if r.get("product", "fraud") == "fraud" and r.get("request"))


def _copy_batch(conn: psycopg.Connection, batch: list[dict[str, Any]], case_rules: CaseRules | None = None) -> None:
    """Commit ``batch``: one ``COPY`` (a few round trips for the whole batch, no per-row statement),
    or, when some rows are already there (a retried batch whose first commit did land, which only
    the unique key can tell), row by row with ``ON CONFLICT DO NOTHING`` so the retry is harmless.
    The batch's allowed devices go to :data:`DEVICES_TABLE` and its cards' newest sightings to
    :data:`CARD_LOCATIONS_TABLE` and its review decisions to their cases in the same transaction."""
    params = [_params(r) for r in batch]
    try:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(COPY) as copy:
                for p in params:
                    copy.write_row(p)
            _side_tables(cur, batch)
            _link_cases(conn, case_rules, batch)
    except psycopg.errors.UniqueViolation:
        log.info("decision log batch of %d rows partly written before: inserting the rest", len(batch))
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(INSERT, params)
            _side_tables(cur, batch)
            _link_cases(conn, case_rules, batch)


# Up to this many rows a batch is one statement; above it, one COPY costs Postgres less (a backlog).
# Group commit under steady load sends small batches.
PIPELINE_MAX_ROWS = 64

_COLS = ", ".join(COLUMNS)
# The whole batch as one JSON document and one statement, run in autocommit: its log rows and its
# side tables are data-modifying CTEs, which commit (or fail) together. One round trip, one message,
# and one pass of the writer's Python per batch instead of BEGIN, a statement per row and COMMIT.
# A retried batch whose first commit did land is harmless (``on conflict do nothing``).
INSERT_BATCH = (
    f"with logged as (insert into {TABLE} ({_COLS}) select {_COLS} "
    f"from jsonb_populate_recordset(null::{TABLE}, %s::jsonb) on conflict (decision_id) do nothing returning 1), "
    f"devices as ({INSERT_DEVICES} returning 1), "
    f"cards as ({UPSERT_CARD_LOCATIONS} returning 1) "
    "select (select count(*) from logged)")


def _batch_json(batch: list[dict[str, Any]]) -> str:
    """The batch's log rows as the JSON array :data:`INSERT_BATCH` reads (the columns as stored, a
    NaN as null); raises what :data:`ROW_ERRORS` names for a value JSON cannot carry."""
    return orjson.dumps([{c: _stored(r, c) for c in COLUMNS} for r in batch], option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _commit_batch(conn: psycopg.Connection, batch: list[dict[str, Any]], case_rules: CaseRules | None = None) -> None:
    """Commit ``batch`` with its side tables and cases. A small batch is one statement
    (:data:`INSERT_BATCH`), so the answer waits for one network exchange and the writer thread takes
    the GIL back once, not once per statement (a busy event loop holds it for up to the switch
    interval each time). Review decisions add the case step, which needs the results as it goes, in
    a transaction of its own; large batches use :func:`_copy_batch`."""
    if len(batch) > PIPELINE_MAX_ROWS:
        _copy_batch(conn, batch, case_rules)
        return
    reviews = case_rules is not None and any(r.get("decision") == "review" for r in batch)
    if not reviews:
        customers, devices = allowed_devices(batch)
        conn.execute(INSERT_BATCH, (_batch_json(batch), customers, devices, *card_sightings(batch)))
        return
    params = [_params(r) for r in batch]
    with conn.transaction(), conn.cursor() as cur:
        with conn.pipeline():
            cur.executemany(INSERT, params)
            _side_tables(cur, batch)
        _link_cases(conn, case_rules, batch)


def _side_tables(cur: psycopg.Cursor, batch: list[dict[str, Any]]) -> None:
    customers, devices = allowed_devices(batch)
    cards = card_sightings(batch)
    if customers:
        cur.execute(INSERT_DEVICES, (customers, devices))
    if cards[0]:
        cur.execute(UPSERT_CARD_LOCATIONS, cards)


def _dead_letter_params(row: dict[str, Any], exc: BaseException) -> tuple[str | None, str | None, str, str]:
    """The dead-letter row of ``row``: all ASCII (non-ASCII escaped), so whatever Postgres refused
    in the row cannot make this insert fail too."""
    error = escape_unstorable(f"{type(exc).__name__}: {exc}")
    return (escape_unstorable(str(row.get("decision_id"))), escape_unstorable(str(row.get("product", "fraud"))),
            error, json.dumps({k: _stored(row, k) if k == "request" else v for k, v in row.items() if k != SEALED},
                              default=str, ensure_ascii=True))


def _write_isolated(conn: psycopg.Connection, batch: list[dict[str, Any]],
                    case_rules: CaseRules | None = None) -> list[tuple[dict[str, Any], BaseException]]:
    """Commit ``batch`` row by row in one transaction, each row (its log row, device, card sighting
    and case) in a savepoint; a row Postgres refuses (:data:`ROW_ERRORS`) goes to
    :data:`DEAD_LETTERS_TABLE` instead. Returns the dead-lettered rows with their errors. Anything
    else (the connection, the server) raises, and the whole batch is retried as before."""
    dead: list[tuple[dict[str, Any], BaseException]] = []
    with conn.transaction(), conn.cursor() as cur:
        for row in batch:
            try:
                with conn.transaction():
                    cur.execute(INSERT, _params(row))
                    _side_tables(cur, [row])
                    _link_cases(conn, case_rules, [row])
            except ROW_ERRORS as exc:
                dead.append((row, exc))
        if dead:
            cur.executemany(INSERT_DEAD_LETTER, [_dead_letter_params(r, e) for r, e in dead])
    return dead


class LogUnavailable(RuntimeError):
    """The row was not committed (the database is down, the commit took too long, the writer is
    stopping): the decision must not be given."""


class LogBackpressure(LogUnavailable):
    """The queue stayed full for the whole enqueue timeout: the writer cannot keep up."""


class LogRefused(RuntimeError):
    """Postgres refused the row itself; it was set aside in :data:`DEAD_LETTERS_TABLE`, not logged."""


def _refusal(row: dict[str, Any], exc: BaseException) -> Any:
    """The HTTP error a client gets for a decision that was not logged (and so is not given)."""
    from fastapi import HTTPException

    product = row.get("product", "fraud")
    if isinstance(exc, LogRefused):
        log.error("refusing %s request %s: its decision could not be logged: %s", product, row.get("request_id"), exc)
        return HTTPException(status_code=500, detail="decision could not be logged; it was set aside for on-call")
    log.error("refusing %s request %s: %s", product, row.get("request_id"), exc)
    detail = "decision log backlog, retry" if isinstance(exc, LogBackpressure) else \
        "decision log unavailable, retry"
    return HTTPException(status_code=503, detail=detail, headers={"Retry-After": "1"})


def record_or_refuse(writer: "DecisionLogWriter", row: dict[str, Any]) -> None:
    """Log a decision and return once it is committed, or raise the 503 (500 for a dead-lettered
    row) that answers the request instead: a decision that is not in the log is not given, because
    the log is the audit trail. For endpoints that run in a worker thread."""
    try:
        future = writer.submit(row)
        try:
            future.result(timeout=writer.commit_timeout_s)
        except FutureTimeout:
            future.cancel()  # not written if the writer has not taken it yet
            raise LogUnavailable(f"decision log commit slower than {writer.commit_timeout_s}s") from None
    except (LogUnavailable, LogRefused) as exc:
        raise _refusal(row, exc) from exc


async def record_or_refuse_async(writer: "DecisionLogWriter", row: dict[str, Any]) -> None:
    """:func:`record_or_refuse` from the event loop: queued at once when there is room (the normal
    case, no thread hop) and awaited; only a full queue waits, in a worker thread, never on the loop."""
    future = writer.offer_async(row)
    if future is None:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(record_or_refuse, writer, row)
        return
    try:
        async with asyncio.timeout(writer.commit_timeout_s):
            await future  # cancelled on timeout: not written if the writer has not taken it yet
    except TimeoutError:
        raise _refusal(row, LogUnavailable(f"decision log commit slower than {writer.commit_timeout_s}s")) from None
    except (LogUnavailable, LogRefused) as exc:
        raise _refusal(row, exc) from exc


class _Entry:
    """A queued row and whoever waits for its commit: a thread's ``Future`` or an event loop's."""

    __slots__ = ("row", "future", "loop")

    def __init__(self, row: dict[str, Any], future: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.row, self.future, self.loop = row, future, loop


def _settle_on_loop(outcomes: list[tuple[asyncio.Future, BaseException | None]]) -> None:
    for future, exc in outcomes:
        if future.done():  # its request gave up (timeout) meanwhile
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


_STOP = object()


class DecisionLogWriter:
    """Bounded queue + one group-committing writer thread. Thread-safe ``submit``; ``close`` flushes."""

    def __init__(self, dsn: str, *, maxsize: int, batch_size: int, enqueue_timeout_s: float,
                 commit_timeout_s: float = 2.0, synchronous_commit: str = "off",
                 on_written: Any = None, on_error: Any = None, linger_s: float = 0.0,
                 case_rules: CaseRules | None = None, on_dead_letter: Any = None,
                 subject_keys: SubjectKeys | None = None) -> None:
        self._dsn = dsn
        self._subject_keys = subject_keys
        self._case_rules = case_rules
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._enqueue_timeout_s = enqueue_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self._synchronous_commit = synchronous_commit
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._on_written = on_written or (lambda n: None)
        self._on_error = on_error or (lambda: None)
        self._on_dead_letter = on_dead_letter or (lambda n: None)
        self.dead_lettered = 0  # rows this writer set aside in DEAD_LETTERS_TABLE since it started
        self._conn: psycopg.Connection | None = None
        self._failures = 0  # consecutive failed batches
        self._retry_at = 0.0  # while the database is failing, batches before this fail at once
        self._last_error: str | None = None
        self.on_depth: Any = None  # called with the queue depth after every batch (a gauge's set)

    # --- request side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def last_error(self) -> str | None:
        """Why the last batch failed, while the database keeps failing (None once a batch commits)."""
        return self._last_error

    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, row: dict[str, Any]) -> Future:
        """Queue a row; the future is done when it is committed (or raises :class:`LogUnavailable` /
        :class:`LogRefused`). Raises :class:`LogBackpressure` if there is no room in time (nothing queued)."""
        future: Future = Future()
        if not self._put(_Entry(row, future, None), block=True):
            raise LogBackpressure(f"decision log queue full ({self._queue.maxsize})")
        return future

    def offer_async(self, row: dict[str, Any]) -> asyncio.Future | None:
        """Queue a row if there is room right now, with an asyncio future of the running loop that is
        done when it is committed; None (nothing queued) if the queue is full. Never blocks."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        return future if self._put(_Entry(row, future, loop), block=False) else None

    def _put(self, entry: _Entry, *, block: bool) -> bool:
        """Queue ``entry`` (waiting up to the enqueue timeout if ``block``); visible to :meth:`pending`
        from before it is queued, and gone again if it could not be."""
        key = str(entry.row["decision_id"])
        with self._pending_lock:
            self._pending[key] = entry.row
        try:
            self._queue.put(entry, block=block, timeout=self._enqueue_timeout_s if block else None)
        except queue.Full:
            with self._pending_lock:
                self._pending.pop(key, None)
            return False
        return True

    def pending(self, decision_id: str) -> dict[str, Any] | None:
        """A row accepted but not yet committed (its request is still waiting for the commit)."""
        with self._pending_lock:
            return self._pending.get(decision_id)

    def close(self, timeout_s: float) -> None:
        """Write what is queued (each row once: what fails is refused to its waiter), then stop."""
        self._queue.put(_STOP)  # blocks only while the writer drains a full queue
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("decision log writer did not stop within %.0fs", timeout_s)

    # --- writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Entry] = []
            item = self._queue.get()
            if item is _STOP:
                stopping = True
            else:
                batch.append(item)
                if self._linger_s and self._queue.qsize() < self._batch_size:
                    time.sleep(self._linger_s)  # fewer, larger batches, paid by every request's wait
            while not stopping and len(batch) < self._batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
            # A request that gave up (its 503 is sent) must not be logged as decided.
            batch = [e for e in batch if not e.future.cancelled()]
            if batch:
                self._write(batch)
            if self.on_depth is not None:
                self.on_depth(self._queue.qsize())
        if self._conn is not None:
            self._conn.close()
        log.info("decision log writer stopped")

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # Autocommit: a small batch is one statement (INSERT_BATCH); the other paths open their
            # transactions explicitly.
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=3)
            # Per session: what "committed" means for an answered decision (README).
            conn.execute("select set_config('synchronous_commit', %s, false)", (self._synchronous_commit,))
            set_json_dumps(_dumps, context=conn)
            self._conn = conn
        return self._conn

    def _seal(self, conn: psycopg.Connection, rows: list[dict[str, Any]]) -> None:
        """Seal each row's personal fields under its customer's key (once: a retried batch keeps its
        seal); one AES-GCM per row, and a key lookup only for customers not seen lately."""
        if self._subject_keys is None:
            return
        todo = [r for r in rows if SEALED not in r]
        if todo:
            for r, sealed in zip(todo, self._subject_keys.seal_batch(conn, [r.get("request") for r in todo]), strict=True):
                r[SEALED] = sealed

    def _write(self, batch: list[_Entry]) -> None:
        """Commit a batch, then settle every waiter: committed, dead-lettered (:class:`LogRefused`) or,
        if the database failed, :class:`LogUnavailable` for all (nothing is retried later)."""
        rows = [e.row for e in batch]
        if time.monotonic() < self._retry_at:
            self._settle(batch, LogUnavailable(f"decision log database unavailable: {self._last_error}"), {})
            return
        # A connection that worked before may have been closed under us (a Postgres restart): one
        # retry on a new one. A fresh connection failing means the database is down.
        attempts = 2 if self._conn is not None else 1
        for attempt in range(1, attempts + 1):
            try:
                conn = self._connect()
                self._seal(conn, rows)
                try:
                    _commit_batch(conn, rows, self._case_rules)
                    dead: list[tuple[dict[str, Any], BaseException]] = []
                except ROW_ERRORS as exc:
                    self._on_error()
                    log.warning("decision log batch of %d rows refused (%s): writing it row by row", len(rows), exc)
                    dead = _write_isolated(conn, rows, self._case_rules)
                break
            except psycopg.Error as exc:
                self._on_error()
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None
                if attempt < attempts and self._conn is None:
                    continue
                self._failures += 1
                self._retry_at = time.monotonic() + min(0.05 * 2 ** self._failures, 2.0)
                self._last_error = str(exc).strip() or type(exc).__name__
                log.error("decision log commit of %d rows failed (%d in a row), their requests get 503: %s",
                          len(rows), self._failures, self._last_error)
                self._settle(batch, LogUnavailable(f"decision log database unavailable: {self._last_error}"), {})
                return
        self._failures, self._retry_at, self._last_error = 0, 0.0, None
        self._on_written(len(rows) - len(dead))
        refused: dict[int, BaseException] = {}
        if dead:
            self.dead_lettered += len(dead)
            self._on_dead_letter(len(dead))
            for row, exc in dead:
                log.error("decision %s could not be logged, set aside in %s: %s", row.get("decision_id"),
                          DEAD_LETTERS_TABLE, exc)
                refused[id(row)] = LogRefused(f"{type(exc).__name__}: {exc}")
        self._settle(batch, None, refused)

    def _settle(self, batch: list[_Entry], error: BaseException | None, refused: dict[int, BaseException]) -> None:
        """Tell each waiter its row's fate: one call per event loop for the whole batch."""
        with self._pending_lock:
            for e in batch:
                self._pending.pop(str(e.row["decision_id"]), None)
        on_loops: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for e in batch:
            exc = refused.get(id(e.row), error)
            if e.loop is not None:
                on_loops[e.loop].append((e.future, exc))
            elif e.future.set_running_or_notify_cancel():  # False: its request gave up
                if exc is None:
                    e.future.set_result(None)
                else:
                    e.future.set_exception(exc)
        for loop, outcomes in on_loops.items():
            try:
                loop.call_soon_threadsafe(_settle_on_loop, outcomes)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass
