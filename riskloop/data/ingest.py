"""Ingestion: landed Parquet files (or frames) into ``raw.<table>``, idempotently.

Every table of :mod:`riskloop.core.schema` becomes ``raw.<table>`` with the contract's columns, its
natural key as primary key, and two lineage columns (``_batch_id``, ``_loaded_at``) that say
which load last wrote the row.  A load is one transaction:

1. card data is handled at this edge (``riskloop.core.pan``): CVV/track/PIN columns are dropped, a
   ``card_number`` column becomes ``card_token`` (keyed HMAC) + ``card_bin`` + ``card_last4``,
   a card number in any other text column becomes its token, a Luhn-invalid number in the card
   column is a :class:`ContractError`. A landed Parquet file that held card data is rewritten with
   the scrubbed table (``riskloop.data.landing_scrub``), so no clear number stays on disk; a load of
   the whole landing directory scrubs its other files (webhook archives, CSVs) too. Then the frame's columns are checked
   against the contract *before* touching the database, so a file with a missing or unexpected
   column writes nothing;
2. the rows are streamed with ``COPY`` into a temporary table (CSV produced by Arrow, which is
   an order of magnitude faster than adapting Python objects row by row);
3. ``INSERT … SELECT DISTINCT ON (key) … ON CONFLICT (key) DO UPDATE … WHERE (old) IS DISTINCT
   FROM (new)`` upserts them, so replaying a file changes nothing and a corrected row (a
   processor re-sending an event with new content) replaces the old one;
4. the batch is recorded in ``raw.load_batches`` with what it inserted and updated.

A row with text Postgres cannot store (a NUL character, ``riskloop.core.storable``) would fail the
whole ``COPY``: it is set aside in ``quarantine.<table>`` with its reason instead
(``riskloop.data.quarantine.set_aside``), in the same transaction, and the rest of the file loads.

Duplicate keys inside one batch (a processor retrying a webhook) keep the last occurrence.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

from riskloop.core import db, pan
from riskloop.core.config import Settings
from riskloop.core.schema import (
    CONTRACT_TABLES,
    OPTIONAL_INPUT_COLUMNS,
    RAW_SCHEMA,
    RAW_TABLES,
    RAW_TABLES_BY_NAME,
    RawTable,
)
from riskloop.core.storable import find_unstorable
from riskloop.data import dataset_claim, quarantine
from riskloop.data.landing_scrub import once, scrub_landing, write_parquet

log = logging.getLogger(__name__)

LOAD_BATCHES = "load_batches"
LINEAGE_COLUMNS = ("_batch_id", "_loaded_at")

# Arrow type each contract type is cast to before COPY: a failed cast is a contract error
# raised before anything is written, with the column's name in it.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}

# Rows per CSV chunk sent through COPY: bounds the memory of one chunk's text.
_COPY_CHUNK_ROWS = 200_000


class ContractError(ValueError):
    """A frame does not match the raw-table contract of :mod:`riskloop.core.schema`."""


@dataclass(frozen=True)
class LoadResult:
    """What one load did; the same numbers are stored in ``raw.load_batches``."""

    batch_id: int
    table: str
    source: str
    rows_in: int
    rows_inserted: int
    rows_updated: int
    duplicates_in_batch: int
    interval_start: datetime | None
    interval_end: datetime | None
    seconds: float
    rows_quarantined: int = 0  # rows with text Postgres cannot store, set aside before the load

    @property
    def rows_unchanged(self) -> int:
        return self.rows_in - self.rows_quarantined - self.duplicates_in_batch - self.rows_inserted - self.rows_updated


# --- DDL -------------------------------------------------------------------------------------

def _table_ddl(table: RawTable) -> sql.Composed:
    cols = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name), sql.SQL(c.pg_type), sql.SQL("" if c.nullable else " not null")
        )
        for c in table.columns
    ]
    cols.append(sql.SQL("_batch_id bigint not null references {}.{} (batch_id)").format(
        sql.Identifier(RAW_SCHEMA), sql.Identifier(LOAD_BATCHES)))
    cols.append(sql.SQL("_loaded_at timestamptz not null default now()"))
    cols.append(sql.SQL("primary key ({})").format(sql.SQL(", ").join(map(sql.Identifier, table.key))))
    return sql.SQL("create table if not exists {}.{} (\n  {}\n)").format(
        sql.Identifier(RAW_SCHEMA), sql.Identifier(table.name), sql.SQL(",\n  ").join(cols)
    )


class SchemaOutOfDate(RuntimeError):
    """A warehouse table lacks a required column that a newer contract added."""


def _create_or_migrate(conn: psycopg.Connection, table: RawTable) -> None:
    """Create ``raw.<table>``, or bring one created by an older riskloop up to the contract.

    Contracts only ever grow by nullable columns (older files lack them, ingest fills nulls), so
    the migration is additive: each missing nullable column is added (a catalog-only change,
    no rewrite, dbt's views over the table stay valid). A missing ``not null`` column cannot be
    back-filled honestly, so it is an explicit error naming the column, and nothing is loaded."""
    conn.execute(_table_ddl(table))
    present = {r[0] for r in conn.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s",
        (RAW_SCHEMA, table.name)).fetchall()}
    for col in table.columns:
        if col.name in present:
            continue
        if not col.nullable:
            raise SchemaOutOfDate(
                f"{RAW_SCHEMA}.{table.name} predates the required column {col.name!r} ({col.pg_type} not null): "
                "add it by hand with its values, or load into a fresh warehouse; nothing was loaded")
        conn.execute(sql.SQL("alter table {}.{} add column if not exists {} {}").format(
            sql.Identifier(RAW_SCHEMA), sql.Identifier(table.name), sql.Identifier(col.name),
            sql.SQL(col.pg_type)))
        log.warning("migrated %s.%s: added the nullable column %s (%s) of the current contract; "
                    "its existing rows hold null there", RAW_SCHEMA, table.name, col.name, col.pg_type)


def create_raw_tables(conn: psycopg.Connection) -> None:
    """Create schema ``raw``, ``raw.load_batches``, one table per contract table (the landed
    files' and the batch files') and the webhook inbox (idempotent): dbt reads all of them as
    sources and the contracts check them, so they exist (maybe empty) before either runs.

    Runs under a transaction-scoped advisory lock: two loaders starting at once would otherwise
    race on ``create table if not exists`` (it is not atomic in the catalog).  Does not commit;
    the caller's transaction decides.
    """
    conn.execute("select pg_advisory_xact_lock(hashtext('riskloop.ingest.ddl'))")
    db.ensure_schema(conn, RAW_SCHEMA)
    conn.execute(sql.SQL(
        """
        create table if not exists {}.{} (
          batch_id bigint generated always as identity primary key,
          table_name text not null,
          source_file text,
          interval_start timestamptz,
          interval_end timestamptz,
          rows_in bigint not null,
          rows_inserted bigint not null default 0,
          rows_updated bigint not null default 0,
          duplicates_in_batch bigint not null default 0,
          loaded_at timestamptz not null default now()
        )
        """
    ).format(sql.Identifier(RAW_SCHEMA), sql.Identifier(LOAD_BATCHES)))
    for table in CONTRACT_TABLES:
        _create_or_migrate(conn, table)


# --- reading and validating ------------------------------------------------------------------

def _resolve(table: str | RawTable) -> RawTable:
    if isinstance(table, RawTable):
        return table
    try:
        return RAW_TABLES_BY_NAME[table]
    except KeyError:
        raise ContractError(f"unknown raw table {table!r}; known: {sorted(RAW_TABLES_BY_NAME)}") from None


def check_columns(table: RawTable, columns: Iterable[str]) -> None:
    """Raise :class:`ContractError` naming the missing and the extra columns, if any."""
    have = list(columns)
    missing = [c for c in table.column_names if c not in have]
    extra = [c for c in have if c not in table.column_names]
    if missing or extra:
        raise ContractError(
            f"{table.name}: columns do not match the contract in riskloop/core/schema.py "
            f"(missing: {missing or 'none'}; extra: {extra or 'none'})"
        )


def _to_utc(value: datetime | str | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _card_edge(table: RawTable, arrow: pa.Table, settings: Settings, path: Path | None = None) -> pa.Table:
    """The card-data edge of a landed file (``riskloop.core.pan``): CVV/track/PIN columns dropped, card
    numbers tokenised (the card-number column, and any number in another text column), then the
    optional display columns filled with nulls if absent. ``path``: the landed file, rewritten with the
    scrubbed table when it held card data."""
    tok = once(lambda: pan.tokenizer(settings))
    try:
        scrubbed = pan.scrub_arrow(arrow, tok)
    except pan.InvalidPan as exc:
        raise ContractError(f"{table.name}: {exc}") from exc
    if path is not None and scrubbed is not arrow:
        write_parquet(path, scrubbed)
        log.warning("%s held card data: rewritten with the card numbers tokenised", path)
    arrow = pan.rekey_arrow(scrubbed, tok)  # tokens of a key rotated since the file was written
    for name in table.column_names:
        if name in OPTIONAL_INPUT_COLUMNS and name not in arrow.column_names:
            arrow = arrow.append_column(name, pa.nulls(arrow.num_rows, pa.string()))
    return arrow


def _read(table: RawTable, data: pd.DataFrame | pa.Table | str | Path, settings: Settings) -> tuple[pa.Table, str]:
    """Read the input as Arrow, pass it through the card-data edge and check its columns."""
    path: Path | None = None
    if isinstance(data, (str, Path)):
        import pyarrow.parquet as pq

        path = Path(data)
        arrow, source = pq.read_table(path), str(path)
    elif isinstance(data, pd.DataFrame):
        arrow, source = pa.Table.from_pandas(data, preserve_index=False), "<dataframe>"
    elif isinstance(data, pa.Table):
        arrow, source = data, "<arrow>"
    else:
        raise TypeError(f"expected a DataFrame, an Arrow table or a Parquet path, got {type(data).__name__}")
    arrow = _card_edge(table, arrow, settings, path)
    check_columns(table, arrow.column_names)
    return arrow.select(table.column_names), source


def _conform(table: RawTable, arrow: pa.Table) -> pa.Table:
    """Cast every column to the Arrow type of its contract type; a column that cannot be is an error."""
    arrays = []
    for col in table.columns:
        target = _ARROW_TYPES[col.pg_type]
        arr = arrow.column(col.name)
        try:
            if pa.types.is_timestamp(arr.type) and arr.type.tz is None and pa.types.is_timestamp(target):
                arr = arr.cast(pa.timestamp(arr.type.unit, tz="UTC"))  # naive timestamps are UTC
            arr = arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ContractError(f"{table.name}.{col.name}: cannot be read as {col.pg_type} ({exc})") from exc
        if not col.nullable and arr.null_count:
            raise ContractError(f"{table.name}.{col.name}: {arr.null_count} null values in a not-null column")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=table.column_names)


def _filter_interval(table: RawTable, arrow: pa.Table, start: pd.Timestamp | None,
                     end: pd.Timestamp | None) -> pa.Table:
    """Keep rows whose time column is in ``[start, end)`` (Airflow's half-open data interval)."""
    import pyarrow.compute as pc

    if start is None and end is None:
        return arrow
    t = arrow.column(table.time_column)
    mask = pc.is_valid(t)
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(t, pa.scalar(start.to_pydatetime(), t.type)))
    if end is not None:
        mask = pc.and_(mask, pc.less(t, pa.scalar(end.to_pydatetime(), t.type)))
    return arrow.filter(mask)


# --- loading ---------------------------------------------------------------------------------

def _split_unstorable(table: RawTable, arrow: pa.Table) -> tuple[pa.Table, list[dict], list[str]]:
    """``arrow`` without its rows holding text Postgres cannot store; those rows, and why each.
    Arrow strings are valid UTF-8 (no lone surrogates), so a NUL is the one case to look for."""
    import pyarrow.compute as pc

    text = [c.name for c in table.columns if c.pg_type == "text"]
    mask = None
    for name in text:
        hit = pc.fill_null(pc.match_substring(arrow.column(name), "\x00"), False)
        mask = hit if mask is None else pc.or_(mask, hit)
    if mask is None or not pc.any(mask).as_py():
        return arrow, [], []
    bad = arrow.filter(mask).to_pylist()
    reasons = [f"unstorable_text: {find_unstorable({n: r[n] for n in text})}" for r in bad]
    return arrow.filter(pc.invert(mask)), bad, reasons


def _copy_into_temp(conn: psycopg.Connection, table: RawTable, arrow: pa.Table) -> str:
    """COPY the rows into a temp table with an arrival ordinal (last duplicate wins)."""
    import pyarrow.csv as pacsv

    tmp = f"_load_{table.name}"
    conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(tmp)))
    conn.execute(sql.SQL(
        "create temp table {} (like {}.{} including defaults, _ord bigserial) on commit drop"
    ).format(sql.Identifier(tmp), sql.Identifier(RAW_SCHEMA), sql.Identifier(table.name)))
    # The lineage columns are filled by the upsert, not by the file.
    conn.execute(sql.SQL("alter table {} alter _batch_id drop not null").format(sql.Identifier(tmp)))
    copy_sql = sql.SQL("copy {} ({}) from stdin (format csv)").format(
        sql.Identifier(tmp), sql.SQL(", ").join(map(sql.Identifier, table.column_names)))
    # quoting_style all_valid: every value quoted, NULL unquoted, so '' and NULL stay distinct.
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for offset in range(0, arrow.num_rows, _COPY_CHUNK_ROWS):
            buf = io.BytesIO()
            pacsv.write_csv(arrow.slice(offset, _COPY_CHUNK_ROWS), buf, options)
            copy.write(buf.getbuffer())
    return tmp


