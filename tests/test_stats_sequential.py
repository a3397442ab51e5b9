"""Anytime-valid looks (confidence sequences) and their boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from workbench.stats import calibration as cal
from workbench.stats.boundaries import Anytime, FixedSample, mixture_boundary, small_sample_factor
from workbench.stats.compare import Margin, compare_tables, window_tables
from workbench.stats.sequential import AnytimeTest


def test_pvalues_and_bounds_agree() -> None:
    """p <= level exactly when the statistic clears the critical value, for both rules."""
    for rule in (FixedSample(), Anytime(optimise_at=12)):
        for df in (2.0, 11.0, math.inf):
            for n in (3, 12, 60):
                for level in (0.05, 0.0125, 0.001):
                    c = rule.critical(level, df, n)
                    assert rule.pvalue(c * 1.0001, df, n) <= level <= rule.pvalue(c * 0.9999, df, n)
    assert FixedSample().critical(0.05, math.inf, 1) == pytest.approx(sps.norm.isf(0.05))
    assert FixedSample().critical(0.05, 11, 12) == pytest.approx(sps.t.isf(0.05, 11))
    assert small_sample_factor(math.inf) == 1.0 and small_sample_factor(2) == pytest.approx(
        4.303 / 1.960, 1e-3
    )


def test_the_mixture_boundary_holds_over_all_looks_where_repeated_fixed_looks_do_not() -> None:
    """Gaussian increments with known variance, a look after each of 60: the one-sided mixture
    boundary is crossed by <= alpha of the paths under the null; a fixed-sample z at 5 % at every
    look by far more (the inflation the confidence sequence exists to prevent)."""
    rng = np.random.default_rng(0)
    paths, looks, level = 4000, 60, 0.05
    z = np.cumsum(rng.standard_normal((paths, looks)), axis=1) / np.sqrt(np.arange(1, looks + 1))
    rule = Anytime(optimise_at=12, alpha=level)
    b = np.array([mixture_boundary(rule.x(n), level) for n in range(1, looks + 1)])
    crossed = (z >= b).any(axis=1).mean()
    naive = (z >= sps.norm.isf(level)).any(axis=1).mean()
    assert crossed <= level and naive >= 0.25, (crossed, naive)
    assert crossed >= 0.01  # not vacuous: the boundary is reached now and then


def test_look_each_window_stops_at_the_first_rollback() -> None:
    a, b = cal.split_aa(cal.synthetic_run(seconds=60, rps=1000, seed=11), seed=12)
    worse = cal.with_effect(b, "add_ms", 3.0)
    wa, wb = window_tables(a, worse, 5.0)
    test = AnytimeTest(metrics=("p50", "error_rate"), margin=Margin(latency_ms=0.5, latency_pct=0))
    looks = test.look_each_window(wa, wb)
    assert looks[-1].action == "rollback" and all(d.action == "continue" for d in looks[:-1])
    assert 3 <= len(looks) < len(wa) and looks[-1].window == wa.index[len(looks) - 1]
    assert [d.alpha_spent for d in looks] == [0.05] + [0.0] * (len(looks) - 1)
    p50 = looks[-1].comparison["p50"]
    assert p50.verdict == "worse" and p50.ci.low > 0.5 and "confidence sequence" in p50.method
    # the same windows judged once (fixed sample) give a narrower interval: looking again costs width
    cut = looks[-1].comparison.windows
    assert len(cut["a"]) == len(looks) and cut["a"].index.max() == looks[-1].window
    fixed = compare_tables(
        cut["a"], cut["b"], ("p50", "error_rate"), 5.0, Margin(latency_ms=0.5, latency_pct=0)
    )
    assert fixed["p50"].ci.high - fixed["p50"].ci.low < p50.ci.high - p50.ci.low
    # looking on: nothing new after the last window
    again = AnytimeTest(metrics=("p50",)).look_each_window(wa, wb, after=int(wa.index.max()))
    assert again == []


def test_final_look_promotes_equivalent_arms() -> None:
    a, b = cal.split_aa(cal.synthetic_run(seconds=120, rps=2000, seed=21), seed=22)
    test = AnytimeTest(metrics=("p50", "error_rate"), margin=Margin(latency_ms=1.0))
    first = test.look(a, b)
    assert first.action == "continue" and first.look == 1
    final = test.look(a, b, final=True)
    assert final.action == "promote" and final.look == 2 and final.alpha_spent == 0.0
    assert {r.verdict for r in final.comparison} == {"equivalent"}


def test_anytime_test_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="unknown metrics"):
        AnytimeTest(metrics=("p42",))
    with pytest.raises(ValueError, match="alpha must be between"):
        AnytimeTest(alpha=0.6)
