"""Run against run (``workbench.stats.runs``): run-to-run variation decides, not the windows alone."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench.stats.compare import Margin, compare_tables
from workbench.stats.runs import UNKNOWN, compare_runs, run_level, run_spread

WINDOWS = 10
METRICS = ("p50", "error_rate")


def _run(rng: np.random.Generator, level_ms: float, tau_ms: float, noise_ms: float = 0.05) -> pd.DataFrame:
    """One run's window table: the run's own offset (run-to-run variation) plus window noise."""
    offset = rng.normal(0, tau_ms)
    count = np.full(WINDOWS, 400.0)
    return pd.DataFrame(
        {"count": count, "errors": rng.binomial(400, 0.005, WINDOWS).astype(float),
         "p50": level_ms + offset + rng.normal(0, noise_ms, WINDOWS)},
        index=pd.RangeIndex(WINDOWS, name="window"),
    )  # fmt: skip


def test_run_level_and_pooled_spread() -> None:
    rng = np.random.default_rng(0)
    t = _run(rng, 5.0, 0.0)
    assert run_level(t, "p50") == pytest.approx(t["p50"].mean())
    assert run_level(t, "error_rate") == pytest.approx(100 * t["errors"].sum() / t["count"].sum())
    spread = run_spread([[1.0, 2.0, 3.0], [10.0, 12.0], [7.0]])  # the lone run tells nothing
    assert spread.df == 3 and spread.runs == 5
    assert spread.sd == pytest.approx(math.sqrt((2.0 + 2.0) / 3))
    assert not run_spread([[1.0], [2.0]]).known


def test_one_run_per_side_is_inconclusive_whatever_the_windows_say() -> None:
    rng = np.random.default_rng(1)
    a, b = _run(rng, 5.0, 0.0), _run(rng, 8.0, 0.0)  # +3 ms: the windows alone would say worse
    res = compare_runs(a, b, [[a], [b]], METRICS, margin=Margin(latency_ms=1))
    assert res["p50"].windows.verdict == "worse"
    assert res["p50"].verdict == "inconclusive" and res["p50"].note == UNKNOWN
    assert res["p50"].estimate == pytest.approx(run_level(b, "p50") - run_level(a, "p50"))
    assert "inconclusive" in res["p50"].explain() and UNKNOWN in res["p50"].explain()


def test_run_to_run_variation_keeps_false_alarms_at_alpha_where_windows_alone_cry_wolf() -> None:
    """A/A: every run of one configuration, each with its own offset (sd 0.8 ms). Windows alone
    call a fraction of these pairs worse; with the repeats' spread, at most alpha are."""
    rng = np.random.default_rng(2)
    trials, alpha = 200, 0.05
    runs_worse = windows_worse = 0
    for _ in range(trials):
        group = [_run(rng, 5.0, 0.8) for _ in range(4)]
        res = compare_runs(group[0], group[1], [group], ("p50",), margin=Margin(latency_ms=1), alpha=alpha)
        runs_worse += res["p50"].verdict == "worse"
        windows_worse += res["p50"].windows.verdict == "worse"
    assert windows_worse / trials > 0.10, windows_worse
    assert runs_worse / trials <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / trials), runs_worse


def test_a_real_regression_is_found_with_a_few_repeats() -> None:
    rng = np.random.default_rng(3)
    trials, found = 60, 0
    for _ in range(trials):
        old = [_run(rng, 5.0, 0.15) for _ in range(4)]
        new = [_run(rng, 8.0, 0.15) for _ in range(2)]
        res = compare_runs(old[0], new[0], [old, new], ("p50",), margin=Margin(latency_ms=1))
        found += res["p50"].verdict == "worse"
        assert res["p50"].ci.low <= res["p50"].windows.ci.low  # never narrower than the windows' interval
    assert found / trials >= 0.8, found


def test_error_rate_interval_is_never_narrower_than_newcombe() -> None:
    rng = np.random.default_rng(4)
    group = [_run(rng, 5.0, 0.1) for _ in range(3)]
    res = compare_runs(group[0], group[1], [group], METRICS)
    newcombe = compare_tables(group[0], group[1], METRICS, paired=False)["error_rate"].ci
    assert res["error_rate"].ci.low <= newcombe.low and res["error_rate"].ci.high >= newcombe.high
    assert res["error_rate"].unit == "pts"
