"""Rows of a feature view → Feast's Postgres online table in ONE statement per view, one commit per round.

Why: Feast's ``PostgreSQLOnlineStore.online_write_batch`` (what ``push`` and ``ingest_df`` end in)
sends one ``INSERT … ON CONFLICT`` per entity and feature (``executemany``), after converting the
frame pandas → Arrow → protos, and commits per view. For the stream's rounds (hundreds of keys,
six features each) that was most of the consumer's time (docs/benchmarks/history.md, "Real-time
features"). Here one statement per view carries all of a round's entities, and every view of
the round and the commit go to the server in one pipeline.

Feast stays the source of truth for the layout and the encoding, exactly as ``serving/online_sql.py``
reads them: the table is ``compute_table_id``, the entity key ``serialize_entity_key`` with the repo's
serialization version, each value the ``ValueProto`` Feast's ``python_values_to_proto_values`` builds
for the field's type, ``value_text``/``value_num`` from Feast's ``extract_text_and_num``, timestamps
naive UTC over Feast's own connection settings (``_get_conn``), and the upsert sets the columns
Feast's does. ``tests/test_realtime.py::test_online_push_writes_what_feast_push_writes`` checks
that both leave identical rows. What this writer does not do (a vector-enabled store, a created
timestamp column, several join keys) raises :class:`DirectWriteUnsupported` at plan time; the
caller then uses Feast's own path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    from feast import FeatureStore
    from feast.feature_view import FeatureView

log = logging.getLogger(__name__)


_MAX_ENCODED = 200_000  # encoded values and keys kept (some tens of MB); cleared when full


class DirectWriteUnsupported(RuntimeError):
    """The repo's online store or this view needs Feast's own write path."""


@dataclass(frozen=True)
class Target:
    """One view's online table, resolved from Feast once per registry version."""

    view: str
    table: str
    join_key: str
    key_type: Any  # feast ValueType of the join key
    features: tuple[tuple[str, Any], ...]  # (feature, feast ValueType), the view's order
    value_num: bool  # the table has Feast's optional value_num column
    upsert: Any  # the statement (psycopg sql.Composed)


