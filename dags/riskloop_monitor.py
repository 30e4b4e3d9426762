"""Monitor → alert: Evidently drift of each champion's inputs (the fraud and the credit model, one
mapped task each), then the alert state machine (hysteresis, grouping) and the decision-stream
tripwires to the configured sinks (the tripwires only while no tripwire watcher, ``riskloop watch``,
evaluates them every minute).

Runs daily (drift grows without new models) and whenever riskloop_train emits a new fraud or credit
model (the assets), so a challenger meets the gate without waiting for the next day. Each drift check
is recorded in ``monitoring.drift_reports`` and emitted as the ``riskloop_drift_checked`` asset (its
extra names the report and the model): ``riskloop_promote`` runs the promotion gate on it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

# Light (pydantic only, no database): start/end/catchup come from RISKLOOP_SCHEDULE_*.
from riskloop.core.config import get_settings
from riskloop.ops.dag_defaults import (
    CREDIT_MODEL,
    DRIFT_CHECKED,
    FRAUD_MODEL,
    default_args,
    on_failure,
    schedule_args,
)

# Same identity as in riskloop_train.py.
# Same identity as in riskloop_promote.py: a recorded drift check, the gate's evidence.


DEFAULT_ARGS = default_args("riskloop-ml", retries=1, retry_delay=timedelta(minutes=2),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="riskloop_monitor",
    # interval=1 day: a daily run's data interval is the day before it fires, the decisions it checks.
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC",
                                                                interval=timedelta(days=1)),
                                 assets=(FRAUD_MODEL | CREDIT_MODEL)),
    **schedule_args(),
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "monitoring"],
    params={
        "model_name": Param(None, type=["null", "string"],
                            description="Check this registered model only; default both products' models."),
        "since": Param(None, type=["null", "string"],
                       description="Compare decisions logged since this ISO time; default the latest ones."),
    },
    doc_md=__doc__,
)
def riskloop_monitor():
    @task
    def models(**context) -> list[str]:
        """The models to check: the one asked for, else the fraud and the credit model."""
        settings = get_settings().as_role("governance")
        name = context["params"]["model_name"]
        return [name] if name else [settings.fraud_model_name, settings.credit_model_name]

    @task(outlets=[DRIFT_CHECKED])
    def drift(model_name: str, **context) -> dict:
        """Drift over the run's data interval (scheduled and backfilled runs: the day it covers,
        never "now"); an asset-triggered run has no interval and checks the latest decisions.
        The asset event carries the report id, so the promote DAG gates on this very check."""
        from datetime import datetime

        from riskloop.monitoring.drift import run_drift

        since, until = context["params"]["since"], None
        if since:
            since = datetime.fromisoformat(since)
        else:
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            if start is not None and end is not None and start < end:
                since, until = start, end
        result = run_drift(get_settings().as_role("governance"), model_name=model_name, since=since, until=until)
        context["outlet_events"][DRIFT_CHECKED].extra = {
            "report_id": result.report_id, "model_name": result.model_name,
            "model_version": result.model_version, "verdict": result.verdict}
        return result.to_dict()

    @task
    def alert(drift_results: list[dict]) -> list[dict]:
        """Every model's drift, the case queue and (without a watcher) the tripwires → the alert state
        machine → the sinks."""
        from riskloop.monitoring.checks import check_and_alert
        from riskloop.monitoring.drift import DriftResult

        drifts = [DriftResult.from_dict(d) for d in drift_results]
        return [a.to_dict() for a in check_and_alert(get_settings().as_role("governance"), drifts)]

    alert(drift.expand(model_name=models()))


riskloop_monitor()
