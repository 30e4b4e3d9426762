"""The canary's latency evidence: the order statistic that bounds a p99 from below (riskloop.governance.canary)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from riskloop.governance.canary import quantile_lower_rank


@pytest.mark.parametrize("n", [1, 2, 5, 50, 99, 184, 416, 1000, 12_345, 250_000])
@pytest.mark.parametrize("q,confidence", [(0.99, 0.95), (0.95, 0.9), (0.5, 0.99)])
def test_rank_is_the_largest_with_the_confidence(n: int, q: float, confidence: float) -> None:
    """Exact: P(Binomial(n, q) >= k) reaches the confidence at k and not at k + 1 (no k: not even
    the smallest sample reaches it)."""
    k = quantile_lower_rank(n, q, confidence)
    if k is None:
        assert binom.sf(0, n, q) < confidence
        return
    assert 1 <= k <= n
    assert binom.sf(k - 1, n, q) >= confidence - 1e-9
    assert k == n or binom.sf(k, n, q) < confidence


def test_no_samples_no_bound_and_too_few_for_a_high_confidence() -> None:
    assert quantile_lower_rank(0) is None
    # one sample bounds the median from below with confidence 0.5 only
    assert quantile_lower_rank(1, 0.5, 0.5) == 1 and quantile_lower_rank(1, 0.5, 0.6) is None


def test_the_bound_is_below_the_quantile_as_often_as_promised() -> None:
    """Simulated: over 4,000 draws of 184 latencies, x_(k) falls below the true p99 at least 95 % of
    the time (the order statistic's coverage, whatever the distribution)."""
    rng = np.random.default_rng(7)
    n, draws = 184, 4000
    true_p99 = float(np.exp(0.5 * 2.3263478740408408))  # lognormal(0, 0.5) p99
    k = quantile_lower_rank(n)
    samples = np.sort(rng.lognormal(0.0, 0.5, size=(draws, n)), axis=1)
    coverage = float(np.mean(samples[:, k - 1] <= true_p99))
    assert 0.95 <= coverage < 0.99, coverage
