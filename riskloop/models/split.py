"""Time-based train/test split that respects the fraud label delay (handbook chapter 3 / 5.2).

Layout on the UTC day grid::

    [train_start, train_end)  [train_end, test_start)  [test_start, test_end)  [test_end, data_end)
          training               delay (unused)             test                 maturation

- The model is deemed trained at ``test_start``: transactions of the delay period cannot be
  used because their labels have not arrived yet (the handbook's feedback delay).
- Training labels are the labels *known* at ``label_cutoff``: a fraud whose ``fraud_known_at``
  is later counts as genuine, as it would have in production. By default the cut-off is the
  training moment ``test_start`` (handbook); ``label_cutoff_days=0`` gives the stricter "known
  by the end of the training window".
- Test labels are the final ones (the mart as of now); the test window ends ``maturity_days``
  before the data does, so most of its frauds have had time to be reported.
- Cards known compromised are removed from the test set (handbook rule): on each test day, a
  card with a fraud from ``train_start`` on, known before that day starts, is dropped; it would
  already be blocked. Older frauds do not count (the card was reissued since).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

TIME_COL = "event_timestamp"
DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class FraudWindows:
    """The bounds of a fraud train/test split (all tz-aware UTC, ends exclusive)."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    label_cutoff: pd.Timestamp

    def as_params(self) -> dict[str, str]:
        """MLflow params: the promotion gate re-scores champion and challenger on the same test window."""
        return {name: getattr(self, name).isoformat() for name in
                ("train_start", "train_end", "test_start", "test_end", "label_cutoff")}


def fraud_windows(data_start: pd.Timestamp, data_end: pd.Timestamp, *, train_days: int = 7,
                  delay_days: int = 7, test_days: int = 7, maturity_days: int = 7,
                  label_cutoff_days: int | None = None) -> FraudWindows:
    """Place the windows so that the test window ends ``maturity_days`` before the data does.

    Why 7/7/7 + 7 by default: it is the handbook's own protocol (delta_train = delta_delay =
    delta_test = 7) and, with a week left for test labels to mature (the simulator's median
    label delay), it fits a 30-day simulation with two days to spare; 14 training days would
    need 35. ``data_end`` is the last transaction time; the windows are whole UTC days.
    """
    start = pd.Timestamp(data_start).tz_convert("UTC")
    end_day = pd.Timestamp(data_end).tz_convert("UTC").floor("D") + DAY  # first day with no data
    test_end = end_day - maturity_days * DAY
    test_start = test_end - test_days * DAY
    train_end = test_start - delay_days * DAY
    train_start = train_end - train_days * DAY
    if min(train_days, test_days) <= 0 or min(delay_days, maturity_days) < 0:
        raise ValueError("window sizes must be positive (delay and maturity may be 0)")
    if train_start < start.floor("D"):
        raise ValueError(
            f"not enough history: the split needs {train_days + delay_days + test_days + maturity_days} days "
            f"ending {end_day.date()}, the data starts {start.date()}")
    cutoff_days = delay_days if label_cutoff_days is None else label_cutoff_days
    return FraudWindows(train_start, train_end, test_start, test_end, train_end + cutoff_days * DAY)


def windows_from(train_start: pd.Timestamp | str, *, train_days: int = 7, delay_days: int = 7,
                 test_days: int = 7, label_cutoff_days: int | None = None) -> FraudWindows:
    """The windows of a split whose training starts on ``train_start`` (a UTC day).

    The handbook fixes its splits by the training start date (``start_date_training``), where
    `fraud_windows` places them from the end of the data; both give the same layout. A naive
    date is taken as UTC (the handbook's times are naive UTC).
    """
    start = pd.Timestamp(train_start)
    start = (start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")).floor("D")
    if min(train_days, test_days) <= 0 or delay_days < 0:
        raise ValueError("window sizes must be positive (the delay may be 0)")
    train_end = start + train_days * DAY
    test_start = train_end + delay_days * DAY
    cutoff_days = delay_days if label_cutoff_days is None else label_cutoff_days
    return FraudWindows(start, train_end, test_start, test_start + test_days * DAY, train_end + cutoff_days * DAY)


def prequential_windows(train_start: pd.Timestamp | str, n_folds: int = 4, *, assessment_days: int = 7,
                        **sizes: int) -> list[FraudWindows]:
    """Handbook chapter 5.2 prequential folds: fold ``i`` starts training ``i * assessment_days``
    before ``train_start`` (fold 0 is the most recent); ``sizes`` as in `windows_from`."""
    if n_folds <= 0:
        raise ValueError("n_folds must be positive")
    first = pd.Timestamp(train_start)
    return [windows_from(first - i * assessment_days * DAY, **sizes) for i in range(n_folds)]


def known_label(df: pd.DataFrame, cutoff: pd.Timestamp) -> pd.Series:
    """1 for a fraud whose label was known at ``cutoff``, else 0."""
    known = df["fraud_known_at"].notna() & (df["fraud_known_at"] <= cutoff)
    return ((df["is_fraud"] == 1) & known).astype("int64")


def split_fraud(df: pd.DataFrame, windows: FraudWindows,
                known_frauds: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and test rows, each with a ``label`` column (known-at-cutoff vs final).

    ``df`` needs ``event_timestamp``, ``customer_id``, ``is_fraud`` and ``fraud_known_at``;
    ``known_frauds`` (``customer_id``, ``fraud_known_at``) lists every known fraud, including
    those outside ``df``'s windows; it defaults to the frauds in ``df``.
    """
    ts = df[TIME_COL]
    train = df[(ts >= windows.train_start) & (ts < windows.train_end)].copy()
    train["label"] = known_label(train, windows.label_cutoff)

    test = df[(ts >= windows.test_start) & (ts < windows.test_end)].copy()
    test["label"] = test["is_fraud"].astype("int64")
    if known_frauds is None:
        known_frauds = df.loc[df["is_fraud"] == 1, ["customer_id", "fraud_known_at", TIME_COL]]
    # Only a compromise from the training window on blocks a card (the handbook's rule): a card
    # defrauded months earlier was blocked and reissued then, and can be a victim again. Without
    # this, by the handbook's August test weeks most cards have some old fraud on record and
    # ~60% of the test set (and 2/3 of its compromised cards) would be dropped.
    fraud_time = next((c for c in (TIME_COL, "tx_at") if c in known_frauds), None)
    if fraud_time is not None:
        known_frauds = known_frauds[known_frauds[fraud_time] >= windows.train_start]
    first_known = known_frauds.dropna(subset=["fraud_known_at"]).groupby("customer_id")["fraud_known_at"].min()
    card_known_at = test["customer_id"].map(first_known)
    blocked = card_known_at.notna() & (card_known_at < test[TIME_COL].dt.floor("D"))
    return train, test[~blocked.to_numpy()]


def split_by_time(df: pd.DataFrame, test_fraction: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Oldest rows for training, the newest ``test_fraction`` for testing (credit model).

    Credit outcomes have no partial labels (an outcome is observed whole, 90 days later), so
    the only rule is "never test on the past"; the boundary is returned for logging.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    ordered = df.sort_values(TIME_COL, kind="mergesort")
    boundary = ordered[TIME_COL].iloc[int(len(ordered) * (1 - test_fraction))]
    return ordered[ordered[TIME_COL] < boundary], ordered[ordered[TIME_COL] >= boundary], boundary
