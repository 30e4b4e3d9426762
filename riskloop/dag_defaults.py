"""What every riskloop DAG shares: the failure alert and the task defaults.

Imported by the DAG files at parse time, so it imports nothing but the standard library; the
alert sink (:mod:`riskloop.alerts`) is imported only when something failed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def on_failure(context: dict) -> None:
    """Failure alert (task and DAG level): one structured record through riskloop.alerts."""
    from riskloop.alerts import task_failed

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
