"""The two products riskloop decides for, and what differs between them where one code path serves both.

Monitoring, the canary and the promotion gate are written once; this table says, per product, which
metrics the gate compares (and in which direction), which feature service a version was trained on,
what a positive label is called, which decisions go against the customer, and where a decision's
outcome is learnt. A registered model belongs to a product by the version's
``feature_service`` tag (training sets it), else by the configured model names.
"""

from __future__ import annotations

from dataclasses import dataclass

from riskloop.core.config import Settings
from riskloop.features.store import CREDIT_SERVICE, FRAUD_SERVICE

FRAUD, CREDIT = "fraud", "credit"


@dataclass(frozen=True)
class GatedMetric:
    name: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class Outcomes:
    """Where a logged decision's outcome (its label) is learnt: ``table``'s ``key`` equals the decision's
    ``request->>request_key``; ``label`` is 1 for a positive; ``matured`` is an SQL condition on the row
    (alias ``o``) saying the label is final (a fraud label after the label delay, a default once observed)."""

    table: str
    key: str
    request_key: str
    label: str
    matured: str


@dataclass(frozen=True)
class Product:
    name: str  # fraud | credit: serving.decision_log.product
    service: str  # the Feast feature service its models are trained on
    gated: tuple[GatedMetric, ...]  # compared champion vs challenger by the promotion gate
    positives: str  # what a positive label is, for messages ("frauds", "defaults")
    adverse: tuple[str, ...]  # decisions against the customer: their rate per canary arm
    outcomes: Outcomes
    fairness: bool = False  # the gate also judges group fairness (a lending decision)


PRODUCTS: dict[str, Product] = {
    # Card precision is computed and recorded, but it is a per-day operational figure that moves with
    # the daily fraud count, too noisy on a week to veto alone.
    FRAUD: Product(FRAUD, FRAUD_SERVICE, (GatedMetric("auc_roc"), GatedMetric("average_precision")), "frauds",
                   adverse=("review", "deny"),
                   # as drift monitoring matures them: a payment label_delay_days older than the newest one
                   outcomes=Outcomes("marts.fct_transactions", "payment_id", "transaction_id", "is_fraud",
                                     "o.tx_at <= (select max(tx_at) from marts.fct_transactions) "
                                     "- make_interval(days => %(label_delay_days)s)")),
    # A PD is used as a probability (pricing, thresholds): ranking alone is not enough, calibration is gated too.
    CREDIT: Product(CREDIT, CREDIT_SERVICE, (GatedMetric("auc_roc"), GatedMetric("brier", higher_is_better=False),
                                             GatedMetric("ece", higher_is_better=False)), "defaults",
                    adverse=("decline", "refer"),
                    outcomes=Outcomes("marts.fct_credit_outcomes", "application_id", "application_id", "defaulted",
                                      "o.observed_at <= clock_timestamp()"),
                    fairness=True),
}
_BY_SERVICE = {p.service: p for p in PRODUCTS.values()}


def product_of(settings: Settings, model_name: str, feature_service: str | None = None) -> Product:
    """The product of a registered model: by the version's feature service when known, else by name
    (``settings.credit_model_name``; anything else is fraud, the platform's first product)."""
    if feature_service in _BY_SERVICE:
        return _BY_SERVICE[feature_service]
    return PRODUCTS[CREDIT] if model_name == settings.credit_model_name else PRODUCTS[FRAUD]
