"""``riskloop audit pan``: look everywhere riskloop writes for a card number stored in clear.

The edges (``riskloop.core.pan``) should make this find nothing; the audit is how we know. It scans

- the **warehouse database**: every text, varchar, char, json and jsonb column of every user
  schema, one sequential scan per table, with a POSIX-regex prefilter in SQL (``~``) so only rows
  holding a 13+ digit run ever leave Postgres;
- **files**: riskloop's logs and run dir, the **landing directory** and the **batch-file store**
  (when it is a local directory) — landed files are tokenised when riskloop takes them in
  (``riskloop.data.landing_scrub``), so a number there is a finding like any other — the MLflow
  artifact root (when it is a local directory), dbt's ``target/`` and ``logs/`` (``<home>/dbt``; the
  project's own ``target/`` if someone ran dbt by hand), the GX Data Docs and Airflow's task logs, plus
  any ``--path`` given, line by line; a byte-regex prefilter skips lines without a long digit run.
  Parquet files are read by column (their pages are compressed: a number in them is not plain text).

A candidate counts only if it is Luhn-valid *and* fits a card scheme's IIN range and length
(:func:`riskloop.core.pan.find_pans`): ids and epoch milliseconds are not card numbers. Findings carry
the location and the masked number (BIN…last4), never the number itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from psycopg import sql

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.pan import SQL_PREFILTER, arrow_pan_rows, find_pans
from riskloop.data.contracts import data_docs_dir

log = logging.getLogger(__name__)

TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")
_BYTES_PREFILTER = re.compile(rb"[0-9](?:[ -]?[0-9]){11}")
_MAX_PER_LOCATION = 5  # masked examples kept per location (the count is exact)


@dataclass
class Finding:
    """Card numbers at one location: ``db:<schema>.<table>.<column>`` or a file path."""

    location: str
    count: int = 0
    examples: list[str] = field(default_factory=list)  # "masked (brand) at row/line"

    def add(self, masked: str, brand: str, where: str) -> None:
        self.count += 1
        if len(self.examples) < _MAX_PER_LOCATION:
            self.examples.append(f"{masked} ({brand}) at {where}")


@dataclass
class AuditReport:
    findings: list[Finding]
    tables_scanned: int
    columns_scanned: int
    rows_prefiltered: int
    files_scanned: int
    bytes_scanned: int
    locations: list[str]
    skipped: list[str]

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "hits": sum(f.count for f in self.findings),
                "findings": [asdict(f) for f in self.findings], "tables_scanned": self.tables_scanned,
                "columns_scanned": self.columns_scanned, "rows_prefiltered": self.rows_prefiltered,
                "files_scanned": self.files_scanned, "bytes_scanned": self.bytes_scanned,
                "locations": self.locations, "skipped": self.skipped}


# --- database ----------------------------------------------------------------------------------

def _text_columns(conn: Any) -> dict[tuple[str, str], list[str]]:
    rows = conn.execute(
        """
        select c.table_schema, c.table_name, c.column_name
        from information_schema.columns c
        join information_schema.tables t using (table_schema, table_name)
        where t.table_type = 'BASE TABLE'
          and c.data_type = any(%s)
          and c.table_schema not in ('pg_catalog', 'information_schema')
          and c.table_schema not like 'pg\\_%%'
        order by 1, 2, c.ordinal_position
        """, (list(TEXT_TYPES),)).fetchall()
    out: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in rows:
        out.setdefault((schema, table), []).append(column)
    return out


def scan_database(settings: Settings) -> tuple[list[Finding], int, int, int]:
    """Findings in the warehouse, and (tables, columns, rows past the SQL prefilter) scanned."""
    findings: list[Finding] = []
    n_cols = n_rows = 0
    with db.connect(settings) as conn:
        conn.execute("set transaction read only")
        tables = _text_columns(conn)
        for (schema, table), columns in tables.items():
            n_cols += len(columns)
            cols = [sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns]
            query = sql.SQL("select ctid::text, {cols} from {tbl} where {cond}").format(
                cols=sql.SQL(", ").join(cols), tbl=sql.Identifier(schema, table),
                cond=sql.SQL(" or ").join(sql.SQL("{} ~ %(re)s").format(c) for c in cols))
            per_col: dict[str, Finding] = {}
            with conn.cursor(name="riskloop_audit_pan") as cur:  # server-side: bounded memory
                cur.execute(query, {"re": SQL_PREFILTER})
                for row in cur:
                    n_rows += 1
                    for column, value in zip(columns, row[1:], strict=True):
                        if value is None:
                            continue
                        for hit in find_pans(value):
                            f = per_col.setdefault(column, Finding(f"db:{schema}.{table}.{column}"))
                            f.add(hit.masked, hit.brand, f"ctid {row[0]}")
            findings.extend(per_col.values())
    return findings, len(tables), n_cols, n_rows


# --- files ------------------------------------------------------------------------------------

def default_paths(settings: Settings) -> list[Path]:
    """Where riskloop and its components write logs and artifacts, and where files land (the MLflow
    artifact root, when local, is last)."""
    from riskloop.data.transform import dbt_artifacts_dir

    paths = [settings.log_dir, settings.run_dir, dbt_artifacts_dir(settings), settings.dbt_project_dir / "target",
             settings.airflow_home / "logs", data_docs_dir(settings), settings.landing]
    batch = urlsplit(settings.batch_store)
    if batch.scheme in ("", "file"):
        paths.append(Path(url2pathname(batch.path)) if batch.scheme else Path(settings.batch_store))
    artifacts = urlsplit(settings.artifacts)
    if artifacts.scheme in ("", "file"):
        paths.append(Path(url2pathname(artifacts.path)) if artifacts.scheme else Path(settings.artifacts))
    return paths


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for root in paths:
        if root.is_file():
            yield root
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    yield p


def _scan_parquet(path: Path) -> tuple[Finding | None, int]:
    import pyarrow.parquet as pq

    finding: Finding | None = None
    for column, row, hit in arrow_pan_rows(pq.read_table(path)):
        finding = finding or Finding(str(path))
        finding.add(hit.masked, hit.brand, f"column {column} row {row + 1}")
    return finding, path.stat().st_size


def scan_file(path: Path) -> tuple[Finding | None, int]:
    """Findings in one file, line by line, and the bytes read. Binary files are read too (a PAN in
    a pickle is still a run of ASCII digits); Parquet files by column, as values."""
    finding: Finding | None = None
    size = 0
    if path.suffix == ".parquet":
        try:
            return _scan_parquet(path)
        except Exception as exc:  # noqa: BLE001 - not readable as Parquet: scanned as bytes below
            log.warning("audit: %s not readable as Parquet (%s); scanned as bytes", path, type(exc).__name__)
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            size += len(line)
            if not _BYTES_PREFILTER.search(line):
                continue
            for hit in find_pans(line.decode("utf-8", errors="replace")):
                finding = finding or Finding(str(path))
                finding.add(hit.masked, hit.brand, f"line {number}")
    return finding, size


def scan_files(paths: Iterable[Path]) -> tuple[list[Finding], int, int]:
    findings, n_files, n_bytes = [], 0, 0
    for path in _files(paths):
        try:
            finding, size = scan_file(path)
        except OSError as exc:
            log.warning("audit: cannot read %s: %s", path, exc)
            continue
        n_files += 1
        n_bytes += size
        if finding:
            findings.append(finding)
    return findings, n_files, n_bytes


# --- both ---------------------------------------------------------------------------------------

def audit_pan(settings: Settings, extra_paths: Iterable[Path] = (), *, database: bool = True) -> AuditReport:
    """Scan the warehouse and the file locations; log each finding (masked) and return the report."""
    paths = [*default_paths(settings), *map(Path, extra_paths)]
    skipped = [f"{what} {url} (not a local directory)"
               for what, url in (("artifact root", settings.artifacts), ("batch-file store", settings.batch_store))
               if urlsplit(url).scheme not in ("", "file")]
    db_findings, n_tables, n_cols, n_rows = scan_database(settings) if database else ([], 0, 0, 0)
    file_findings, n_files, n_bytes = scan_files(paths)
    report = AuditReport(findings=db_findings + file_findings, tables_scanned=n_tables, columns_scanned=n_cols,
                         rows_prefiltered=n_rows, files_scanned=n_files, bytes_scanned=n_bytes,
                         locations=[f"db:{settings.warehouse_db}"] * database + [str(p) for p in paths if p.exists()],
                         skipped=skipped)
    for f in report.findings:
        log.error("card number in clear: %s (%d): %s", f.location, f.count, "; ".join(f.examples))
    log.info("PAN audit: %s; %d tables / %d columns / %d prefiltered rows, %d files / %d bytes",
             "clean" if report.clean else f"{sum(f.count for f in report.findings)} hits", n_tables, n_cols,
             n_rows, n_files, n_bytes)
    return report
