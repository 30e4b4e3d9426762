"""``POST /v1/score/credit``: an application → approve | decline | refer with adverse-action reasons.

Where the features come from (the choice, and why):

* ``applicant`` in the body → the applicant's attributes **from the request**. A new application
  is not in the warehouse yet (it reaches ``marts.credit_features`` — and so the Feast online
  store — only after the next ingest and materialisation), and the origination system that sends
  it has the attributes in hand. The body carries exactly what ``raw.credit_applications`` does,
  in the same units (minor units, ``kyc_level`` 0..2, ``pep``), and is converted the way the
  ``credit_features`` mart converts it (``minor_to_major`` per ISO 4217 exponent), so the model
  sees the same numbers it was trained on.
* only ``application_id`` → the features of that **existing** application from the Feast feature
  service ``credit_model_v1`` (a re-decision of an application already landed). An id the online
  store does not know is a 404 (nothing to decide on), not a decision on missing values.

Reasons are the model's *exact* per-applicant contributions (TreeSHAP ``pred_contribs``, not the
approximate Saabas contributions the fraud hot path uses): an adverse-action notice must name the
factors that actually drove that applicant's score. They are the (at most four) largest positive
contributions towards default, given on ``decline`` and ``refer``; an approval has none.
Without a model or features the decision is ``refer`` (policy ``degraded_decision``): nobody is
approved or declined automatically on rules alone.

A credit challenger is routed as the fraud one is (:mod:`serving.routing`, the credit lane): a canary
share of applications (by ``application_id``) decided by it, or scored in shadow beside the champion,
each row logged with its ``serving_mode`` and ``shadow``, and only while its canary runs
(``governance.canary_state``, checked by :func:`serving.model.require_clearance`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from riskloop.core.storable import StorableModel
from riskloop.decisions.policy import Policy
from serving.auth import require
from serving.card_fields import card_numbers_elsewhere
from serving.currencies import ISO_4217, minor_to_major
from serving.decision_log import record_or_refuse
from serving.model import LoadedModel
from serving.online import FeatureMismatch, FeatureStoreUnavailable, OnlineFeatures, plan_inputs
from serving.reasons import top_reasons
from serving.routing import assign, decide_routed
from serving.schemas import CreditDecision, ModelInfo

log = logging.getLogger(__name__)

router = APIRouter(tags=["credit"])

Id = Annotated[str, Field(min_length=1, max_length=128)]


# Adverse-action reason codes by credit feature, with the statement a notice would carry.
CREDIT_REASONS: dict[str, tuple[str, str]] = {
    "amount": ("C01_LOAN_AMOUNT", "Amount requested is high for the applicant's profile"),
    "term_months": ("C02_LOAN_TERM", "Requested repayment term"),
    "annual_income": ("C03_INCOME", "Income insufficient for the amount requested"),
    "debt_to_income": ("C04_DEBT_TO_INCOME", "Debt obligations are high relative to income"),
    "n_delinquencies": ("C05_DELINQUENCIES", "Number of delinquent past or present credit obligations"),
    "credit_history_months": ("C06_CREDIT_HISTORY", "Length of credit history is insufficient"),
    "utilization": ("C07_UTILIZATION", "Proportion of revolving credit in use is high"),
    "kyc_level": ("C08_IDENTITY_VERIFICATION", "Identity verification is incomplete"),
    "pep": ("C09_ENHANCED_DUE_DILIGENCE", "Application requires enhanced due diligence"),
}
CREDIT_OTHER = ("C99_OTHER", "Other factor in the applicant's profile")


class CreditApplicant(BaseModel):
    """A new applicant's attributes, as ``raw.credit_applications`` plus KYC hold them."""

    model_config = ConfigDict(extra="forbid")

    amount_minor: int = Field(gt=0, le=10**12, strict=True)
    currency: str = Field(min_length=3, max_length=3)
    term_months: int = Field(gt=0, le=480)
    annual_income_minor: int = Field(ge=0, le=10**13, strict=True)
    debt_to_income: float = Field(ge=0, le=100)
    n_delinquencies: int = Field(ge=0, le=1000)
    credit_history_months: int = Field(ge=0, le=1200)
    utilization: float = Field(ge=0, le=10, description="Revolving utilisation, 0..1 (above 1: over limit).")
    kyc_level: int = Field(ge=0, le=2, description="0 unverified, 1 standard, 2 enhanced (at application time).")
    pep: bool = False

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if value not in ISO_4217:
            raise ValueError(f"unknown ISO 4217 currency code {value!r}")
        return value

    def features(self) -> dict[str, float]:
        """The ``credit_model_v1`` inputs, computed as the ``credit_features`` mart computes them."""
        return {"amount": minor_to_major(self.amount_minor, self.currency), "term_months": float(self.term_months),
                "annual_income": minor_to_major(self.annual_income_minor, self.currency),
                "debt_to_income": self.debt_to_income, "n_delinquencies": float(self.n_delinquencies),
                "credit_history_months": float(self.credit_history_months), "utilization": self.utilization,
                "kyc_level": float(self.kyc_level), "pep": 1.0 if self.pep else 0.0}


