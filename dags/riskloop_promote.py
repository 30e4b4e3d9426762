"""Promote: the challenger gate, run on every recorded drift check of a model.

Scheduled on the ``riskloop_drift_checked`` asset that ``riskloop_monitor`` emits (data-aware:
no sensor, no time offset), so a new challenger meets the gate as soon as the monitor has looked
at the champion's traffic. The gate (:func:`riskloop.governance.promotion.evaluate_promotion`) moves
``champion`` only when every gate passes: data contracts, offline metrics non-inferior to the
champion's on the same test window (``margin``), no critical drift in the triggering check, a
reviewer's approval bound to the version's content hash, and a passed canary phase on live traffic
(``riskloop canary start``; waived only by ``RISKLOOP_CANARY_REQUIRED=false``). Every decision and its evidence is
recorded in ``governance.promotion_decisions``; a refusal is also an alert.

Triggered by hand (the Airflow UI, ``airflow dags trigger riskloop_promote``), it gates on the report given
in ``report_id``, else on the model's latest recorded drift check.
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
        "model_name": Param("riskloop-fraud", type="string"),
        "margin": Param(0.0, type="number", minimum=0, description="Tolerated metric loss of the challenger."),
        "report_id": Param(None, type=["null", "string"],
                           description="Gate on this drift report; default the triggering one, else the latest."),
    },
    doc_md=__doc__,
)
def riskloop_promote():
    @task
    def promote(**context) -> dict:
        """Gate the challenger on the drift check named by the trigger (or the params)."""
        from airflow.sdk.exceptions import AirflowFailException

        from riskloop.core.config import get_settings
        from riskloop.governance.promotion import evaluate_promotion
        from riskloop.monitoring.drift import UnknownDriftCheck, recorded_drift
        from riskloop.ops.dag_identity import dag_principal

        settings = get_settings()
        principal, person = dag_principal(settings, context, "promote_model")
        params = context["params"]
        report_id = params["report_id"]
        if not report_id:
            # Newest first; events of other models are not ours to gate.
            events = [e.extra for e in context["triggering_asset_events"].get(DRIFT_CHECKED, [])
                      if (e.extra or {}).get("model_name") == params["model_name"]]
            report_id = events[-1]["report_id"] if events else None
        try:
            drift = recorded_drift(settings, params["model_name"], report_id or None)
        except UnknownDriftCheck as exc:
            raise AirflowFailException(str(exc)) from exc
        # decided_by: the service principal, and the person behind a manually triggered run
        actor = principal.actor if principal else None
        if actor and person:
            actor = f"{actor} (triggered by {person})"
        decision = evaluate_promotion(settings, model_name=params["model_name"], drift=drift,
                                      margin=params["margin"], actor=actor)
        return decision.to_dict()

    promote()


riskloop_promote()
