"""Credit applications and their outcomes, with a default probability the simulator knows exactly.

Why an oracle: a credit model trained on the landed tables can be judged against the true PD
(``credit_outcomes.true_default_probability``), not only against noisy 0/1 defaults, which
makes calibration checks and "how much signal is left" questions answerable.

Generative story (per application):

- the customer has a latent risk ``z ~ N(0, 1)`` (shared by all their applications) and a
  spending profile estimated from their transactions (mean genuine amount, transactions/day);
- bureau attributes are drawn from ``z`` and the spending profile with independent noise
  (higher z: more delinquencies, higher utilisation and debt-to-income, shorter history, lower
  income; bigger spenders earn more);
- the true PD is a logistic function of the *observed* attributes only (`default_probability`),
  monotone by construction: increasing in n_delinquencies, debt_to_income and utilization,
  decreasing in income and credit_history_months.  Since z acts only through the attributes,
  the oracle is learnable and the Bernoulli draw is the only irreducible noise;
- ``defaulted ~ Bernoulli(pd)``, observed 90 days after the application, and landed only if
  that is before ``as_of``;
- each customer has an age band (``PROTECTED_ATTRIBUTE``), a protected attribute landed with the
  application for fairness checks and never a model input. ``protected_bias`` > 0 raises the latent
  risk of the ``DISADVANTAGED_BAND`` by that much (in standard deviations of z): a world where the
  group's recorded attributes, hence its true PD, are worse, as historical disadvantage leaves them.
  A model that never sees the band then approves the group less often, which the fairness gate must
  detect; with 0 (the default) the band is independent of everything else.

The intercept is fixed (not re-fitted per run) so the oracle is the same model for every
simulation; it gives a mean PD of about 10% (8-12% across seeds and sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from riskloop.simulator import frames as fr

CURRENCY = "EUR"
APPLICATION_WINDOW_DAYS_BEFORE_START = 365
OUTCOME_DELAY_DAYS = 90
TERMS_MONTHS = (12, 24, 36, 48, 60)
TERM_WEIGHTS = (0.15, 0.25, 0.30, 0.15, 0.15)
PROTECTED_ATTRIBUTE = "age_band"
AGE_BANDS = ("under_35", "35_to_54", "55_and_over")
AGE_BAND_WEIGHTS = (0.30, 0.45, 0.25)
DISADVANTAGED_BAND = "under_35"


@dataclass(frozen=True)
class PDModel:
    """Coefficients of the true logistic PD; signs fix the monotonicity the tests check."""

    intercept: float = -3.3
    per_delinquency: float = 0.55  # > 0
    per_debt_to_income: float = 1.6  # > 0
    per_utilization: float = 1.8  # > 0
    per_log_income: float = -0.6  # < 0, on log(annual income / 35,000 EUR)
    per_history_month: float = -0.005  # < 0
    reference_income_eur: float = 35_000.0


TRUE_PD_MODEL = PDModel()


def default_probability(n_delinquencies: np.ndarray, debt_to_income: np.ndarray, utilization: np.ndarray,
                        annual_income_eur: np.ndarray, credit_history_months: np.ndarray,
                        model: PDModel = TRUE_PD_MODEL) -> np.ndarray:
    """The simulator's true probability of default for the given applicant attributes."""
    logit = (model.intercept
             + model.per_delinquency * np.asarray(n_delinquencies, dtype=float)
             + model.per_debt_to_income * np.asarray(debt_to_income, dtype=float)
             + model.per_utilization * np.asarray(utilization, dtype=float)
             + model.per_log_income * np.log(np.asarray(annual_income_eur, dtype=float) / model.reference_income_eur)
             + model.per_history_month * np.asarray(credit_history_months, dtype=float))
    return 1.0 / (1.0 + np.exp(-logit))


