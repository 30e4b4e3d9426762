"""The payment feeds of a transaction history: processor webhooks, dispute outcomes and the ledger.

Each card transaction becomes the lifecycle a payment processor would report:

- ``payment.authorized`` at the transaction time and ``payment.captured`` 1-10 minutes later;
- ~1% of genuine payments are refunded 1-10 days later;
- every fraud is disputed by the cardholder (reason 10.4, merchant loses, chargeback), ~0.1% of
  genuine payments get a dispute the merchant wins (reason 13.1).  A dispute opens 1-10 days
  after the payment and closes 1-14 days after opening.  Both delays are skewed towards their
  short end (scaled Beta distributions) so that the label (``dispute.closed``) arrives a median
  of about a week after the payment and at most ~3.5 weeks, the delay the handbook's protocol
  assumes; uniform delays over the same ranges would put the median near two weeks;
- every webhook reaches riskloop a small random lag (about a second, at most two minutes)
  after it happened.

Money is booked in a double-entry ledger when the event reaching riskloop (``received_at``):
capture (customer +, merchant -), refund (the reverse) and lost dispute (merchant +,
chargebacks -).  Each journal has two lines summing to zero.

Only what riskloop had *received* by ``as_of`` lands: later events, their journals and
the outcomes of disputes still open are dropped, so a training job reading the raw tables sees
the same label delay a production system would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from riskloop.simulator import frames as fr

logger = logging.getLogger(__name__)

CURRENCY = "EUR"
PROCESSORS = ("stripe", "standard")  # by int(TERMINAL_ID) % 2

REFUND_RATE = 0.01
GENUINE_DISPUTE_RATE = 0.001
FRAUD_REASON_CODE = "10.4"  # Visa: other fraud, card-absent environment
OTHER_REASON_CODE = "13.1"  # Visa: merchandise / services not received

CAPTURE_DELAY_S = (60.0, 600.0)
REFUND_DELAY_DAYS = (1.0, 10.0)
# Delay = low + (high - low) * Beta(a, b): skewed to the short end, see the module docstring.
DISPUTE_OPEN_DELAY_DAYS = (1.0, 10.0, 1.5, 4.0)
DISPUTE_CLOSE_DELAY_DAYS = (1.0, 14.0, 1.5, 5.0)
# Webhook delivery lag: lognormal around 1.5 s, clipped to [50 ms, 120 s].
DELIVERY_LAG_MEDIAN_S = 1.5
DELIVERY_LAG_SIGMA = 0.75
DELIVERY_LAG_MAX_S = 120.0

# Event kinds in lifecycle order (the order also breaks timestamp ties when sorting).
AUTHORIZED, CAPTURED, REFUNDED, DISPUTE_OPENED, DISPUTE_CLOSED = range(5)
EVENT_TYPES = ("payment.authorized", "payment.captured", "payment.refunded", "dispute.opened", "dispute.closed")
EVENT_SUFFIXES = ("_authorized", "_captured", "_refunded", "_dispute_opened", "_dispute_closed")


@dataclass(frozen=True)
class Payments:
    """The transactions the feeds are derived from, as plain arrays (one entry per payment)."""

    transaction_id: np.ndarray  # int64
    customer_id: np.ndarray  # int64
    terminal_id: np.ndarray  # int64
    amount_minor: np.ndarray  # int64
    fraud: np.ndarray  # bool
    time_ns: np.ndarray  # int64 epoch ns, UTC

    def __len__(self) -> int:
        return len(self.transaction_id)


def _seconds_to_ns(seconds: np.ndarray, resolution_ns: int) -> np.ndarray:
    """Seconds to integer nanoseconds, rounded to ``resolution_ns`` (ms for lags, s for days)."""
    return (np.rint(seconds * (fr.NS_PER_SECOND / resolution_ns)) * resolution_ns).astype(np.int64)


def _delivery_lag_ns(rng: np.random.Generator, n: int) -> np.ndarray:
    lag = np.exp(rng.normal(np.log(DELIVERY_LAG_MEDIAN_S), DELIVERY_LAG_SIGMA, n))
    return _seconds_to_ns(np.clip(lag, 0.05, DELIVERY_LAG_MAX_S), 1_000_000)


def _beta_days_ns(rng: np.random.Generator, spec: tuple[float, float, float, float], n: int) -> np.ndarray:
    low, high, a, b = spec
    return _seconds_to_ns((low + (high - low) * rng.beta(a, b, n)) * 86_400, fr.NS_PER_SECOND)


@dataclass(frozen=True)
class _Lifecycle:
    """Every event of every payment, whether or not it has happened by ``as_of`` (the truth)."""

    row: np.ndarray  # index into Payments
    kind: np.ndarray  # event kind code
    occurred_ns: np.ndarray
    received_ns: np.ndarray


def _lifecycle(rng: np.random.Generator, p: Payments) -> _Lifecycle:
    n = len(p)
    rows = np.arange(n, dtype=np.int64)
    # One uniform per payment decides refund / genuine dispute, so the two are disjoint.
    u = rng.random(n)
    genuine = ~p.fraud
    refunded = np.flatnonzero(genuine & (u < REFUND_RATE))
    disputed = np.flatnonzero(p.fraud | (genuine & (u >= REFUND_RATE) & (u < REFUND_RATE + GENUINE_DISPUTE_RATE)))

    captured_at = p.time_ns + _seconds_to_ns(rng.uniform(*CAPTURE_DELAY_S, n), 1_000_000)
    refunded_at = p.time_ns[refunded] + _seconds_to_ns(rng.uniform(*REFUND_DELAY_DAYS, len(refunded)) * 86_400,
                                                       fr.NS_PER_SECOND)
    opened_at = p.time_ns[disputed] + _beta_days_ns(rng, DISPUTE_OPEN_DELAY_DAYS, len(disputed))
    closed_at = opened_at + _beta_days_ns(rng, DISPUTE_CLOSE_DELAY_DAYS, len(disputed))

    row = np.concatenate([rows, rows, refunded, disputed, disputed])
    kind = np.concatenate([np.full(n, AUTHORIZED), np.full(n, CAPTURED), np.full(len(refunded), REFUNDED),
                           np.full(len(disputed), DISPUTE_OPENED), np.full(len(disputed), DISPUTE_CLOSED)])
    occurred = np.concatenate([p.time_ns, captured_at, refunded_at, opened_at, closed_at])
    received = occurred + _delivery_lag_ns(rng, len(occurred))
    return _Lifecycle(row=row, kind=kind.astype(np.int64), occurred_ns=occurred, received_ns=received)


def derive_payment_tables(p: Payments, rng: np.random.Generator, as_of_ns: int) -> dict[str, pd.DataFrame]:
    """``webhook_events``, ``dispute_outcomes`` and ``ledger_entries`` as known at ``as_of``."""
    life = _lifecycle(rng, p)
    landed = life.received_ns < as_of_ns
    order = np.lexsort((life.kind[landed], life.row[landed], life.occurred_ns[landed]))
    row = life.row[landed][order]
    kind = life.kind[landed][order]
    occurred = life.occurred_ns[landed][order]
    received = life.received_ns[landed][order]

    txid_str = fr.ints_to_str(p.transaction_id)
    payment_id = fr.join("pay_", txid_str)
    cust_str = fr.ints_to_str(p.customer_id)
    term_str = fr.ints_to_str(p.terminal_id)
    tables = {
        "webhook_events": _webhook_events(p, row, kind, occurred, received, txid_str, payment_id, cust_str, term_str),
        "dispute_outcomes": _dispute_outcomes(p, life, as_of_ns, txid_str, payment_id),
        "ledger_entries": _ledger_entries(p, row, kind, received, payment_id, cust_str, term_str),
    }
    return tables


def _webhook_events(p: Payments, row: np.ndarray, kind: np.ndarray, occurred: np.ndarray, received: np.ndarray,
                    txid_str: pa.Array, payment_id: pa.Array, cust_str: pa.Array, term_str: pa.Array) -> pd.DataFrame:
    take = pa.array(row)
    is_dispute = kind >= DISPUTE_OPENED
    dispute_id = np.full(len(row), None, dtype=object)
    dispute_id[is_dispute] = fr.to_objects(fr.join("dsp_", txid_str.take(pa.array(row[is_dispute]))))
    pid = payment_id.take(take)
    return fr.schema_frame("webhook_events", {
        "event_id": fr.join("evt_", pid, fr.labels_arrow(EVENT_SUFFIXES, kind)),
        "processor": fr.choice_labels(PROCESSORS, p.terminal_id[row] % 2),
        "event_type": fr.choice_labels(EVENT_TYPES, kind),
        "occurred_at": occurred,
        "received_at": received,
        "payment_id": pid,
        "card_token": fr.join("tok_", cust_str.take(take)),
        "customer_id": cust_str.take(take),
        "terminal_id": term_str.take(take),
        "amount_minor": p.amount_minor[row],
        "currency": CURRENCY,
        "dispute_id": dispute_id,
    }, len(row))


def _dispute_outcomes(p: Payments, life: _Lifecycle, as_of_ns: int, txid_str: pa.Array,
                      payment_id: pa.Array) -> pd.DataFrame:
    """One row per dispute whose ``dispute.closed`` webhook had reached riskloop by ``as_of``."""
    opened = life.kind == DISPUTE_OPENED
    closed = life.kind == DISPUTE_CLOSED
    # Both blocks list the disputed payments in the same order (see _lifecycle).
    known = life.received_ns[closed] < as_of_ns
    rows = life.row[closed][known]
    closed_at = life.occurred_ns[closed][known]
    opened_at = life.occurred_ns[opened][known]
    order = np.lexsort((rows, closed_at))
    rows, closed_at, opened_at = rows[order], closed_at[order], opened_at[order]
    fraud = p.fraud[rows]
    take = pa.array(rows)
    return fr.schema_frame("dispute_outcomes", {
        "dispute_id": fr.join("dsp_", txid_str.take(take)),
        "payment_id": payment_id.take(take),
        "opened_at": opened_at,
        "closed_at": closed_at,
        "status": fr.choice_labels(("won", "lost"), fraud.astype(np.int64)),
        "fraud_confirmed": fraud,
        "reason_code": fr.choice_labels((OTHER_REASON_CODE, FRAUD_REASON_CODE), fraud.astype(np.int64)),
        "amount_minor": p.amount_minor[rows],
        "currency": CURRENCY,
    }, len(rows))


# Journals: (event kind that posts it, journal suffix, debit account kind, credit account kind).
# Account kinds: 0 customer:<id>, 1 merchant:<terminal>, 2 chargebacks.
_JOURNALS = (
    (CAPTURED, "capture", 0, 1),
    (REFUNDED, "refund", 1, 0),
    (DISPUTE_CLOSED, "chargeback", 1, 2),
)


def _ledger_entries(p: Payments, row: np.ndarray, kind: np.ndarray, received: np.ndarray, payment_id: pa.Array,
                    cust_str: pa.Array, term_str: pa.Array) -> pd.DataFrame:
    """Two lines per journal (debit +amount, credit -amount), posted when the event landed."""
    posting = np.zeros(len(kind), dtype=bool)
    journal_code = np.full(len(kind), -1, dtype=np.int64)
    for code, (event_kind, _, _, _) in enumerate(_JOURNALS):
        sel = kind == event_kind
        if event_kind == DISPUTE_CLOSED:
            sel &= p.fraud[row]  # only lost disputes move money
        posting |= sel
        journal_code[sel] = code
    j_row, j_code, j_time = row[posting], journal_code[posting], received[posting]
    n_j = len(j_row)
    # Lines: debit then credit for each journal.
    line_row = np.repeat(j_row, 2)
    line_code = np.repeat(j_code, 2)
    line_time = np.repeat(j_time, 2)
    is_credit = np.tile(np.array([False, True]), n_j)
    debit_acc = np.array([j[2] for j in _JOURNALS])[line_code]
    credit_acc = np.array([j[3] for j in _JOURNALS])[line_code]
    account_kind = np.where(is_credit, credit_acc, debit_acc)
    amount = p.amount_minor[line_row]
    signed = np.where(is_credit, -amount, amount)

    take = pa.array(line_row)
    account = np.full(len(line_row), "chargebacks", dtype=object)
    for prefix, ids, acc_kind in (("customer:", cust_str, 0), ("merchant:", term_str, 1)):
        sel = account_kind == acc_kind
        account[sel] = fr.to_objects(fr.join(prefix, ids.take(pa.array(line_row[sel]))))
    pid = payment_id.take(take)
    journal_id = fr.join("jnl_", pid, fr.labels_arrow(tuple("_" + j[1] for j in _JOURNALS), line_code))
    entry_id = fr.join(journal_id, fr.labels_arrow(("_dr", "_cr"), is_credit.astype(np.int64)))
    return fr.schema_frame("ledger_entries", {
        "entry_id": entry_id,
        "journal_id": journal_id,
        "payment_id": pid,
        "account": account,
        "amount_minor": signed,
        "currency": CURRENCY,
        "posted_at": line_time,
    }, len(line_row))
