"""All of a feature service's online features in ONE prepared statement, read straight from
Feast's Postgres online-store tables.

Why: ``FeatureStore.get_online_features`` costs milliseconds of Python per call before and after the
database (request context, protobuf responses, one query per feature view) and it is a blocking
call, so the scoring handler had to run in a thread pool. Here everything Feast would resolve per
call is resolved once, *from Feast itself*, when the store is bound: the table of each view
(``compute_table_id``), its join keys and their value types, the entity-key encoding
(``serialize_entity_key`` with the repo's serialization version) and the connection settings of
the repo's online store. A request then pays for one asyncpg round trip (``UNION ALL`` over the
views, prepared once per connection) and for decoding a handful of ``ValueProto``\\ s with Feast's
own ``feast_value_type_to_python_type``. Feast stays the only writer (``materialize``) and the
source of truth; ``RISKLOOP_SERVING_ONLINE_READ=sdk`` switches back to the SDK, and
``tests/test_serving.py::test_direct_read_matches_feast_sdk`` checks that both return identical values.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC
from functools import cached_property
from typing import Any

from riskloop.core.db import quote_ident

Entry = tuple[tuple[Any, int], ...]  # per feature of a view, in plan order: (value, event time s)

# The suffix of a feature's event-time column in a read's response (``view__feature__ts``).
TS_SUFFIX = "__ts"

log = logging.getLogger(__name__)


class DirectReadUnsupported(RuntimeError):
    """The repo's online store is not Postgres (or a view uses something this reader does not do)."""


@dataclass(frozen=True)
class _View:
    name: str  # the name in response columns (projection name_to_use)
    join_keys: tuple[tuple[str, Any], ...]  # (join key, feast ValueType), in Feast's order
    features: tuple[str, ...]


@dataclass(frozen=True)
class SqlPlan:
    """Everything a read needs, resolved from the Feast repo at bind time (immutable)."""

    sql: str
    views: tuple[_View, ...]
    key_version: int
    connect: dict[str, Any]  # asyncpg.connect keyword arguments
    tables: tuple[str, ...] = ()  # each view's online table (unquoted, in the connection's search path)

    def params(self, keys: list[tuple[Any, ...]]) -> list[Any]:
        """The statement's parameters for :meth:`keys`' values: per view, its serialised entity key
        and its feature names."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey

        out: list[Any] = []
        for view, values in zip(self.views, keys, strict=True):
            key = EntityKey(join_keys=[k for k, _ in view.join_keys], entity_values=[
                _entity_value(v, value_type) for v, (_, value_type) in zip(values, view.join_keys, strict=True)])
            out.append(serialize_entity_key(key, entity_key_serialization_version=self.key_version))
            out.append(list(view.features))
        return out

    def keys(self, entity_row: dict[str, Any]) -> list[tuple[Any, ...]] | None:
        """Per view, its join-key values (the cache's key); ``None`` when one is not in the row."""
        try:
            return [tuple(entity_row[key] for key, _ in view.join_keys) for view in self.views]
        except KeyError:
            return None

    @cached_property
    def _positions(self) -> tuple[dict[str, int], ...]:
        """Per view: feature → its position in the view's entry (built once, not per read)."""
        return tuple({f: j for j, f in enumerate(v.features)} for v in self.views)

    @cached_property
    def _columns(self) -> tuple[tuple[tuple[str, str], ...], ...]:
        """Per view, per feature in entry order: its response column and timestamp column."""
        return tuple(tuple((f"{v.name}__{f}", f"{v.name}__{f}{TS_SUFFIX}") for f in v.features) for v in self.views)

    def decode(self, rows: list[Any]) -> list[tuple[tuple[Any, int], ...]]:
        """Rows → per view, per feature in plan order: (value, event time in whole seconds; 0 when
        absent), as Feast reports them. Tuples of plain values: what :mod:`serving.online_cache`
        keeps."""
        found: list[list[tuple[Any, int]]] = [[(None, 0)] * len(v.features) for v in self.views]
        positions = self._positions
        for view_idx, feature, value, event_ts in rows:
            j = positions[view_idx].get(feature)
            if j is not None:
                found[view_idx][j] = _decoded(value, event_ts)
        return [tuple(entry) for entry in found]

    def key_of(self, view_idx: int, entity_key: bytes) -> tuple[Any, ...]:
        """A serialised entity key of view ``view_idx`` (as stored) → its join-key values, the
        cache's key (:meth:`keys`)."""
        from feast.infra.key_encoding_utils import deserialize_entity_key

        key = deserialize_entity_key(entity_key, entity_key_serialization_version=self.key_version)
        values = {k: getattr(v, v.WhichOneof("val")) for k, v in zip(key.join_keys, key.entity_values, strict=True)}
        return tuple(values[k] for k, _ in self.views[view_idx].join_keys)

    async def load_view(self, view_idx: int, max_entities: int) -> tuple[dict[tuple[Any, ...], Entry], bool]:
        """Every entity of view ``view_idx`` in the store (at most ``max_entities``), decoded as
        :meth:`decode` does; True when that is the whole view. One connection of its own, rows
        streamed in entity-key order (the table's primary key), yielding to the event loop between
        chunks so that requests are served while it decodes."""
        import asyncpg

        view, positions = self.views[view_idx], self._positions[view_idx]
        sql = (f"select entity_key, feature_name, value, event_ts from {quote_ident(self.tables[view_idx])} "
               "where feature_name = any($1::text[]) order by entity_key")
        out: dict[tuple[Any, ...], Entry] = {}
        conn = await asyncpg.connect(**self.connect, timeout=2.0)
        try:
            async with conn.transaction(readonly=True):
                current: bytes | None = None
                entry: list[tuple[Any, int]] = []
                n = 0
                async for entity_key, feature, value, event_ts in conn.cursor(sql, list(view.features), prefetch=2000):
                    if entity_key != current:
                        if current is not None:
                            if len(out) == max_entities:
                                return out, False
                            out[self.key_of(view_idx, current)] = tuple(entry)
                        current, entry = entity_key, [(None, 0)] * len(view.features)
                    j = positions.get(feature)
                    if j is not None:
                        entry[j] = _decoded(value, event_ts)
                    n += 1
                    if n % 2000 == 0:
                        await asyncio.sleep(0)
                if current is not None:
                    if len(out) == max_entities:
                        return out, False
                    out[self.key_of(view_idx, current)] = tuple(entry)
        finally:
            await conn.close(timeout=2.0)
        return out, True

    def assemble(self, entries: list[tuple[tuple[Any, int], ...]]) -> dict[str, list[Any]]:
        """Per-view entries → the shape of ``OnlineResponse.to_dict(include_event_timestamps=True)``
        for one entity row (``view__feature`` and ``view__feature__ts``), so both read paths share
        one decoder."""
        out: dict[str, list[Any]] = {}
        for columns, entry in zip(self._columns, entries, strict=True):
            for (name, ts_name), (value, ts) in zip(columns, entry, strict=True):
                out[name] = [value]
                out[ts_name] = [ts]
        return out


_SCALARS = frozenset({"double_val", "float_val", "int64_val", "int32_val", "bool_val", "string_val"})


def _decoded(value: bytes, event_ts: Any) -> tuple[Any, int]:
    """A stored ``ValueProto`` and its event time → (value, whole seconds; 0 when absent)."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    proto = Value.FromString(value)
    kind = proto.WhichOneof("val")
    # Scalars directly (a tenth of the cost); anything else through Feast's converter.
    # Feast stores naive UTC timestamps and reports whole seconds.
    return (None if kind is None or kind == "null_val" else
            getattr(proto, kind) if kind in _SCALARS else feast_value_type_to_python_type(proto),
            int(event_ts.replace(tzinfo=UTC).timestamp()) if event_ts else 0)


def _entity_value(value: Any, value_type: Any) -> Any:
    """A join-key value as Feast's ``python_values_to_proto_values`` builds it (strings and
    integers directly: the per-request path; anything else through Feast itself)."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    if value_type == ValueType.STRING:
        return Value(string_val=value)
    if value_type == ValueType.INT64:
        return Value(int64_val=value)
    if value_type == ValueType.INT32:
        return Value(int32_val=value)
    from feast.type_map import python_values_to_proto_values

    return python_values_to_proto_values([value], value_type)[0]


