"""A vectorised reimplementation of the Fraud Detection Handbook's transaction generator.

The handbook (Le Borgne et al., 2022, chapter 3) generates its data customer by customer and
transaction by transaction in Python, which takes many minutes for its own 1.75M rows.  Here
every per-transaction step is a numpy array operation; only the fraud scenarios loop, once per
simulated *day*, because scenario 3 rescales amounts in place and overlapping compromise
windows must be applied in day order to reproduce the handbook's semantics (a transaction
picked on two days is multiplied by 5 twice, exactly as in the original).

The output has the handbook file's column schema and dtypes (see ``TRANSACTION_COLUMNS``), so
the real file and a simulation go through the same derivation path (`riskloop.simulator.derive`).

Model (the handbook's, see ``/work/shared/datasets/fraud-handbook/README.md``):

- customers at (x, y) ~ U(0, 100)², mean_amount ~ U(5, 100), std_amount = mean / 2,
  mean_nb_tx_per_day ~ U(0, 4); terminals at (x, y) ~ U(0, 100)²;
- a customer uses the terminals at Euclidean distance < r, uniformly; customers with none
  never transact (as in the handbook, where 10 of 5,000 customers have no transaction);
- per customer and day Poisson(mean_nb_tx_per_day) transactions; time of day
  int(N(43200, 20000)) seconds, the transaction dropped unless 0 < t < 86400;
  amount ~ N(mean, std), redrawn from U(0, 2·mean) if negative, rounded to cents;
- fraud: scenario 1, amount > 220; scenario 2, each day 2 terminals are compromised and all
  their transactions of that day and the next 27 are fraud; scenario 3, each day 3 customers
  are compromised and, among their transactions of that day and the next 13, a third
  (int(n/3) of the pooled transactions) get amount × 5 and are fraud.  Later scenarios
  overwrite the scenario label of earlier ones, as in the handbook.

One deliberate difference: the handbook loops its compromise draws over
``range(TX_TIME_DAYS.max())`` and so never compromises anything on the last day; here every
simulated day draws, as the README describes.  It changes one day's draws out of ``days``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
DEFAULT_START_DATE = "2018-04-01"
DEFAULT_RADIUS = 5.0
GRID_SIZE = 100.0

# Handbook parameters, kept as named constants because the tests derive their expectations
# (e.g. the share of scenario-2 fraud) from them.
TIME_OF_DAY_MEAN = SECONDS_PER_DAY / 2
TIME_OF_DAY_STD = 20_000.0
SCENARIO_1_THRESHOLD = 220.0
SCENARIO_2_TERMINALS_PER_DAY = 2
SCENARIO_2_WINDOW_DAYS = 28
SCENARIO_3_CUSTOMERS_PER_DAY = 3
SCENARIO_3_WINDOW_DAYS = 14
SCENARIO_3_AMOUNT_FACTOR = 5.0

TRANSACTION_COLUMNS: dict[str, str] = {
    # Dtypes of the real handbook file (checked with pyarrow on transactions.parquet): its
    # README calls the ids "strings of ints", but the file stores them as int64.
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": "datetime64[ns]",
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    "TX_AMOUNT": "float64",
    "TX_TIME_SECONDS": "int64",
    "TX_TIME_DAYS": "int64",
    "TX_FRAUD": "int64",
    "TX_FRAUD_SCENARIO": "int64",
}


@dataclass(frozen=True)
class HandbookData:
    """What the generator knows: the profiles (hidden truth) and the transactions it produced."""

    customers: pd.DataFrame
    terminals: pd.DataFrame
    transactions: pd.DataFrame


def _customer_frame(x: np.ndarray, y: np.ndarray, mean_amount: np.ndarray,
                    mean_nb_tx_per_day: np.ndarray) -> pd.DataFrame:
    """The customer profiles table (the handbook's columns), whichever generator drew them."""
    return pd.DataFrame({
        "CUSTOMER_ID": np.arange(len(x), dtype=np.int64),
        "x_customer_id": x,
        "y_customer_id": y,
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_nb_tx_per_day": mean_nb_tx_per_day,
    })


def _terminal_frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"TERMINAL_ID": np.arange(len(x), dtype=np.int64), "x_terminal_id": x, "y_terminal_id": y})


