"""Data contracts on the raw layer: a Great Expectations 1.x checkpoint over ``raw.*``.

The suites are data (``expectations/<table>.json``), reviewed like code but readable by anyone
who owns a feed.  :func:`run_contracts` builds an *ephemeral* GX context (nothing written to a
``gx/`` folder, nothing shared between runs), a Postgres datasource on the warehouse, one table
asset + whole-table batch definition + validation definition per raw table, and one Checkpoint
running all of them.  A failed expectation raises :class:`ContractViolation`: the Airflow task
fails and nothing downstream (dbt, training) sees the bad batch.  Every run, passing or not, is
recorded in ``raw.contract_runs`` so a failure can be explained after the fact.

GX takes ~9 s to import, so it is imported inside the functions that need it only.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from riskloop import db
from riskloop.config import PROJECT_ROOT, Settings
from riskloop.schema import RAW_SCHEMA, RAW_TABLES_BY_NAME

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"
CONTRACT_RUNS = "contract_runs"


@dataclass(frozen=True)
class ExpectationOutcome:
    """One evaluated expectation, reduced to what a person needs to act on a failure."""

    table: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    observed_value: Any = None
    description: str | None = None
    exception: str | None = None

    def __str__(self) -> str:
        what = self.expectation + (f"({self.column})" if self.column else "")
        if self.description:
            what += f" [{self.description}]"
        if self.exception:
            return f"{self.table}: {what} raised {self.exception}"
        if self.unexpected_count is not None:
            of = f"/{self.element_count}" if self.element_count is not None else ""
            return f"{self.table}: {what} failed on {self.unexpected_count}{of} rows"
        return f"{self.table}: {what} failed (observed {self.observed_value!r})"


@dataclass
class TableReport:
    table: str
    success: bool
    evaluated: int
    failed: list[ExpectationOutcome] = field(default_factory=list)


@dataclass
class ContractReport:
    """The outcome of one checkpoint run over some raw tables."""

    run_id: str
    run_at: datetime
    success: bool
    tables: dict[str, TableReport]
    seconds: float

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [f for t in self.tables.values() for f in t.failed]

    def summary(self) -> str:
        if self.success:
            n = sum(t.evaluated for t in self.tables.values())
            return f"contracts passed: {n} expectations on {len(self.tables)} tables"
        lines = [f"contracts failed on {sorted(t for t, r in self.tables.items() if not r.success)}:"]
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


class ContractViolation(RuntimeError):
    """Raised when a raw table breaks its contract; ``.report`` says which expectations, where."""

    def __init__(self, report: ContractReport) -> None:
        super().__init__(report.summary())
        self.report = report


# --- suites as data ------------------------------------------------------------------------

def load_suite_specs(tables: list[str] | None = None, directory: Path = EXPECTATIONS_DIR) -> dict[str, dict]:
    """Read ``<directory>/<table>.json`` for the requested (default: all) raw tables."""
    names = list(tables) if tables else list(RAW_TABLES_BY_NAME)
    unknown = [n for n in names if n not in RAW_TABLES_BY_NAME]
    if unknown:
        raise ValueError(f"not raw tables: {unknown}")
    specs = {}
    for name in names:
        path = directory / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"no expectation suite for raw.{name} (expected {path})")
        spec = json.loads(path.read_text())
        if spec.get("table") != name:
            raise ValueError(f"{path}: declares table {spec.get('table')!r}, expected {name!r}")
        specs[name] = spec
    return specs


def build_suite(spec: dict):
    """A GX ExpectationSuite from a JSON spec; an invalid expectation is an error, not skipped.

    (``gx.ExpectationSuite(expectations=[dict])`` logs and *drops* invalid configurations, which
    would silently weaken a contract, so each one is converted here first.)
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for i, exp in enumerate(spec["expectations"]):
        cfg = ExpectationConfiguration(type=exp["type"], kwargs=dict(exp["kwargs"]), meta=exp.get("meta"),
                                       description=exp.get("description"))
        try:
            expectations.append(cfg.to_domain_obj())
        except Exception as exc:  # GX raises several unrelated types here
            raise ValueError(f"expectations/{spec['table']}.json #{i} ({exp['type']}): {exc}") from exc
    return gx.ExpectationSuite(name=f"{RAW_SCHEMA}.{spec['table']}", expectations=expectations)


# --- running -------------------------------------------------------------------------------