def _upsert(conn: psycopg.Connection, table: RawTable, tmp: str, batch_id: int) -> tuple[int, int]:
    """Upsert the temp table into ``raw.<table>``; returns (inserted, updated)."""
    cols = table.column_names
    key = sql.SQL(", ").join(map(sql.Identifier, table.key))
    col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
    non_key = [c for c in cols if c not in table.key]
    # Compare the contract columns only: the lineage columns differ on every load by design
    # (and so do the table's volatile ones, e.g. a redelivered file's arrival time).
    compared = [c for c in cols if c not in table.volatile]
    old = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compared)
    new = sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in compared)
    sets = [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in [*non_key, *LINEAGE_COLUMNS]]
    query = sql.SQL(
        """
        with up as (
          insert into {schema}.{table} as t ({cols}, _batch_id, _loaded_at)
          select distinct on ({key}) {cols}, %(batch)s, now()
          from {tmp}
          order by {key}, _ord desc
          on conflict ({key}) do update set {sets}
          where ({old}) is distinct from ({new})
          returning (xmax = 0) as inserted
        )
        select count(*) filter (where inserted), count(*) filter (where not inserted) from up
        """
    ).format(schema=sql.Identifier(RAW_SCHEMA), table=sql.Identifier(table.name), cols=col_list,
             key=key, tmp=sql.Identifier(tmp), sets=sql.SQL(", ").join(sets), old=old, new=new)
    inserted, updated = conn.execute(query, {"batch": batch_id}).fetchone()
    return int(inserted), int(updated)


