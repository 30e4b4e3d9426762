"""Monitor → promote: Evidently drift of the champion's inputs, then the challenger gate.

The gate promotes only when the challenger is not worse than the champion on the same test
window and drift is not critical; every decision and its evidence is recorded.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

DEFAULT_ARGS = {
    "owner": "riskloop-ml",
    "retries": 1,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=30),
}


@dag(
    dag_id="riskloop_monitor",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
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
        from datetime import datetime

        from riskloop.config import get_settings
        from riskloop.monitoring import run_drift

        since = context["params"]["since"]
        result = run_drift(get_settings(), model_name=context["params"]["model_name"],
                           since=datetime.fromisoformat(since) if since else None)
        return result.to_dict()

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

    promote(drift())


riskloop_monitor()
