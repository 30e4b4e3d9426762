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
import pyarrow.compute as pc

from riskloop.simulator import frames as fr
from riskloop.simulator.cards import pans_for

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


@dataclass(frozen=True)
class _Strings:
    """The id strings of the feeds, built once per payment, customer and terminal.

    Rows of the feeds then pick them by integer index (an object-array take shares the str
    objects), instead of formatting the same customer or payment id once per event and
    ledger line: formatting strings is most of a derivation's cost.
    """

    txid: pa.Array  # decimal TRANSACTION_ID per payment, to build per-row ids from
    payment_id: np.ndarray  # per payment
    customer_id: np.ndarray  # per payment: index into the per-customer arrays below
    customer: np.ndarray  # per distinct customer: "<id>"
    card_token: np.ndarray  # per distinct customer: "tok_<id>"
    pan: np.ndarray  # per distinct customer: a Luhn-valid test-BIN card number (simulator.cards)
    customer_account: np.ndarray  # per distinct customer: "customer:<id>"
    terminal_id: np.ndarray  # per payment: index into the per-terminal arrays below
    terminal: np.ndarray  # per distinct terminal: "<id>"
    merchant_account: np.ndarray  # per distinct terminal: "merchant:<id>"

    @classmethod
    def build(cls, p: Payments) -> "_Strings":
        customers, customer_idx = np.unique(p.customer_id, return_inverse=True)
        terminals, terminal_idx = np.unique(p.terminal_id, return_inverse=True)
        cust = fr.ints_to_str(customers)
        term = fr.ints_to_str(terminals)
        txid = fr.ints_to_str(p.transaction_id)
        return cls(
            txid=txid, payment_id=fr.to_objects(fr.join("pay_", txid)),
            customer_id=customer_idx, customer=fr.to_objects(cust),
            card_token=fr.to_objects(fr.join("tok_", cust)),
            pan=pans_for(customers),
            customer_account=fr.to_objects(fr.join("customer:", cust)),
            terminal_id=terminal_idx, terminal=fr.to_objects(term),
            merchant_account=fr.to_objects(fr.join("merchant:", term)),
        )

    @property
    def card_bin(self) -> np.ndarray:
        return fr.to_objects(pc.utf8_slice_codeunits(pa.array(self.pan, pa.string()), 0, 6))

    @property
    def card_last4(self) -> np.ndarray:
        return fr.to_objects(pc.utf8_slice_codeunits(pa.array(self.pan, pa.string()), -4))

    def per_row(self, prefix: str, rows: np.ndarray, suffix: pa.Array | str = "") -> np.ndarray:
        """``prefix + TRANSACTION_ID + suffix`` for each row (a payment index)."""
        return fr.to_objects(fr.join(prefix, self.txid.take(pa.array(rows, pa.int64())), suffix))


def derive_payment_tables(p: Payments, rng: np.random.Generator, as_of_ns: int) -> dict[str, pd.DataFrame]:
    """``webhook_events``, ``dispute_outcomes`` and ``ledger_entries`` as known at ``as_of``."""
    life = _lifecycle(rng, p)
    landed = life.received_ns < as_of_ns
    order = np.lexsort((life.kind[landed], life.row[landed], life.occurred_ns[landed]))
    row = life.row[landed][order]
    kind = life.kind[landed][order]
    occurred = life.occurred_ns[landed][order]
    received = life.received_ns[landed][order]

    strings = _Strings.build(p)
    return {
        "webhook_events": _webhook_events(p, strings, row, kind, occurred, received),
        "dispute_outcomes": _dispute_outcomes(p, strings, life, as_of_ns),
        "ledger_entries": _ledger_entries(p, strings, row, kind, received),
    }


def _webhook_events(p: Payments, s: _Strings, row: np.ndarray, kind: np.ndarray, occurred: np.ndarray,
                    received: np.ndarray) -> pd.DataFrame:
    is_dispute = kind >= DISPUTE_OPENED
    dispute_id = fr.filled(len(row), None)
    dispute_id[is_dispute] = s.per_row("dsp_", row[is_dispute])
    customer = s.customer_id[row]
    terminal = s.terminal_id[row]
    return fr.schema_frame("webhook_events", {
        "event_id": s.per_row("evt_pay_", row, fr.labels_arrow(EVENT_SUFFIXES, kind)),
        "processor": fr.choice_labels(PROCESSORS, p.terminal_id[row] % 2),
        "event_type": fr.choice_labels(EVENT_TYPES, kind),
        "occurred_at": occurred,
        "received_at": received,
        "payment_id": s.payment_id[row],
        "card_token": s.card_token[customer],
        # what a processor shows of the card: BIN and last four (the full number only in webhook bodies)
        "card_bin": s.card_bin[customer],
        "card_last4": s.card_last4[customer],
        "customer_id": s.customer[customer],
        "terminal_id": s.terminal[terminal],
        "amount_minor": p.amount_minor[row],
        "currency": CURRENCY,
        "dispute_id": dispute_id,
    }, len(row))


def _dispute_outcomes(p: Payments, s: _Strings, life: _Lifecycle, as_of_ns: int) -> pd.DataFrame:
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
    return fr.schema_frame("dispute_outcomes", {
        "dispute_id": s.per_row("dsp_", rows),
        "payment_id": s.payment_id[rows],
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


def _ledger_entries(p: Payments, s: _Strings, row: np.ndarray, kind: np.ndarray,
                    received: np.ndarray) -> pd.DataFrame:
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
    journal_ids = fr.join("jnl_pay_", s.txid.take(pa.array(j_row, pa.int64())),
                          fr.labels_arrow(tuple("_" + j[1] for j in _JOURNALS), j_code))
    # Lines: debit then credit for each journal.
    line = np.repeat(np.arange(len(j_row)), 2)
    line_row = j_row[line]
    line_code = j_code[line]
    is_credit = np.tile(np.array([False, True]), len(j_row))
    debit_acc = np.array([j[2] for j in _JOURNALS])[line_code]
    credit_acc = np.array([j[3] for j in _JOURNALS])[line_code]
    account_kind = np.where(is_credit, credit_acc, debit_acc)
    amount = p.amount_minor[line_row]

    account = fr.filled(len(line_row), "chargebacks")
    is_customer, is_merchant = account_kind == 0, account_kind == 1
    account[is_customer] = s.customer_account[s.customer_id[line_row[is_customer]]]
    account[is_merchant] = s.merchant_account[s.terminal_id[line_row[is_merchant]]]
    journal_id = fr.to_objects(journal_ids)[line]
    entry_id = fr.to_objects(fr.join(journal_ids.take(pa.array(line)),
                                     fr.labels_arrow(("_dr", "_cr"), is_credit.astype(np.int64))))
    return fr.schema_frame("ledger_entries", {
        "entry_id": entry_id,
        "journal_id": journal_id,
        "payment_id": s.payment_id[line_row],
        "account": account,
        "amount_minor": np.where(is_credit, -amount, amount),
        "currency": CURRENCY,
        "posted_at": j_time[line],
    }, len(line_row))