def _session(conn: psycopg.Connection) -> None:
    """Session settings for bulk loads; must run before the session touches a temp table."""
    # Keep the staged batch in memory instead of spilling the temp table to disk (default 8MB).
    conn.execute("set temp_buffers = '256MB'")


def _load(conn: psycopg.Connection, table: RawTable, arrow: pa.Table, source: str,
          start: pd.Timestamp | None, end: pd.Timestamp | None) -> LoadResult:
    """Load an already-validated Arrow table inside the caller's transaction."""
    t0 = time.perf_counter()
    batch_id = conn.execute(sql.SQL(
        "insert into {}.{} (table_name, source_file, interval_start, interval_end, rows_in) "
        "values (%s, %s, %s, %s, %s) returning batch_id"
    ).format(sql.Identifier(RAW_SCHEMA), sql.Identifier(LOAD_BATCHES)),
        (table.name, source, start, end, arrow.num_rows)).fetchone()[0]
    rows_in = arrow.num_rows
    arrow, bad, reasons = _split_unstorable(table, arrow)
    quarantine.set_aside(conn, table, bad, reasons, batch_id)
    tmp = _copy_into_temp(conn, table, arrow)
    # Statistics for the DISTINCT ON sort and the conflict probes (temp tables get none by themselves).
    conn.execute(sql.SQL("analyze {}").format(sql.Identifier(tmp)))
    inserted, updated = _upsert(conn, table, tmp, batch_id)
    duplicates = arrow.num_rows - arrow.group_by(list(table.key)).aggregate([]).num_rows
    conn.execute(sql.SQL(
        "update {}.{} set rows_inserted = %s, rows_updated = %s, duplicates_in_batch = %s where batch_id = %s"
    ).format(sql.Identifier(RAW_SCHEMA), sql.Identifier(LOAD_BATCHES)),
        (inserted, updated, duplicates, batch_id))
    conn.execute(sql.SQL("drop table {}").format(sql.Identifier(tmp)))
    result = LoadResult(
        batch_id=batch_id, table=table.name, source=source, rows_in=rows_in,
        rows_inserted=inserted, rows_updated=updated, duplicates_in_batch=duplicates,
        interval_start=start.to_pydatetime() if start is not None else None,
        interval_end=end.to_pydatetime() if end is not None else None,
        seconds=time.perf_counter() - t0, rows_quarantined=len(bad),
    )
    log.info("loaded raw.%s from %s: %d rows in, %d inserted, %d updated, %d duplicates (%.2fs)",
             table.name, source, result.rows_in, inserted, updated, duplicates, result.seconds)
    return result


