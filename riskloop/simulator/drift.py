"""Drift injection: the world changes after a date, and the monitor has to notice.

A model is trained on the past; production moves on. To prove that monitoring pages and the
promotion gate holds when it does, the simulator can change its own ground truth from
``drift_from`` (a UTC date inside the simulated period) on, in one of two documented ways:

``amount-shift``
    Every payment from ``drift_from`` on is ``factor`` times larger (default 3): a price rise,
    a redenomination, a new premium merchant segment. The fraud labels are the generator's, left
    as they were: the same payments, only bigger (a covariate shift, which the handbook's
    amount > 220 rule of scenario 1 does *not* follow, exactly as a model trained before would not).
``new-fraud-pattern``
    Card testing, a pattern the handbook's three scenarios never produce: from ``drift_from`` on,
    each day ``CARD_TESTING_SHARE`` of the customers (at least one) have their card tested by a
    fraudster, a burst of ``CARD_TESTING_BURST`` tiny payments (0.50-2.00) at night (00:00-05:00) at
    terminals anywhere, not near the customer. They are added as fraud with scenario
    ``CARD_TESTING_SCENARIO`` (4); nothing before ``drift_from`` changes.

Both are applied to the handbook-schema transactions before the raw tables are derived, so every
feed (webhooks, score requests, ledger, disputes) carries the drift consistently. The drift is
part of :class:`riskloop.simulator.SimulationParams` and so of the manifest: same parameters,
same data.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from riskloop.simulator.handbook import SECONDS_PER_DAY, TRANSACTION_COLUMNS

logger = logging.getLogger(__name__)

AMOUNT_SHIFT = "amount-shift"
NEW_FRAUD_PATTERN = "new-fraud-pattern"
DRIFTS = (AMOUNT_SHIFT, NEW_FRAUD_PATTERN)
DEFAULT_AMOUNT_FACTOR = 3.0

CARD_TESTING_SCENARIO = 4
CARD_TESTING_SHARE = 0.005  # of the customers, per day
CARD_TESTING_BURST = (5, 20)  # payments per tested card, inclusive
CARD_TESTING_AMOUNT = (0.5, 2.0)
CARD_TESTING_HOURS = (0, 5)  # night: the burst starts between 00:00 and 05:00


def validate(kind: str | None, drift_from: str | None, start_date: str, days: int,
             factor: float = DEFAULT_AMOUNT_FACTOR) -> pd.Timestamp | None:
    """The drift's first day (naive UTC midnight), or None without drift; a clear error when the
    options do not make sense, before anything is generated."""
    if kind is None:
        if drift_from is not None:
            raise ValueError("drift_from is set but no drift kind: pass drift='amount-shift' or 'new-fraud-pattern'")
        return None
    if kind not in DRIFTS:
        raise ValueError(f"unknown drift {kind!r}; known: {list(DRIFTS)}")
    if drift_from is None:
        raise ValueError(f"drift {kind!r} needs drift_from, the first drifted day (YYYY-MM-DD)")
    try:
        first = pd.Timestamp(drift_from)
    except ValueError as exc:
        raise ValueError(f"drift_from {drift_from!r} is not a date") from exc
    if first.tzinfo is not None:
        first = first.tz_convert("UTC").tz_localize(None)
    first = first.normalize()
    start = pd.Timestamp(start_date)
    end = start + pd.Timedelta(days=days)
    if not start < first < end:
        raise ValueError(f"drift_from {first.date()} must fall after the first simulated day {start.date()} and "
                         f"before the end {end.date()} (exclusive): there must be data before and after it")
    if kind == AMOUNT_SHIFT and not (factor > 0 and factor != 1):
        raise ValueError(f"amount-shift factor must be positive and not 1, got {factor}")
    return first


def apply_drift(transactions: pd.DataFrame, kind: str, first_day: int, rng: np.random.Generator,
                start: pd.Timestamp, n_customers: int, n_terminals: int,
                factor: float = DEFAULT_AMOUNT_FACTOR) -> pd.DataFrame:
    """``transactions`` (handbook schema) with the drift applied from day index ``first_day`` on."""
    if kind == AMOUNT_SHIFT:
        out = transactions.copy()
        drifted = out["TX_TIME_DAYS"].to_numpy() >= first_day
        out.loc[drifted, "TX_AMOUNT"] = np.round(out.loc[drifted, "TX_AMOUNT"].to_numpy() * factor, 2)
        logger.info("drift %s x%g from day %d: %d of %d payments", kind, factor, first_day, int(drifted.sum()),
                    len(out))
        return out
    if kind == NEW_FRAUD_PATTERN:
        return _card_testing(transactions, first_day, rng, start, n_customers, n_terminals)
    raise ValueError(f"unknown drift {kind!r}; known: {list(DRIFTS)}")


def _card_testing(tx: pd.DataFrame, first_day: int, rng: np.random.Generator, start: pd.Timestamp,
                  n_customers: int, n_terminals: int) -> pd.DataFrame:
    """Add the card-testing bursts (scenario 4) from ``first_day`` to the last simulated day."""
    last_day = int(tx["TX_TIME_DAYS"].max()) if len(tx) else first_day - 1
    per_day = max(1, int(round(CARD_TESTING_SHARE * n_customers)))
    days = np.arange(first_day, last_day + 1, dtype=np.int64)
    if len(days) == 0:
        return tx
    # customers that transact at all (a handbook customer with no terminal nearby never does)
    active = np.unique(tx["CUSTOMER_ID"].to_numpy())
    cards = np.stack([rng.choice(active, min(per_day, len(active)), replace=False) for _ in days])
    card_day = np.repeat(days, cards.shape[1])
    card = cards.ravel()
    burst = rng.integers(CARD_TESTING_BURST[0], CARD_TESTING_BURST[1] + 1, len(card))
    n = int(burst.sum())
    first_second = rng.integers(CARD_TESTING_HOURS[0] * 3600, CARD_TESTING_HOURS[1] * 3600, len(card))
    # a burst: the first attempt at first_second, then one every 5-60 s
    gaps = rng.integers(5, 61, n)
    csum = np.cumsum(gaps)
    first_of_burst = np.cumsum(burst) - burst
    within = csum - np.repeat(csum[first_of_burst], burst)
    day = np.repeat(card_day, burst)
    seconds = day * SECONDS_PER_DAY + np.minimum(np.repeat(first_second, burst) + within, SECONDS_PER_DAY - 1)
    added = pd.DataFrame({
        "TRANSACTION_ID": np.zeros(n, dtype=np.int64),
        "TX_DATETIME": start + pd.to_timedelta(seconds, unit="s"),
        "CUSTOMER_ID": np.repeat(card, burst),
        "TERMINAL_ID": rng.integers(0, n_terminals, n),
        "TX_AMOUNT": np.round(rng.uniform(*CARD_TESTING_AMOUNT, n), 2),
        "TX_TIME_SECONDS": seconds,
        "TX_TIME_DAYS": day,
        "TX_FRAUD": np.ones(n, dtype=np.int64),
        "TX_FRAUD_SCENARIO": np.full(n, CARD_TESTING_SCENARIO, dtype=np.int64),
    }).astype(TRANSACTION_COLUMNS)
    out = pd.concat([tx, added], ignore_index=True)
    out = out.sort_values(["TX_TIME_SECONDS", "CUSTOMER_ID", "TERMINAL_ID"], kind="stable").reset_index(drop=True)
    out["TRANSACTION_ID"] = np.arange(len(out), dtype=np.int64)
    logger.info("drift %s from day %d: %d card-testing payments on %d cards added (%d customers, %d terminals)",
                NEW_FRAUD_PATTERN, first_day, n, len(card), n_customers, n_terminals)
    return out.astype(TRANSACTION_COLUMNS)
