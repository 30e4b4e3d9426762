"""Monitor → alert → promote: Evidently drift of the champion's inputs, alerts (with hysteresis)
to the configured sinks, then the challenger gate.

The gate promotes only when the challenger is not worse than the champion on the same test
window and drift is not critical; every decision and its evidence is recorded.

Runs daily (drift grows without new models) and whenever riskloop_train emits a new fraud model
(the asset), so a challenger meets the gate without waiting for the next day.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

# Light (pydantic only, no database): start/end/catchup come from RISKLOOP_SCHEDULE_*.
from riskloop.config import get_settings
from riskloop.dag_defaults import default_args, on_failure

# Same identity as in riskloop_train.py.
FRAUD_MODEL = Asset(name="riskloop_fraud_model", uri="riskloop://mlflow/riskloop-fraud")


DEFAULT_ARGS = default_args("riskloop-ml", retries=1, retry_delay=timedelta(minutes=2),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="riskloop_monitor",
    # interval=1 day: a daily run's data interval is the day before it fires, the decisions it checks.
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC",
                                                                interval=timedelta(days=1)),
                                 assets=[FRAUD_MODEL]),
    **get_settings().schedule_args(),
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "monitoring", "promotion"],
    params={
        "model_name": Param("riskloop-fraud", type="string"),
        "margin": Param(0.0, type="number", description="Tolerated metric loss of the challenger."),
        "since": Param(None, type=["null", "string"],
                       description="Compare decisions logged since this ISO time; default the latest ones."),
    },
    doc_md=__doc__,
)
def riskloop_monitor():
    @task
    def drift(**context) -> dict:
        """Drift over the run's data interval (scheduled and backfilled runs: the day it covers,
        never "now"); an asset-triggered run has no interval and checks the latest decisions."""
        from datetime import datetime

        from riskloop.config import get_settings
        from riskloop.monitoring import run_drift

        since, until = context["params"]["since"], None
        if since:
            since = datetime.fromisoformat(since)
        else:
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            if start is not None and end is not None and start < end:
                since, until = start, end
        result = run_drift(get_settings(), model_name=context["params"]["model_name"], since=since, until=until)
        return result.to_dict()

    @task
    def alert(drift_result: dict) -> list[dict]:
        """Drift and the decision-stream tripwires → the alert state machine → the configured sinks."""
        from riskloop.alerts import check_and_alert
        from riskloop.config import get_settings
        from riskloop.monitoring import DriftResult

        return [a.to_dict() for a in check_and_alert(get_settings(), DriftResult.from_dict(drift_result))]

    @task
    def promote(drift_result: dict, **context) -> dict:
        from riskloop.config import get_settings
        from riskloop.monitoring import DriftResult
        from riskloop.promotion import evaluate_promotion

        decision = evaluate_promotion(
            get_settings(),
            model_name=context["params"]["model_name"],
            drift=DriftResult.from_dict(drift_result),
            margin=context["params"]["margin"],
        )
        return decision.to_dict()

    checked = drift()
    alert(checked)
    promote(checked)


riskloop_monitor()
