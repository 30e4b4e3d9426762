"""Group fairness of a credit model: who it would approve, per value of a protected attribute.

The model never sees the attribute (``marts.credit_applicant_groups`` is not a Feast source); these
figures are computed beside it, on a scored test set joined with the attribute, by training (the run's
metrics and model card) and by the promotion gate (champion and challenger on the same rows).

An application counts as approved when its predicted PD is below ``approve_below`` (the credit
policy's lowest threshold: above it a person, not the model, decides). The figures:

- per-group approval rate, and the adverse impact ratio (AIR): the lowest group's approval rate over
  the highest's (the four-fifths rule of the US Uniform Guidelines: below 0.8 is evidence of adverse
  impact);
- the gaps (highest minus lowest group) of the true-positive rate (defaulters declined) and of the
  false-positive rate (repayers declined): an equalised-odds view, which a merely different base rate
  does not move.

A group with fewer than ``min_group`` test rows is reported (its size and rates) but **too small to
judge**: on a test window of a hundred or two applications one group's approval rate moves by a tenth
from one draw to the next, and a ratio of two such rates moves more. Such a group takes no part in the
ratio and the gaps, so it can neither pass nor fail a gate by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

PROTECTED_ATTRIBUTE = "age_band"
# A group absent from the comparisons: the applicant stated no band.
UNSTATED = "not_stated"
METRIC_PREFIX = "fairness_"
APPROVAL_PREFIX = "approval_rate."
GROUP_N_PREFIX = f"{METRIC_PREFIX}group_n."  # a group's test rows (shown beside its approval rate)
TOO_SMALL = "too small to judge"


@dataclass(frozen=True)
class GroupRates:
    n: int
    n_defaults: int
    approval_rate: float
    tpr: float  # share of defaulters declined (NaN without defaulters)
    fpr: float  # share of repayers declined (NaN without repayers)


@dataclass(frozen=True)
class FairnessReport:
    attribute: str
    approve_below: float
    groups: dict[str, GroupRates] = field(default_factory=dict)  # every stated group, judged or not
    min_group: int = 1

    @property
    def judged(self) -> dict[str, GroupRates]:
        """The groups large enough to judge (``n >= min_group``): the only ones the ratio and gaps compare."""
        return {k: g for k, g in self.groups.items() if g.n >= self.min_group}

    @property
    def too_small(self) -> list[str]:
        return sorted(k for k, g in self.groups.items() if g.n < self.min_group)

    @property
    def air(self) -> float:
        """Adverse impact ratio: min / max judged group approval rate (NaN with fewer than two)."""
        rates = [g.approval_rate for g in self.judged.values()]
        if len(rates) < 2 or max(rates) == 0:
            return math.nan
        return min(rates) / max(rates)

    def _gap(self, which: str) -> float:
        values = [getattr(g, which) for g in self.judged.values() if not math.isnan(getattr(g, which))]
        return max(values) - min(values) if len(values) >= 2 else math.nan

    @property
    def tpr_gap(self) -> float:
        return self._gap("tpr")

    @property
    def fpr_gap(self) -> float:
        return self._gap("fpr")

    def metrics(self) -> dict[str, float]:
        """Flat figures (MLflow metrics, the gate's metric sets): ``fairness_air``, ``fairness_tpr_gap``,
        ``fairness_fpr_gap`` (over the judged groups), ``fairness_min_group``, ``fairness_groups_judged``,
        ``fairness_groups_too_small``, and per group ``approval_rate.<group>`` and ``fairness_group_n.<group>``
        (a group with ``fairness_group_n`` below ``fairness_min_group`` is too small to judge)."""
        out = {f"{METRIC_PREFIX}air": self.air, f"{METRIC_PREFIX}tpr_gap": self.tpr_gap,
               f"{METRIC_PREFIX}fpr_gap": self.fpr_gap, f"{METRIC_PREFIX}min_group": float(self.min_group),
               f"{METRIC_PREFIX}groups_judged": float(len(self.judged)),
               f"{METRIC_PREFIX}groups_too_small": float(len(self.too_small))}
        for name, g in sorted(self.groups.items()):
            out[f"{APPROVAL_PREFIX}{name}"] = g.approval_rate
            out[f"{GROUP_N_PREFIX}{name}"] = float(g.n)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "approve_below": self.approve_below, "min_group": self.min_group,
                "air": self.air, "tpr_gap": self.tpr_gap, "fpr_gap": self.fpr_gap, "too_small": self.too_small,
                "groups": {k: vars(v) for k, v in sorted(self.groups.items())}}


def too_small_groups(metrics: dict[str, float]) -> dict[str, int]:
    """From flat figures (:meth:`FairnessReport.metrics`): the groups too small to judge, with their size."""
    floor = metrics.get(f"{METRIC_PREFIX}min_group", 1.0)
    return {k.removeprefix(GROUP_N_PREFIX): int(v) for k, v in sorted(metrics.items())
            if k.startswith(GROUP_N_PREFIX) and v < floor}


def fairness_report(scored: pd.DataFrame, approve_below: float, attribute: str = PROTECTED_ATTRIBUTE,
                    label: str = "label", score: str = "score", min_group: int = 1) -> FairnessReport:
    """Per-group rates of a scored frame (``label`` 1 = defaulted, ``score`` = predicted PD, the attribute).
    Rows without a stated group are left out; a group of fewer than ``min_group`` rows is reported but not
    judged (``RISKLOOP_FAIRNESS_MIN_GROUP``)."""
    rows = scored[scored[attribute].notna() & (scored[attribute] != UNSTATED)]
    groups: dict[str, GroupRates] = {}
    for name, g in rows.groupby(attribute, sort=True):
        declined = g[score].to_numpy() >= approve_below
        y = g[label].to_numpy().astype(int)
        n_pos = int(y.sum())
        groups[str(name)] = GroupRates(
            n=len(g), n_defaults=n_pos, approval_rate=float(1.0 - declined.mean()),
            tpr=float(declined[y == 1].mean()) if n_pos else math.nan,
            fpr=float(declined[y == 0].mean()) if n_pos < len(g) else math.nan)
    return FairnessReport(attribute=attribute, approve_below=approve_below, groups=groups, min_group=min_group)
