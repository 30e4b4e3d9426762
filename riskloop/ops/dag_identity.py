"""Who a DAG run acts as: the deployment's service principal plus the person who triggered the run.

The workers' ``RISKLOOP_API_KEY`` is the service's key (issued as, say, ``svc-airflow:admin:<key>``),
resolved like the CLI's (:func:`riskloop.core.identity.cli_principal`). The person comes from Airflow 3's
``dag_run.triggering_user_name`` (the logged-in user who triggered it from the UI or the REST API;
None for a scheduled or asset-triggered run, ``dag_test`` under ``dag.test()``). Neither comes from
the worker's operating-system user, which every run shares.
"""

from __future__ import annotations

import logging
from typing import Any

from riskloop.core.config import Settings
from riskloop.core.identity import Principal, cli_key, cli_principal

log = logging.getLogger(__name__)


def triggering_user(context: dict[str, Any]) -> str | None:
    """The Airflow user who triggered this DAG run, if a person did."""
    name = getattr(context.get("dag_run"), "triggering_user_name", None)
    return str(name).strip() or None if name else None


def dag_principal(settings: Settings, context: dict[str, Any], action: str) -> tuple[Principal | None, str | None]:
    """(the service principal allowed to do ``action``, the triggering user). Without a configured
    ``RISKLOOP_API_KEY`` the service principal is None (what it does is recorded without an author, and
    a model it trains cannot be approved; in local mode it is the local service, riskloop.core.identity.local_keys);
    a configured key that is unknown or not allowed fails the task."""
    person = triggering_user(context)
    if cli_key(settings) is None:
        log.warning("RISKLOOP_API_KEY is not set on the workers: this run (triggered by %s) acts without a "
                    "principal", person or "the scheduler")
        return None, person
    return cli_principal(settings, action), person