@dataclass(frozen=True)
class SpendingProfile:
    """Per customer: id (int64), mean genuine amount (EUR) and transactions per day."""

    customer_id: np.ndarray
    mean_amount: np.ndarray
    tx_per_day: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def derive_credit(profile: SpendingProfile, start_ns: int, as_of_ns: int, rng: np.random.Generator,
                  applications_per_customer: float = 1.0, protected_bias: float = 0.0) -> dict[str, pd.DataFrame]:
    """``credit_applications`` and ``credit_outcomes``, applications uniform over [start - 365 d, as_of)."""
    if applications_per_customer < 0:
        raise ValueError(f"applications_per_customer must be >= 0, got {applications_per_customer}")
    if protected_bias < 0:
        raise ValueError(f"protected_bias must be >= 0, got {protected_bias}")
    # A stream of its own (spawning does not advance ``rng``): the other columns are those of a world
    # without the attribute.
    band_rng = rng.spawn(1)[0]
    n_customers = len(profile.customer_id)
    z = rng.normal(size=n_customers)
    band = np.asarray(AGE_BANDS)[band_rng.choice(len(AGE_BANDS), n_customers, p=AGE_BAND_WEIGHTS)]
    z = z + protected_bias * (band == DISADVANTAGED_BAND)
    n_apps = rng.poisson(applications_per_customer, n_customers)
    cust = np.repeat(np.arange(n_customers), n_apps)
    n = len(cust)
    # Per-customer sequence number, so application ids are stable and readable.
    seq = np.arange(n) - np.repeat(np.cumsum(n_apps) - n_apps, n_apps)
    zc = z[cust]
    spend = np.log(np.clip(profile.mean_amount[cust], 1.0, None) / 40.0)
    activity = np.log1p(profile.tx_per_day[cust])

    window_start = start_ns - APPLICATION_WINDOW_DAYS_BEFORE_START * fr.NS_PER_DAY
    applied = window_start + (np.floor(rng.random(n) * ((as_of_ns - window_start) // fr.NS_PER_SECOND))
                              * fr.NS_PER_SECOND).astype(np.int64)

    income_eur = np.round(np.clip(np.exp(10.4 + 0.35 * spend + 0.1 * activity - 0.2 * zc
                                         + 0.35 * rng.normal(size=n)), 6_000, 1_000_000), -2)
    history = np.rint(np.clip(100 - 25 * zc + 50 * rng.normal(size=n), 0, 600)).astype(np.int32)
    delinquencies = np.minimum(rng.poisson(np.exp(-1.6 + 0.8 * zc)), 30).astype(np.int32)
    utilization = np.round(_sigmoid(-0.6 + 0.9 * zc + 0.7 * rng.normal(size=n)), 4)
    dti = np.round(np.clip(np.exp(np.log(0.28) + 0.3 * zc + 0.4 * rng.normal(size=n)), 0.0, 3.0), 4)
    amount_eur = np.maximum(np.round(income_eur * np.exp(np.log(0.2) + 0.5 * rng.normal(size=n)), -1), 500)
    term = np.asarray(TERMS_MONTHS)[rng.choice(len(TERMS_MONTHS), n, p=TERM_WEIGHTS)]

    pd_true = default_probability(delinquencies, dti, utilization, income_eur, history)
    defaulted = rng.random(n) < pd_true
    observed = applied + OUTCOME_DELAY_DAYS * fr.NS_PER_DAY

    order = np.lexsort((seq, cust, applied))
    cust_ids = fr.ints_to_str(profile.customer_id[cust])
    app_ids = fr.join("app_", cust_ids, "_", fr.ints_to_str(seq))
    applications = fr.schema_frame("credit_applications", {
        "application_id": app_ids.take(order),
        "customer_id": cust_ids.take(order),
        "applied_at": applied[order],
        "amount_minor": (amount_eur[order] * 100).astype(np.int64),
        "currency": CURRENCY,
        "term_months": term[order],
        "annual_income_minor": (income_eur[order] * 100).astype(np.int64),
        "debt_to_income": dti[order],
        "n_delinquencies": delinquencies[order],
        "credit_history_months": history[order],
        "utilization": utilization[order],
        PROTECTED_ATTRIBUTE: band[cust][order],
    }, n)
    known = order[observed[order] < as_of_ns]
    known_sorted = known[np.argsort(observed[known], kind="stable")]
    outcomes = fr.schema_frame("credit_outcomes", {
        "application_id": app_ids.take(known_sorted),
        "defaulted": defaulted[known_sorted],
        "observed_at": observed[known_sorted],
        "true_default_probability": pd_true[known_sorted],
    }, len(known_sorted))
    return {"credit_applications": applications, "credit_outcomes": outcomes}
