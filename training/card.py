"""The model card of a training run: what the model is for, what it learned from, how good it is,
where it must not be trusted and who answers for it.

Written as Markdown from the run's own facts (nothing typed by hand), logged as the run's
``model_card.md`` artifact and set as the registered version's description, which is what the
reviewer's card (:func:`riskloop.governance.review.card`, the ``/review`` page) shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from riskloop.models.fairness import TOO_SMALL, FairnessReport

CARD_ARTIFACT = "model_card.md"

INTENDED_USE = {
    "fraud": ("Scores card payments at authorisation time for the probability that the payment is fraudulent; "
              "the decision policy turns the score into approve / review / decline. Inputs are the request "
              "(amount, weekend, night) and the customer's and terminal's point-in-time features from Feast."),
    "credit": ("Estimates the probability that a credit applicant defaults, at application time, for the "
               "credit decision and its adverse-action reason codes. Monotone constraints keep the reasons "
               "stateable (e.g. more delinquencies never lower the risk)."),
}
LIMITATIONS = {
    "fraud": [
        "Trained on labels known at the training moment: frauds reported later count as genuine, so recent "
        "fraud patterns are under-represented until their chargebacks arrive.",
        "Test labels are the final ones; frauds still unreported when the test window matured are missed.",
        "Not a decision by itself: scores feed the policy (rules, thresholds, manual review).",
        "Learned from the payments in the training window only (a few days to weeks): seasonal or new "
        "attack patterns outside it are unknown to the model.",
    ],
    "credit": [
        "Trained on applications whose outcome was observed; applicants who were declined have no outcome "
        "(reject inference is not done), so the population differs from all applicants.",
        "Probabilities are calibrated on the training population only; recheck calibration after a policy "
        "or population change.",
        "Not for use on applications outside the features' ranges seen in training.",
    ],
}


@dataclass(frozen=True)
class CardFacts:
    """Everything a card states, gathered by the training run."""

    kind: str
    model_name: str
    owner: str
    run_id: str
    git_commit: str | None
    feature_service: str
    features: list[str]
    run_params: dict[str, Any]
    xgb_params: dict[str, Any]
    test_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    label_delay: str
    content_hash: str
    monotone_constraints: dict[str, int] = field(default_factory=dict)
    feature_importance: pd.Series | None = None
    search: dict[str, Any] | None = None
    contracts: list[dict[str, Any]] = field(default_factory=list)
    backend: str = "xgboost (single process)"
    fairness: FairnessReport | None = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _metric_table(test: dict[str, float], valid: dict[str, float]) -> list[str]:
    names = sorted(set(test) | set(valid))
    rows = ["| metric | test | validation |", "|---|---|---|"]
    rows += [f"| {n} | {_fmt(test.get(n, math.nan))} | {_fmt(valid.get(n, math.nan))} |" for n in names]
    return rows


def render(facts: CardFacts) -> str:
    """The card as Markdown."""
    p = facts.run_params
    lines = [
        f"# Model card: {facts.model_name} ({facts.kind})",
        "",
        f"- **Owner:** {facts.owner}",
        f"- **Training run:** {facts.run_id}" + (f" at commit {facts.git_commit}" if facts.git_commit else ""),
        f"- **Trained with:** {facts.backend}",
        "",
        "## Intended use",
        INTENDED_USE[facts.kind],
        "",
        "## Data",
        f"- Feature service: `{facts.feature_service}` (point-in-time join through Feast)",
        f"- Training set: {p.get('train_rows')} rows, {p.get('train_min_ts')} to {p.get('train_max_ts')}, "
        f"content sha256 `{facts.content_hash}`",
        f"- Validation (model selection only): the newest {p.get('valid_fraction')} of the training rows by time, "
        f"{p.get('valid_rows')} rows from {p.get('valid_min_ts')}",
        f"- Test set: {p.get('test_rows')} rows, {p.get('test_min_ts')} to {p.get('test_max_ts')} "
        "(never used to choose anything)",
        f"- Label delay: {facts.label_delay}",
    ]
    if facts.contracts:
        lines.append("- Data contracts (latest run per schema before training):")
        lines += [f"  - `{c['schema']}`: {'passed' if c['success'] else 'FAILED'} at {c['run_at']} "
                  f"({c['evaluated']} expectations on {len(c['tables'])} tables, {c['failed']} failed)"
                  for c in facts.contracts]
    else:
        lines.append("- Data contracts: no contract run recorded in this warehouse")
    metrics = {k: v for k, v in facts.test_metrics.items() if facts.fairness is None
               or not k.startswith(("fairness_", "approval_rate."))}
    lines += ["", "## Metrics", *_metric_table(metrics, facts.validation_metrics), ""]
    if facts.fairness is not None:
        lines += _fairness(facts.fairness)
    if facts.search:
        s = facts.search
        lines += [f"Hyperparameters chosen by a {s['trials']}-trial search ({s['sampler']}) on validation "
                  f"`{s['metric']}` ({s['direction']}); best trial {s['best_trial']} "
                  f"({_fmt(s['best_value'])}). The test set was scored once, by the final model.", ""]
    lines += ["## Features", f"{len(facts.features)} inputs, in model order: "
              + ", ".join(f"`{f}`" for f in facts.features), ""]
    if facts.feature_importance is not None and len(facts.feature_importance):
        lines += ["Mean |SHAP| (log-odds) on the test sample, top 10:", "",
                  "| feature | mean abs SHAP |", "|---|---|"]
        lines += [f"| {n} | {v:.4f} |" for n, v in facts.feature_importance.head(10).items()]
        lines.append("")
    if facts.monotone_constraints:
        lines += ["## Monotone constraints", "| feature | direction |", "|---|---|"]
        lines += [f"| {n} | {'increasing risk' if d > 0 else 'decreasing risk'} |"
                  for n, d in facts.monotone_constraints.items()]
        lines.append("")
    lines += ["## Hyperparameters", ", ".join(f"{k}={v}" for k, v in sorted(facts.xgb_params.items())), "",
              "## Limitations", *[f"- {text}" for text in LIMITATIONS[facts.kind]], ""]
    return "\n".join(lines)


def _fairness(f: FairnessReport) -> list[str]:
    """Per-group approval and error rates on the test set; the attribute is never a model input."""
    lines = ["## Fairness", f"By `{f.attribute}` (a protected attribute the model never sees), on the test set; "
             f"approved = predicted PD < {f.approve_below:g}.", ""]
    if not f.groups:
        return [*lines, "Not computed: no protected attribute recorded for the test applications.", ""]
    lines += ["| group | applications | defaults | approval rate | TPR (defaulters declined) | "
              "FPR (repayers declined) |", "|---|---|---|---|---|---|"]
    lines += [f"| {name}{f' ({TOO_SMALL})' if g.n < f.min_group else ''} | {g.n} | {g.n_defaults} | "
              f"{_fmt(g.approval_rate)} | {_fmt(g.tpr)} | {_fmt(g.fpr)} |" for name, g in sorted(f.groups.items())]
    lines += ["", f"- Adverse impact ratio (lowest / highest approval rate): {_fmt(f.air)} "
              "(below 0.8 fails the four-fifths rule)",
              f"- TPR gap: {_fmt(f.tpr_gap)}; FPR gap: {_fmt(f.fpr_gap)} (highest minus lowest group)"]
    if f.too_small:
        lines.append(f"- {TOO_SMALL} (fewer than {f.min_group} test applications), left out of the ratio and the "
                     f"gaps: {', '.join(f.too_small)}")
    return [*lines, ""]
