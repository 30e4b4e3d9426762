"""Recompute a logged decision from the log and the registry, and say whether it matches.

Everything a decision depended on is in its ``serving.decision_log`` row: the exact feature
vector scored, the request (for the rules), the stateful rule inputs (``signals``), the event
time of each feature view's values (``feature_timestamps``, for rules with ``max_age_s``), the model
name and version, and the policy version. Replay reloads *that* model version from MLflow (not
whatever the alias points at today) and *that* policy version (a shipped file or a stored version, with
the lists and emergency rules in force at its ``signals.policy_seq``: riskloop.decisions.policy_store), and
recomputes score, reasons, rules and decision. A mismatch means the record cannot explain the
decision — an audit finding — so the CLI exits non-zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from riskloop.core.config import Settings
from riskloop.core.db import connect
from riskloop.decisions import log as decision_log
from riskloop.decisions.policy import PolicyError
from riskloop.decisions.policy_store import StoreError, policy_for_decision

SCORE_TOLERANCE = 1e-9  # scores are floats through JSON/jsonb: exact up to printing; allow ulps
CONTRIBUTION_TOLERANCE = 1e-6


class ReplayError(RuntimeError):
    """The decision cannot be replayed (unknown id, model version or policy gone)."""


@dataclass
class ReplayResult:
    decision_id: str
    product: str
    model: str
    policy_version: str | None
    logged: dict[str, Any]
    replayed: dict[str, Any]
    mismatches: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": self.matches}


def _reasons_match(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["code"] == y["code"] and x["feature"] == y["feature"]
        and math.isclose(x["contribution"], y["contribution"], rel_tol=CONTRIBUTION_TOLERANCE, abs_tol=1e-9)
        for x, y in zip(a, b, strict=True))


def replay(settings: Settings, decision_id: str, max_reasons: int = 4) -> ReplayResult:
    from serving.credit import score_credit_vector
    from serving.model import ModelLoadError, load_model
    from serving.reasons import top_reasons

    with connect(settings) as conn:
        if conn.execute("select to_regclass(%s)", (decision_log.TABLE,)).fetchone()[0] is None:
            raise ReplayError(f"{decision_log.TABLE} does not exist: nothing has been decided yet")
        row = decision_log.fetch(conn, decision_id, settings)
        if row is None:
            raise ReplayError(f"no decision {decision_id} in {decision_log.TABLE}")
        if not row.get("policy_version"):
            raise ReplayError(f"decision {decision_id} predates versioned policies (no policy_version logged)")
        try:  # a shipped file or a stored version, with its lists and emergency rules as they were
            policy = policy_for_decision(conn, row)
        except (PolicyError, StoreError) as exc:
            raise ReplayError(str(exc)) from exc
    features: dict[str, Any] = row["features"] or {}
    logged = {k: row[k] for k in ("score", "decision", "rules", "reasons")}

    if row["score"] is None:  # decided without the model (degraded): the rules alone
        decision, rules = policy.decide(None, row["request"], features, row["signals"], row["feature_timestamps"])
        replayed: dict[str, Any] = {"score": None, "decision": decision, "rules": rules, "reasons": []}
    else:
        try:
            model = load_model(settings.tracking_uri, row["model_name"], row["model_alias"] or "",
                               version=row["model_version"])
        except ModelLoadError as exc:
            raise ReplayError(str(exc)) from exc
        if not set(model.features) <= set(features):  # the rules' own features are logged too
            raise ReplayError(f"logged features {sorted(features)} lack inputs of {model.name} "
                              f"v{model.version} {list(model.features)}")
        if row["product"] == "credit":
            score, decision, reasons, rules = score_credit_vector(model, policy, features, row["request"])
        else:
            x = np.asarray([[math.nan if features[n] is None else features[n] for n in model.features]],
                           dtype=np.float64)
            score, contribs = model.predict(x)
            reasons = top_reasons(list(model.features), x[0], contribs, max_reasons)
            decision, rules = policy.decide(score, row["request"], features, row["signals"], row["feature_timestamps"])
        replayed = {"score": score, "decision": decision, "rules": rules, "reasons": reasons}

    mismatches = []
    if (logged["score"] is None) != (replayed["score"] is None) or (
            logged["score"] is not None and abs(logged["score"] - replayed["score"]) > SCORE_TOLERANCE):
        mismatches.append(f"score: logged {logged['score']}, replayed {replayed['score']}")
    for key in ("decision", "rules"):
        if logged[key] != replayed[key]:
            mismatches.append(f"{key}: logged {logged[key]}, replayed {replayed[key]}")
    if not _reasons_match(logged["reasons"], replayed["reasons"]):
        mismatches.append("reasons differ")
    return ReplayResult(decision_id=decision_id, product=row["product"],
                        model=f"{row['model_name']} v{row['model_version']}", policy_version=row["policy_version"],
                        logged=logged, replayed=replayed, mismatches=mismatches)
