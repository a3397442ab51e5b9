"""``interval.difference``: do two measurements of one effect agree?"""

from __future__ import annotations

import numpy as np
from scipy import stats

from workbench.stats.interval import ConfidenceInterval, difference


def test_two_noisy_measurements_of_one_effect_agree_at_the_level() -> None:
    # the A/B and the direct run both estimate +2 ms, each with its own noise (ratio 1:0.7)
    rng = np.random.default_rng(3)
    z = stats.norm.ppf(0.975)
    se_a, se_b, sims = 0.3, 0.21, 20_000
    a, b = rng.normal(2.0, se_a, sims), rng.normal(2.0, se_b, sims)
    agree = covered = 0
    for x, y in zip(a, b, strict=True):
        ci_x = ConfidenceInterval(x - z * se_a, x + z * se_a)
        ci_y = ConfidenceInterval(y - z * se_b, y + z * se_b)
        agree += difference(x, ci_x, y, ci_y)[1].contains(0.0)
        covered += ci_x.contains(y)
    assert 0.94 <= agree / sims <= 0.96, agree / sims
    # the point-inside-the-interval check misses far more often than 5 %
    assert covered / sims < 0.90, covered / sims


def test_symmetric_intervals_give_the_root_sum_of_squares_and_asymmetry_is_kept() -> None:
    d, ci = difference(3.0, ConfidenceInterval(2.5, 3.5), 2.0, ConfidenceInterval(1.7, 2.3))
    assert d == 1.0
    assert np.isclose(ci.low, 1.0 - np.hypot(0.5, 0.3)) and np.isclose(ci.high, 1.0 + np.hypot(0.5, 0.3))
    # a longer upper arm of b widens the lower end of a - b only
    _, skew = difference(3.0, ConfidenceInterval(2.5, 3.5), 2.0, ConfidenceInterval(1.7, 3.0))
    assert np.isclose(skew.low, 1.0 - np.hypot(0.5, 1.0)) and np.isclose(skew.high, ci.high)
    # CI14's quick run: A/B [2.49, 3.61] around 3.05, direct 2.45 [2.1, 2.8]: they agree
    _, gap = difference(3.05, ConfidenceInterval(2.49, 3.61), 2.45, ConfidenceInterval(2.1, 2.8))
    assert gap.contains(0.0)
