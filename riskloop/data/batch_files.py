"""Processors' batch files (settlements, disputes) from object storage into ``raw``, idempotently.

Layout of the store (:mod:`riskloop.core.objectstore`; S3 or a local directory)::

    incoming/<kind>/<processor>/<YYYY-MM-DD>.csv   delivered by the processor
    archive/<kind>/<processor>/<YYYY-MM-DD>.csv    loaded (moved here after the commit)
    rejected/<kind>/<processor>/<YYYY-MM-DD>.csv   malformed (moved here, with <file>.error.txt)

``<kind>`` is ``settlements`` or ``disputes`` (:data:`riskloop.core.schema.BATCH_FILE_TABLES`). A file
is a CSV with a header naming exactly the contract's columns. Each file is parsed and checked
completely before anything is written, then upserted in one transaction keyed by (file, line),
with the object's arrival time (``LastModified``) on every row, so point-in-time training can
tell what was known when. Only after the commit is the file moved to ``archive/``: a crash in
between leaves it in ``incoming/`` and the next run loads it again, which changes nothing.
A file delivered again unchanged changes nothing either (its rows keep their first arrival time);
a corrected one updates the lines that differ.

A card number anywhere in a file (whatever the column) is tokenised on arrival: the object in
``incoming/`` is overwritten with its tokenised text before it is parsed (``riskloop.data.landing_scrub``),
so what is loaded, archived or rejected never holds the number in clear.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

from riskloop.core import db, pan
from riskloop.core.config import Settings
from riskloop.core.objectstore import ObjectInfo, ObjectStore, open_store
from riskloop.core.schema import BATCH_FILE_TABLES, BATCH_LINEAGE_COLUMNS, RawTable
from riskloop.data.ingest import ContractError, LoadResult, conform, ensure_table, load_conformed
from riskloop.data.landing_scrub import once, scrub_text

log = logging.getLogger(__name__)

INCOMING, ARCHIVE, REJECTED = "incoming", "archive", "rejected"


class BatchFilesRejected(RuntimeError):
    """Some files were malformed: nothing of them was written; they are under ``rejected/``."""

    def __init__(self, rejected: dict[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in rejected.items()))
        self.rejected = rejected


@dataclass
class BatchLoadReport:
    loaded: list[LoadResult] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"files_loaded": len(self.loaded), "rows_in": sum(r.rows_in for r in self.loaded),
                "inserted": sum(r.rows_inserted for r in self.loaded),
                "updated": sum(r.rows_updated for r in self.loaded),
                "archived": self.archived, "rejected": self.rejected}


def file_columns(table: RawTable) -> list[str]:
    """The columns a processor's file carries (the contract minus what riskloop adds)."""
    return [c for c in table.column_names if c not in BATCH_LINEAGE_COLUMNS]


def kind_of(key: str) -> str:
    """``incoming/settlements/stripe/2024-03-01.csv`` → ``settlements``; ContractError if unknown."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != INCOMING or parts[1] not in BATCH_FILE_TABLES or not key.endswith(".csv"):
        raise ContractError(f"unexpected object {key!r}: want {INCOMING}/<{'|'.join(BATCH_FILE_TABLES)}>/…/<name>.csv")
    return parts[1]


def parse_file(table: RawTable, source_file: str, data: bytes, arrived_at: datetime) -> pa.Table:
    """CSV bytes → the contract's Arrow table (with file, line and arrival); ContractError if malformed."""
    import pyarrow.csv as pacsv

    expected = file_columns(table)
    header = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip().split(",")
    if header != expected:
        raise ContractError(f"{source_file}: header {header} is not the {table.name} contract {expected}")
    types = {c.name: pacsv_type(c.pg_type) for c in table.columns if c.name in expected}
    try:
        arrow = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        # Arrow names the column by position ("In CSV column #3: …"): say which contract column it is.
        found = re.search(r"column #(\d+)", str(exc))
        where = f" in column {expected[int(found.group(1))]!r}" if found and int(found.group(1)) < len(expected) else ""
        raise ContractError(f"{source_file}: not a valid {table.name} CSV{where} ({exc})") from exc
    n = arrow.num_rows
    arrow = arrow.append_column("source_file", pa.array([source_file] * n, pa.string()))
    arrow = arrow.append_column("line_no", pa.array(range(1, n + 1), pa.int32()))
    arrow = arrow.append_column("arrived_at", pa.array([arrived_at] * n, pa.timestamp("us", tz="UTC")))
    try:
        return conform(table, arrow)
    except ContractError as exc:
        raise ContractError(f"{source_file}: {exc}") from exc