class CreditScoreRequest(StorableModel):
    """Either ``applicant`` (a new application, features from the body) or just ``application_id``
    (an application already in the feature store)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    application_id: Id | None = None
    customer_id: Id | None = None
    applicant: CreditApplicant | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "CreditScoreRequest":
        if self.applicant is None and self.application_id is None:
            raise ValueError("give 'applicant' (a new application) or 'application_id' (an existing one)")
        return self


class CreditReason(BaseModel):
    """An adverse-action reason: a factor that raised this applicant's probability of default."""

    code: str
    feature: str
    value: float | None
    contribution: float = Field(description="Exact TreeSHAP contribution to the log-odds of default.")
    description: str


class CreditScoreResponse(BaseModel):
    decision_id: uuid.UUID
    decision: CreditDecision
    score: float | None = Field(description="Probability of default; null when decided without the model.")
    model: ModelInfo
    reasons: list[CreditReason] = Field(max_length=4)
    rules: list[str]
    degraded: bool
    policy_version: str
    application_id: str | None


def _credit_reason(feature: str) -> dict[str, str]:
    code, text = CREDIT_REASONS.get(feature, CREDIT_OTHER)
    return {"code": code, "description": text}


def credit_reasons(features: list[str], values: np.ndarray, contribs: np.ndarray, k: int = 4) -> list[dict]:
    """The ``k`` largest positive exact contributions as adverse-action reasons (bias dropped)."""
    return top_reasons(features, values, contribs, k, describe=_credit_reason)


def _vector(model: LoadedModel, features: dict[str, float | None]) -> np.ndarray:
    return np.asarray([[math.nan if features.get(n) is None else features[n] for n in model.features]],
                      dtype=np.float64)


def score_credit_vector(model: LoadedModel, policy: Policy, features: dict[str, float | None],
                        request: dict[str, Any]) -> tuple[float, str, list[dict], list[str]]:
    """Score a logged-or-live credit feature vector: (PD, decision, reasons, rules). Shared with replay."""
    x = _vector(model, features)
    score, contribs = model.predict(x, exact=True)
    decision, rules = policy.decide(score, request, features)
    reasons = credit_reasons(list(model.features), x[0], contribs) if decision != "approve" else []
    return score, decision, reasons, rules


@router.post("/v1/score/credit", response_model=CreditScoreResponse, dependencies=[Depends(require("score"))])
def score_credit(body: CreditScoreRequest, request: Request,
                 x_request_id: str | None = Header(default=None)) -> CreditScoreResponse:
    t0 = time.perf_counter()
    st = request.app.state
    policy: Policy = st.credit_policy
    champion: LoadedModel | None = None if policy.rules_only else st.credit_model  # rules-only: an emergency stop
    online: OnlineFeatures = st.credit_online
    request_id = x_request_id or uuid.uuid4().hex
    # deciding; shadow (or a canary route's fallback): one read of the credit lane's routing snapshot
    mode, model, other = assign(st.lanes["credit"].route, champion, body.application_id or request_id)
    wanted = list(dict.fromkeys([*(model.features if model else ()), *(other.features if other else ())]))
    decided_at = datetime.now(UTC)
    req = body.model_dump(mode="json")
    body, req = card_numbers_elsewhere(getattr(st, "pan", None), body, req, request_id)

    features: dict[str, float | None] = {}
    stamps: dict[str, str | None] = {}
    degraded = model is None
    if model is not None:
        try:
            if body.applicant is not None:
                given = body.applicant.features()
                missing = [n for n in wanted if n not in given]
                if missing:
                    raise FeatureMismatch(f"model inputs {missing} are not applicant attributes")
                features = {n: given[n] for n in wanted}
            else:
                if not online.ensure():
                    raise FeatureStoreUnavailable(online.last_error or "feature store not available")
                inputs = plan_inputs(wanted, online.offered, request_time=())
                values, stamps = online.fetch_row(inputs, {"application_id": body.application_id})
                if all(math.isnan(v) for v in values.values()):
                    raise HTTPException(status_code=404, detail=f"application {body.application_id} is not in "
                                        "the feature store; send 'applicant' for a new application")
                features = {n: (None if math.isnan(values[n]) else values[n]) for n in wanted}
        except (FeatureStoreUnavailable, FeatureMismatch) as exc:
            degraded, features, stamps = True, {}, {}
            log.warning("degraded credit decision for request %s: %s", request_id, exc)

    shadow: dict[str, Any] | None = None
    if degraded or model is None:
        score, reasons = None, []
        decision, rules = policy.decide(None, req, features)
    else:
        model, (score, decision, reasons, rules), shadow = decide_routed(
            mode, model, other, lambda m: score_credit_vector(m, policy, features, req),
            lambda m: m.predict(_vector(m, features))[0], request_id)
        features = {n: features[n] for n in model.features}  # exactly the vector the deciding model scored

    decision_id = uuid.uuid4()
    info = ModelInfo(name=model.name if model else st.settings.credit_model_name,
                     version=model.version if model else None,
                     alias=model.alias if model else st.cfg.credit_model_alias)
    row = {
        "decision_id": decision_id, "request_id": request_id, "decided_at": decided_at,
        "model_name": info.name, "model_version": info.version, "model_alias": info.alias,
        "score": score, "decision": decision, "reasons": reasons, "rules": rules,
        "features": features, "feature_timestamps": stamps, "request": req,
        "latency_ms": (time.perf_counter() - t0) * 1000.0, "degraded": degraded,
        "product": "credit", "policy_version": policy.id,
        "signals": {"policy_seq": policy.seq} if policy.seq else {},
        "serving_mode": mode, "shadow": shadow,
    }
    record_or_refuse(st.writer, row)
    return CreditScoreResponse(decision_id=decision_id, decision=decision, score=score, model=info,
                               reasons=reasons, rules=rules, degraded=degraded, policy_version=policy.id,
                               application_id=body.application_id)


