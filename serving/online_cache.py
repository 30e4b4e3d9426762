"""Decoded online features kept in the serving process, dropped the moment the store changes.

Why: at 500 decisions/s on 2 cores the direct online read (:mod:`serving.online_sql`) was the
largest share of a decision: the round trip's socket work, the wake-up of a Postgres backend
that preempts the worker mid-write, the protobuf decoding, and the backend's own CPU
(docs/benchmarks/history.md, "Serving": py-spy --native put 40 % of the workers' samples in that write).
The fraud model's views are batch views: their online rows change when ``materialize`` runs,
not between two payments of one card. So each view's decoded rows are kept per entity here,
and a read that finds every view of its request in memory makes no round trip at all.

Correctness rests on invalidation by the store itself, never on a time to live:

* a statement-level trigger on each view's online table (installed here, idempotently, under an
  advisory lock) sends ``NOTIFY riskloop_online_changed, '<table>'`` from any transaction that
  inserts, updates, deletes or truncates: Feast's ``materialize`` and ``push`` alike. The
  notification is delivered at that transaction's commit;
* one ``LISTEN`` connection per serving process drops the whole view's entries on each
  notification and bumps the view's epoch. A read stores what it fetched only if the epochs it
  saw before its query are unchanged, so a read racing a write never caches the old rows;
* the cache serves nothing unless that connection is up and every trigger is in place. Losing the
  connection (the store stopped or restarted, the backend killed) empties it at once, and so does
  finding a trigger missing (``feast apply`` recreating a table): every ``verify_s`` the listener
  checks the triggers and re-installs them. Meanwhile every read goes to the store, exactly as
  without the cache, so a store that is down still degrades decisions after the read timeout.

A value can therefore be served for as long as it takes the notification to arrive after the
writer's commit (a loopback round trip), which is also how long a read already in flight would
have returned it. Entries are tuples of plain values (not tracked by the garbage collector: an
earlier experiment with dicts of lists as entries stalled both workers in full collections) and
each view keeps at most ``max_entries``, least recently used first out.
``RISKLOOP_SERVING_ONLINE_CACHE_SIZE=0`` turns the cache off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from riskloop.core.db import quote_ident
from riskloop.core.roles import ONLINE_CHANGED_CHANNEL, ONLINE_CHANGED_FUNCTION, ONLINE_CHANGED_SQL

log = logging.getLogger(__name__)

CHANNEL = ONLINE_CHANGED_CHANNEL
TRIGGER = "riskloop_online_changed"
FUNCTION = ONLINE_CHANGED_FUNCTION
_DDL_LOCK_KEY = 0x726C5F6F6E6C696E  # "rl_onlin": serialises installs by several workers

Entry = tuple[tuple[Any, int], ...]  # per feature of the view, in plan order: (value, event time s)


def install_sql(tables: tuple[str, ...]) -> str:
    """The trigger function, created if missing (by the store's owner when riskloop grants the roles;
    a login that may create it, such as an owner's, makes it here), and one statement-level trigger
    per table (``create or replace``: the TRIGGER privilege suffices), all idempotent."""
    parts = [ONLINE_CHANGED_SQL]
    parts += [f"create or replace trigger {TRIGGER} after insert or update or delete or truncate on {quote_ident(t)} "
              f"for each statement execute function public.{FUNCTION}()" for t in tables]
    return ";\n".join(parts)


# How many of the tables have the trigger, enabled (by name in the connection's search path).
_VERIFY_SQL = f"""select count(*) from unnest($1::text[]) as n(name)
join pg_trigger t on t.tgrelid = to_regclass(quote_ident(n.name)) and t.tgname = '{TRIGGER}'
and t.tgenabled <> 'D'"""


class OnlineCache:
    """Per-view LRU of decoded online rows for one :class:`serving.online_sql.SqlPlan`'s tables,
    kept exact by the store's notifications. Lives on the serving event loop; not thread-safe."""

    def __init__(self, connect: dict[str, Any], tables: tuple[str, ...], *, max_entries: int,
                 verify_s: float = 1.0) -> None:
        self._connect_kwargs = connect
        self.tables = tables
        self.max_entries = max_entries
        self._verify_s = verify_s
        self._views: list[dict[Any, Entry]] = [{} for _ in tables]
        self._epochs = [0] * len(tables)
        self._index = {t: i for i, t in enumerate(tables)}
        self._conn: Any = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.enabled = False
        self.hits = self.misses = self.invalidations = 0
        self.last_error: str | None = None

    # --- reads (the hot path) ----------------------------------------------------------------
    def epochs(self) -> tuple[int, ...]:
        return tuple(self._epochs)

    def get(self, keys: list[Any]) -> list[Entry] | None:
        """Every view's entry for its entity key, or ``None`` unless all are cached."""
        if not self.enabled:
            return None
        out = []
        for view, key in zip(self._views, keys, strict=True):
            entry = view.pop(key, None)
            if entry is None:
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
        for view, key, entry in zip(self._views, keys, entries, strict=True):
            if key not in view and len(view) >= self.max_entries:
                del view[next(iter(view))]  # the least recently used
            view[key] = entry

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "entries": sum(len(v) for v in self._views), "hits": self.hits,
                "misses": self.misses, "invalidations": self.invalidations, "error": self.last_error}

    # --- invalidation --------------------------------------------------------------------------
    def _drop(self, i: int) -> None:
        self._views[i] = {}
        self._epochs[i] += 1

    def _drop_all(self) -> None:
        for i in range(len(self._views)):
            self._drop(i)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        i = self._index.get(payload)
        if i is not None:
            self.invalidations += 1
            self._drop(i)

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

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin listening and keeping the triggers (on the running loop; idempotent); the cache
        turns itself on once both hold."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _listen(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(**self._connect_kwargs, timeout=2.0)
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
                    self._drop_all()
                    self.enabled, self.last_error = True, None
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
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), timeout=2.0)
            except Exception:  # noqa: BLE001 - a dead server: just drop the connection
                self._conn.terminate()
            self._conn = None
