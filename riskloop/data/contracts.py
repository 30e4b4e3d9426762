"""Data contracts on the raw layer: a Great Expectations 1.x checkpoint over ``raw.*``.

The suites are data (``expectations/<table>.json``), reviewed like code but readable by anyone
who owns a feed.  :func:`run_contracts` builds an *ephemeral* GX context (nothing written to a
``gx/`` folder, nothing shared between runs), a Postgres datasource on the warehouse, one table
asset + whole-table batch definition + validation definition per raw table, and one Checkpoint
running all of them.  A failed expectation raises :class:`ContractViolation`: the Airflow task
fails and nothing downstream (dbt, training) sees the bad batch.  Every run, passing or not, is
recorded in ``raw.contract_runs`` so a failure can be explained after the fact, and renders GX
Data Docs into ``<home>/data_docs`` (``index.html``).

On failure the rows that broke a row-level expectation are moved to ``quarantine.<table>``
(:mod:`riskloop.data.quarantine`), the good rows and the landed files stay untouched, and one
``contract_violation`` alert is raised (:func:`riskloop.core.alerts.notify`).

The feature marts Feast materialises have suites too (``expectations/marts/<mart>.json``,
:func:`run_mart_contracts`): the ingest DAG checks them between dbt and ``materialize``.

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

from riskloop.core import db
from riskloop.core.config import PROJECT_ROOT, Settings
from riskloop.core.schema import CONTRACT_TABLES_BY_NAME, RAW_SCHEMA

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"
MART_EXPECTATIONS_DIR = EXPECTATIONS_DIR / "marts"
MARTS_SCHEMA = "marts"
CONTRACT_RUNS = "contract_runs"
DATA_DOCS_SITE = "riskloop"


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

    @property
    def label(self) -> str:
        """``type(column)`` or ``type[description]``: how a quarantined row names what it broke."""
        return _label(self.expectation, self.column, self.description)

    def __str__(self) -> str:
        what = self.label
        if self.description and self.column:
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
    quarantined: dict[str, int] = field(default_factory=dict)  # table -> rows moved to quarantine.<table>
    data_docs: str | None = None  # index.html of the GX Data Docs of this run

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [f for t in self.tables.values() for f in t.failed]

    def summary(self) -> str:
        if self.success:
            n = sum(t.evaluated for t in self.tables.values())
            return f"contracts passed: {n} expectations on {len(self.tables)} tables"
        lines = [f"contracts failed on {sorted(t for t, r in self.tables.items() if not r.success)}:"]
        lines += [f"  - {f}" for f in self.failures]
        if self.quarantined:
            lines.append("quarantined (moved out of the raw table; good rows and landed files untouched): " + ", ".join(
                f"{n} rows of {t} -> quarantine.{t}" for t, n in sorted(self.quarantined.items())))
        if self.data_docs:
            lines.append(f"data docs: {self.data_docs}")
        return "\n".join(lines)


class ContractViolation(RuntimeError):
    """Raised when a raw table breaks its contract; ``.report`` says which expectations, where."""

    def __init__(self, report: ContractReport) -> None:
        super().__init__(report.summary())
        self.report = report


# --- suites as data ------------------------------------------------------------------------

def load_suite_specs(tables: list[str] | None = None, directory: Path = EXPECTATIONS_DIR) -> dict[str, dict]:
    """Read ``<directory>/<table>.json`` for the requested (default: all) contract tables
    (:data:`riskloop.core.schema.CONTRACT_TABLES`: the landed files' and the batch files' tables)."""
    names = list(tables) if tables else list(CONTRACT_TABLES_BY_NAME)
    unknown = [n for n in names if n not in CONTRACT_TABLES_BY_NAME]
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


def build_suite(spec: dict, schema: str = RAW_SCHEMA):
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
    return gx.ExpectationSuite(name=f"{schema}.{spec['table']}", expectations=expectations)


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


def _record(settings: Settings, report: ContractReport, schema: str = RAW_SCHEMA) -> None:
    failures = {t: [asdict(f) for f in r.failed] for t, r in report.tables.items() if r.failed}
    with db.connect(settings) as conn:
        conn.execute(
            f"insert into {RAW_SCHEMA}.{CONTRACT_RUNS} (run_id, run_at, success, tables, failures, evaluated, "
            "seconds, schema_name, quarantined) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (report.run_id, report.run_at, report.success, list(report.tables), Jsonb(failures),
             Jsonb({t: r.evaluated for t, r in report.tables.items()}), report.seconds, schema,
             Jsonb(report.quarantined)),
        )


def data_docs_dir(settings: Settings) -> Path:
    """Where the contract runs build GX Data Docs (scanned by ``riskloop audit pan`` too)."""
    return settings.home / "data_docs"


def _context(settings: Settings) -> Any:
    """An ephemeral GX context (suites live in expectations/, results in raw.contract_runs; no gx/
    folder, no telemetry, no tqdm bars in the Airflow task log) with one Data Docs site on disk."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    ))
    context.add_data_docs_site(site_name=DATA_DOCS_SITE, site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs_dir(settings))},
    })
    return context


