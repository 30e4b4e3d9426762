"""All of a feature service's online features in ONE prepared statement, read straight from
Feast's Postgres online-store tables.

Why: ``FeatureStore.get_online_features`` costs ~2–4 ms of Python per call before and after the
database (request context, protobuf responses, one query per feature view) and it is a blocking
call, so the scoring handler had to run in a thread pool. Here everything Feast would resolve per
call is resolved once, *from Feast itself*, when the store is bound: the table of each view
(``compute_table_id``), its join keys and their value types, the entity-key encoding
(``serialize_entity_key`` with the repo's serialization version) and the connection settings of
the repo's online store. A request then pays for one asyncpg round trip (``UNION ALL`` over the
views, prepared once per connection) and for decoding a handful of ``ValueProto``\\ s with Feast's
own ``feast_value_type_to_python_type``. Feast stays the only writer (``materialize``) and the
source of truth; ``RISKLOOP_SERVING_ONLINE_READ=sdk`` switches back to the SDK, and
``tests/test_serving_fast_path.py`` checks that both return identical values.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC
from typing import Any

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

    def params(self, entity_row: dict[str, Any]) -> list[Any] | None:
        """The statement's parameters; ``None`` when an entity key is not in the row."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey

        out: list[Any] = []
        for view in self.views:
            keys, values = [], []
            for key, value_type in view.join_keys:
                if key not in entity_row:
                    return None
                keys.append(key)
                values.append(_entity_value(entity_row[key], value_type))
            out.append(serialize_entity_key(EntityKey(join_keys=keys, entity_values=values),
                                            entity_key_serialization_version=self.key_version))
            out.append(list(view.features))
        return out

    def response(self, rows: list[Any]) -> dict[str, list[Any]]:
        """Rows → the shape of ``OnlineResponse.to_dict(include_event_timestamps=True)`` for one
        entity row (``view__feature`` and ``view__feature__ts``), so both paths share one decoder."""
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        out: dict[str, list[Any]] = {}
        for view in self.views:
            for f in view.features:
                out[f"{view.name}__{f}"] = [None]
                out[f"{view.name}__{f}__ts"] = [0]
        for view_idx, feature, value, event_ts in rows:
            col = f"{self.views[view_idx].name}__{feature}"
            if col not in out:
                continue
            proto = Value.FromString(value)
            kind = proto.WhichOneof("val")
            # Scalars directly (a tenth of the cost); anything else through Feast's converter.
            out[col] = [None if kind is None or kind == "null_val" else
                        getattr(proto, kind) if kind in _SCALARS else feast_value_type_to_python_type(proto)]
            # Feast stores naive UTC timestamps and reports whole seconds.
            out[col + "__ts"] = [int(event_ts.replace(tzinfo=UTC).timestamp()) if event_ts else 0]
        return out


_SCALARS = frozenset({"double_val", "float_val", "int64_val", "int32_val", "bool_val", "string_val"})


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


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def build_plan(store: Any, service: Any) -> SqlPlan:
    """Resolve tables, keys and connection of ``service`` from the Feast ``store``'s own config."""
    from feast.infra.online_stores.helpers import compute_table_id

    config = store.config
    online = config.online_store
    if getattr(online, "type", None) != "postgres":
        raise DirectReadUnsupported(f"online store {getattr(online, 'type', online)!r} is not postgres")
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    from serving.online import on_demand_view_names

    on_demand = on_demand_view_names(store)  # computed by serving from this read (serving.online.ON_DEMAND)
    views, selects = [], []
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
        table = _quote(compute_table_id(config.project, fv, versioning))
        selects.append(f"select {i}::int, feature_name, value, event_ts from {table} "
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
                   key_version=int(config.entity_key_serialization_version), connect=connect)


async def _keep_session(conn: Any) -> None:
    """Pool release without asyncpg's default reset query (``RESET ALL``, ``UNLISTEN *``, …): a
    second round trip per read, 11 % of the server's samples at 300 requests/s (py-spy). These
    connections only ever run the one read statement, so there is no session state to reset; asyncpg
    still rolls back an open transaction itself before calling this."""


class SqlReader:
    """An asyncpg pool bound to one :class:`SqlPlan`; lives on the serving event loop."""

    def __init__(self, plan: SqlPlan, *, timeout_s: float, max_size: int) -> None:
        self.plan = plan
        self._timeout_s = timeout_s
        self._max_size = max_size
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import asyncpg

                    self._pool = await asyncpg.create_pool(
                        **self.plan.connect, min_size=1, max_size=self._max_size, timeout=2.0,
                        reset=_keep_session)
        return self._pool

    async def connect(self) -> None:
        """Open the pool now (at start-up: the first request must not pay for the connect)."""
        await self._get_pool()

    async def read(self, entity_row: dict[str, Any]) -> dict[str, list[Any]] | None:
        """One round trip; ``None`` when the row lacks an entity key. Raises on any store error."""
        params = self.plan.params(entity_row)
        if params is None:
            return None
        async with asyncio.timeout(self._timeout_s):  # a slow store degrades, it never stalls a payment
            pool = await self._get_pool()
            rows = await pool.fetch(self.plan.sql, *params)
        return self.plan.response(rows)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=2.0)
            except Exception:  # noqa: BLE001 - a dead server: just drop the connections
                pool.terminate()
