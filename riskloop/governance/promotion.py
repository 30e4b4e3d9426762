"""The challenger → champion gate of a registered model.

A challenger replaces the champion only on evidence computed *here*, now, on one common test
set: both versions are loaded from the registry and scored on the challenger's own test window
(rebuilt through ``riskloop.features.datasets`` / ``riskloop.models.split``), and both metric sets are computed
with ``riskloop.models.metrics``. Metrics logged at training time are not reused: the champion was
evaluated on an older window, so comparing logged numbers would compare windows, not models.

One code path serves both products (:mod:`riskloop.models.products`): a fraud model is compared on AUC ROC
and average precision, a credit model on AUC, Brier score and ECE, and a credit challenger must also
pass the fairness gate (:func:`fairness_gate`: adverse impact ratio and TPR/FPR gaps across age bands).

Every run of the gate, including "nothing to do", appends a row to
``governance.promotion_decisions`` (append-only: a trigger refuses UPDATE/DELETE/TRUNCATE), and a
decision about a challenger is also written as ``promotion.*`` tags on its model version, so the
registry alone tells why a version is or is not serving.
"""

from __future__ import annotations

import logging
import math
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from riskloop.core import db
from riskloop.core.alerts import notify
from riskloop.core.config import Settings
from riskloop.governance import canary
from riskloop.governance.review import approval_gate
from riskloop.models.artifacts import CONTRACT_TAG_PREFIX
from riskloop.models.products import CREDIT, FRAUD, PRODUCTS, GatedMetric, Product, product_of
from riskloop.models.registry import UnsafeArtifact, download_version, mlflow_client, parse_features_param, read_booster
from riskloop.monitoring.drift import DriftResult

log = logging.getLogger(__name__)

GOVERNANCE_SCHEMA = "governance"
CHAMPION = "champion"
CHALLENGER = "challenger"
CP_K = 100

# The schemas whose contracts must have passed for a model's training data: the raw sources and the
# feature marts (the ingest DAG checks both before anything reaches a model).
REQUIRED_CONTRACT_SCHEMAS = ("raw", "marts")

# A loader of the common test set: (settings, challenger run params) -> one row per transaction (or
# application) with the model inputs, ``label``, ``customer_id`` and ``event_timestamp``; a credit
# test set also carries the applicants' ``age_band`` (never a model input) for the fairness gate.
TestSetLoader = Callable[[Settings, dict[str, str]], pd.DataFrame]