def _checkpoint(settings: Settings, schema: str, specs: dict[str, dict], name: str) -> tuple[ContractReport, dict]:
    """Run one Checkpoint over ``schema``'s tables; returns the report and the validation
    definitions by table (re-run on failure to locate the failing rows)."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    t0 = time.perf_counter()
    run_at = datetime.now(timezone.utc)
    context = _context(settings)
    # The schema goes in the connection (search_path), as GX >= 1.14 wants it, not in the asset.
    url = f"{settings.warehouse_url}?options=-csearch_path%3D{schema}"
    datasource = context.data_sources.add_postgres(name="warehouse", connection_string=url)
    definitions = {}
    for table, spec in specs.items():
        asset = datasource.add_table_asset(name=table, table_name=table)
        batch = asset.add_batch_definition_whole_table(f"{table}_all")
        suite = context.suites.add(build_suite(spec, schema))
        definitions[table] = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}_contract", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=name, validation_definitions=list(definitions.values()),
        actions=[UpdateDataDocsAction(name="data_docs", site_names=[DATA_DOCS_SITE])],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}))
    result = checkpoint.run()

    reports: dict[str, TableReport] = {}
    for suite_result in result.run_results.values():
        table = suite_result.suite_name.removeprefix(f"{schema}.")
        outcomes = [_outcome(table, r) for r in suite_result.results]
        reports[table] = TableReport(table=table, success=bool(suite_result.success), evaluated=len(outcomes),
                                     failed=[o for o in outcomes if not o.success])
    docs = data_docs_dir(settings) / "index.html"
    report = ContractReport(run_id=str(uuid.uuid4()), run_at=run_at,
                            success=bool(result.success) and all(r.success for r in reports.values()),
                            tables=reports, seconds=time.perf_counter() - t0,
                            data_docs=str(docs) if docs.exists() else None)
    return report, definitions


def _selections(table: str, definition: Any, spec: dict, failed: list[ExpectationOutcome]) -> list[Any]:
    """Where the failing rows of ``table`` are, per failed expectation (see riskloop.data.quarantine)."""
    from riskloop.data.quarantine import Selection, batch_placeholder

    key = list(CONTRACT_TABLES_BY_NAME[table].key)
    labels = {f.label for f in failed}
    out: list[Selection] = []
    row_level = [f for f in failed if f.expectation != "unexpected_rows_expectation"]
    if row_level:
        result = definition.run(result_format={"result_format": "COMPLETE", "unexpected_index_column_names": key,
                                               "return_unexpected_index_query": True})
        for res in result.results:
            outcome = _outcome(table, res)
            if res.success or outcome.label not in labels:
                continue
            details = res.result or {}
            if details.get("unexpected_index_query"):
                out.append(Selection(outcome.label, "keys", query=str(details["unexpected_index_query"])))
            elif details.get("unexpected_index_list"):
                out.append(Selection(outcome.label, "list", keys=tuple(
                    tuple(row[k] for k in key) for row in details["unexpected_index_list"])))
    for exp in spec["expectations"]:
        if exp["type"] == "unexpected_rows_expectation":
            label = _outcome_label(exp)
            if label in labels:
                out.append(Selection(label, "join", query=batch_placeholder(exp["kwargs"]["unexpected_rows_query"],
                                                                            table)))
    return out


def _outcome_label(exp: dict) -> str:
    column = exp["kwargs"].get("column") or (
        f"{exp['kwargs']['column_A']},{exp['kwargs']['column_B']}" if "column_A" in exp["kwargs"] else None)
    return _label(exp["type"], column, exp.get("description"))


def _label(expectation: str, column: str | None, description: str | None) -> str:
    if column:
        return f"{expectation}({column})"
    return f"{expectation}[{description}]" if description else expectation


def _quarantine(settings: Settings, report: ContractReport, definitions: dict, specs: dict[str, dict]) -> None:
    """Move every row-level failure's rows to quarantine.<table>, all tables in one transaction."""
    from riskloop.data.quarantine import move

    plans = {t: _selections(t, definitions[t], specs[t], r.failed) for t, r in report.tables.items() if r.failed}
    with db.connect(settings) as conn:
        for table, selections in plans.items():
            if selections:
                report.quarantined[table] = move(conn, table, selections, report.run_id)


