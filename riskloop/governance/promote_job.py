"""The promotion gate as a job of its own process: ``python -m riskloop.governance.promote_job``.

The review page's promote action starts it rather than running the gate itself: the gate rebuilds a
point-in-time test set through Feast and loads two models, work (and imports: metrics, Evidently's
drift record) that has no place in a scoring process. The request comes on stdin as one JSON object
(``settings``: the caller's settings as :func:`~riskloop.core.config.plain_values` gives them,
``model_name``, ``margin``, ``report_id``, ``actor``: the authenticated caller); the answer is one
JSON object on stdout, ``{"status": 200, "decision": {...}}`` or ``{"status": 404 | 409, "detail": "..."}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from riskloop.core.config import Settings


def run(payload: dict[str, Any]) -> dict[str, Any]:
    from riskloop.governance.promotion import PromotionError, evaluate_promotion
    from riskloop.monitoring.drift import UnknownDriftCheck, recorded_drift

    settings = Settings(**payload["settings"])
    name = payload["model_name"]
    try:
        drift = recorded_drift(settings, name, payload.get("report_id"))
    except UnknownDriftCheck as exc:
        return {"status": 404, "detail": str(exc)}
    try:
        decision = evaluate_promotion(settings, model_name=name, drift=drift, margin=payload.get("margin", 0.0),
                                      actor=payload.get("actor"))
    except PromotionError as exc:
        return {"status": 409, "detail": str(exc)}
    return {"status": 200, "decision": decision.to_dict()}


def main() -> int:
    import os

    import mlflow

    from riskloop.core.logs import configure

    payload = json.loads(sys.stdin.buffer.read())
    settings = Settings(**payload["settings"])
    configure(settings)  # log lines go to stderr
    # The job's process is this gate's alone: MLflow's process-wide URIs may point at its server (a
    # models:/ URI resolved anywhere in MLflow then reaches the registry the settings name).
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    # stdout carries the answer alone: whatever a library prints goes to stderr meanwhile.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    answer_to, sys.stdout = sys.stdout, sys.stderr
    answer = run(payload)
    answer_to.write(json.dumps(answer, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
