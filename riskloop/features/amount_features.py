"""The one definition of the payment's amount relative to the customer's own history.

Four fraud inputs: the payment's amount over the customer's 30-day and 7-day mean amount and
30-day maximum, and its distance from the 30-day mean in 30-day standard deviations. A stolen
card is typically drained with amounts its owner never spends, which the absolute amount and the
customer's averages each show only in part (``bench/handbook_candidates.py`` measured +0.024
validation AP on the handbook's chapter 5 folds; docs/benchmarks/history.md, "Closing the AP gap").

They need the payment's own amount, so they cannot be stored rows: Feast computes them as the
on-demand view ``customer_amount_ratios`` (``feature_repo/definitions.py``) over the
``customer_spending`` view and the request's ``amount`` when training reads its point-in-time
join, and serving computes them from the values it read online plus the request's amount. Both
call :func:`amount_ratios`, so the definition cannot drift between them.

Plain arithmetic, no imports: the same expression is evaluated element-wise on pandas Series
(Feast's pandas-mode transformation) and on Python floats (the serving hot path, which imports
neither Feast nor pandas). Missing history is NaN in both and stays NaN (the model's "missing").
``+ 1`` in every denominator: a customer whose history is one payment has a spread of 0, and a
zero amount mean must not divide by zero; in the amount's major unit, 1 is negligible against
any real mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VIEW_NAME = "customer_amount_ratios"  # the Feast on-demand view
REQUEST_FIELD = "amount"  # the payment's amount (major units), from the request
# The customer_spending fields the ratios read (the view's own field names).
SOURCE_FIELDS = ("customer_avg_amount_30d", "customer_avg_amount_7d", "customer_max_amount_30d",
                 "customer_std_amount_30d")
# The features, in the model's input order. The shared prefix is what the reason code keys on.
FEATURES = ("amount_vs_customer_avg_30d", "amount_vs_customer_avg_7d", "amount_vs_customer_max_30d",
            "amount_vs_customer_zscore_30d")


def amount_ratios(row: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`FEATURES` from ``row[REQUEST_FIELD]`` and ``row[f]`` for ``f`` in :data:`SOURCE_FIELDS`.

    ``row`` is a pandas DataFrame (columns → Series out) or a dict of floats (floats out); NaN in
    means NaN out. Keys beyond those read are ignored.
    """
    amount = row[REQUEST_FIELD]
    avg_30d = row["customer_avg_amount_30d"]
    return {
        "amount_vs_customer_avg_30d": amount / (avg_30d + 1.0),
        "amount_vs_customer_avg_7d": amount / (row["customer_avg_amount_7d"] + 1.0),
        "amount_vs_customer_max_30d": amount / (row["customer_max_amount_30d"] + 1.0),
        "amount_vs_customer_zscore_30d": (amount - avg_30d) / (row["customer_std_amount_30d"] + 1.0),
    }