def pacsv_type(pg_type: str) -> pa.DataType:
    """The Arrow type a CSV column is read as (strict: ``abc`` in a bigint column is an error)."""
    return {"text": pa.string(), "bigint": pa.int64(), "integer": pa.int32(), "double precision": pa.float64(),
            "boolean": pa.bool_(), "timestamptz": pa.timestamp("us", tz="UTC")}[pg_type]


def _tokenised(store: ObjectStore, obj: ObjectInfo, tok: Callable[[], pan.PanTokenizer]) -> bytes:
    """The file's bytes with any card number tokenised where it stands (whatever the column); a file that
    held one is first overwritten in ``incoming/`` with that version, so neither ``archive/`` nor
    ``rejected/`` ever holds it in clear. Its arrival time stays the one listed before."""
    data = store.get(obj.key)
    try:
        scrubbed, n = scrub_text(data, tok)
    except UnicodeDecodeError:  # not UTF-8: parse_file rejects it
        return data
    if n:
        store.put(obj.key, scrubbed)
        log.warning("batch file %s: %d card numbers tokenised on arrival (file rewritten)", obj.key, n)
    return scrubbed


def _reject(store: ObjectStore, obj: ObjectInfo, reason: str) -> str:
    rel = obj.key.removeprefix(f"{INCOMING}/")
    target = f"{REJECTED}/{rel}"
    store.move(obj.key, target)
    store.put(f"{target}.error.txt", (reason + "\n").encode())
    log.error("batch file %s rejected, nothing written, moved to %s: %s", obj.key, target, reason)
    return target


def load_batch_files(settings: Settings, store: ObjectStore | None = None, *,
                     raise_on_rejected: bool = True) -> BatchLoadReport:
    """Load every file under ``incoming/``, archive what was loaded, reject what is malformed.

    Each good file is its own transaction (one processor's bad file must not hold back the
    others' settlements); every malformed one is moved to ``rejected/`` with its reason and, at the
    end, :class:`BatchFilesRejected` names them all so the Airflow task fails and alerts.
    """
    store = store or open_store(settings)
    report = BatchLoadReport()
    tok = once(lambda: pan.tokenizer(settings))
    objects = [o for o in store.list(f"{INCOMING}/") if not o.key.endswith((".part", ".error.txt"))]
    log.info("%d batch file(s) in %s/%s", len(objects), store.url, INCOMING)
    for obj in objects:
        source_file = obj.key.removeprefix(f"{INCOMING}/")
        try:
            table = BATCH_FILE_TABLES[kind_of(obj.key)]
            arrow = parse_file(table, source_file, _tokenised(store, obj, tok), obj.last_modified)
        except ContractError as exc:
            _reject(store, obj, str(exc))
            report.rejected[obj.key] = str(exc)
            continue
        with db.connect(settings) as conn:
            ensure_table(conn, table)
            result = load_conformed(conn, table, arrow, source_file)
        report.loaded.append(result)
        archived = f"{ARCHIVE}/{source_file}"
        store.move(obj.key, archived)
        report.archived.append(archived)
    log.info("batch files: %s", report.to_dict())
    if report.rejected and raise_on_rejected:
        raise BatchFilesRejected(report.rejected)
    return report
