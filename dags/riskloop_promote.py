"""Promote: the challenger gate, run on every recorded drift check of a model.

Scheduled on the ``riskloop_drift_checked`` asset that ``riskloop_monitor`` emits (data-aware:
no sensor, no time offset), so a new challenger meets the gate as soon as the monitor has looked
at the champion's traffic. The gate (:func:`riskloop.governance.promotion.evaluate_promotion`) moves
``champion`` only when every gate passes: data contracts, offline metrics non-inferior to the
champion's on the same test window (``margin``), no critical drift in the triggering check, a
reviewer's approval bound to the version's content hash, and a passed canary phase on live traffic
(``riskloop canary start``; waived only by ``RISKLOOP_CANARY_REQUIRED=false``). Every decision and its evidence is
recorded in ``governance.promotion_decisions``; a refusal is also an alert.

Each model with a drift check in the triggering events (the fraud and the credit model: the gate is the
same, with each product's metrics) is gated on its newest one. Triggered by hand (the Airflow UI,
``airflow dags trigger riskloop_promote``), it gates ``model_name`` (default both products' models) on the
report given in ``report_id``, else on the model's latest recorded drift check.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

# Light (standard library only): the failure alert and task defaults every DAG shares.
from riskloop.ops.dag_defaults import DRIFT_CHECKED, default_args, on_failure, start_date

# Same identity as in riskloop_monitor.py.


DEFAULT_ARGS = default_args("riskloop-ml", retries=1, retry_delay=timedelta(minutes=2),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="riskloop_promote",
    schedule=[DRIFT_CHECKED],
    start_date=start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_failure,
    tags=["riskloop", "promotion"],
    params={
        "model_name": Param(None, type=["null", "string"],
                            description="Gate this registered model only; default each model with a drift check."),
        "margin": Param(0.0, type="number", minimum=0, description="Tolerated metric loss of the challenger."),
        "report_id": Param(None, type=["null", "string"],
                           description="Gate on this drift report (with model_name); default the triggering one, "
                                       "else the latest."),
    },
    doc_md=__doc__,
)
def riskloop_promote():
    @task
    def promote(**context) -> list[dict]:
        """Gate each model on the drift check named by the trigger (or the params)."""
        from airflow.sdk.exceptions import AirflowFailException

        from riskloop.core.config import get_settings
        from riskloop.governance.promotion import evaluate_promotion
        from riskloop.monitoring.drift import UnknownDriftCheck, recorded_drift
        from riskloop.ops.dag_identity import dag_principal

        settings = get_settings().as_role("governance")
        principal, person = dag_principal(settings, context, "promote_model")
        params = context["params"]
        # Oldest first: a model's last event is its newest check.
        events = [e.extra or {} for e in context["triggering_asset_events"].get(DRIFT_CHECKED, [])]
        reports = {e["model_name"]: e.get("report_id") for e in events if e.get("model_name")}
        if params["model_name"]:
            reports = {params["model_name"]: params["report_id"] or reports.get(params["model_name"])}
        elif not reports:
            reports = dict.fromkeys((settings.fraud_model_name, settings.credit_model_name))
        # decided_by: the service principal, and the person behind a manually triggered run
        actor = principal.actor if principal else None
        if actor and person:
            actor = f"{actor} (triggered by {person})"
        decisions, failures = [], []
        for name, report_id in reports.items():
            try:
                drift = recorded_drift(settings, name, report_id or None)
            except UnknownDriftCheck as exc:
                failures.append(str(exc))
                continue
            decisions.append(evaluate_promotion(settings, model_name=name, drift=drift,
                                                margin=params["margin"], actor=actor).to_dict())
        if failures:
            raise AirflowFailException("; ".join(failures))
        return decisions

    promote()


riskloop_promote()
