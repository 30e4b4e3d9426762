"""Train the fraud and credit models on point-in-time features and register them in MLflow.

Scheduled on the ingest DAG's online-features asset (data-aware: it runs when new features have
been materialised, never on a clock); each model task emits its model's asset, which the monitor
DAG follows (a model left out by the ``models`` param is skipped and emits nothing). Params: which
models, XGBoost overrides per model, and the fraud training window (``fraud_window``: training
days, test days, label delay). Each run
registers a new version with the `challenger` alias (the first version ever also becomes
`champion`); promotion is the monitor DAG's job, never this one's. The ``search_trials`` param runs a
bounded hyperparameter search (nested MLflow runs, validation rows only) before the final fit;
with ``RISKLOOP_DASK_SCHEDULER`` set on the workers, the fits run on that Dask cluster. Each version's
author is the workers' service principal (``RISKLOOP_API_KEY``), with the user who triggered the run
(:mod:`riskloop.ops.dag_identity`); neither may approve it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

# Light (standard library only): the failure alert and task defaults every DAG shares.
from riskloop.ops.dag_defaults import CREDIT_MODEL, FRAUD_MODEL, ONLINE_FEATURES, default_args, on_failure, start_date

# Same identity as in riskloop_ingest.py (assets are matched by name and URI across DAG files).


DEFAULT_ARGS = default_args("riskloop-ml", retries=1, retry_delay=timedelta(minutes=2),
                            execution_timeout=timedelta(hours=2))


@dag(
    dag_id="riskloop_train",
    schedule=[ONLINE_FEATURES],
    start_date=start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "training"],
    params={
        "models": Param(["fraud", "credit"], type="array", description="Which models to train."),
        "fraud_params": Param({}, type="object", description="XGBoost parameter overrides for fraud."),
        "credit_params": Param({}, type="object", description="XGBoost parameter overrides for credit."),
        "search_trials": Param(0, type="integer", minimum=0, maximum=200,
                               description="Trials of a bounded hyperparameter search per model, on validation "
                               "rows only, logged as nested MLflow runs (0: train with the parameters as given)."),
        "fraud_window": Param({}, type="object", additionalProperties=False,
                              properties={k: {"type": ["integer", "null"], "minimum": 0}
                                          for k in ("train_days", "test_days", "delay_days")},
                              description="Fraud training window in days (train_days, test_days, "
                                          "delay_days = the label delay); unset keys keep the defaults."),
    },
    doc_md=__doc__,
)
def riskloop_train():
    @task(outlets=[FRAUD_MODEL])
    def train_fraud(**context) -> dict:
        if "fraud" not in context["params"]["models"]:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("fraud not in params.models")
        from riskloop.core.config import get_settings
        from riskloop.ops.dag_identity import dag_principal
        from training.train import train_fraud as run

        settings = get_settings()
        principal, person = dag_principal(settings, context, "train_model")
        window = {k: v for k, v in (context["params"]["fraud_window"] or {}).items() if v is not None}
        result = run(settings, params=context["params"]["fraud_params"] or None,
                     search_trials=int(context["params"]["search_trials"]), principal=principal,
                     triggered_by=person, **window)
        return result.summary()

    @task(outlets=[CREDIT_MODEL])
    def train_credit(**context) -> dict:
        if "credit" not in context["params"]["models"]:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("credit not in params.models")
        from riskloop.core.config import get_settings
        from riskloop.ops.dag_identity import dag_principal
        from training.train import train_credit as run

        settings = get_settings()
        principal, person = dag_principal(settings, context, "train_model")
        result = run(settings, params=context["params"]["credit_params"] or None,
                     search_trials=int(context["params"]["search_trials"]), principal=principal, triggered_by=person)
        return result.summary()

    train_fraud()
    train_credit()


riskloop_train()