def _outcome(table: str, res: Any) -> ExpectationOutcome:
    cfg = res.expectation_config
    result = res.result or {}
    exc = (res.exception_info or {}) if isinstance(res.exception_info, dict) else {}
    message = exc.get("exception_message") if exc.get("raised_exception") else None
    unexpected = result.get("unexpected_count")
    observed = result.get("observed_value")
    if cfg.type == "unexpected_rows_expectation" and unexpected is None and isinstance(observed, (int, float)):
        unexpected = int(observed)
    return ExpectationOutcome(
        table=table,
        expectation=cfg.type,
        column=cfg.kwargs.get("column") or (
            f"{cfg.kwargs['column_A']},{cfg.kwargs['column_B']}" if "column_A" in cfg.kwargs else None),
        success=bool(res.success),
        unexpected_count=unexpected,
        element_count=result.get("element_count"),
        observed_value=observed if isinstance(observed, (int, float, str, bool, type(None))) else str(observed),
        description=cfg.description,
        exception=message,
    )


def _ensure_runs_table(conn) -> None:
    conn.execute(f"""
        create table if not exists {RAW_SCHEMA}.{CONTRACT_RUNS} (
          run_id uuid primary key,
          run_at timestamptz not null,
          success boolean not null,
          tables text[] not null,
          failures jsonb not null,
          evaluated jsonb not null,
          seconds double precision not null
        )""")


def _record(settings: Settings, report: ContractReport) -> None:
    failures = {t: [asdict(f) for f in r.failed] for t, r in report.tables.items() if r.failed}
    with db.connect(settings) as conn:
        _ensure_runs_table(conn)
        conn.execute(
            f"insert into {RAW_SCHEMA}.{CONTRACT_RUNS} values (%s, %s, %s, %s, %s, %s, %s)",
            (report.run_id, report.run_at, report.success, list(report.tables), Jsonb(failures),
             Jsonb({t: r.evaluated for t, r in report.tables.items()}), report.seconds),
        )


def run_contracts(settings: Settings, tables: list[str] | None = None, *, raise_on_failure: bool = True,
                  expectations_dir: Path = EXPECTATIONS_DIR) -> ContractReport:
    """Validate the raw tables (default: all) with a GX Checkpoint; raise :class:`ContractViolation` on failure.

    The raw tables are created if missing (empty), so a feed that never landed fails its
    row-count expectation instead of crashing the checkpoint with a missing-table error.
    """
    import great_expectations as gx

    from riskloop.ingest import create_raw_tables

    t0 = time.perf_counter()
    run_at = datetime.now(timezone.utc)
    specs = load_suite_specs(tables, expectations_dir)
    with db.connect(settings) as conn:
        create_raw_tables(conn)

    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # Ephemeral: suites live in expectations/, results in raw.contract_runs; no gx/ folder, no
    # telemetry, no tqdm bars in the Airflow task log.
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    ))
    # The schema goes in the connection (search_path), as GX >= 1.14 wants it, not in the asset.
    url = f"{settings.warehouse_url}?options=-csearch_path%3D{RAW_SCHEMA}"
    datasource = context.data_sources.add_postgres(name="warehouse", connection_string=url)
    definitions = []
    for name, spec in specs.items():
        asset = datasource.add_table_asset(name=name, table_name=name)
        batch = asset.add_batch_definition_whole_table(f"{name}_all")
        suite = context.suites.add(build_suite(spec))
        definitions.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_contract", data=batch, suite=suite)))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="raw_contracts", validation_definitions=definitions, actions=[],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}))
    result = checkpoint.run()

    reports: dict[str, TableReport] = {}
    for suite_result in result.run_results.values():
        table = suite_result.suite_name.removeprefix(f"{RAW_SCHEMA}.")
        outcomes = [_outcome(table, r) for r in suite_result.results]
        reports[table] = TableReport(table=table, success=bool(suite_result.success), evaluated=len(outcomes),
                                     failed=[o for o in outcomes if not o.success])
    report = ContractReport(run_id=str(uuid.uuid4()), run_at=run_at,
                            success=bool(result.success) and all(r.success for r in reports.values()),
                            tables=reports, seconds=time.perf_counter() - t0)
    _record(settings, report)
    if report.success:
        log.info("%s (%.1fs)", report.summary(), report.seconds)
    else:
        log.error("%s", report.summary())
        if raise_on_failure:
            raise ContractViolation(report)
    return report