class PromotionError(RuntimeError):
    """The gate could not evaluate (unreadable model, test set without the model's inputs...)."""


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and on which evidence."""

    decision_id: str
    model_name: str
    decision: str  # promoted | refused | no_change
    reason: str
    champion_version: str | None
    challenger_version: str | None
    margin: float
    champion_metrics: dict[str, float] = field(default_factory=dict)
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    test_start: datetime | None = None
    test_end: datetime | None = None
    n_test: int | None = None
    n_test_frauds: int | None = None
    drift_verdict: str | None = None
    drift_report_id: str | None = None
    drift_model_version: str | None = None
    content_hash: str | None = None
    approval_id: str | None = None
    approved_by: str | None = None
    canary_id: str | None = None
    canary_verdict: str | None = None
    canary_evidence: dict[str, Any] = field(default_factory=dict)
    contracts_verdict: str | None = None
    contracts_evidence: dict[str, str] = field(default_factory=dict)
    decided_by: str | None = None  # who asked for the gate; None: the database session's user
    decided_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    @property
    def new_champion_version(self) -> str | None:
        return self.challenger_version if self.promoted else self.champion_version

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (XCom, CLI output)."""
        out = asdict(self)
        for key in ("test_start", "test_end", "decided_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        out["new_champion_version"] = self.new_champion_version
        return out


# --- evaluation ----------------------------------------------------------------------------

def fraud_test_set(settings: Settings, run_params: dict[str, str]) -> pd.DataFrame:
    """The challenger's fraud test window, rebuilt exactly as training built it.

    Windows come from the challenger's run params; rows from Feast point-in-time features
    (``riskloop.features.datasets.fraud_dataset``), labels and the "known compromised cards are dropped"
    rule from ``riskloop.models.split.split_fraud`` with the frauds known by the end of the window.
    """
    from riskloop.features import datasets
    from riskloop.features.store import feature_store
    from riskloop.models import split

    try:
        windows = split.FraudWindows(**{k: pd.Timestamp(run_params[k]) for k in (
            "train_start", "train_end", "test_start", "test_end", "label_cutoff")})
    except KeyError as exc:
        raise PromotionError(f"challenger run lacks the window param {exc}; cannot rebuild its test set") from exc
    frame = datasets.fraud_dataset(feature_store(settings), [(windows.test_start, windows.test_end)])
    _, test = split.split_fraud(frame, windows, datasets.known_frauds(settings, windows.test_end))
    return test


def credit_test_set(settings: Settings, run_params: dict[str, str]) -> pd.DataFrame:
    """The challenger's credit test window: every application in [test_start, test_end) with an observed
    outcome, its ``credit_model_v1`` features as of the application (Feast, as training read them), and the
    applicant's age band from ``marts.credit_applicant_groups`` (beside the features, never one of them)."""
    from riskloop.features import datasets
    from riskloop.features.store import feature_store
    from riskloop.models.fairness import PROTECTED_ATTRIBUTE

    start, end = pd.Timestamp(run_params["test_start"]), pd.Timestamp(run_params["test_end"])
    frame = datasets.credit_dataset(feature_store(settings))
    test = frame[(frame["event_timestamp"] >= start) & (frame["event_timestamp"] < end)]
    groups = datasets.protected_groups(settings).set_index("application_id")[PROTECTED_ATTRIBUTE]
    return test.assign(label=test[datasets.CREDIT_LABEL].astype("int64"),
                       **{PROTECTED_ATTRIBUTE: test["application_id"].map(groups)}).reset_index(drop=True)


TEST_SETS: dict[str, TestSetLoader] = {FRAUD: fraud_test_set, CREDIT: credit_test_set}




def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _load_model(settings: Settings, name: str, version: str):
    """The booster of one *version* (never an alias: it could move meanwhile), read from its booster
    file alone (:func:`riskloop.models.registry.read_booster`: nothing the artifact names is run)."""
    with tempfile.TemporaryDirectory(prefix="riskloop-gate-") as tmp:
        try:
            return read_booster(download_version(settings.tracking_uri, name, version, tmp))
        except UnsafeArtifact as exc:
            raise PromotionError(f"{name} v{version} refused as a model: {exc}") from exc


def _score(model, frame: pd.DataFrame, features: list[str]) -> pd.Series:
    import numpy as np
    import xgboost as xgb

    from riskloop.models.classifier import design_matrix

    x = design_matrix(frame, features)
    if isinstance(model, xgb.Booster):
        return pd.Series(model.inplace_predict(x.to_numpy()), index=frame.index)
    return pd.Series(np.asarray(model.predict_proba(x))[:, 1], index=frame.index)


def _evaluate(settings: Settings, client, name: str, version: str, test: pd.DataFrame,
              product: Product = PRODUCTS[FRAUD]) -> dict[str, float]:
    """One version's metrics on the common test set: fraud AUC ROC, average precision and card
    precision@100; credit AUC, Brier, ECE (and the oracle's, when the simulator's true PD is there)
    plus the fairness figures (:mod:`riskloop.models.fairness`)."""
    from riskloop.models import fairness, metrics

    mv = client.get_model_version(name, version)
    features = parse_features_param(client.get_run(mv.run_id).data.params.get("features")) if mv.run_id else []
    if not features:
        raise PromotionError(f"{name} v{version}: no 'features' run param; cannot build its input")
    missing = [f for f in features if f not in test.columns]
    if missing:
        raise PromotionError(f"{name} v{version} needs inputs the test set lacks: {missing}")
    scored = test[["customer_id", "event_timestamp", "label"]].assign(
        score=_score(_load_model(settings, name, version), test, features))
    if product.name == CREDIT:
        extra = [c for c in ("true_default_probability", fairness.PROTECTED_ATTRIBUTE) if c in test.columns]
        scored = scored.join(test[extra])
        out = metrics.credit_metrics(scored)
        if fairness.PROTECTED_ATTRIBUTE in scored.columns:
            out.update(fairness.fairness_report(scored, settings.fairness_approve_below,
                                                min_group=settings.fairness_min_group).metrics())
        return out
    return {
        "auc_roc": metrics.auc_roc(scored["label"], scored["score"]),
        "average_precision": metrics.average_precision(scored["label"], scored["score"]),
        "card_precision_at_100": metrics.card_precision_at_k(scored, k=CP_K),
    }


def _compare(champion: dict[str, float], challenger: dict[str, float], margin: float,
             gated: tuple[GatedMetric, ...] = PRODUCTS[FRAUD].gated) -> tuple[bool, str]:
    """Whether the challenger is not worse than the champion by more than ``margin`` on every gated metric
    (worse: lower for a metric where higher is better, higher for one where lower is, as Brier and ECE)."""
    worse, undefined, fine = [], [], []
    for g in gated:
        m = g.name
        a, b = champion[m], challenger[m]
        if math.isnan(a) or math.isnan(b):
            undefined.append(m)
        elif g.higher_is_better and b < a - margin:
            worse.append(f"{m} {b:.4f} < champion {a:.4f} - margin {margin:g}")
        elif not g.higher_is_better and b > a + margin:
            worse.append(f"{m} {b:.4f} > champion {a:.4f} + margin {margin:g}")
        else:
            fine.append(f"{m} {b:.4f} vs champion {a:.4f}")
    if undefined:
        return False, (f"{', '.join(undefined)} undefined on the test window (a single class?): "
                       "no evidence the challenger is not worse")
    if worse:
        return False, "challenger worse than champion: " + "; ".join(worse)
    return True, "challenger not worse than champion within margin: " + "; ".join(fine)


def fairness_gate(settings: Settings, champion: dict[str, float], challenger: dict[str, float]) -> tuple[bool, str]:
    """Is the credit challenger fair enough? Its adverse impact ratio across age bands must be at least
    ``settings.fairness_air_floor`` (the four-fifths rule by default), and neither its TPR gap nor its
    FPR gap may exceed the champion's by more than ``settings.fairness_gap_margin``. Judged on the
    figures :func:`_evaluate` computed for both on the same test rows, over the age bands large enough
    to judge (``RISKLOOP_FAIRNESS_MIN_GROUP``); a smaller band is named in the reason as too small to
    judge and moves neither the ratio nor the gaps.

    Figures that could not be computed fail, and so does a test window where fewer than two bands are
    large enough (every band too small is said so): credit scoring is a high-risk use, and no evidence
    is not evidence of fairness. Passing with a warning would let a model through on exactly the
    windows too thin to show a bias; the remedy, a longer test window, is the reviewer's to take."""
    from riskloop.models.fairness import METRIC_PREFIX, TOO_SMALL, too_small_groups

    small = too_small_groups(challenger)
    small_note = (f"{TOO_SMALL} (fewer than {int(challenger[METRIC_PREFIX + 'min_group'])} test applications, "
                  "RISKLOOP_FAIRNESS_MIN_GROUP): " + ", ".join(f"{k} (n={n})" for k, n in small.items())) if small else ""
    air = challenger.get(f"{METRIC_PREFIX}air", math.nan)
    if math.isnan(air):
        judged = int(challenger.get(f"{METRIC_PREFIX}groups_judged", 0))
        if small and judged == 0:
            return False, f"fairness not assessable: every age band is {small_note}"
        if small:
            return False, (f"fairness not assessable: {judged} age band large enough to judge, two needed; "
                           + small_note)
        return False, ("fairness not assessable: no age band recorded for two or more groups of the test "
                       "applications (marts.credit_applicant_groups)")
    failures, fine = [], []
    if air < settings.fairness_air_floor:
        failures.append(f"adverse impact ratio {air:.3f} < floor {settings.fairness_air_floor:g}")
    else:
        fine.append(f"adverse impact ratio {air:.3f} >= {settings.fairness_air_floor:g}")
    for gap in ("tpr_gap", "fpr_gap"):
        a, b = champion.get(METRIC_PREFIX + gap, math.nan), challenger.get(METRIC_PREFIX + gap, math.nan)
        if math.isnan(b):
            failures.append(f"{gap} undefined (a group without defaulters or repayers)")
        elif not math.isnan(a) and b > a + settings.fairness_gap_margin:
            failures.append(f"{gap} {b:.3f} > champion {a:.3f} + margin {settings.fairness_gap_margin:g}")
        else:
            fine.append(f"{gap} {b:.3f} vs champion {_fmt(a)}")
    if small_note:
        (failures if failures else fine).append(small_note)
    if failures:
        return False, "; ".join(failures)
    return True, "fair across age bands: " + "; ".join(fine)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


# --- the gate ------------------------------------------------------------------------------

def evaluate_promotion(
    settings: Settings,
    model_name: str = "riskloop-fraud",
    drift: DriftResult | None = None,
    margin: float = 0.0,
    *,
    load_test_set: TestSetLoader | None = None,
    actor: str | None = None,
) -> PromotionDecision:
    """Decide whether ``challenger`` replaces ``champion`` for ``model_name``, and act on it.

    Promotes (moves ``champion`` to the challenger's version) only if the challenger is not worse
    than the champion by more than ``margin`` on AUC ROC and on average precision, both computed
    here on the challenger's test window, ``drift`` is not ``critical`` (a critical input shift
    means the test window no longer describes production, so no evidence is good enough), and a
    training run recorded passed data contracts for the data it read (:func:`contracts_gate`), a
    reviewer other than the run's author approved the challenger's current content hash
    (:func:`riskloop.governance.review.approval_gate`), and its canary phase passed (:func:`riskloop.governance.canary.gate`,
    unless ``settings.canary_required`` is off; a promotion ends the canary). A refusal is also sent
    as a ``promotion_blocked`` alert.
    A credit model (:func:`riskloop.models.products.product_of`) is compared on AUC, Brier and ECE and
    must also pass :func:`fairness_gate`.
    ``load_test_set`` replaces the product's Feast-backed loader (:data:`TEST_SETS`; tests).
    ``actor`` is who asked (recorded as ``decided_by``; default: the database session's user).
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    client = mlflow_client(settings.tracking_uri)
    base: dict[str, Any] = {"decision_id": str(uuid.uuid4()), "model_name": model_name, "margin": margin,
                            "drift_verdict": drift.verdict if drift else None,
                            "drift_report_id": drift.report_id if drift else None,
                            "drift_model_version": drift.model_version if drift else None,
                            "decided_by": actor}
    # One gate at a time per model: two concurrent runs must not both move the alias.
    with db.connect(settings, autocommit=True) as lock_conn:
        lock_conn.execute("select pg_advisory_lock(hashtext(%s))", (f"riskloop.promotion:{model_name}",))
        try:
            decision = _decide(settings, client, model_name, drift, margin, load_test_set, base)
        finally:
            lock_conn.execute("select pg_advisory_unlock(hashtext(%s))", (f"riskloop.promotion:{model_name}",))
    if decision.decision == "refused":
        notify(settings, "promotion_blocked", model_name,
               f"{model_name}: challenger v{decision.challenger_version} NOT promoted (champion stays "
               f"v{decision.champion_version}): {decision.reason}",
               details={"decision_id": decision.decision_id, "challenger_version": decision.challenger_version,
                        "champion_version": decision.champion_version, "content_hash": decision.content_hash,
                        "drift_report_id": decision.drift_report_id})
    return decision


def _decide(settings: Settings, client, model_name: str, drift: DriftResult | None, margin: float,
            load_test_set: TestSetLoader | None, base: dict[str, Any]) -> PromotionDecision:
    champion = _alias_version(client, model_name, CHAMPION)
    challenger = _alias_version(client, model_name, CHALLENGER)
    base.update(champion_version=champion, challenger_version=challenger)

    if challenger is None:
        return _finish(settings, client, PromotionDecision(
            **base, decision="no_change", reason=f"no '{CHALLENGER}' alias on {model_name}: nothing to evaluate"))
    if challenger == champion:
        return _finish(settings, client, PromotionDecision(
            **base, decision="no_change", reason=f"challenger v{challenger} is already the champion"))
    if champion is None:
        # Should not happen (training makes its first version champion); without a champion there
        # is nothing to compare against, and silently crowning the challenger would skip the gate.
        return _finish(settings, client, PromotionDecision(
            **base, decision="refused",
            reason=f"no '{CHAMPION}' alias on {model_name}: nothing to compare v{challenger} with; "
                   "set the champion explicitly"))
    if drift is not None and drift.model_name != model_name:
        raise ValueError(f"drift result is for {drift.model_name}, not {model_name}")

    challenger_mv = client.get_model_version(model_name, challenger)
    run = client.get_run(challenger_mv.run_id) if challenger_mv.run_id else None
    run_params = dict(run.data.params) if run else {}
    product = product_of(settings, model_name, challenger_mv.tags.get("feature_service")
                         or run_params.get("feature_service"))
    load_test_set = load_test_set or TEST_SETS[product.name]
    for key in ("test_start", "test_end"):  # training also tags the version; accept either
        if key not in run_params and key in challenger_mv.tags:
            run_params[key] = challenger_mv.tags[key]
    if "test_start" not in run_params or "test_end" not in run_params:
        raise PromotionError(f"{model_name} v{challenger} has no test_start/test_end: cannot rebuild its test window")
    test = load_test_set(settings, run_params)
    base.update(test_start=pd.Timestamp(run_params["test_start"]).to_pydatetime(),
                test_end=pd.Timestamp(run_params["test_end"]).to_pydatetime(),
                n_test=len(test), n_test_frauds=int(test["label"].sum()) if len(test) else 0)
    log.info("gate %s: scoring champion v%s and challenger v%s on %d rows (%s .. %s)", model_name, champion,
             challenger, len(test), run_params["test_start"], run_params["test_end"])
    champ_m = _evaluate(settings, client, model_name, champion, test, product)
    chall_m = _evaluate(settings, client, model_name, challenger, test, product)
    base.update(champion_metrics=champ_m, challenger_metrics=chall_m)

    good_enough, why = _compare(champ_m, chall_m, margin, product.gated)
    recorded = (f"card_precision_at_100 {chall_m['card_precision_at_100']:.4f} vs "
                f"{champ_m['card_precision_at_100']:.4f} (recorded, not gated)") if product.name == FRAUD else None
    approval = approval_gate(settings, model_name, challenger, client=client)
    base.update(content_hash=approval.content_hash, approval_id=approval.approval_id,
                approved_by=approval.approved_by)
    # Every gate is evaluated and every failure named: a reviewer fixing one should not discover the next.
    failures = [] if good_enough else [why]
    fair_why = None
    if product.fairness:
        fair_ok, fair_why = fairness_gate(settings, champ_m, chall_m)
        if not fair_ok:
            failures.append(f"fairness gate: {fair_why}")
    if drift is not None and drift.verdict == "critical":
        drifted = ", ".join(drift.drifted_features) or "n/a"
        failures.append(f"blocked by critical input drift (report {drift.report_id}, {model_name} "
                        f"v{drift.model_version}, share {drift.share_drifted:.2f}, drifted: {drifted})"
                        + (f" although {why}" if good_enough else ""))
    contracts_ok, contracts_why, contract_results = contracts_gate(settings, dict(run.data.tags) if run else {})
    base.update(contracts_verdict="passed" if contracts_ok else "failed", contracts_evidence=contract_results)
    if not contracts_ok:
        failures.append(f"data-contract gate: {contracts_why}")
    if not approval.ok:
        failures.append(f"approval gate: {approval.reason}")
    canary_v = canary.gate(settings, model_name, challenger, champion)
    base.update(canary_id=canary_v.canary_id, canary_verdict=canary_v.verdict,
                canary_evidence={"reason": canary_v.reason, **canary_v.evidence})
    if not canary_v.ok:
        failures.append(f"canary gate: {canary_v.reason}")
    if canary_v.canary_id:
        try:  # the figures on the version, for `riskloop review show` and the review page
            canary.tag_version(settings, model_name, challenger, canary_v)
        except Exception:  # noqa: BLE001 - the decision row is the record of authority
            log.exception("gate %s: tagging v%s with its canary figures failed", model_name, challenger)
    if failures:
        return _finish(settings, client, PromotionDecision(
            **base, decision="refused", reason="; ".join([*failures, *filter(None, [recorded])])))
    drift_note = f"drift {drift.verdict}" if drift else "drift not assessed"
    return _finish(settings, client, PromotionDecision(
        **base, decision="promoted",
        reason="; ".join(filter(None, [why, fair_why, recorded, drift_note, contracts_why, approval.reason,
                                       canary_v.reason]))),
        expect_champion=champion)


def bootstrap_champion(settings: Settings, model_name: str, version: str, *, actor: str | None = None) -> PromotionDecision:
    """Make ``version``, the first version of ``model_name``, its champion, recorded like any promotion.

    There is nothing to compare a first version with, so the gate's comparison, canary and approval
    cannot apply; serving still decides only with a version the record names for its bytes
    (:mod:`riskloop.governance.clearance`), so the bootstrap leaves a ``promoted`` row with no
    previous champion and the artifact's content hash, then moves ``@champion`` (:func:`_finish`).
    Refused (:class:`PromotionError`) once the model has a champion or a promoted version: every
    later version goes through :func:`evaluate_promotion`. The artifact must read as a plain booster."""
    from riskloop.governance.review import content_hash

    client = mlflow_client(settings.tracking_uri)
    with db.connect(settings, autocommit=True) as lock_conn:
        lock_conn.execute("select pg_advisory_lock(hashtext(%s))", (f"riskloop.promotion:{model_name}",))
        try:
            champion = _alias_version(client, model_name, CHAMPION)
            with db.connect(settings) as conn:
                earlier = conn.execute(
                    f"select decision_id from {GOVERNANCE_SCHEMA}.promotion_decisions "
                    "where model_name = %s and decision = 'promoted' limit 1", (model_name,)).fetchone()
            if champion is not None or earlier is not None:
                raise PromotionError(f"{model_name} already has a champion (v{champion}) or a promoted version: "
                                     f"v{version} goes through the promotion gate (riskloop promote)")
            _load_model(settings, model_name, version)  # readable as a plain booster, or refused here
            digest = content_hash(settings, model_name, version)
            decision = _finish(settings, client, PromotionDecision(
                decision_id=str(uuid.uuid4()), model_name=model_name, decision="promoted",
                reason=f"bootstrap: v{version} is the first version of {model_name}, champion with nothing to compare "
                       f"it with (content hash {digest[:12]}); every later version goes through the gate",
                champion_version=None, challenger_version=str(version), margin=0.0, content_hash=digest,
                decided_by=actor), expect_champion=None)
        finally:
            lock_conn.execute("select pg_advisory_unlock(hashtext(%s))", (f"riskloop.promotion:{model_name}",))
    if not decision.promoted:
        raise PromotionError(decision.reason)
    return decision


def contracts_gate(settings: Settings, run_tags: dict[str, str]) -> tuple[bool, str, dict[str, str]]:
    """Did the challenger's training data pass its data contracts? Judged on what its training run
    recorded (``riskloop.contracts.<schema>`` tags: the latest contract run of each schema before it
    read the data), so a later green run cannot launder a model trained on data that failed.

    Returns (ok, reason, the recorded results per schema). A required schema with no recorded run is a
    failure unless ``settings.promotion_require_contracts`` is off (marts built by hand, e.g. tests)."""
    results = {k.removeprefix(CONTRACT_TAG_PREFIX): v for k, v in sorted(run_tags.items())
               if k.startswith(CONTRACT_TAG_PREFIX)}
    failed = [f"{schema} ({value})" for schema, value in results.items() if not value.startswith("passed")]
    if failed:
        return False, f"its training data failed data contracts: {', '.join(failed)}", results
    missing = [schema for schema in REQUIRED_CONTRACT_SCHEMAS if schema not in results]
    if missing and settings.promotion_require_contracts:
        return False, (f"no data-contract run of {', '.join(missing)} recorded before its training run read the "
                       "data (run the ingest DAG's contract checks, then retrain)"), results
    if missing:
        return True, (f"data contracts of {', '.join(missing)} not recorded, not required "
                      "(RISKLOOP_PROMOTION_REQUIRE_CONTRACTS=false)"), results
    return True, f"data contracts passed ({', '.join(results)})", results


def _finish(settings: Settings, client, decision: PromotionDecision,
            expect_champion: str | None = None) -> PromotionDecision:
    """Record the decision and, for a promotion, move the alias inside the same transaction.

    The row is inserted first and committed only after the alias moved, so a failed alias move
    leaves no "promoted" row behind; the champion is re-read just before moving it, so a champion
    changed by hand during the evaluation is never silently overwritten.
    """
    from psycopg.types.json import Jsonb

    with db.connect(settings) as conn:
        if decision.promoted:
            current = _alias_version(client, decision.model_name, CHAMPION)
            if current != expect_champion:
                decision = PromotionDecision(**{
                    **{k: getattr(decision, k) for k in decision.__dataclass_fields__},
                    "decision": "refused", "champion_version": current,
                    "reason": f"champion moved from v{expect_champion} to v{current} during the evaluation; "
                              "re-run the gate"})
        conn.execute(
            f"""insert into {GOVERNANCE_SCHEMA}.promotion_decisions
                (decision_id, decided_at, model_name, decision, reason, champion_version, challenger_version,
                 new_champion_version, margin, champion_metrics, challenger_metrics, test_start, test_end,
                 n_test, n_test_frauds, drift_verdict, drift_report_id, drift_model_version, decided_by,
                 content_hash, approval_id, approved_by, canary_id, canary_verdict, canary_evidence,
                 contracts_verdict, contracts_evidence)
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                        %s, %s, %s, %s, %s)""",
            (decision.decision_id, decision.decided_at, decision.model_name, decision.decision, decision.reason,
             decision.champion_version, decision.challenger_version, decision.new_champion_version,
             decision.margin, Jsonb(_jsonable(decision.champion_metrics)),
             Jsonb(_jsonable(decision.challenger_metrics)), decision.test_start, decision.test_end,
             decision.n_test, decision.n_test_frauds, decision.drift_verdict, decision.drift_report_id,
             decision.drift_model_version, decision.decided_by or db.who(), decision.content_hash, decision.approval_id,
             decision.approved_by, decision.canary_id, decision.canary_verdict,
             Jsonb(decision.canary_evidence) if decision.canary_verdict else None,
             decision.contracts_verdict, Jsonb(decision.contracts_evidence) if decision.contracts_verdict else None),
        )
        if decision.promoted:
            client.set_registered_model_alias(decision.model_name, CHAMPION, decision.challenger_version)
    log.info("gate %s: %s (champion v%s, challenger v%s): %s", decision.model_name, decision.decision,
             decision.champion_version, decision.challenger_version, decision.reason)
    if decision.promoted and decision.canary_id:  # the canary did its job: serving goes back to one model
        canary.end(settings, decision.model_name, "promoted", f"v{decision.challenger_version} promoted by "
                   f"decision {decision.decision_id}", canary_id=decision.canary_id,
                   actor=decision.decided_by)
    if decision.challenger_version and decision.decision != "no_change":
        try:
            _tag(client, decision)
        except Exception:  # the Postgres row is the record of authority; tags are a convenience copy
            log.exception("gate %s: decision %s recorded but tagging v%s failed", decision.model_name,
                          decision.decision_id, decision.challenger_version)
    return decision


def _tag(client, d: PromotionDecision) -> None:
    """``promotion.*`` tags on the challenger's version (and a pointer on the dethroned champion)."""
    tags = {
        "promotion.decision": d.decision,
        "promotion.reason": d.reason[:5000],
        "promotion.decision_id": d.decision_id,
        "promotion.decided_at": d.decided_at.isoformat(),
        "promotion.champion_version": d.champion_version or "",
        "promotion.margin": str(d.margin),
        "promotion.drift_verdict": d.drift_verdict or "not_assessed",
        "promotion.content_hash": d.content_hash or "",
        "promotion.approved_by": d.approved_by or "",
        "promotion.canary_verdict": d.canary_verdict or "not_assessed",
        "promotion.contracts_verdict": d.contracts_verdict or "not_assessed",
        "promotion.test_window": f"{d.test_start.isoformat() if d.test_start else ''}/"
                                 f"{d.test_end.isoformat() if d.test_end else ''}",
    }
    for role, values in (("challenger", d.challenger_metrics), ("champion", d.champion_metrics)):
        for k, v in values.items():
            tags[f"promotion.{role}.{k}"] = f"{v:.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(d.model_name, d.challenger_version, k, v)
    if d.promoted and d.champion_version:
        client.set_model_version_tag(d.model_name, d.champion_version, "promotion.superseded_by",
                                     d.challenger_version)


def _jsonable(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN is not JSON: an undefined metric is stored as null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
