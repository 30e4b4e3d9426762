"""Train the fraud and credit models on point-in-time features and register them in MLflow.

Each run registers a new version with the `challenger` alias (the first version ever also becomes
`champion`); promotion is the monitor DAG's job, never this one's.
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
    "execution_timeout": timedelta(hours=2),
}


@dag(
    dag_id="riskloop_train",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["riskloop", "training"],
    params={
        "models": Param(["fraud", "credit"], type="array", description="Which models to train."),
        "fraud_params": Param({}, type="object", description="XGBoost parameter overrides for fraud."),
        "credit_params": Param({}, type="object", description="XGBoost parameter overrides for credit."),
    },
    doc_md=__doc__,
)
def riskloop_train():
    @task
    def train_fraud(**context) -> dict:
        from riskloop.config import get_settings
        from training.train import train_fraud as run

        if "fraud" not in context["params"]["models"]:
            return {"skipped": True}
        result = run(get_settings(), params=context["params"]["fraud_params"] or None)
        return {"run_id": result.run_id, "version": result.version, "metrics": result.metrics}

    @task
    def train_credit(**context) -> dict:
        from riskloop.config import get_settings
        from training.train import train_credit as run

        if "credit" not in context["params"]["models"]:
            return {"skipped": True}
        result = run(get_settings(), params=context["params"]["credit_params"] or None)
        return {"run_id": result.run_id, "version": result.version, "metrics": result.metrics}

    train_fraud()
    train_credit()


riskloop_train()
