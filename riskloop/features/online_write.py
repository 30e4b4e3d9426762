"""Rows of a feature view → Feast's Postgres online table in ONE statement per view, one commit per round.

Why: Feast's ``PostgreSQLOnlineStore.online_write_batch`` (what ``push`` and ``ingest_df`` end in)
sends one ``INSERT … ON CONFLICT`` per entity and feature (``executemany``), after converting the
frame pandas → Arrow → protos, and commits per view. For the stream's rounds (hundreds of keys,
six features each) that was most of the consumer's time (docs/benchmarks/history.md, "Real-time
features"). Here the same rows go in by one binary ``COPY`` and one upsert per view, every view
of a round in one transaction.

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


_MAX_ENCODED = 100_000  # encoded values kept (a few MB); cleared when full


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
    stage: str  # this connection's temporary table the rows are copied into
    types: tuple[str, ...]  # the staged columns' types (binary COPY)
    create: Any  # the stage's DDL; then the COPY and the upsert (psycopg sql.Composed)
    copy: Any
    upsert: Any


class OnlineWriter:
    """Writes rows ``(join key, event timestamp, *features)`` to views' online tables; one open
    connection (Feast's connection settings), reused by every write.

    The rows go in by binary ``COPY`` into a temporary table, then one ``INSERT … SELECT … ON
    CONFLICT DO UPDATE`` per view: psycopg dumps a COPY row in C, about a tenth of the CPU of the
    same values as array parameters. The stage's timestamps are ``timestamp`` (naive UTC, as
    Feast sends them), so the cast to the table's ``timestamptz`` is the one Feast's insert gets.
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
        self._staged: set[str] = set()  # stages created on the current connection
        self._encoded: dict[tuple[Any, Any], tuple[bytes, str | None, float | None]] = {}  # (type, value) -> encoded

    @property
    def conn(self) -> "psycopg.Connection":
        if self._conn is None or self._conn.closed:
            from feast.infra.utils.postgres.connection_utils import _get_conn

            self._conn = _get_conn(self.store.config.online_store)
            self._staged = set()
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
        types = ("bytea", "text", "bytea", "text", *(["float8"] if value_num else []), "timestamp", "timestamp")
        stage = f"_riskloop_stage_{table}"[:63]
        ids = sql.SQL(", ").join(map(sql.Identifier, cols))
        return Target(
            view=view.name, table=table, join_key=keys[0].name, key_type=keys[0].dtype.to_value_type(),
            features=tuple((f.name, f.dtype.to_value_type()) for f in view.features), value_num=value_num,
            stage=stage, types=types,
            create=sql.SQL("create temporary table if not exists {} ({}) on commit delete rows").format(
                sql.Identifier(stage),
                sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(
                    cols, types, strict=True))),
            copy=sql.SQL("copy {} ({}) from stdin (format binary)").format(sql.Identifier(stage), ids),
            # Feast's upsert (PostgreSQLOnlineStore.online_write_batch): every column but the key is set
            upsert=sql.SQL("insert into {} ({}) select {} from {} on conflict (entity_key, feature_name) "
                           "do update set {}").format(
                sql.Identifier(table), ids, ids, sql.Identifier(stage),
                sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                                   for c in [*cols[2:], "vector_value"])))

    def rows(self, target: Target, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The online rows of ``rows`` (one per entity; ``columns`` name their fields): one per
        entity and feature, encoded as Feast's ``online_write_batch`` encodes them."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _to_naive_utc, extract_text_and_num
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        from riskloop.core.windows import TIMESTAMP_FIELD

        at = {c: i for i, c in enumerate(columns)}
        keys = python_values_to_proto_values([r[at[target.join_key]] for r in rows], target.key_type)
        entity_keys = [serialize_entity_key(EntityKey(join_keys=[target.join_key], entity_values=[k]),
                                            entity_key_serialization_version=self._key_version) for k in keys]
        stamps = [_to_naive_utc(_timestamp(r[at[TIMESTAMP_FIELD]])) for r in rows]
        out: list[tuple[Any, ...]] = []
        cache = self._encoded
        if len(cache) > _MAX_ENCODED:
            cache.clear()
        for name, value_type in target.features:
            column = [r[at[name]] for r in rows]
            todo = list({v for v in column if (value_type, v) not in cache})
            # Feast's encoding of each distinct value once (counts and sums repeat a lot across keys)
            for v, proto in zip(todo, python_values_to_proto_values(todo, value_type) if todo else (), strict=True):
                cache[(value_type, v)] = (proto.SerializeToString(), *extract_text_and_num(proto, target.value_num))
            for key, v, ts in zip(entity_keys, column, stamps, strict=True):
                value, text, num = cache[(value_type, v)]
                out.append((key, name, value, text, num, ts, None) if target.value_num
                           else (key, name, value, text, ts, None))
        return out

    def write(self, batches: Sequence[tuple[Target, Sequence[str], Sequence[Sequence[Any]]]]) -> None:
        """Upsert each ``(target, columns, rows)``, all in one transaction (rolled back on error)."""
        conn = self.conn
        try:
            with conn.cursor() as cur:
                for target, columns, rows in batches:
                    if not rows:
                        continue
                    if target.stage not in self._staged:
                        cur.execute(target.create)
                        self._staged.add(target.stage)
                    with cur.copy(target.copy) as copy:
                        copy.set_types(list(target.types))
                        for row in self.rows(target, columns, rows):
                            copy.write_row(row)
                    cur.execute(target.upsert)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            self._staged = set()  # a rolled-back transaction may have dropped a stage it created
            raise


def _timestamp(value: Any) -> datetime:
    """A row's event time as a plain datetime (a pandas Timestamp from a frame is converted)."""
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    raise TypeError(f"not a timestamp: {value!r}")
