"""Fairness on small groups: a band under the minimum size is reported, flagged, and judged by nothing.

Constructed frames (band, label, PD) with known rates; the gate is :func:`fairness_gate` on the flat
figures the promotion gate computes for champion and challenger.
"""

from __future__ import annotations

import pandas as pd
import pytest

from riskloop.core.config import Settings
from riskloop.governance.promotion import fairness_gate
from riskloop.models.fairness import TOO_SMALL, fairness_report


def _band(name: str, n: int, approved: int, defaults: int) -> list[tuple[str, int, float]]:
    """``n`` applications of band ``name``: ``approved`` of them under the PD threshold (0.5), the first
    ``defaults`` of the declined ones defaulters (so TPR = 1 when every defaulter is declined)."""
    declined = n - approved
    return ([(name, 0, 0.1)] * approved + [(name, 1, 0.9)] * min(defaults, declined)
            + [(name, 0, 0.9)] * max(declined - defaults, 0))


def _frame(*bands: list[tuple[str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame([r for b in bands for r in b], columns=["age_band", "label", "score"])


SETTINGS = Settings(fairness_min_group=100)


def test_a_small_band_is_reported_but_left_out_of_the_ratio_and_gaps() -> None:
    # Two large bands approved alike; a band of twelve approved a quarter of the time (noise at that size).
    scored = _frame(_band("under_35", 200, 160, 20), _band("35_to_54", 200, 156, 20), _band("55_and_over", 12, 3, 2))
    f = fairness_report(scored, approve_below=0.5, min_group=100)
    assert set(f.groups) == {"under_35", "35_to_54", "55_and_over"}  # reported…
    assert f.too_small == ["55_and_over"] and set(f.judged) == {"under_35", "35_to_54"}
    assert f.air == pytest.approx(0.78 / 0.80)  # …but only the judged bands make the ratio
    m = f.metrics()
    assert m["approval_rate.55_and_over"] == pytest.approx(0.25) and m["fairness_group_n.55_and_over"] == 12
    assert m["fairness_min_group"] == 100 and m["fairness_groups_judged"] == 2 and m["fairness_groups_too_small"] == 1
    # Without a minimum the band of twelve alone would fail the four-fifths rule.
    assert fairness_report(scored, approve_below=0.5).air == pytest.approx(0.25 / 0.80)

    ok, why = fairness_gate(SETTINGS, m, m)
    assert ok, why
    assert TOO_SMALL in why and "55_and_over (n=12)" in why and "RISKLOOP_FAIRNESS_MIN_GROUP" in why

    from training import card

    text = "\n".join(card._fairness(f))
    assert f"| 55_and_over ({TOO_SMALL}) | 12 | 2 | 0.2500 | 1.0000 | 0.7000 |" in text
    assert f"{TOO_SMALL} (fewer than 100 test applications)" in text


def test_a_small_band_cannot_pass_the_gate_by_itself() -> None:
    # One large band and one small one approved alike: the ratio would be 1.0, but it compares nothing judged.
    scored = _frame(_band("under_35", 300, 240, 30), _band("55_and_over", 40, 32, 4))
    m = fairness_report(scored, approve_below=0.5, min_group=100).metrics()
    ok, why = fairness_gate(SETTINGS, m, m)
    assert not ok and "1 age band large enough to judge, two needed" in why and "55_and_over (n=40)" in why
    assert fairness_report(scored, approve_below=0.5).air == pytest.approx(1.0)  # what it would have passed on


def test_a_small_band_cannot_fail_the_gate_by_itself_but_large_ones_still_do() -> None:
    fair_large = _frame(_band("under_35", 150, 120, 15), _band("35_to_54", 150, 120, 15))
    biased_small = _band("55_and_over", 30, 3, 3)
    m = fairness_report(_frame(*[list(fair_large.itertuples(index=False, name=None))], biased_small),
                        approve_below=0.5, min_group=100).metrics()
    assert fairness_gate(SETTINGS, m, m)[0]
    # A bias in large bands is judged as before, and the reason names the small band too.
    biased = fairness_report(_frame(_band("under_35", 150, 120, 15), _band("35_to_54", 150, 60, 15), biased_small),
                             approve_below=0.5, min_group=100).metrics()
    ok, why = fairness_gate(SETTINGS, m, biased)
    assert not ok and "adverse impact ratio 0.500 < floor 0.8" in why and "55_and_over (n=30)" in why


def test_every_band_too_small_is_refused_and_says_so() -> None:
    scored = _frame(_band("under_35", 50, 40, 5), _band("35_to_54", 50, 40, 5), _band("55_and_over", 50, 40, 5))
    f = fairness_report(scored, approve_below=0.5, min_group=100)
    assert f.judged == {} and f.air != f.air  # NaN: nothing to compare
    ok, why = fairness_gate(SETTINGS, f.metrics(), f.metrics())
    assert not ok and why.startswith("fairness not assessable: every age band is too small to judge")
    assert "under_35 (n=50)" in why and "fewer than 100 test applications" in why


def test_the_minimum_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().fairness_min_group == 100
    monkeypatch.setenv("RISKLOOP_FAIRNESS_MIN_GROUP", "30")
    assert Settings().fairness_min_group == 30