def _alert(settings: Settings, report: ContractReport, schema: str) -> None:
    from riskloop.core import alerts

    failed = sorted(t for t, r in report.tables.items() if not r.success)
    alerts.notify(settings, "contract_violation", ",".join(f"{schema}.{t}" for t in failed), report.summary(),
                  details={"run_id": report.run_id, "failures": [str(f) for f in report.failures],
                           "quarantined": report.quarantined},
                  report=alerts.report_url(settings, report.data_docs))


def run_contracts(settings: Settings, tables: list[str] | None = None, *, raise_on_failure: bool = True,
                  expectations_dir: Path = EXPECTATIONS_DIR, quarantine: bool = True) -> ContractReport:
    """Validate the raw tables (default: all of ``CONTRACT_TABLES``, the batch files' included)
    with a GX Checkpoint; raise :class:`ContractViolation` on failure.

    The raw tables are created if missing (empty), so a feed that never landed fails its
    row-count expectation instead of crashing the checkpoint with a missing-table error. On a
    failure (and ``quarantine``), failing rows move to ``quarantine.<table>`` and an alert is raised.
    """
    from riskloop.data.ingest import create_raw_tables

    specs = load_suite_specs(tables, expectations_dir)
    with db.connect(settings) as conn:
        create_raw_tables(conn)
    report, definitions = _checkpoint(settings, RAW_SCHEMA, specs, "raw_contracts")
    if not report.success and quarantine:
        _quarantine(settings, report, definitions, specs)
    _record(settings, report)
    if report.success:
        log.info("%s (%.1fs)", report.summary(), report.seconds)
        return report
    log.error("%s", report.summary())
    if quarantine:
        _alert(settings, report, RAW_SCHEMA)
    if raise_on_failure:
        raise ContractViolation(report)
    return report


# --- the feature marts, before Feast materialises them ------------------------------------------

def load_mart_specs(directory: Path = MART_EXPECTATIONS_DIR, marts: list[str] | None = None) -> dict[str, dict]:
    """Every ``<directory>/<mart>.json`` suite (or those of ``marts``), by mart name."""
    specs = {}
    for path in sorted(directory.glob("*.json")):
        spec = json.loads(path.read_text())
        if spec.get("table") != path.stem:
            raise ValueError(f"{path}: declares table {spec.get('table')!r}, expected {path.stem!r}")
        specs[path.stem] = spec
    if not specs:
        raise FileNotFoundError(f"no mart suites in {directory}")
    unknown = sorted(set(marts or ()) - set(specs))
    if unknown:
        raise ValueError(f"no mart suite for {unknown} in {directory}")
    return {m: specs[m] for m in marts} if marts else specs


def run_mart_contracts(settings: Settings, marts: list[str] | None = None, *, raise_on_failure: bool = True,
                       directory: Path = MART_EXPECTATIONS_DIR) -> ContractReport:
    """Validate ``marts.*`` (default: every mart with a suite, the real-time windows' included)
    before materialisation. A failure raises (nothing is moved: marts are rebuilt from raw by
    dbt, so the fix is upstream) and raises a ``contract_violation`` alert."""
    report, _ = _checkpoint(settings, MARTS_SCHEMA, load_mart_specs(directory, marts), "mart_contracts")
    _record(settings, report, MARTS_SCHEMA)
    if report.success:
        log.info("mart %s (%.1fs)", report.summary(), report.seconds)
        return report
    log.error("mart %s", report.summary())
    _alert(settings, report, MARTS_SCHEMA)
    if raise_on_failure:
        raise ContractViolation(report)
    return report


def latest_runs(settings: Settings, before: datetime | None = None) -> list[dict[str, Any]]:
    """The latest recorded contract run of each schema (``raw``, ``marts``), oldest schema name first.

    A training run records these as its data-contract results: which checks the data it read had
    passed. Empty when no contract ever ran against this warehouse (e.g. marts built by hand).
    """
    with db.connect(settings) as conn:
        if not conn.execute("select to_regclass(%s) is not null", (f"{RAW_SCHEMA}.{CONTRACT_RUNS}",)).fetchone()[0]:
            return []
        rows = conn.execute(
            f"select distinct on (schema_name) schema_name, run_id, run_at, success, tables, failures, evaluated "
            f"from {RAW_SCHEMA}.{CONTRACT_RUNS} where run_at <= coalesce(%s, now()) "
            "order by schema_name, run_at desc", (before,)).fetchall()
    return [{"schema": schema, "run_id": str(run_id), "run_at": run_at.isoformat(), "success": success,
             "tables": list(tables), "evaluated": int(sum(evaluated.values())),
             "failed": sum(len(f) for f in failures.values())}
            for schema, run_id, run_at, success, tables, failures, evaluated in rows]
