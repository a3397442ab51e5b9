"""Tail exceedance counts (stats/exceedance.py) and the faster canary rollbacks they give."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.metrics.histogram import Histogram
from workbench.stats import calibration as cal
from workbench.stats import exceedance
from workbench.stats.compare import Margin, window_tables
from workbench.stats.sequential import AnytimeTest


def test_counts_are_each_arms_requests_above_the_pooled_quantile_plus_the_margin() -> None:
    rng = np.random.default_rng(1)
    a0, b0 = rng.lognormal(3, 0.4, 950), rng.lognormal(3, 0.4, 50) * 1.3
    a1 = rng.lognormal(3, 0.4, 400)
    a_lat, a_win = np.concatenate([a1, a0]), np.r_[np.ones(400, int), np.zeros(950, int)]  # not in order
    out = exceedance.counts(a_lat, a_win, b0, np.zeros(50, int), np.array([0, 1]), ["p99", "p90", "p50"],
                            latency_ms=1.0, latency_pct=5.0)  # fmt: skip
    assert set(out) == {f"exceed_{m}_{p}" for m in ("p99", "p90") for p in "ab"}  # tail metrics only
    for m, q in (("p99", 0.99), ("p90", 0.90)):
        t = np.quantile(np.concatenate([a0, b0]), q)
        assert out[f"exceed_{m}_a"][0] == np.count_nonzero(a0 > t)
        assert out[f"exceed_{m}_b"][0] == np.count_nonzero(b0 > t + max(1.0, 0.05 * t))
        assert out[f"exceed_{m}_a"][1] == out[f"exceed_{m}_b"][1] == 0  # window 1: no candidate request
    assert 0 < out["exceed_p99_a"][0] < 15 and out["exceed_p99_b"][0] > 2  # the slower candidate shows


def test_window_tables_carry_the_counts_only_for_samples_of_both_arms() -> None:
    a, b = cal.canary_pair(3, seconds=30)
    wa, wb = window_tables(a, b, 5.0, exceed=Margin())
    assert exceedance.has_columns(wb, "p99") and not exceedance.has_columns(wa, "p99")
    assert len(wb) == 6 and wb["exceed_p99_b"].sum() <= wb["count"].sum()
    assert not exceedance.has_columns(window_tables(a, b, 5.0)[1], "p99")  # not asked for
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    hists = [
        (t0 + pd.Timedelta(seconds=s), Histogram.from_samples(np.full(100, 20.0), [0, 10, 30, 100]))
        for s in range(0, 30, 5)
    ]
    _, wh = window_tables(hists, hists, 5.0, exceed=Margin())
    assert not exceedance.has_columns(wh, "p99")  # histograms hold no request to count


def test_shares_are_symmetric_under_an_aa_split_with_bursts_in_one_arm() -> None:
    """A/A with latency bursts (x1.5-3) hitting one arm at a time: the candidate's share above the
    pooled p99 matches the baseline's on average. Against the baseline's own p99 a burst in the
    candidate counts as a regression and a burst in the baseline cannot offset it: that share
    drifts above the 1 % it should be."""
    pooled, own = [], []
    for seed in range(8):
        a, b = cal.latency_bursts_per_arm(cal.synthetic_run(seconds=60, rps=1000, seed=seed), seed=seed + 50)
        wa, wb = window_tables(a, b, 5.0, exceed=Margin(latency_ms=0.0, latency_pct=0.0))
        pooled.append(
            wb["exceed_p99_b"].sum() / wb["count"].sum() - wb["exceed_p99_a"].sum() / wa["count"].sum()
        )
        origin = a["timestamp"].min()
        wa_n, wb_n = (((x["timestamp"] - origin).dt.total_seconds() // 5).astype(int) for x in (a, b))
        above = sum(
            int((b["latency_ms"][wb_n == w] > np.quantile(a["latency_ms"][wa_n == w], 0.99)).sum())
            for w in np.unique(wa_n)
        )
        own.append(above / len(b) - 0.01)
    assert abs(float(np.mean(pooled))) < 0.005 and float(np.mean(own)) > 0.01, (pooled, own)


def test_a_p99_regression_in_a_five_percent_canary_rolls_back_on_the_exceedances() -> None:
    a, b = cal.canary_pair(11, seconds=120)
    slow = cal.with_effect(b, "scale_pct", 20.0)
    test = AnytimeTest(metrics=("p99", "error_rate"), window=5.0)
    looks = test.look_each_window(*window_tables(a, slow, 5.0, exceed=test.margin))
    last = looks[-1]
    assert last.action == "rollback" and (last.window + 1) * 5.0 <= 60.0, [d.action for d in looks]
    p99 = last.comparison["p99"]
    assert p99.verdict == "worse" and "tail-exceedance test" in p99.method
    if p99.ci.low <= p99.margin:  # the interval alone does not decide: the sentence says what did
        assert "the tail-exceedance test decides: " in p99.explain() and "beyond the" not in p99.explain()
    healthy = AnytimeTest(metrics=("p99", "error_rate"), window=5.0)
    assert all(
        d.action == "continue" for d in healthy.look_each_window(*window_tables(a, b, 5.0, exceed=Margin()))
    )
