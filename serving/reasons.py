"""Stable reason codes for model features.

A reason code is what a case analyst or a declined customer sees, so it must not change when a
model is retrained with an extra window: codes are keyed by feature *family* (prefix), not by
exact feature name. A feature no pattern knows gets ``R99_OTHER`` rather than failing a decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# (prefix of the feature name, code) — first match wins, so longer prefixes go first.
_CODES: tuple[tuple[str, str], ...] = (
    ("amount_vs_customer", "R08_AMOUNT_UNUSUAL_FOR_CUSTOMER"),  # riskloop.features.amount_features
    ("customer_avg_amount", "R01_CUSTOMER_SPEND_SPIKE"),
    ("customer_nb_tx", "R02_CUSTOMER_VELOCITY"),
    ("terminal_risk", "R03_TERMINAL_FRAUD_RATE"),
    ("terminal_nb_tx", "R04_TERMINAL_ACTIVITY"),
    ("amount", "R05_TRANSACTION_AMOUNT"),
    ("is_night", "R06_NIGHT_TIME"),
    ("is_weekend", "R07_WEEKEND"),
)
OTHER = "R99_OTHER"


def reason_code(feature: str) -> str:
    """The code of a feature; ``view__feature`` (Feast full names) is matched on its feature part."""
    short = feature.rsplit("__", 1)[-1]
    for prefix, code in _CODES:
        if short.startswith(prefix):
            return code
    return OTHER


def top_reasons(features: list[str], values: np.ndarray, contribs: np.ndarray, k: int,
                describe: Callable[[str], dict[str, str]] | None = None) -> list[dict]:
    """The ``k`` largest *positive* contributions, largest first.

    ``contribs`` is one row of ``pred_contribs`` output: one entry per feature, then the bias,
    which is not a reason and is dropped. Ties are broken by feature order so that the same input
    always yields the same reasons. ``describe`` maps a feature to its reason fields (``code``
    and any text); the default is the fraud codes of :func:`reason_code`.
    """
    describe = describe or (lambda feature: {"code": reason_code(feature)})
    per_feature = contribs[: len(features)]
    order = sorted(range(len(features)), key=lambda i: (-float(per_feature[i]), i))
    out: list[dict] = []
    for i in order:
        c = float(per_feature[i])
        if c <= 0 or len(out) >= k:
            break
        v = float(values[i])
        out.append({**describe(features[i]), "feature": features[i],
                    "value": None if math.isnan(v) else v, "contribution": c})
    return out
