"""Trials as the replicates (``workbench.stats.trials``): the numbers scipy gives, the verdicts the
margin gives, no interval from one trial, and coverage when run-to-run variation dominates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workbench.stats.trials import NO_INTERVAL, one_sample, paired_trials, per_trial, trial_window


def test_paired_trials_is_the_paired_t_interval_over_trials() -> None:
    base, cand = [10.0, 11.0, 12.0], [12.0, 13.5, 14.0]
    res = paired_trials(base, cand, margin=1.0, confidence=0.95)
    ref = sps.ttest_rel(cand, base).confidence_interval(0.95)
    assert res.estimate == pytest.approx(13.1667 - 11.0, abs=1e-4)
    assert (res.ci.low, res.ci.high) == pytest.approx((ref.low, ref.high))
    assert res.df == 2 and res.n_trials == 3 and res.per_trial == pytest.approx((2.0, 2.5, 2.0))
    assert res.pvalue == pytest.approx(sps.ttest_rel(cand, base).pvalue)
    assert res.ci.low > 1.0 and res.verdict == "worse"  # the whole interval beyond the 1 ms margin
    assert res.confidence_interval(0.99).low < res.ci.low  # a wider level is wider
    assert "over 3 trials" in res.explain("ms", "p50") and res.explain().endswith("worse")


@pytest.mark.parametrize(
    ("margin", "verdict"),
    [(1.0, "worse"), (3.0, "equivalent"), (2.5, "inconclusive")],
)
def test_the_verdict_reads_the_interval_against_the_margin(margin: float, verdict: str) -> None:
    res = paired_trials([10.0, 11.0, 12.0], [12.0, 13.5, 14.0], margin=margin)
    assert res.verdict == verdict
    assert paired_trials([12.0, 13.5, 14.0], [10.0, 11.0, 12.0], margin=1.0).verdict == "better"


def test_one_trial_per_arm_has_no_interval() -> None:
    res = paired_trials([10.0], [12.5], margin=1.0)
    assert res.estimate == pytest.approx(2.5)
    assert not res.ci.finite and math.isnan(res.pvalue)
    assert res.verdict == NO_INTERVAL and res.note == "no interval (one trial per mode)"
    assert "no interval (one trial per mode)" in res.explain("ms", "p50")


def test_unequal_trial_counts_fall_back_to_welch_over_the_per_trial_values() -> None:
    base, cand = [10.0, 11.0, 12.0, 10.5], [12.0, 13.5, 14.0]
    res = paired_trials(base, cand, confidence=0.9)
    ref = sps.ttest_ind(cand, base, equal_var=False).confidence_interval(0.9)
    assert (res.ci.low, res.ci.high) == pytest.approx((ref.low, ref.high))
    assert "Welch" in res.method


def test_one_sample_is_the_t_interval_of_the_mean_over_trials() -> None:
    values = [95.0, 110.0, 101.0, 99.0]
    res = one_sample(values, confidence=0.95)
    ref = sps.ttest_1samp(values, 0).confidence_interval(0.95)
    assert res.estimate == pytest.approx(101.25) and (res.ci.low, res.ci.high) == pytest.approx(
        (ref.low, ref.high)
    )
    assert one_sample([101.0]).verdict == NO_INTERVAL


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        paired_trials([1.0, 2.0], [1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="at least one trial"):
        paired_trials([], [1.0])


def test_intervals_over_trials_cover_when_run_to_run_variation_dominates() -> None:
    """Each trial shifts by its own run effect (sd 1 ms) that all its windows share. The t interval
    over trials covers the true difference ~95 % of the time; pooling windows as replicates (what
    mesh_compare did before) covers it far less, because its windows miss the run effect."""
    rng = np.random.default_rng(7)
    truth, n_trials, n_windows, sims = 0.5, 3, 10, 1000
    run_a = rng.normal(0.0, 1.0, (sims, n_trials))
    run_b = rng.normal(truth, 1.0, (sims, n_trials))
    win_a = run_a[:, :, None] + rng.normal(0, 0.2, (sims, n_trials, n_windows))
    win_b = run_b[:, :, None] + rng.normal(0, 0.2, (sims, n_trials, n_windows))
    covered = [paired_trials(a, b, confidence=0.95).ci.contains(truth)
               for a, b in zip(win_a.mean(axis=2), win_b.mean(axis=2), strict=True)]  # fmt: skip
    # windows pooled across trials as if independent (Welch over all windows of each arm)
    pa, pb = win_a.reshape(sims, -1), win_b.reshape(sims, -1)
    se = np.sqrt(pa.var(axis=1, ddof=1) / pa.shape[1] + pb.var(axis=1, ddof=1) / pb.shape[1])
    est = pb.mean(axis=1) - pa.mean(axis=1)
    t = sps.t.ppf(0.975, pa.shape[1] - 1)
    covered_pooled = (est - t * se <= truth) & (truth <= est + t * se)
    aa = [paired_trials(a, b, margin=0.0).verdict == "worse"
          for a, b in zip(win_a.mean(axis=2), run_a[::-1], strict=True)]  # fmt: skip
    assert 0.93 <= np.mean(covered) <= 0.97
    assert covered_pooled.mean() < 0.80
    assert np.mean(aa) <= 0.04  # one-sided alpha / 2 at 95 %


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
    rng = np.random.default_rng(20)
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
    assert trial_window(10, 200) == pytest.approx(2.0) and trial_window(10, 20) == pytest.approx(5.0)


def test_trials_keyed_by_number_pair_on_the_trial_and_a_missing_one_is_welch() -> None:
    base = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0}
    cand = {3: 15.0, 0: 12.0, 2: 12.5, 1: 14.5}  # differences 2, 2.5, 1.5, 2 (any key order)
    res = paired_trials(base, cand, margin=0.5, confidence=0.9)
    d = [2, 2.5, 1.5, 2]
    assert res.per_trial == pytest.approx(tuple(d)) and res.n_trials == 4
    ref = sps.ttest_1samp(d, 0).confidence_interval(0.9)
    assert (res.ci.low, res.ci.high) == pytest.approx((ref.low, ref.high)) and res.verdict == "worse"
    lost = paired_trials([10.0, math.nan, 11.0], [12.0, 13.0, 12.5])  # trial 1 without data: not paired
    assert "Welch" in lost.method and lost.n_trials == 2
    assert "Welch" in paired_trials(base, cand, paired=False).method


def test_interval_over_trials_keeps_its_coverage() -> None:
    """Each trial's difference carries its own run-to-run noise (sd 2 ms) around a true +1 ms; the
    90 % interval covers +1 ms in 90 % of 2000 simulated experiments of 3 and of 6 trials, within
    three binomial standard errors."""
    rng = np.random.default_rng(20)
    for trials in (3, 6):
        covered = 0
        for _ in range(2000):
            base = rng.normal(20.0, 3.0, trials)  # trial-level drift shared by both arms
            cand = base + 1.0 + rng.normal(0, 2.0, trials)
            covered += paired_trials(list(base), list(cand), confidence=0.9).ci.contains(1.0)
        assert abs(covered / 2000 - 0.90) <= 3 * math.sqrt(0.9 * 0.1 / 2000), (trials, covered)
