"""Derive riskloop's raw tables (``riskloop.core.schema.RAW_TABLES``) from a handbook-schema transaction frame.

The input can be a simulation (`riskloop.simulator.handbook`) or the real handbook file: only
the handbook's columns are read, and ids may be integers (as in the file) or strings of
integers (as its README describes).  Everything derived is drawn from
``numpy.random.default_rng([DERIVE_SEED_SALT, seed])``, a stream independent of the
generator's ``default_rng(seed)``, so the same transactions and seed give the same tables.

The realism rule: the simulation knows everything, but the raw tables hold only what had
happened, i.e. reached riskloop, before ``as_of`` (the end of the simulated period, exclusive,
like the half-open data intervals of Airflow and `riskloop.data.ingest`): webhooks received later,
the outcome of disputes still open and credit outcomes not yet observed are dropped.  The full
truth stays in the transactions frame.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from riskloop.core.schema import RAW_TABLES
from riskloop.simulator import frames as fr
from riskloop.simulator.credit import SpendingProfile, derive_credit
from riskloop.simulator.handbook import SECONDS_PER_DAY, TRANSACTION_COLUMNS
from riskloop.simulator.kyc import derive_kyc
from riskloop.simulator.payments import Payments, derive_payment_tables

logger = logging.getLogger(__name__)

DERIVE_SEED_SALT = 0x5EED_DE21


def _int_ids(values: pd.Series, name: str) -> np.ndarray:
    """Handbook ids as int64, whether stored as integers or as strings of integers."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    try:
        return pd.to_numeric(values, errors="raise").to_numpy().astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must hold integers or strings of integers") from exc


def _utc_ns(values: pd.Series) -> np.ndarray:
    """Epoch ns of a datetime column; naive times (the handbook's) are taken as UTC."""
    ts = pd.DatetimeIndex(pd.to_datetime(values))
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return ts.as_unit("ns").asi8


def infer_period(transactions: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, as_of) of a handbook frame: TX_TIME_SECONDS counts from the start date, and the
    period ends at midnight after the last transaction day."""
    if transactions.empty:
        raise ValueError("cannot infer the period of an empty transaction frame")
    times = _utc_ns(transactions["TX_DATETIME"])
    seconds = transactions["TX_TIME_SECONDS"].to_numpy(dtype=np.int64)
    start_ns = int((times - seconds * fr.NS_PER_SECOND).min())
    last_day = int(transactions["TX_TIME_DAYS"].max())
    return (pd.Timestamp(start_ns, tz="UTC"),
            pd.Timestamp(start_ns + (last_day + 1) * SECONDS_PER_DAY * fr.NS_PER_SECOND, tz="UTC"))


# Spending attributed to a known customer who never paid in the period (the handbook's median
# customer: mean amount ~ U(5, 100)).
DEFAULT_MEAN_AMOUNT = 52.5


def _spending_profile(customer: np.ndarray, amount: np.ndarray, fraud: np.ndarray, n_days: float,
                      known_ids: np.ndarray | None = None) -> SpendingProfile:
    """Each customer's own spending (fraud excluded when they have genuine payments).

    ``known_ids`` adds customers without any transaction (they passed KYC and may apply for
    credit even if they never paid by card): no spending, the default mean amount.
    """
    all_ids = customer if known_ids is None else np.concatenate([customer, np.asarray(known_ids, dtype=np.int64)])
    ids = np.unique(all_ids)
    inverse = np.searchsorted(ids, customer)
    n_all = np.bincount(inverse, minlength=len(ids))
    genuine = ~fraud
    n_gen = np.bincount(inverse[genuine], minlength=len(ids))
    sum_gen = np.bincount(inverse[genuine], weights=amount[genuine], minlength=len(ids))
    sum_all = np.bincount(inverse, weights=amount, minlength=len(ids))
    mean = np.where(n_gen > 0, sum_gen / np.maximum(n_gen, 1), sum_all / np.maximum(n_all, 1))
    mean[n_all == 0] = DEFAULT_MEAN_AMOUNT
    return SpendingProfile(customer_id=ids, mean_amount=mean, tx_per_day=n_all / max(n_days, 1.0))


def derive_tables(transactions: pd.DataFrame, seed: int = 0, as_of: pd.Timestamp | str | None = None,
                  start: pd.Timestamp | str | None = None,
                  applications_per_customer: float = 1.0,
                  customer_ids: np.ndarray | None = None, credit_bias: float = 0.0) -> dict[str, pd.DataFrame]:
    """Every raw table of ``riskloop.core.schema``, keyed by table name, as known at ``as_of``.

    ``start`` and ``as_of`` default to the period of the transactions (`infer_period`); pass
    them when the period is longer than the data (e.g. a simulation whose last day is empty).
    The customers (KYC, credit) are those who transacted, plus ``customer_ids`` (integers)
    when given: a simulation knows its customers who never paid (no terminal in reach).
    ``credit_bias`` is the credit world's true bias against one age band (``derive_credit``'s ``protected_bias``).
    """
    started = time.perf_counter()
    missing = [c for c in TRANSACTION_COLUMNS if c not in transactions.columns]
    if missing:
        raise ValueError(f"not a handbook-schema frame, missing columns: {missing}")
    if start is None or as_of is None:
        inferred_start, inferred_as_of = infer_period(transactions)
        start = inferred_start if start is None else start
        as_of = inferred_as_of if as_of is None else as_of
    start_ns, as_of_ns = fr.utc_ns(start), fr.utc_ns(as_of)
    if as_of_ns <= start_ns:
        raise ValueError("as_of must be after the start of the period")

    amount = transactions["TX_AMOUNT"].to_numpy(dtype=float)
    payments = Payments(
        transaction_id=transactions["TRANSACTION_ID"].to_numpy(dtype=np.int64),
        customer_id=_int_ids(transactions["CUSTOMER_ID"], "CUSTOMER_ID"),
        terminal_id=_int_ids(transactions["TERMINAL_ID"], "TERMINAL_ID"),
        amount_minor=np.rint(amount * 100).astype(np.int64),
        fraud=transactions["TX_FRAUD"].to_numpy().astype(bool),
        time_ns=_utc_ns(transactions["TX_DATETIME"]),
    )
    if not pd.Index(payments.transaction_id).is_unique:
        raise ValueError("TRANSACTION_ID must be unique")
    if (payments.amount_minor < 0).any():
        raise ValueError("TX_AMOUNT must be >= 0")

    rng_payments, rng_kyc, rng_credit = np.random.default_rng([DERIVE_SEED_SALT, seed]).spawn(3)
    tables = derive_payment_tables(payments, rng_payments, as_of_ns)
    profile = _spending_profile(payments.customer_id, amount, payments.fraud,
                                (as_of_ns - start_ns) / fr.NS_PER_DAY, customer_ids)
    tables["kyc_records"] = derive_kyc(profile.customer_id, start_ns, rng_kyc)
    tables.update(derive_credit(profile, start_ns, as_of_ns, rng_credit, applications_per_customer, credit_bias))
    ordered = {t.name: tables[t.name] for t in RAW_TABLES}
    logger.info("derived %s from %d transactions in %.2fs",
                ", ".join(f"{k}={len(v)}" for k, v in ordered.items()), len(transactions),
                time.perf_counter() - started)
    return ordered
