"""Trials as replicates: the interval over trials covers what pooling windows would hide."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench.stats.compare import Margin
from workbench.stats.trials import compare_trials, per_trial

RNG_SEED = 20


def _samples(
    start: pd.Timestamp, seconds: float, rps: float, median_ms: float, rng: np.random.Generator
) -> pd.DataFrame:
    n = int(seconds * rps)
    offsets = np.sort(rng.uniform(0, seconds, n))
    return pd.DataFrame(
        {
            "timestamp": start + pd.to_timedelta(offsets, unit="s"),
            "latency_ms": median_ms * np.exp(0.3 * rng.standard_normal(n)),
            "status": 200,
        }
    )


def test_per_trial_is_the_mean_of_the_trials_windows() -> None:
    rng = np.random.default_rng(RNG_SEED)
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    trials = {i: _samples(t0 + pd.Timedelta(minutes=i), 10, 200, 10 + 5 * i, rng) for i in range(3)}
    table = per_trial(trials, ["p50", "p99"], window_s=2.0)
    assert list(table.index) == [0, 1, 2] and (table["windows"] == 5).all()
    assert table["requests"].tolist() == [2000, 2000, 2000]
    for i in range(3):  # lognormal median 10 + 5 i: each trial's p50 sits on its own median
        assert table.loc[i, "p50"] == pytest.approx(10 + 5 * i, rel=0.05)
    # p99 needs 100 requests per window: a trial of sparse windows has no p99, but still a p50
    sparse = per_trial({0: _samples(t0, 10, 20, 10, rng)}, ["p50", "p99"], window_s=2.0)
    assert math.isnan(sparse.loc[0, "p99"]) and math.isfinite(sparse.loc[0, "p50"])


def test_paired_trials_give_a_t_interval_over_trials() -> None:
    base = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0}
    cand = {0: 12.0, 1: 14.5, 2: 12.5, 3: 15.0}  # differences 2, 2.5, 1.5, 2
    res = compare_trials(base, cand, metric="p50", margin=Margin(latency_ms=0.5, latency_pct=1), alpha=0.05)
    d = np.array([2, 2.5, 1.5, 2])
    half = 2.353363434801823 * d.std(ddof=1) / 2  # t(0.95, 3 df) * sd / sqrt(4): one-sided claims at 5 %
    assert res.estimate == pytest.approx(2.0) and res.n_trials == 4 and res.differences == (2, 2.5, 1.5, 2)
    assert res.ci.low == pytest.approx(2.0 - half) and res.ci.high == pytest.approx(2.0 + half)
    assert res.verdict == "worse" and "paired by trial" in res.method
    assert "rose 2 ms" in res.explain() and "4 trials" in res.explain()
    tight = compare_trials(base, {t: v + 0.05 for t, v in base.items()}, margin=Margin(latency_ms=1))
    assert tight.verdict == "equivalent"


def test_unpaired_and_too_few_trials() -> None:
    res = compare_trials([10.0, 11.0, 12.0], {5: 20.0, 6: 22.0}, margin=Margin(latency_ms=1))
    assert "Welch" in res.method and res.estimate == pytest.approx(10.0) and res.verdict == "worse"
    one = compare_trials([10.0], [11.0])
    assert one.verdict == "inconclusive" and "needs >= 2 trials" in one.note and not one.ci.finite
    nan = compare_trials([10.0, math.nan, 11.0], [12.0, 13.0, 12.5])  # a trial without data is left out
    assert nan.n_trials == 2
    with pytest.raises(ValueError, match="alpha"):
        compare_trials([1, 2], [1, 2], alpha=0.7)


def test_interval_over_trials_keeps_its_coverage() -> None:
    """Each trial's difference carries its own run-to-run noise (sd 2 ms) around a true +1 ms; the
    interval (90 % two-sided: each one-sided claim at alpha = 0.05) covers +1 ms in 90 % of 2000
    simulated experiments of 3 and of 6 trials, within three binomial standard errors."""
    rng = np.random.default_rng(RNG_SEED)
    for trials in (3, 6):
        covered = 0
        for _ in range(2000):
            base = rng.normal(20.0, 3.0, trials)  # trial-level drift shared by both arms
            cand = base + 1.0 + rng.normal(0, 2.0, trials)
            covered += compare_trials(list(base), list(cand)).ci.contains(1.0)
        assert abs(covered / 2000 - 0.90) <= 3 * math.sqrt(0.9 * 0.1 / 2000), (trials, covered)