def ensure_table(conn: psycopg.Connection, table: RawTable) -> None:
    """Create ``raw.<table>`` (and ``raw.load_batches``) for a table outside RAW_TABLES; idempotent."""
    create_raw_tables(conn)
    _create_or_migrate(conn, table)


def conform(table: RawTable, arrow: pa.Table) -> pa.Table:
    """Check the columns and cast them to the contract's types; :class:`ContractError` otherwise."""
    check_columns(table, arrow.column_names)
    return _conform(table, arrow.select(table.column_names))


def load_conformed(conn: psycopg.Connection, table: RawTable, arrow: pa.Table, source: str) -> LoadResult:
    """Upsert rows already passed through :func:`conform`, in the caller's transaction."""
    return _load(conn, table, arrow, source, None, None)


def _prepare(table: RawTable, data: pd.DataFrame | pa.Table | str | Path, settings: Settings,
             start: pd.Timestamp | None, end: pd.Timestamp | None) -> tuple[pa.Table, str]:
    arrow, source = _read(table, data, settings)
    return _filter_interval(table, _conform(table, arrow), start, end), source


def load_table(
    settings: Settings,
    table: str | RawTable,
    data: pd.DataFrame | pa.Table | str | Path,
    interval_start: datetime | str | None = None,
    interval_end: datetime | str | None = None,
) -> LoadResult:
    """Upsert one frame or Parquet file into ``raw.<table>`` in a single transaction.

    With an interval only rows whose ``time_column`` is in ``[interval_start, interval_end)``
    are loaded, so an Airflow run for one data interval never rewrites another's rows.
    Raises :class:`ContractError` (nothing written) when the columns or types do not match.
    """
    raw = _resolve(table)
    start, end = _to_utc(interval_start), _to_utc(interval_end)
    arrow, source = _prepare(raw, data, settings, start, end)
    with db.connect(settings) as conn:
        _session(conn)
        create_raw_tables(conn)
        return _load(conn, raw, arrow, source, start, end)


