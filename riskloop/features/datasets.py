"""Training sets, point-in-time correct, through the Feast feature services.

The entity frames are SQL queries over the marts rather than DataFrames: Feast then builds
its temporary entity table with ``CREATE TABLE AS`` inside Postgres instead of uploading
rows from Python, and the frame stays bounded to the windows asked for.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pandas as pd
import sqlalchemy as sa

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.features.store import CREDIT_SERVICE, FRAUD_SERVICE

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

FRAUD_REQUEST_FEATURES = ("amount", "is_weekend", "is_night")
CREDIT_LABEL = "defaulted"


def service_features(store: "FeatureStore", service: str) -> list[str]:
    """The feature names of a feature service, in the service's (stable) order."""
    fs = store.get_feature_service(service)
    return [f.name for projection in fs.feature_view_projections for f in projection.features]


def fraud_feature_names(store: "FeatureStore") -> list[str]:
    """The fraud model's input order: request-time inputs, then the service's stored features."""
    return [*FRAUD_REQUEST_FEATURES, *service_features(store, FRAUD_SERVICE)]


def _ts(value: pd.Timestamp) -> str:
    return f"timestamptz '{pd.Timestamp(value).isoformat()}'"


def transaction_range(settings: Settings) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last ``tx_at`` of ``marts.fct_transactions``."""
    eng = db.engine(settings)
    try:
        with eng.connect() as conn:
            lo, hi = conn.execute(sa.text("select min(tx_at), max(tx_at) from marts.fct_transactions")).one()
    finally:
        eng.dispose()
    if lo is None:
        raise ValueError("marts.fct_transactions is empty")
    return pd.Timestamp(lo).tz_convert("UTC"), pd.Timestamp(hi).tz_convert("UTC")


def known_frauds(settings: Settings, before: pd.Timestamp) -> pd.DataFrame:
    """``customer_id``, ``fraud_known_at``, ``tx_at`` of every fraud reported before ``before``."""
    query = ("select customer_id, fraud_known_at, tx_at from marts.fct_transactions "
             f"where is_fraud = 1 and fraud_known_at < {_ts(before)}")
    eng = db.engine(settings)
    try:
        frame = pd.read_sql(query, eng)
    finally:
        eng.dispose()
    frame["fraud_known_at"] = pd.to_datetime(frame["fraud_known_at"], utc=True)
    frame["tx_at"] = pd.to_datetime(frame["tx_at"], utc=True)
    return frame


def _fetch(store: "FeatureStore", entity_sql: str, service: str, sort: list[str]) -> pd.DataFrame:
    started = time.perf_counter()
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(service))
    frame = job.to_df()
    # Feast returns rows in no guaranteed order: sort so the same data gives the same model.
    frame = frame.sort_values(sort, kind="mergesort").reset_index(drop=True)
    # Feast's Postgres offline store joins every feature row sharing the latest timestamp, so two
    # payments of one customer in the same second return an entity row twice (10 of 737k rows on
    # the handbook data; the tied rows carry equal values). One row per entity row:
    n = len(frame)
    frame = frame.drop_duplicates(subset=sort, keep="first").reset_index(drop=True)
    if len(frame) < n:
        log.warning("get_historical_features(%s): dropped %d duplicated entity rows (timestamp ties)",
                    service, n - len(frame))
    log.info("get_historical_features(%s): %d rows in %.2fs", service, len(frame), time.perf_counter() - started)
    return frame


def fraud_dataset(store: "FeatureStore", windows: list[tuple[pd.Timestamp, pd.Timestamp]]) -> pd.DataFrame:
    """One row per transaction with ``tx_at`` in any of ``windows`` ([start, end) pairs): ids,
    request inputs, ``is_fraud``/``fraud_known_at`` and the ``fraud_model_v1`` features as of
    just before ``tx_at``.

    The customer feature rows are stamped with their own transaction's time and include it; the
    online store, when a new payment is scored, holds the row of the customer's *previous*
    payment. Joining one microsecond before ``tx_at`` gives training exactly what serving sees
    (the current payment reaches the model through the request-time ``amount``), so there is
    no train/serve skew.
    """
    where = " or ".join(f"(tx_at >= {_ts(a)} and tx_at < {_ts(b)})" for a, b in windows)
    entity_sql = (
        "select transaction_id, customer_id, terminal_id, card_token, "
        "tx_at - interval '1 microsecond' as event_timestamp, "
        "amount, is_weekend, is_night, is_fraud, fraud_known_at "
        f"from marts.fct_transactions where {where}")
    frame = _fetch(store, entity_sql, FRAUD_SERVICE, ["event_timestamp", "transaction_id"])
    for col in ("event_timestamp", "fraud_known_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def credit_dataset(store: "FeatureStore") -> pd.DataFrame:
    """One row per application with an observed outcome: ``customer_id`` (never a feature: it
    shows repeat applicants), ``defaulted``, the simulator's
    ``true_default_probability`` (never a feature: the oracle the model is measured against) and
    the ``credit_model_v1`` features as of ``applied_at``."""
    entity_sql = (
        "select f.application_id, f.customer_id, f.event_timestamp, o.defaulted, o.observed_at, "
        "o.true_default_probability "
        "from marts.credit_features f join marts.fct_credit_outcomes o using (application_id)")
    frame = _fetch(store, entity_sql, CREDIT_SERVICE, ["event_timestamp", "application_id"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def protected_groups(settings: Settings) -> pd.DataFrame:
    """``application_id`` and the applicant's protected attribute (``age_band``) of every application,
    from ``marts.credit_applicant_groups``: never through Feast, so no model can be trained on it. Empty
    (same columns) when the mart does not exist (a warehouse built before it)."""
    eng = db.engine(settings)
    try:
        with eng.connect() as conn:
            if not conn.execute(sa.text("select to_regclass('marts.credit_applicant_groups') is not null")).scalar():
                log.warning("no marts.credit_applicant_groups: fairness figures cannot be computed")
                return pd.DataFrame({"application_id": pd.Series(dtype=str), "age_band": pd.Series(dtype=str)})
            return pd.read_sql(sa.text("select application_id, age_band from marts.credit_applicant_groups"), conn)
    finally:
        eng.dispose()
