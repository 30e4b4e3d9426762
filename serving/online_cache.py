"""Decoded online features kept in the serving process, loaded whole and kept exact by the store.

Why: at 500 decisions/s on 2 cores the direct online read (:mod:`serving.online_sql`) was the
largest share of a decision: the round trip's socket work, the wake-up of a Postgres backend
that preempts the worker mid-write, the protobuf decoding, and the backend's own CPU
(docs/benchmarks/history.md, "Serving"). A payment usually names a card, customer or terminal
this process has not read lately, so a cache filled only by reads rarely answered; the fraud
model's views are small (one row per entity and feature), so each view is **loaded whole** when
the cache turns on and again after a bulk change, and a read that finds every view of its request
in memory makes no round trip. A view loaded whole also knows which entities it does *not* have:
an entity absent from it gets the store's "no row" answer without asking.

Correctness rests on invalidation by the store itself, never on a time to live:

* a row-level trigger on each view's online table (installed here, idempotently, under an
  advisory lock) sends ``NOTIFY riskloop_online_changed, '<table> <entity key>'`` for each entity a
  transaction inserts, updates or deletes (Feast's ``materialize`` and the stream's ``push``
  alike), and ``'<table>'`` for a TRUNCATE. Notifications are delivered at that transaction's commit;
* one ``LISTEN`` connection per serving process drops the named entity (or the whole view) and
  bumps the view's epoch. A read stores what it fetched only if the epochs it saw before its query
  are unchanged, so a read racing a write never caches the old rows; a load whole keeps none of
  the entities notified while it ran (they are read through until a read stores them again);
* the cache serves nothing unless that connection is up and every trigger is in place. Losing the
  connection (the store stopped or restarted, the backend killed) empties it at once, and so does
  finding a trigger missing (``feast apply`` recreating a table): every ``verify_s`` the listener
  checks the triggers and re-installs them. Meanwhile every read goes to the store, exactly as
  without the cache, so a store that is down still degrades decisions after the read timeout.

A value can therefore be served for as long as it takes the notification to arrive after the
writer's commit (a loopback round trip), which is also how long a read already in flight would
have returned it. Entries are tuples of plain values (not tracked by the garbage collector: an
earlier experiment with dicts of lists as entries stalled both workers in full collections) and
each view keeps at most ``max_entries``, least recently used first out; a view larger than that is
loaded in part and cannot answer "no row" by itself. ``RISKLOOP_SERVING_ONLINE_CACHE_SIZE=0`` turns
the cache off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from riskloop.core.db import quote_ident
from riskloop.core.roles import ONLINE_CHANGED_CHANNEL, ONLINE_CHANGED_FUNCTION, ONLINE_CHANGED_SQL

if TYPE_CHECKING:
    from serving.online_sql import SqlPlan

log = logging.getLogger(__name__)

CHANNEL = ONLINE_CHANGED_CHANNEL
TRIGGER = "riskloop_online_changed"  # row level: insert, update, delete
TRUNCATE_TRIGGER = "riskloop_online_truncated"
FUNCTION = ONLINE_CHANGED_FUNCTION
_DDL_LOCK_KEY = 0x726C5F6F6E6C696E  # "rl_onlin": serialises installs by several workers

Entry = tuple[tuple[Any, int], ...]  # per feature of the view, in plan order: (value, event time s)


def install_sql(tables: tuple[str, ...]) -> str:
    """The trigger function, created if missing (by the store's owner when riskloop grants the roles;
    a login that may create it, such as an owner's, makes it here), and per table a row-level and a
    TRUNCATE trigger (``create or replace``: the TRIGGER privilege suffices; it also replaces the
    statement-level trigger of an older riskloop, which had the row trigger's name), all idempotent."""
    parts = [ONLINE_CHANGED_SQL]
    for t in tables:
        parts.append(f"create or replace trigger {TRIGGER} after insert or update or delete on {quote_ident(t)} "
                     f"for each row execute function public.{FUNCTION}()")
        parts.append(f"create or replace trigger {TRUNCATE_TRIGGER} after truncate on {quote_ident(t)} "
                     f"for each statement execute function public.{FUNCTION}()")
    return ";\n".join(parts)


# How many of the tables have both triggers, enabled, on this function (by name in the connection's search path).
_VERIFY_SQL = f"""select count(*) from unnest($1::text[]) as n(name)
join pg_trigger r on r.tgrelid = to_regclass(quote_ident(n.name)) and r.tgname = '{TRIGGER}'
  and r.tgenabled <> 'D' and r.tgfoid = to_regproc('public.{FUNCTION}') and (r.tgtype & 1) = 1
join pg_trigger t on t.tgrelid = r.tgrelid and t.tgname = '{TRUNCATE_TRIGGER}'
  and t.tgenabled <> 'D' and t.tgfoid = r.tgfoid"""


class OnlineCache:
    """Per-view LRU of decoded online rows for one :class:`serving.online_sql.SqlPlan`'s tables,
    loaded whole and kept exact by the store's notifications. Lives on the serving event loop;
    not thread-safe.

    ``rewarm_after``: a view that lost this many entities to notifications since it was loaded
    (a ``materialize`` rewrote it) is loaded whole again; ``settle_s``: how long a load waits for
    such a burst of writes to end first."""

    def __init__(self, plan: SqlPlan, *, max_entries: int, verify_s: float = 1.0, warm: bool = True,
                 rewarm_after: int = 1000, settle_s: float = 0.25) -> None:
        self.plan = plan
        self.tables = plan.tables
        self.max_entries = max_entries
        self._verify_s = verify_s
        self._warm_on = warm
        self._rewarm_after = rewarm_after
        self._settle_s = settle_s
        n = len(self.tables)
        self._views: list[dict[Any, Entry]] = [{} for _ in range(n)]
        self._epochs = [0] * n
        # A view loaded whole (and not trimmed since): an entity it lacks has no row in the store,
        # unless it was notified after the load (``_unknown``: read through until a read stores it).
        self._complete = [False] * n
        self._unknown: list[set[Any]] = [set() for _ in range(n)]
        self._absent = [tuple((None, 0) for _ in v.features) for v in plan.views]
        self._generation = [0] * n  # whole-view drops: a load that saw one is discarded
        self._noted: list[set[Any] | None] = [None] * n  # entities notified while a load runs
        self._lost = [0] * n  # entities dropped by notifications since the view's last load
        self._loads: list[asyncio.Task | None] = [None] * n
        self._index = {t: i for i, t in enumerate(self.tables)}
        self._conn: Any = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.enabled = False
        self.hits = self.misses = self.invalidations = self.loads = 0
        self.last_error: str | None = None

    # --- reads (the hot path) ----------------------------------------------------------------
    def epochs(self) -> tuple[int, ...]:
        return tuple(self._epochs)

    def get(self, keys: list[Any]) -> list[Entry] | None:
        """Every view's entry for its entity key, or ``None`` unless all are known."""
        if not self.enabled:
            return None
        out = []
        for i, (view, key) in enumerate(zip(self._views, keys, strict=True)):
            entry = view.pop(key, None)
            if entry is None:
                if self._complete[i] and key not in self._unknown[i]:
                    out.append(self._absent[i])  # loaded whole, and the store has no row of it
                    continue
                self.misses += 1
                return None
            view[key] = entry  # most recently used last
            out.append(entry)
        self.hits += 1
        return out

    def put(self, keys: list[Any], entries: list[Entry], epochs: tuple[int, ...]) -> None:
        """Keep what a read fetched, unless a view changed (or the cache was emptied) since
        ``epochs`` was taken before its query."""
        if not self.enabled or tuple(self._epochs) != epochs:
            return
        for i, (view, key, entry) in enumerate(zip(self._views, keys, entries, strict=True)):
            self._unknown[i].discard(key)
            if self._complete[i] and entry == self._absent[i]:
                continue  # known now: no row
            if key not in view and len(view) >= self.max_entries:
                del view[next(iter(view))]  # the least recently used
                self._trimmed(i)
            view[key] = entry

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "entries": sum(len(v) for v in self._views), "hits": self.hits,
                "misses": self.misses, "invalidations": self.invalidations, "loads": self.loads,
                "loaded_whole": sum(self._complete), "error": self.last_error}

    # --- invalidation --------------------------------------------------------------------------
    def _trimmed(self, i: int) -> None:
        """The view no longer holds every entity the store has: a miss is a read again."""
        self._complete[i] = False
        self._unknown[i] = set()

    def _drop(self, i: int) -> None:
        self._views[i] = {}
        self._epochs[i] += 1
        self._generation[i] += 1
        self._trimmed(i)
        if self.enabled:
            self._load_later(i)

    def _drop_all(self) -> None:
        for i in range(len(self._views)):
            self._drop(i)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        table, _, key_hex = payload.partition(" ")
        i = self._index.get(table)
        if i is None:
            return
        self.invalidations += 1
        if not key_hex:  # a TRUNCATE (or an older riskloop's trigger): the whole view
            self._drop(i)
            return
        try:
            key = self.plan.key_of(i, bytes.fromhex(key_hex))
        except Exception:  # noqa: BLE001 - an entity key this plan cannot read: drop the whole view
            log.warning("online cache: unreadable change notification for %s: dropping the view", table)
            self._drop(i)
            return
        self._views[i].pop(key, None)
        self._epochs[i] += 1
        if self._complete[i]:
            self._unknown[i].add(key)
            if len(self._unknown[i]) > self.max_entries:
                self._trimmed(i)
        noted = self._noted[i]
        if noted is not None:
            noted.add(key)
        self._lost[i] += 1
        if self._lost[i] >= self._rewarm_after:
            self._load_later(i)

    def _on_lost(self, _conn: Any) -> None:
        """The LISTEN connection ended: notifications may be missed from now on."""
        if not self._closed:
            self._disable("listener connection lost")

    def _disable(self, why: str) -> None:
        if self.enabled or why != self.last_error:
            log.warning("online cache off (%s): every read goes to the store", why)
        self.enabled = False
        self.last_error = why
        self._drop_all()

    # --- loading a view whole ------------------------------------------------------------------
    def _load_later(self, i: int) -> None:
        if self._warm_on and not self._closed and self._loads[i] is None:
            self._loads[i] = asyncio.get_running_loop().create_task(self._load(i))

    async def _load(self, i: int) -> None:
        """Load view ``i`` whole (up to ``max_entries`` entities) once writes have settled; entities
        notified meanwhile are left out, and a whole-view drop meanwhile starts it again."""
        try:
            while self.enabled and not self._closed:
                await asyncio.sleep(self._settle_s)
                generation, noted = self._generation[i], set()
                self._noted[i] = noted
                self._lost[i] = 0
                try:
                    loaded, whole = await self.plan.load_view(i, self.max_entries)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a store that is down: reads go through meanwhile
                    log.warning("online cache: loading %s failed (%s): read through", self.tables[i], exc)
                    return
                if not self.enabled or self._generation[i] != generation:
                    continue  # emptied while it loaded: what it read may be older than the drop
                for key in noted:
                    loaded.pop(key, None)
                view = self._views[i]
                loaded.update(view)  # what reads stored meanwhile is as new (kept exact since)
                while len(loaded) > self.max_entries:
                    del loaded[next(iter(loaded))]
                    whole = False
                self._views[i] = loaded
                self._complete[i] = whole
                self._unknown[i] = noted if whole else set()
                self.loads += 1
                log.info("online cache: %s loaded (%d entities%s)", self.tables[i], len(loaded),
                         ", whole" if whole else "")
                return
        finally:
            self._noted[i] = None
            self._loads[i] = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin listening and keeping the triggers (on the running loop; idempotent); the cache
        turns itself on once both hold."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _listen(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(**self.plan.connect, timeout=2.0)
        try:
            # LISTEN first: a change committed after this is notified, one before it is in the
            # (still empty) store reads.
            await conn.add_listener(CHANNEL, self._on_notify)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn
            if not await self._verified():  # (re)create only what is missing: DDL waits for writers
                await self._install()
        except BaseException:
            self._conn = None
            conn.terminate()
            raise

    async def _install(self) -> None:
        async with self._conn.transaction():
            await self._conn.execute("select pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
            await self._conn.execute(install_sql(self.tables))

    async def _verified(self) -> bool:
        n = await self._conn.fetchval(_VERIFY_SQL, list(self.tables), timeout=2.0)
        return n == len(self.tables)

    async def _run(self) -> None:
        """Connect, install, verify every ``verify_s``; reconnect/re-install after any failure."""
        while not self._closed:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = None
                    await self._listen()
                elif not await self._verified():
                    self._disable("a change trigger is missing")
                    await self._install()
                    continue  # verify again before serving
                if not self.enabled and await self._verified():
                    self.enabled, self.last_error = True, None
                    self._drop_all()  # and load every view whole
                    log.info("online cache on for %s (at most %d entries per view)", ", ".join(self.tables),
                             self.max_entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - down store, no privilege: serve without the cache
                self._disable(f"{type(exc).__name__}: {exc}")
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
            await asyncio.sleep(self._verify_s)

    async def close(self) -> None:
        self._closed = True
        self.enabled = False
        tasks = [t for t in (self._task, *self._loads) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), timeout=2.0)
            except Exception:  # noqa: BLE001 - a dead server: just drop the connection
                self._conn.terminate()
            self._conn = None