def build_plan(store: Any, service: Any) -> SqlPlan:
    """Resolve tables, keys and connection of ``service`` from the Feast ``store``'s own config."""
    from feast.infra.online_stores.helpers import compute_table_id

    config = store.config
    online = config.online_store
    if getattr(online, "type", None) != "postgres":
        raise DirectReadUnsupported(f"online store {getattr(online, 'type', online)!r} is not postgres")
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    from riskloop.features.store import on_demand_view_names

    on_demand = on_demand_view_names(store)  # computed by serving from this read (serving.online.ON_DEMAND)
    views, selects, tables = [], [], []
    for proj in service.feature_view_projections:
        if proj.name in on_demand:
            continue
        i = len(views)
        if proj.join_key_map:
            raise DirectReadUnsupported(f"projection {proj.name} remaps join keys")
        fv = store.get_feature_view(proj.name)
        join_keys = tuple((col.name, col.dtype.to_value_type()) for col in fv.entity_columns)
        views.append(_View(name=proj.name_to_use(), join_keys=join_keys,
                           features=tuple(f.name for f in proj.features)))
        tables.append(compute_table_id(config.project, fv, versioning))
        selects.append(f"select {i}::int, feature_name, value, event_ts from {quote_ident(tables[-1])} "
                       f"where entity_key = ${2 * i + 1} and feature_name = any(${2 * i + 2}::text[])")
    if not views:
        raise DirectReadUnsupported(f"feature service {service.name} has no feature views")
    search_path = (online.db_schema or online.user).strip()
    if search_path != "public":
        search_path += ",public"
    connect = {"host": online.host, "port": int(online.port), "user": online.user, "password": online.password,
               "database": online.database, "server_settings": {"search_path": search_path},
               "ssl": False if online.sslmode in (None, "disable") else online.sslmode}
    return SqlPlan(sql=" union all ".join(selects), views=tuple(views),
                   key_version=int(config.entity_key_serialization_version), connect=connect, tables=tuple(tables))


