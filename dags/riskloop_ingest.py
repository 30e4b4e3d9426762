"""Ingest (per source) → contracts → transform → mart contracts → materialize: landed files to
online features; after the transform, the settlement reconciliation check (breaks page on-call).

Thin and declarative: every task calls one riskloop function, imported inside the task so that
parsing this file costs nothing. Each task is idempotent (upserts keyed by natural keys, dbt
rebuilds, Feast materialisation up to the interval's end), so re-running an interval is safe.
Each task logs in as its component's database role (riskloop.core.roles): loads, contracts, the
settlement check and Feast as ``riskloop_ingest``, dbt as ``riskloop_transform``.

Per source, per interval: ``landed`` lists the sources with a file and ``load_raw`` is mapped over
them, one task instance per source (ledger, webhooks, disputes, KYC, credit applications and
outcomes), each retried on its own; the contracts then check every raw table before dbt runs.

Backfills: a run reads only its data interval, never the wall clock: ``load_raw`` loads the rows
whose event time is in ``[data_interval_start, data_interval_end)``, dbt rebuilds the marts from
raw, and Feast materialises up to the interval's end. A backfill over a range therefore leaves
the same warehouse as the same days run one by one (tests/test_scheduler.py). The wall clock is
only written where it is the fact recorded: the lineage columns (``_loaded_at``, the arrival
time) and the audit rows (``raw.load_batches``, ``raw.contract_runs``).

Schedule: daily from ``RISKLOOP_SCHEDULE_START`` (to ``RISKLOOP_SCHEDULE_END`` if set), catchup
only with ``RISKLOOP_SCHEDULE_CATCHUP=true``; history is loaded with
``riskloop backfill riskloop_ingest --from … --to …``.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

# Light (pydantic only, no database): start/end/catchup come from RISKLOOP_SCHEDULE_*.
from riskloop.core.config import get_settings
from riskloop.ops.dag_defaults import ONLINE_FEATURES, default_args, on_failure, schedule_args

# Emitted when the online store holds the interval's features; riskloop_train is scheduled on it.


DEFAULT_ARGS = default_args("riskloop-platform", retries=2, retry_delay=timedelta(minutes=1),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="riskloop_ingest",
    # A data-interval timetable, not Airflow 3's default for "@daily" (CronTriggerTimetable, whose
    # runs have an empty interval): each scheduled or backfilled run covers one whole day.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    **schedule_args(),
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "ingest"],
    params={
        "landing_dir": Param(None, type=["null", "string"],
                             description="Directory of landed files; default RISKLOOP_HOME/landing."),
        "as_of": Param(None, type=["null", "string"],
                       description="Materialise features up to this ISO time; default the interval end."),
    },
    doc_md=__doc__,
)
def riskloop_ingest():
    @task
    def landed(**context) -> list[str]:
        """The sources (raw tables) with a landed file: one load task is mapped over each. Every landed
        file is first tokenised in place (``riskloop.data.landing_scrub``)."""
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowSkipException

        from riskloop.data.ingest import landed_tables
        from riskloop.data.landing_scrub import scrub_landing

        settings = get_settings().as_role("ingest")
        landing = Path(context["params"]["landing_dir"] or settings.landing)
        # Tokenised on arrival: no file of the landing keeps a card number in clear (each load below
        # reads the scrubbed Parquet; the webhook and request archives are scrubbed here).
        scrub_landing(settings, landing)
        sources = landed_tables(settings, landing)
        if not sources:
            raise AirflowSkipException("nothing has landed: no source to load for this interval")
        return sources

    @task(map_index_template="{{ source }}")
    def load_raw(source: str, **context) -> dict:
        """COPY one source's landed file into raw.<source> and upsert on its natural key.

        One mapped task instance per source and interval: a source is loaded (in one transaction),
        retried and reported on its own, and a bad file of one source cannot hold back the others'
        load (the contracts below still stop the line before dbt)."""
        from pathlib import Path

        from airflow.sdk import get_current_context

        from riskloop.data.ingest import load_landing

        get_current_context()["source"] = source  # the mapped instance's label (map_index_template)
        settings = get_settings().as_role("ingest")
        landing = Path(context["params"]["landing_dir"] or settings.landing)
        start, end = context["data_interval_start"], context["data_interval_end"]
        run_type = context["dag_run"].run_type
        # Scheduled and backfill runs load their interval only (never "up to now"); a manual run
        # (`riskloop demo`, a person) loads everything that has landed.
        by_interval = str(getattr(run_type, "value", run_type)) in ("scheduled", "backfill") and start < end
        interval = (start, end) if by_interval else (None, None)
        results = load_landing(settings, landing, interval_start=interval[0], interval_end=interval[1],
                               tables=[source])
        return {r.table: {"rows_in": r.rows_in, "inserted": r.rows_inserted, "updated": r.rows_updated}
                for r in results}

    @task
    def check_contracts(loaded: list[dict]) -> dict:
        """Great Expectations checkpoint on raw.*; raising here stops everything downstream."""
        from airflow.sdk.exceptions import AirflowFailException

        from riskloop.data.contracts import ContractViolation, run_contracts

        try:
            # on failure: rows quarantined, alert raised, Data Docs built
            report = run_contracts(get_settings().as_role("ingest"))
        except ContractViolation as exc:
            # Bad data stays bad on a retry: fail now, without retries, and say why.
            raise AirflowFailException(f"data contract violated: {exc}") from exc
        return {"success": report.success, "tables": sorted(t for per_source in loaded for t in per_source)}

    @task
    def transform(contracts: dict) -> dict:
        """dbt build: staging → intermediate → marts, with dbt tests and enforced contracts."""
        from riskloop.data.transform import run_dbt

        run_dbt(get_settings(), ["build"])
        return {"dbt": "build ok"}

    @task
    def check_settlements(transformed: dict) -> list[dict]:
        """Settlement reconciliation breaks over the processors' newest files → the alert sinks."""
        from riskloop.monitoring.reconciliation import check_settlements as check

        return [a.to_dict() for a in check(get_settings().as_role("ingest"))]

    @task
    def check_feature_marts(transformed: dict) -> dict:
        """GX suites on the feature marts: nothing reaches the online store unless they pass."""
        from airflow.sdk.exceptions import AirflowFailException

        from riskloop.data.contracts import ContractViolation, run_mart_contracts

        try:
            report = run_mart_contracts(get_settings().as_role("ingest"))
        except ContractViolation as exc:
            raise AirflowFailException(f"feature mart contract violated: {exc}") from exc
        return {"success": report.success, "marts": sorted(report.tables)}

    @task(outlets=[ONLINE_FEATURES])
    def materialize(transformed: dict, **context) -> dict:
        """feast apply, then materialise the feature views into the online store."""
        from datetime import datetime

        from riskloop.features.store import apply
        from riskloop.features.store import materialize as feast_materialize

        settings = get_settings().as_role("ingest")
        as_of = context["params"]["as_of"]
        end = datetime.fromisoformat(as_of) if as_of else context["data_interval_end"]
        apply(settings)
        feast_materialize(settings, end)
        return {"materialized_to": end.isoformat()}

    transformed = transform(check_contracts(load_raw.expand(source=landed())))
    check_settlements(transformed)
    materialize(check_feature_marts(transformed))


riskloop_ingest()
