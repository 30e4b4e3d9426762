"""Failure alerts of riskloop's Airflow DAGs.

The DAG files call :func:`task_failed` from a three-line ``on_failure_callback`` that imports this
module only when a failure happens, so parsing a DAG file still imports nothing of riskloop.
Alerts are one structured log record each (logger ``riskloop.alerts``, level ERROR, the fields as
JSON): the log pipeline routes them to the on-call sink, and a record carries what the on-call
engineer needs first — which DAG, task, run and try, the error, and where the log is.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("riskloop.alerts")


def alert_fields(context: dict[str, Any]) -> dict[str, Any]:
    """The alert's fields from an Airflow callback context (task- or DAG-level; keys may be missing)."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    run = context.get("dag_run")
    exc = context.get("exception") or context.get("reason")
    return {
        "alert": "airflow_failure",
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None) or getattr(run, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "logical_date": str(context.get("logical_date")) if context.get("logical_date") else None,
        "error": f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else exc,
        "log_url": getattr(ti, "log_url", None),
    }


def task_failed(context: dict[str, Any]) -> dict[str, Any]:
    """Log one ERROR record for a failed task or DAG run; never raises (a broken alert must not
    hide the failure it reports)."""
    try:
        fields = alert_fields(context)
    except Exception as exc:  # noqa: BLE001 - the callback must not fail
        fields = {"alert": "airflow_failure", "error": f"could not read the callback context: {exc}"}
    log.error("riskloop alert %s", json.dumps(fields, default=str), extra={"alert": fields})
    return fields
