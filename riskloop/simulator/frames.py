"""Small vectorised helpers shared by the derivations: ids, timestamps and schema-conformant frames.

Times are carried as int64 nanoseconds since the Unix epoch (UTC) inside the derivations:
adding lags and filtering on ``as_of`` is then plain integer arithmetic, and only the final
frame pays for conversion to tz-aware timestamps.  Ids are built with Arrow's string kernels
because formatting millions of ids is the single most expensive step of a derivation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from riskloop.core.schema import RAW_TABLES_BY_NAME, Column

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND

# How each schema pg_type lands in pandas (and, through pyarrow, in Parquet).
PANDAS_DTYPES: Mapping[str, str] = {
    "text": "object",
    "timestamptz": "datetime64[ns, UTC]",
    "bigint": "int64",
    "integer": "int32",
    "double precision": "float64",
    "boolean": "bool",
}

# And in Arrow/Parquet: an explicit schema, so that even an empty table lands typed columns
# (pandas would write an empty object column as Arrow's null type).
ARROW_TYPES: Mapping[str, pa.DataType] = {
    "text": pa.string(),
    "timestamptz": pa.timestamp("ns", tz="UTC"),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
}

StrParts: TypeAlias = str | pa.Array | pa.ChunkedArray


def ints_to_str(values: np.ndarray) -> pa.Array:
    """Decimal strings of integers, as an Arrow array (cheap to take() and join later)."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())


def join(*parts: StrParts | np.ndarray) -> pa.Array:
    """Element-wise concatenation of string scalars and equal-length string arrays (Arrow or object)."""
    return pc.binary_join_element_wise(*(p if isinstance(p, (str, pa.Array, pa.ChunkedArray))
                                         else pa.array(p, pa.string()) for p in parts), "")


def choice_labels(labels: tuple[str, ...] | list[str], codes: np.ndarray) -> np.ndarray:
    """The label of each integer code, as an object ndarray (indexing shares the few str objects)."""
    return np.asarray(labels, dtype=object)[np.asarray(codes, dtype=np.int64)]


def labels_arrow(labels: tuple[str, ...] | list[str], codes: np.ndarray) -> pa.Array:
    """The label of each integer code, as an Arrow string array (to feed `join`)."""
    return pa.array(list(labels), pa.string()).take(pa.array(np.asarray(codes, dtype=np.int64)))


def filled(n: int, value: object) -> np.ndarray:
    """An object ndarray of ``n`` references to ``value`` (``np.full`` is ~25x slower for objects)."""
    out = np.empty(n, dtype=object)
    out[:] = value
    return out


def to_objects(values: StrParts | np.ndarray) -> np.ndarray:
    """An object ndarray of Python str (None for nulls): pandas' default string representation."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=object)


def ns_to_utc(ns: np.ndarray) -> pd.DatetimeIndex:
    """int64 epoch nanoseconds to tz-aware UTC timestamps."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("datetime64[ns]")).tz_localize("UTC")


def utc_ns(ts: pd.Timestamp | str) -> int:
    """Epoch nanoseconds of a timestamp; a naive one is taken as UTC (the handbook's times are)."""
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value)


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a raw table, from ``riskloop.core.schema`` (names, order, types, nullability)."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.pg_type], nullable=c.nullable)
                      for c in RAW_TABLES_BY_NAME[table].columns])


def to_arrow(table: str, frame: pd.DataFrame) -> pa.Table:
    """A schema-conformant frame as an Arrow table with the contract's exact types."""
    return pa.Table.from_pandas(frame, schema=arrow_schema(table), preserve_index=False)


def _cast(values: object, column: Column, n: int) -> object:
    dtype = PANDAS_DTYPES[column.pg_type]
    if column.pg_type == "timestamptz":
        return ns_to_utc(values)  # type: ignore[arg-type]
    if column.pg_type == "text":
        if isinstance(values, str):
            return filled(n, values)
        return to_objects(values)  # type: ignore[arg-type]
    return np.asarray(values).astype(dtype, copy=False)


def schema_frame(table: str, columns: Mapping[str, object], n: int) -> pd.DataFrame:
    """A frame with exactly the schema's columns, in its order, with its pandas dtypes.

    Every derived table is built through here, so a column added to or renamed in
    ``riskloop.core.schema`` fails loudly instead of silently landing a different contract.
    A ``str`` value is broadcast (e.g. the currency).
    """
    spec = RAW_TABLES_BY_NAME[table]
    names = spec.column_names
    if set(columns) != set(names):
        raise ValueError(f"{table}: columns {sorted(columns)} do not match the schema {names}")
    # copy=False: no consolidation of the object columns into one block, which would copy
    # every string reference of a multi-million-row table once more.
    frame = pd.DataFrame({c.name: _cast(columns[c.name], c, n) for c in spec.columns}, columns=names, copy=False)
    if len(frame) != n:
        raise ValueError(f"{table}: expected {n} rows, built {len(frame)}")
    return frame


# --- JSON lines without a Python loop per row ---------------------------------------------------
# The simulator writes hundreds of thousands of JSON bodies (webhooks/*.jsonl, score_requests.jsonl);
# json.dumps per row was most of `riskloop simulate`'s time. These build the same bytes column-wise.



def json_str(values: object, ensure_ascii: bool = False) -> pa.Array:
    """Each string as a JSON literal, byte-identical to ``json.dumps(s, ensure_ascii=...)``; null → ``null``.

    Values without a character JSON escapes are quoted column-wise; the rare others go through
    :func:`json.dumps` one by one, so the output is exact either way.
    """
    import json

    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.cast(arr, pa.string())
    quoted = pc.binary_join_element_wise('"', arr, '"', "")
    pattern = r'["\\]|[\x00-\x1f]' + (r"|[^\x00-\x7f]" if ensure_ascii else "")
    special = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
    if pc.any(special).as_py():
        idx = np.flatnonzero(special.to_numpy(zero_copy_only=False))
        fixed = [json.dumps(v, ensure_ascii=ensure_ascii) for v in arr.take(pa.array(idx)).to_pylist()]
        mask = np.zeros(len(arr), dtype=bool)
        mask[idx] = True
        replacement = pa.array(np.array(fixed, dtype=object)[np.cumsum(mask) - 1], pa.string())
        quoted = pc.if_else(pa.array(mask), replacement, quoted)
    return pc.fill_null(quoted, "null")


def json_int(values: object) -> pa.Array:
    """Integers as JSON numbers (decimal strings)."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())


def json_bool(values: object) -> pa.Array:
    return pa.array(np.where(np.asarray(values, dtype=bool), "true", "false"), pa.string())


def write_lines(path: object, lines: pa.Array) -> None:
    """Write one line per element (UTF-8, ``\\n`` after each), write-then-rename."""
    from pathlib import Path

    target = Path(path)  # type: ignore[arg-type]
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as fh:
        if len(lines):
            fh.write("\n".join(lines.to_pylist()).encode("utf-8") + b"\n")
    tmp.replace(target)