class SqlReader:
    """A few asyncpg connections bound to one :class:`SqlPlan`; lives on the serving event loop.

    Not ``asyncpg.Pool``: these connections only ever run the one read, and the pool's general
    machinery (connection proxies, holders, reset on release) cost about as much CPU per read as
    the query itself (bench/online_read.py). Here a read takes an idle connection or
    opens one (up to ``max_size``), or waits for one to come back, all under the read's timeout.
    A read that times out is not cancelled: cancelling a query mid-flight leaves its connection
    unusable, and reconnecting after every timeout would add load exactly when the store is
    already slow. It finishes in the background and gives its connection back; the request
    degrades at once. A connection that fails is closed; the oldest waiting read (or else the next
    read) opens its replacement.
    """

    def __init__(self, plan: SqlPlan, *, timeout_s: float, max_size: int, cache_size: int = 0) -> None:
        from serving.online_cache import OnlineCache

        self.plan = plan
        # Decoded rows kept per entity, dropped by the store's own notifications (serving.online_cache).
        self.cache = (OnlineCache(plan, max_entries=cache_size)
                      if cache_size > 0 and plan.tables else None)
        self._timeout_s = timeout_s
        self._max_size = max_size
        self._idle: list[Any] = []  # connections ready for a read
        self._opened = 0  # idle + in use + being opened
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False

    async def _open(self, *, reserved: bool = False) -> Any:
        """A new connection; ``reserved``: its place in ``max_size`` was handed over already."""
        import asyncpg

        if not reserved:
            self._opened += 1
        try:
            return await asyncpg.connect(**self.plan.connect, timeout=2.0)
        except BaseException:
            self._opened -= 1
            raise

    async def _acquire(self) -> Any:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._opened -= 1
        if self._opened < self._max_size:
            return await self._open()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                if waiter.result() is None:  # the place handed to it passes on, or is freed
                    if not self._hand_over(None):
                        self._opened -= 1
                else:
                    self._release(waiter.result(), ok=True)  # handed over just as this read gave up
            raise
        return conn if conn is not None else await self._open(reserved=True)

    def _hand_over(self, conn: Any) -> bool:
        """Give ``conn`` (``None``: a free place to open one) to the oldest waiting read, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _release(self, conn: Any, *, ok: bool) -> None:
        if not ok or self._closed or conn.is_closed():
            if not conn.is_closed():
                conn.terminate()
            # Its place goes to the oldest waiting read, which opens a fresh connection; or is freed.
            if self._closed or not self._hand_over(None):
                self._opened -= 1
            return
        if not self._hand_over(conn):
            self._idle.append(conn)

    async def _query(self, conn: Any, params: list[Any]) -> list[Any]:
        try:
            rows = await conn.fetch(self.plan.sql, *params)
        except BaseException:
            self._release(conn, ok=False)
            raise
        self._release(conn, ok=True)
        return rows

    async def connect(self) -> None:
        """Open one connection now (at start-up: the first request must not pay for the connect),
        and start the cache's listener."""
        if self.cache is not None:
            self.cache.start()
        if not self._idle and self._opened == 0:
            self._release(await self._open(), ok=True)

    async def read(self, entity_row: dict[str, Any]) -> dict[str, list[Any]] | None:
        """One round trip (none when the cache holds every view's entry); ``None`` when the row
        lacks an entity key. Raises on any store error and ``TimeoutError`` when the answer (or a
        free connection) takes over the timeout."""
        plan, cache = self.plan, self.cache
        keys = plan.keys(entity_row)
        if keys is None:
            return None
        if cache is not None:
            entries = cache.get(keys)
            if entries is not None:
                return plan.assemble(entries)
            epochs = cache.epochs()  # before the query: a change committed meanwhile is not kept
            cache.start()  # (idempotent) a reader built after start-up begins listening here
        params = plan.params(keys)
        loop = asyncio.get_running_loop()
        # One budget for the connection and the answer: a slow store degrades, it never stalls a payment.
        async with asyncio.timeout_at(loop.time() + self._timeout_s):
            conn = await self._acquire()
            query = loop.create_task(self._query(conn, params))
            try:
                rows = await asyncio.shield(query)
            except asyncio.CancelledError:
                query.add_done_callback(_consume)  # it still releases its connection when it ends
                raise
        entries = plan.decode(rows)
        if cache is not None:
            cache.put(keys, entries, epochs)
        return plan.assemble(entries)

    async def close(self) -> None:
        self._closed = True
        if self.cache is not None:
            await self.cache.close()
        idle, self._idle = self._idle, []
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("online reader closed"))
        self._waiters.clear()
        for conn in idle:
            self._opened -= 1
            try:
                await asyncio.wait_for(conn.close(), timeout=2.0)
            except Exception:  # noqa: BLE001 - a dead server: just drop the connection
                conn.terminate()


def _consume(task: asyncio.Future) -> None:
    """Retrieve a timed-out read's outcome so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
