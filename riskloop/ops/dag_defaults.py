"""What every riskloop DAG shares, defined once: the assets that chain the DAGs, when their schedule
starts, the task defaults and the failure alert.

Imported by the DAG files at parse time, so it imports only Airflow's SDK (which the DAG files
import anyway) and the typed settings; the alert sink (:mod:`riskloop.core.alerts`) is imported
only when something failed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset

from riskloop.core.config import get_settings

# ingest -> (online features) -> train -> (fraud model) -> monitor -> (drift checked) -> promote
BATCH_FILES = Asset(name="riskloop_batch_files", uri="riskloop://raw/batch_files")
ONLINE_FEATURES = Asset(name="riskloop_online_features", uri="riskloop://feast/online_features")
FRAUD_MODEL = Asset(name="riskloop_fraud_model", uri="riskloop://mlflow/riskloop-fraud")
CREDIT_MODEL = Asset(name="riskloop_credit_model", uri="riskloop://mlflow/riskloop-credit")
DRIFT_CHECKED = Asset(name="riskloop_drift_checked", uri="riskloop://monitoring/drift_reports")


def schedule_args() -> dict[str, Any]:
    """``start_date``, ``end_date`` and ``catchup`` of a time-scheduled DAG (``RISKLOOP_SCHEDULE_*``)."""
    return get_settings().schedule_args()


def start_date() -> datetime:
    """When an asset-triggered DAG's schedule starts: the same configured start as the others."""
    return schedule_args()["start_date"]


def on_failure(context: dict) -> None:
    """Failure alert (task and DAG level): one structured record through riskloop.core.alerts."""
    from riskloop.core.alerts import task_failed

    task_failed(context)


def default_args(owner: str, retries: int, retry_delay: timedelta, execution_timeout: timedelta) -> dict[str, Any]:
    """Task defaults: retries with exponential backoff, a timeout, and the failure alert."""
    return {
        "owner": owner,
        "retries": retries,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "execution_timeout": execution_timeout,
        "on_failure_callback": on_failure,
    }
