"""Processors' settlement and dispute files: object storage → raw, then archived.

Reads ``incoming/`` of the batch store (``RISKLOOP_BATCH_URL``: ``s3://bucket/prefix`` through
boto3, ``RISKLOOP_S3_ENDPOINT_URL`` for S3-compatible servers; default the local directory
``<home>/batch``), upserts each file keyed by (file, line) with its arrival time, and moves it
to ``archive/``. A malformed file is moved to ``rejected/`` with the reason, nothing of it is
written, and the task fails (alert) after the good files are loaded. Then ``check_contracts``
runs the tables' GX suites (``expectations/settlement_file_rows.json``,
``expectations/dispute_file_rows.json``): rows that parse but break the contract (a fee above
the amount, a closed dispute without a verdict...) move to ``quarantine.<table>``, an alert is
raised and the task fails; the ingest DAG's contract check covers these tables too, so dbt does
not build on them either. Last, ``sync_cases`` opens cases for allowed payments the new dispute
lines charged back as fraud (missed fraud, for the analysts; ``RISKLOOP_CASES_OPEN_ON_CHARGEBACK``)
and links any review decision still without its case (``riskloop cases sync``).

Not an interval job: it drains what has arrived, whenever it runs, so a re-run or a backfill
finds nothing new and writes nothing. Hourly, because processors deliver on their own clocks.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

# Light (pydantic only, no database): start date from RISKLOOP_SCHEDULE_START.
from riskloop.core.config import get_settings
from riskloop.ops.dag_defaults import BATCH_FILES, default_args, on_failure, start_date

DEFAULT_ARGS = default_args("riskloop-platform", retries=2, retry_delay=timedelta(minutes=1),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="riskloop_batch_files",
    schedule="@hourly",
    start_date=start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "ingest", "batch-files"],
    doc_md=__doc__,
)
def riskloop_batch_files():
    @task
    def load_batch_files() -> dict:
        """Load, archive, reject; fail without retries when a file was rejected (it stays bad)."""
        from airflow.sdk.exceptions import AirflowFailException

        from riskloop.data.batch_files import BatchFilesRejected
        from riskloop.data.batch_files import load_batch_files as load

        try:
            return load(get_settings().as_role("ingest")).to_dict()
        except BatchFilesRejected as exc:
            raise AirflowFailException(f"batch files rejected (moved to rejected/): {exc}") from exc

    @task(outlets=[BATCH_FILES])  # the batch files are loaded *and* checked
    def check_contracts(loaded: dict) -> dict:
        """GX suites of the batch-file tables; a violation quarantines the rows and fails the run."""
        from airflow.sdk.exceptions import AirflowFailException

        from riskloop.core.schema import BATCH_FILE_TABLES
        from riskloop.data.contracts import ContractViolation, run_contracts

        try:
            report = run_contracts(get_settings().as_role("ingest"), [t.name for t in BATCH_FILE_TABLES.values()])
        except ContractViolation as exc:
            raise AirflowFailException(f"batch file contract violated: {exc}") from exc
        return {"success": report.success, "files_loaded": loaded["files_loaded"]}

    @task
    def sync_cases(checked: dict) -> dict:
        """Cases for chargebacks of allowed payments, and any decision still missing its case."""
        from riskloop.decisions.cases import sync

        return sync(get_settings().as_role("governance"))

    sync_cases(check_contracts(load_batch_files()))


riskloop_batch_files()
