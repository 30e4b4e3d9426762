"""The writer of ``serving.decision_log``, the append-only record of every decision (the table is
:mod:`riskloop.decisions.log`'s).

Rows are written off the request path: a request puts its row on a bounded queue and returns;
one background thread drains the queue and writes each batch with one ``COPY``. Nothing is
dropped: a failed batch is retried with backoff, a full queue makes the *request* wait (then 503)
instead of discarding a decision, and on shutdown the queue is flushed — if the database is
still unreachable after the shutdown budget, the remaining rows go to a JSON-lines spill file
rather than vanishing. A retried batch whose first commit did land fails its ``COPY`` on the
primary key and is then inserted with ``ON CONFLICT DO NOTHING``, which makes it harmless.

A batch Postgres refuses for what a row holds (a value it cannot store, which the request schemas
refuse but a row built elsewhere may still carry) is not retried as a whole: it is written again row
by row, each in a savepoint, and a row that still fails goes to :data:`DEAD_LETTERS_TABLE` with its
error in the same transaction, so the rest of the batch and every later row are written.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_dumps

from riskloop.core.storable import escape_unstorable
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


def _params(row: dict[str, Any]) -> tuple:
    values = (row.get(c) if c in OPTIONAL_COLUMNS else row[c] for c in COLUMNS)
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
            error, json.dumps(row, default=str, ensure_ascii=True))


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


class LogBackpressure(RuntimeError):
    """The queue stayed full for the whole enqueue timeout: the writer cannot keep up."""


def record_or_refuse(writer: "DecisionLogWriter", row: dict[str, Any]) -> None:
    """Queue a decision for the log, or answer 503: a decision that cannot be recorded is not
    given, because the log is the audit trail. Shared by every scoring endpoint."""
    from fastapi import HTTPException

    try:
        writer.submit(row)
    except LogBackpressure as exc:
        log.error("refusing %s request %s: %s", row.get("product", "scoring"), row.get("request_id"), exc)
        raise HTTPException(status_code=503, detail="decision log backlog, retry",
                            headers={"Retry-After": "1"}) from exc


async def record_or_refuse_async(writer: "DecisionLogWriter", row: dict[str, Any]) -> None:
    """:func:`record_or_refuse` from the event loop: queued at once when there is room (the normal
    case, no thread hop); only a full queue waits, in a worker thread, never on the loop."""
    if not writer.offer(row):
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(record_or_refuse, writer, row)


_STOP = object()


class DecisionLogWriter:
    """Bounded queue + one batching writer thread. Thread-safe ``submit``; ``close`` flushes."""

    def __init__(self, dsn: str, *, maxsize: int, batch_size: int, enqueue_timeout_s: float,
                 spill_path: Path, on_written: Any = None, on_error: Any = None, linger_s: float = 0.0,
                 case_rules: CaseRules | None = None, on_dead_letter: Any = None) -> None:
        self._dsn = dsn
        self._case_rules = case_rules
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._enqueue_timeout_s = enqueue_timeout_s
        self._spill_path = spill_path
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_lock = threading.Lock()
        self._deadline: float | None = None  # set by close(): retry until then, then spill
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._on_written = on_written or (lambda n: None)
        self._on_error = on_error or (lambda: None)
        self._on_dead_letter = on_dead_letter or (lambda n: None)
        self.dead_lettered = 0  # rows this writer set aside in DEAD_LETTERS_TABLE since it started
        self._conn: psycopg.Connection | None = None
        self.on_depth: Any = None  # called with the queue depth after every batch (a gauge's set)

    # --- request side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row; raises :class:`LogBackpressure` if there is no room in time (nothing queued)."""
        if not self._put(row, block=True):
            raise LogBackpressure(f"decision log queue full ({self._queue.maxsize})")

    def offer(self, row: dict[str, Any]) -> bool:
        """Queue a row if there is room right now; False (nothing queued) if not. Never blocks."""
        return self._put(row, block=False)

    def _put(self, row: dict[str, Any], *, block: bool) -> bool:
        """Queue ``row`` (waiting up to the enqueue timeout if ``block``); visible to :meth:`pending`
        from before it is queued, and gone again if it could not be."""
        key = str(row["decision_id"])
        with self._pending_lock:
            self._pending[key] = row
        try:
            self._queue.put(row, block=block, timeout=self._enqueue_timeout_s if block else None)
        except queue.Full:
            with self._pending_lock:
                self._pending.pop(key, None)
            return False
        return True

    def pending(self, decision_id: str) -> dict[str, Any] | None:
        """A row accepted but not yet committed (so a read right after a score never 404s)."""
        with self._pending_lock:
            return self._pending.get(decision_id)

    def close(self, timeout_s: float) -> None:
        """Flush everything queued, retrying the database for up to ``timeout_s``, then stop."""
        self._deadline = time.monotonic() + timeout_s
        self._queue.put(_STOP)  # blocks only while the writer drains a full queue
        self._thread.join(timeout_s + 10)
        if self._thread.is_alive():
            log.error("decision log writer did not stop within %.0fs", timeout_s + 10)

    # --- writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[dict[str, Any]] = []
            item = self._queue.get()
            if item is _STOP:
                stopping = True
            else:
                batch.append(item)
                if self._linger_s and self._queue.qsize() < self._batch_size:
                    # Let a batch gather: one INSERT per row, under load, means a wake-up, a
                    # transaction and GIL hand-offs per decision, all taken from the request path.
                    time.sleep(self._linger_s)
            while not stopping and len(batch) < self._batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
            if batch and not self._write(batch):
                break  # spilled at shutdown: the queue (and its stop marker) is drained
            if self.on_depth is not None:
                self.on_depth(self._queue.qsize())
        if self._conn is not None:
            self._conn.close()
        log.info("decision log writer stopped")

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._dsn, autocommit=False, connect_timeout=5)
            set_json_dumps(_dumps, context=self._conn)
        return self._conn

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        """Insert a batch, retrying until it lands (True) or the shutdown budget ends in a spill (False)."""
        attempt = 0
        dead: list[tuple[dict[str, Any], BaseException]] = []
        while True:
            try:
                conn = self._connect()
                try:
                    _copy_batch(conn, batch, self._case_rules)
                except ROW_ERRORS as exc:
                    self._on_error()
                    log.warning("decision log batch of %d rows refused (%s): writing it row by row", len(batch), exc)
                    dead = _write_isolated(conn, batch, self._case_rules)
                break
            except psycopg.Error as exc:
                attempt += 1
                self._on_error()
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._spill(batch + self._drain_rest(), exc)
                    return False
                delay = min(0.1 * 2 ** attempt, 5.0)
                log.warning("decision log insert of %d rows failed (attempt %d, retry in %.1fs): %s",
                            len(batch), attempt, delay, exc)
                time.sleep(delay)
        self._on_written(len(batch) - len(dead))
        if dead:
            self.dead_lettered += len(dead)
            self._on_dead_letter(len(dead))
            for row, exc in dead:
                log.error("decision %s could not be logged, set aside in %s: %s", row.get("decision_id"),
                          DEAD_LETTERS_TABLE, exc)
        with self._pending_lock:
            for r in batch:
                self._pending.pop(str(r["decision_id"]), None)
        return True

    def _drain_rest(self) -> list[dict[str, Any]]:
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rest
            if item is not _STOP:
                rest.append(item)

    def _spill(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        """Last resort at shutdown: keep the decisions on disk for a later replay."""
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_path.open("a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, default=str) + "\n")
        log.error("database unreachable at shutdown (%s): spilled %d decisions to %s",
                  exc, len(rows), self._spill_path)
        with self._pending_lock:
            for r in rows:
                self._pending.pop(str(r["decision_id"]), None)