class OnlineWriter:
    """Writes rows ``(join key, event timestamp, *features)`` to views' online tables; one open
    connection (Feast's connection settings), reused by every write.

    Per view one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` over arrays with one element per
    entity (its key, its event time, and per feature its encoded value and text), expanded to
    Feast's row per entity and feature by the server; every view of a round and the commit go in
    one pipeline, so a round's write is one round trip whatever its size. The timestamps are sent
    as ``timestamp`` (naive UTC, as Feast sends them), so the cast to the table's ``timestamptz`` is
    the one Feast's insert gets.
    """

    def __init__(self, store: "FeatureStore") -> None:
        config = store.config
        online = config.online_store
        if getattr(online, "type", None) != "postgres":
            raise DirectWriteUnsupported(f"online store {getattr(online, 'type', online)!r} is not postgres")
        if getattr(online, "vector_enabled", False):
            raise DirectWriteUnsupported("a vector-enabled online store: Feast writes vector_value")
        self.store = store
        self._key_version = int(config.entity_key_serialization_version)
        self._versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        self._conn: "psycopg.Connection | None" = None
        # Feast's encodings already computed: (value type, value) -> (value bytes, value_text, value_num),
        # (join key, key value) -> serialised entity key
        self._encoded: dict[tuple[Any, Any], Any] = {}

    @property
    def conn(self) -> "psycopg.Connection":
        if self._conn is None or self._conn.closed:
            from feast.infra.utils.postgres.connection_utils import _get_conn

            self._conn = _get_conn(self.store.config.online_store)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def target(self, view: "FeatureView") -> Target:
        """Where and how ``view``'s rows go (call again after a registry change)."""
        from feast.infra.online_stores.helpers import compute_table_id
        from psycopg import sql

        if view.batch_source is not None and view.batch_source.created_timestamp_column:
            raise DirectWriteUnsupported(f"{view.name}: a created timestamp column")
        keys = list(view.entity_columns)
        if len(keys) != 1:
            raise DirectWriteUnsupported(f"{view.name}: {len(keys)} join keys")
        table = compute_table_id(self.store.config.project, view, self._versioning)
        online = self.store.config.online_store
        schema = online.db_schema or online.user
        # Feast's own check (PostgreSQLOnlineStore._check_table_has_value_num), once per plan
        value_num = self.conn.execute(
            "select 1 from information_schema.columns where table_schema = %s and table_name = %s "
            "and column_name = 'value_num'", (schema, table)).fetchone() is not None
        self.conn.commit()
        cols = ["entity_key", "feature_name", "value", "value_text", *(["value_num"] if value_num else []),
                "event_ts", "created_ts"]
        features = tuple((f.name, f.dtype.to_value_type()) for f in view.features)
        n = len(features)
        arrays = [("entity_key", "bytea"), ("event_ts", "timestamp"), *[(f"v{j}", "bytea") for j in range(n)],
                  *[(f"t{j}", "text") for j in range(n)], *([(f"n{j}", "float8") for j in range(n)] if value_num else [])]

        def pick(prefix: str) -> str:  # the feature's element of this entity's per-feature arrays
            return f"(array[{', '.join(f'k.{prefix}{j}' for j in range(n))}])[f.i]"

        picked = ["k.entity_key", "f.name", pick("v"), pick("t"), *([pick("n")] if value_num else []), "k.event_ts",
                  "null::timestamp"]
        query = sql.SQL(
            "insert into {} ({}) select {} from unnest({}) as k({}) "
            "cross join unnest(%s::text[]) with ordinality as f(name, i) "
            "on conflict (entity_key, feature_name) do update set {}").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ".join(picked)),
            sql.SQL(", ").join(sql.SQL(f"%s::{t}[]") for _, t in arrays), sql.SQL(", ".join(a for a, _ in arrays)),
            # Feast's upsert (PostgreSQLOnlineStore.online_write_batch): every column but the key is set
            sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in [*cols[2:], "vector_value"]))
        return Target(view=view.name, table=table, join_key=keys[0].name, key_type=keys[0].dtype.to_value_type(),
                      features=features, value_num=value_num, upsert=query)

    def params(self, target: Target, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The upsert's arrays for ``rows`` (one per entity; ``columns`` name their fields), every
        value encoded as Feast's ``online_write_batch`` encodes it."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _to_naive_utc, extract_text_and_num
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        from riskloop.core.windows import TIMESTAMP_FIELD

        at = {c: i for i, c in enumerate(columns)}
        cache = self._encoded
        if len(cache) > _MAX_ENCODED:
            cache.clear()
        # Feast's serialisation of each entity key once (a busy card is pushed round after round)
        key_values = [r[at[target.join_key]] for r in rows]
        todo = list({v for v in key_values if (target.join_key, v) not in cache})
        for v, proto in zip(todo, python_values_to_proto_values(todo, target.key_type) if todo else (), strict=True):
            cache[(target.join_key, v)] = serialize_entity_key(
                EntityKey(join_keys=[target.join_key], entity_values=[proto]),
                entity_key_serialization_version=self._key_version)
        values, texts, nums = [], [], []
        for name, value_type in target.features:
            column = [r[at[name]] for r in rows]
            todo = list({v for v in column if (value_type, v) not in cache})
            # Feast's encoding of each distinct value once (counts and sums repeat a lot across keys)
            for v, proto in zip(todo, python_values_to_proto_values(todo, value_type) if todo else (), strict=True):
                cache[(value_type, v)] = (proto.SerializeToString(), *extract_text_and_num(proto, target.value_num))
            encoded = [cache[(value_type, v)] for v in column]
            values.append([e[0] for e in encoded])
            texts.append([e[1] for e in encoded])
            nums.append([e[2] for e in encoded])
        return [[cache[(target.join_key, v)] for v in key_values],
                [_to_naive_utc(_timestamp(r[at[TIMESTAMP_FIELD]])) for r in rows],
                *values, *texts, *(nums if target.value_num else []), [name for name, _ in target.features]]

    def write(self, batches: Sequence[tuple[Target, Sequence[str], Sequence[Sequence[Any]]]]) -> None:
        """Upsert each ``(target, columns, rows)``, all in one transaction (rolled back on error),
        sent as one pipeline."""
        conn = self.conn
        try:
            with conn.pipeline():
                for target, columns, rows in batches:
                    if rows:
                        conn.execute(target.upsert, self.params(target, columns, rows), binary=True)
                conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise


def _timestamp(value: Any) -> datetime:
    """A row's event time as a plain datetime (a pandas Timestamp from a frame is converted)."""
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    raise TypeError(f"not a timestamp: {value!r}")


def delete_entities(store: "FeatureStore", keys: dict[str, Sequence[Any]]) -> dict[str, int]:
    """Delete the online rows of the given entities (join key -> key values) from every view keyed
    by one of them, in one transaction; returns the rows deleted per view (erasure of a customer:
    ``riskloop.governance.erasure``). The layout and key encoding are Feast's, as in :class:`OnlineWriter`."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import compute_table_id
    from feast.infra.utils.postgres.connection_utils import _get_conn
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from psycopg import sql

    config = store.config
    if getattr(config.online_store, "type", None) != "postgres":
        raise DirectWriteUnsupported(f"online store {getattr(config.online_store, 'type', config.online_store)!r} "
                                     "is not postgres")
    version = int(config.entity_key_serialization_version)
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    deleted: dict[str, int] = {}
    conn = _get_conn(config.online_store)
    try:
        with conn.transaction():
            for view in store.list_feature_views():
                columns = list(view.entity_columns)
                if len(columns) != 1 or not keys.get(columns[0].name):
                    continue
                values = list(keys[columns[0].name])
                protos = python_values_to_proto_values(values, columns[0].dtype.to_value_type())
                encoded = [serialize_entity_key(EntityKey(join_keys=[columns[0].name], entity_values=[p]),
                                                entity_key_serialization_version=version) for p in protos]
                table = compute_table_id(config.project, view, versioning)
                if conn.execute("select to_regclass(%s)", (sql.Identifier(table).as_string(conn),)).fetchone()[0] is None:
                    continue  # never materialised
                cur = conn.execute(sql.SQL("delete from {} where entity_key = any(%s::bytea[])").format(
                    sql.Identifier(table)), (encoded,))
                deleted[view.name] = cur.rowcount
    finally:
        conn.close()
    return deleted
