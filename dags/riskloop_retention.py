"""Retention: each data class's rows past their period are deleted, daily.

``riskloop.governance.retention`` does the work (``riskloop retention apply`` is the same call):
raw webhook payloads, closed cases, decisions and unused model versions older than their
``RISKLOOP_RETENTION_<CLASS>_DAYS``; a class without a period is kept whole. Every run is recorded in
``governance.retention_runs`` with the principal that ran it.

Not an interval job: "older than N days" is judged against the run's logical date, so a re-run of
the same day deletes nothing more, and a late run catches up by itself. Daily without catch-up.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

# Light (pydantic only, no database): start date from RISKLOOP_SCHEDULE_START.
from riskloop.core.config import get_settings
from riskloop.ops.dag_defaults import default_args, on_failure, start_date

DEFAULT_ARGS = default_args("riskloop-platform", retries=1, retry_delay=timedelta(minutes=5),
                            execution_timeout=timedelta(hours=1))


@dag(
    dag_id="riskloop_retention",
    schedule="@daily",
    start_date=start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "governance", "retention"],
    doc_md=__doc__,
)
def riskloop_retention():
    @task
    def apply_retention(**context) -> dict:
        from riskloop.governance import retention

        as_of = context.get("logical_date")
        return retention.apply(get_settings().as_role("governance"), dry_run=False, actor="svc:airflow/riskloop_retention",
                               as_of=as_of).as_dict()

    apply_retention()


riskloop_retention()