def load_and_check(settings: Any, model_name: str, alias: str, cache_dir: Path, *, at_start: bool = False,
                   as_challenger: bool = False) -> LoadedModel:
    """Load ``model_name@alias`` (at start, the last-known-good one if the registry is down) and check
    the governance record lets it decide (:func:`serving.model.require_clearance`: a promotion of these
    bytes, or for a challenger a running canary of its version); kept on disk once cleared."""
    from serving.model import load_for_serving, require_clearance, save_last_known_good

    model = load_for_serving(settings.tracking_uri, model_name, alias, cache_dir, at_start=at_start)
    require_clearance(settings, model, as_challenger=as_challenger)
    if model.source == "registry":
        save_last_known_good(model, cache_dir)
    return model


def setup(state: Any, tracking_uri: str, model_name: str, alias: str, cache_dir: Path,
          online: OnlineFeatures) -> None:
    """Load the credit model at start-up (the last-known-good one if the registry is down) and check
    the governance record lets it decide (:func:`serving.model.require_clearance`); a missing one is
    logged, a refused one paged (:mod:`serving.refusals`), and every decision is then ``refer``."""
    from serving.model import ModelRefused
    from serving.refusals import refused

    state.credit_online = online
    state.credit_model = None
    try:
        state.credit_model = load_and_check(state.settings, model_name, alias, cache_dir, at_start=True)
    except ModelRefused as exc:
        refused(state, "credit:champion", exc, None)
    except Exception as exc:  # noqa: BLE001 - the fraud endpoint must not depend on the credit model
        log.warning("no credit model served (%s@%s): %s; credit decisions are 'refer'", model_name, alias, exc)


async def refresh(state: Any, tracking_uri: str, model_name: str, alias: str, cache_dir: Path) -> None:
    """If ``model_name@alias`` moved (a credit promotion), load the new version off the loop and serve
    it from the next request on, as the fraud champion is swapped; a failure keeps the model served."""
    from starlette.concurrency import run_in_threadpool

    from serving.model import ModelRefused, alias_version
    from serving.refusals import cleared, refused

    current: LoadedModel | None = state.credit_model
    try:
        version = await run_in_threadpool(alias_version, tracking_uri, model_name, alias)
        if current is not None and current.version == version and current.source == "registry":
            return
        # the gate promoted these bytes, or no swap
        new = await run_in_threadpool(load_and_check, state.settings, model_name, alias, cache_dir)
    except ModelRefused as exc:
        await run_in_threadpool(refused, state, "credit:champion", exc, current)
        return
    except Exception as exc:  # noqa: BLE001 - keep serving what we have; try again next poll
        # Without a credit model at all (a fraud-only deployment) this is the normal state: not a warning.
        (log.warning if current is not None else log.debug)("alias poll of %s@%s failed: %s", model_name, alias, exc)
        return
    cleared(state, "credit:champion")
    state.credit_model = new
    log.info("credit model now %s v%s (was v%s)", model_name, new.version, current.version if current else None)