def landed_tables(settings: Settings, landing_dir: str | Path | None = None) -> list[str]:
    """Names of the raw tables (sources) with a file in ``landing_dir``, in contract order.

    The ingest DAG maps one load task over these, so each source of an interval is loaded,
    retried and shown on its own."""
    directory = Path(landing_dir) if landing_dir is not None else settings.landing
    if not directory.is_dir():
        raise FileNotFoundError(f"landing directory {directory} does not exist")
    return [t.name for t in RAW_TABLES if (directory / t.file_name).exists()]


def load_landing(
    settings: Settings,
    landing_dir: str | Path | None = None,
    interval_start: datetime | str | None = None,
    interval_end: datetime | str | None = None,
    tables: Sequence[str] | None = None,
) -> list[LoadResult]:
    """Load every ``<raw table>.parquet`` present in ``landing_dir`` (default: the settings' landing),
    or only those of ``tables`` (one source at a time, as the ingest DAG does).

    All files are read and validated before anything is written, then loaded in one
    transaction: a bad file anywhere leaves the warehouse exactly as it was, so the Airflow task
    can simply be retried once the file is fixed.  Files that are not raw tables are ignored; a
    name in ``tables`` that is not a raw table is an error.
    """
    directory = Path(landing_dir) if landing_dir is not None else settings.landing
    if not directory.is_dir():
        raise FileNotFoundError(f"landing directory {directory} does not exist")
    if tables is not None:
        unknown = sorted(set(tables) - {t.name for t in RAW_TABLES})
        if unknown:
            raise ValueError(f"not raw tables: {', '.join(unknown)} (known: {', '.join(t.name for t in RAW_TABLES)})")
    start, end = _to_utc(interval_start), _to_utc(interval_end)
    prepared = [
        (table, *_prepare(table, directory / table.file_name, settings, start, end))
        for table in RAW_TABLES
        if (tables is None or table.name in tables) and (directory / table.file_name).exists()
    ]
    if not prepared:
        log.warning("no raw table file in %s", directory)
        return []
    with db.connect(settings) as conn:
        _session(conn)
        create_raw_tables(conn)
        dataset = dataset_claim.landing_dataset(directory)
        if dataset is not None:
            dataset_claim.claim(conn, dataset, directory, settings.warehouse_db)
        results = [_load(conn, table, arrow, source, start, end) for table, arrow, source in prepared]
    if tables is None:  # the whole landing: its other files (webhook archives, CSVs) keep no clear PAN either
        scrub_landing(settings, directory, exclude=[directory / t.file_name for t, _, _ in prepared])
    log.info("landing %s loaded: %d tables, %d rows in, %d inserted, %d updated", directory,
             len(results), sum(r.rows_in for r in results), sum(r.rows_inserted for r in results),
             sum(r.rows_updated for r in results))
    return results