def _customer_profiles(rng: np.random.Generator, n: int) -> pd.DataFrame:
    x = rng.uniform(0, GRID_SIZE, n)
    y = rng.uniform(0, GRID_SIZE, n)
    mean_amount = rng.uniform(5, 100, n)
    return _customer_frame(x, y, mean_amount, rng.uniform(0, 4, n))


def _terminal_profiles(rng: np.random.Generator, n: int) -> pd.DataFrame:
    x = rng.uniform(0, GRID_SIZE, n)
    return _terminal_frame(x, rng.uniform(0, GRID_SIZE, n))


# The seeds of numpy's legacy global generator the handbook draws its profiles with
# (``generate_customer_profiles_table(random_state=0)``, ``generate_terminal_profiles_table(random_state=1)``).
HANDBOOK_CUSTOMER_SEED = 0
HANDBOOK_TERMINAL_SEED = 1


def handbook_profiles(customers: int, terminals: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The exact customer and terminal profiles of the handbook's published file.

    The handbook draws them one entity at a time from ``np.random.seed(0)`` (customers: x, y,
    mean_amount, mean_nb_tx_per_day) and ``np.random.seed(1)`` (terminals: x, y); the legacy
    generator's ``uniform(low, high)`` is ``low + (high - low) * random_sample()``, so one
    row-major block of doubles reproduces them.  Why have them: the draw of 5,000 customers is
    an unusual one (886 mean amounts under 20, where U(5, 100) gives 789 ± 26), and simulating
    with it separates what the published file owes to this draw from what the generator does
    (docs/benchmarks/history.md, "Simulator fidelity": little of the benchmark's AP gap).  Only the
    profiles: transactions and frauds still come from the seed.
    """
    u = np.random.RandomState(HANDBOOK_CUSTOMER_SEED).random_sample((customers, 4))
    cust = _customer_frame(GRID_SIZE * u[:, 0], GRID_SIZE * u[:, 1], 5 + 95 * u[:, 2], 4 * u[:, 3])
    v = np.random.RandomState(HANDBOOK_TERMINAL_SEED).random_sample((terminals, 2))
    term = _terminal_frame(GRID_SIZE * v[:, 0], GRID_SIZE * v[:, 1])
    return cust, term


def _expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + l)`` for every (s, l) pair without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Offset of each range's first element in the output, then a running index corrected per range.
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)


def terminals_within_radius(cx: np.ndarray, cy: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                            r: float) -> tuple[np.ndarray, np.ndarray]:
    """For each customer, the sorted terminal indices at distance < r, as CSR (offsets, indices).

    A brute-force customers × terminals distance matrix is 50M floats at the handbook's size and
    quadratic beyond, so terminals are bucketed on a grid of cells at least r wide; a customer's
    neighbours can then only be in its own cell or the 8 around it.
    """
    if r <= 0:
        raise ValueError(f"radius must be positive, got {r}")
    n_cells = max(1, int(GRID_SIZE // r))
    cell = GRID_SIZE / n_cells  # >= r

    def cell_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.clip((x / cell).astype(np.int64), 0, n_cells - 1),
                np.clip((y / cell).astype(np.int64), 0, n_cells - 1))

    tcx, tcy = cell_xy(tx, ty)
    t_cell = tcx * n_cells + tcy
    t_order = np.argsort(t_cell, kind="stable")
    sorted_cells = t_cell[t_order]
    all_cells = np.arange(n_cells * n_cells)
    cell_start = np.searchsorted(sorted_cells, all_cells, side="left")
    cell_len = np.searchsorted(sorted_cells, all_cells, side="right") - cell_start

    ccx, ccy = cell_xy(cx, cy)
    pair_c: list[np.ndarray] = []
    pair_t: list[np.ndarray] = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            nx, ny = ccx + dx, ccy + dy
            ok = np.flatnonzero((nx >= 0) & (nx < n_cells) & (ny >= 0) & (ny < n_cells))
            cells = nx[ok] * n_cells + ny[ok]
            lengths = cell_len[cells]
            c = np.repeat(ok, lengths)
            t = t_order[_expand_ranges(cell_start[cells], lengths)]
            dist = np.sqrt((cx[c] - tx[t]) ** 2 + (cy[c] - ty[t]) ** 2)
            keep = dist < r
            pair_c.append(c[keep])
            pair_t.append(t[keep])
    c_all = np.concatenate(pair_c)
    t_all = np.concatenate(pair_t)
    order = np.lexsort((t_all, c_all))
    c_all, t_all = c_all[order], t_all[order]
    counts = np.bincount(c_all, minlength=len(cx))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return offsets, t_all.astype(np.int64)


def _group_index(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices sorted by key, and offsets so rows of key k are ``order[off[k]:off[k+1]]``."""
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=n_groups)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return order, offsets


def _daily_draws(rng: np.random.Generator, days: int, population: int, per_day: int) -> np.ndarray:
    """``per_day`` distinct entities out of ``population`` for each day (fewer if too few exist)."""
    k = min(per_day, population)
    return np.stack([rng.choice(population, k, replace=False) for _ in range(days)]).reshape(days, k)


def _rows_in_window(order: np.ndarray, offsets: np.ndarray, entities: np.ndarray, day: np.ndarray,
                    first_day: int, window: int) -> np.ndarray:
    """Sorted rows of the given entities whose day is in [first_day, first_day + window)."""
    rows = np.concatenate([order[offsets[e]:offsets[e + 1]] for e in entities] + [np.zeros(0, np.int64)])
    return np.sort(rows[(day[rows] >= first_day) & (day[rows] < first_day + window)])


def _add_frauds(rng: np.random.Generator, days: int, n_customers: int, n_terminals: int,
                customer: np.ndarray, terminal: np.ndarray, day: np.ndarray,
                amount: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the handbook's three fraud scenarios; returns (amount, fraud, scenario).

    Rows are looked up through per-terminal and per-customer indices, so each day's
    compromise costs the size of the compromised entities' history, not of the whole table.
    """
    amount = amount.copy()
    fraud = np.zeros(len(amount), dtype=np.int64)
    scenario = np.zeros(len(amount), dtype=np.int64)

    s1 = amount > SCENARIO_1_THRESHOLD
    fraud[s1] = 1
    scenario[s1] = 1

    # Draw both scenarios' compromised entities up front, so that the draws of one scenario do
    # not depend on the data seen by the other.
    comp_terminals = _daily_draws(rng, days, n_terminals, SCENARIO_2_TERMINALS_PER_DAY)
    comp_customers = _daily_draws(rng, days, n_customers, SCENARIO_3_CUSTOMERS_PER_DAY)

    t_order, t_off = _group_index(terminal, n_terminals)
    for d in range(days):
        rows = _rows_in_window(t_order, t_off, comp_terminals[d], day, d, SCENARIO_2_WINDOW_DAYS)
        fraud[rows] = 1
        scenario[rows] = 2

    c_order, c_off = _group_index(customer, n_customers)
    for d in range(days):
        rows = _rows_in_window(c_order, c_off, comp_customers[d], day, d, SCENARIO_3_WINDOW_DAYS)
        k = len(rows) // 3
        if k == 0:
            continue
        picked = rng.choice(rows, k, replace=False)
        amount[picked] = np.round(amount[picked] * SCENARIO_3_AMOUNT_FACTOR, 2)
        fraud[picked] = 1
        scenario[picked] = 3
    return amount, fraud, scenario


def generate(days: int, customers: int, terminals: int | None = None, seed: int = 0,
             start_date: str | pd.Timestamp = DEFAULT_START_DATE, r: float = DEFAULT_RADIUS,
             with_handbook_profiles: bool = False) -> HandbookData:
    """Simulate ``days`` days of card transactions of ``customers`` customers.

    ``terminals`` defaults to 2 per customer, the handbook's 5,000 / 10,000 density ratio.
    The same arguments always give the same frames: all randomness comes from
    ``numpy.random.default_rng(seed)``, split into independent streams per stage so that, e.g.,
    the customer profiles of a seed do not change with ``days``.  ``with_handbook_profiles``
    takes the profiles from `handbook_profiles` instead (the published file's customers and
    terminals); the other streams are the seed's either way.
    """
    if days <= 0 or customers <= 0:
        raise ValueError(f"days and customers must be positive, got days={days}, customers={customers}")
    n_terminals = 2 * customers if terminals is None else int(terminals)
    if n_terminals <= 0:
        raise ValueError(f"terminals must be positive, got {n_terminals}")
    started = time.perf_counter()
    rng_customers, rng_terminals, rng_tx, rng_fraud = np.random.default_rng(seed).spawn(4)

    if with_handbook_profiles:
        cust, term = handbook_profiles(customers, n_terminals)
    else:
        cust = _customer_profiles(rng_customers, customers)
        term = _terminal_profiles(rng_terminals, n_terminals)
    offsets, neighbours = terminals_within_radius(
        cust.x_customer_id.to_numpy(), cust.y_customer_id.to_numpy(),
        term.x_terminal_id.to_numpy(), term.y_terminal_id.to_numpy(), r)
    n_available = np.diff(offsets)
    cust["nb_terminals"] = n_available

    # Transactions: counts per (day, customer), then one row per drawn transaction.
    rate = cust.mean_nb_tx_per_day.to_numpy()
    counts = rng_tx.poisson(rate, size=(days, customers)).ravel()
    n = int(counts.sum())
    day = np.repeat(np.repeat(np.arange(days, dtype=np.int64), customers), counts)
    customer = np.repeat(np.tile(np.arange(customers, dtype=np.int64), days), counts)
    tod = np.trunc(rng_tx.normal(TIME_OF_DAY_MEAN, TIME_OF_DAY_STD, n)).astype(np.int64)
    mean_amount = cust.mean_amount.to_numpy()[customer]
    amount = rng_tx.normal(mean_amount, cust.std_amount.to_numpy()[customer])
    redraw = rng_tx.uniform(0, 2 * mean_amount)
    amount = np.round(np.where(amount < 0, redraw, amount), 2)
    pick = rng_tx.random(n)
    keep = (tod > 0) & (tod < SECONDS_PER_DAY) & (n_available[customer] > 0)
    day, customer, tod, amount, pick = day[keep], customer[keep], tod[keep], amount[keep], pick[keep]
    slot = np.minimum((pick * n_available[customer]).astype(np.int64), n_available[customer] - 1)
    terminal = neighbours[offsets[customer] + slot]

    seconds = day * SECONDS_PER_DAY + tod
    order = np.lexsort((terminal, customer, seconds))
    seconds, day, customer, terminal, amount = (a[order] for a in (seconds, day, customer, terminal, amount))

    amount, fraud, scenario = _add_frauds(rng_fraud, days, customers, n_terminals, customer, terminal, day, amount)

    start = pd.Timestamp(start_date)
    tx = pd.DataFrame({
        "TRANSACTION_ID": np.arange(len(seconds), dtype=np.int64),
        "TX_DATETIME": start + pd.to_timedelta(seconds, unit="s"),
        "CUSTOMER_ID": customer,
        "TERMINAL_ID": terminal,
        "TX_AMOUNT": amount,
        "TX_TIME_SECONDS": seconds,
        "TX_TIME_DAYS": day,
        "TX_FRAUD": fraud,
        "TX_FRAUD_SCENARIO": scenario,
    }).astype(TRANSACTION_COLUMNS)
    logger.info("handbook generator: %d transactions (%d customers, %d terminals, %d days, fraud rate %.4f) in %.2fs",
                len(tx), customers, n_terminals, days, fraud.mean() if len(tx) else 0.0,
                time.perf_counter() - started)
    return HandbookData(customers=cust, terminals=term, transactions=tx)


def generate_transactions(days: int, customers: int, terminals: int | None = None, seed: int = 0,
                          start_date: str | pd.Timestamp = DEFAULT_START_DATE,
                          r: float = DEFAULT_RADIUS) -> pd.DataFrame:
    """Just the transactions of `generate` (the handbook-schema ground truth)."""
    return generate(days, customers, terminals, seed, start_date, r).transactions
