"""The statistics' promises, checked by replay with fixed seeds (see stats/calibration.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import REPO
from workbench.stats import calibration as cal
from workbench.stats.compare import Margin
from workbench.stats.power import required_duration
from workbench.stats.sequential import SequentialTest

ALPHA = 0.05
SAMPLE = REPO / "data" / "sample" / "local-aa-1000rps.parquet"  # benchmarks/record_sample.py
FINE = Margin(latency_ms=0.5, latency_pct=2.5, error_rate_pct=0.25)  # margins the power claims use


def synthetic(seconds: float = 60, rps: float = 1000):
    return lambda seed: cal.synthetic_run(seconds=seconds, rps=rps, seed=seed)


@pytest.mark.heavy
def test_aa_false_alarm_rate_is_at_most_alpha() -> None:
    r = cal.replay(synthetic(), cal.ours(("p50", "p90", "p99", "error_rate")), n=200, seed=1000)
    assert r.rate <= ALPHA and r.wilson[1] <= ALPHA + 0.03, (r.hits, r.n, r.wilson)


@pytest.mark.heavy
@pytest.mark.parametrize("split", [cal.split_aa, cal.split_windows], ids=["concurrent", "window-split"])
def test_aa_false_alarm_rate_on_synthetic_data(split) -> None:
    r = cal.replay(synthetic(), cal.ours(("p50", "p90", "p99", "error_rate")), n=200, seed=1100, split=split)
    assert r.rate <= ALPHA and r.wilson[1] <= ALPHA + 0.03, (r.hits, r.n, r.wilson)


@pytest.mark.heavy
def test_aa_false_alarm_rate_on_a_recorded_local_mesh_run() -> None:
    recorded = pd.read_parquet(SAMPLE)
    assert len(recorded) > 100_000 and set(recorded["variant"]) == {"v1", "v2"}
    for split in (cal.split_aa, cal.split_windows):
        judge = cal.ours(("p50", "p90", "p99", "error_rate"))
        r = cal.replay(cal.segments(recorded), judge, n=200, seed=7000, split=split)
        assert r.rate <= ALPHA and r.wilson[1] <= ALPHA + 0.03, (split.__name__, r.hits, r.n, r.wilson)


@pytest.mark.heavy
def test_five_step_canary_false_rollback_rate_is_at_most_alpha() -> None:
    r = cal.canary_false_rollbacks(synthetic(seconds=50, rps=300), n=200, looks=5, seed=2000)
    assert r.rate <= ALPHA and r.wilson[1] <= ALPHA + 0.03, (r.hits, r.n, r.wilson)


@pytest.mark.heavy
def test_power_for_one_ms_on_p50() -> None:
    r = cal.replay(synthetic(), cal.ours(("p50",), margin=FINE), n=100, effect=("add_ms", 1.0), seed=3000)
    assert r.rate >= 0.9, (r.hits, r.n)


@pytest.mark.heavy
def test_power_for_ten_percent_on_p99() -> None:
    margin = Margin(latency_ms=0.0, latency_pct=2.5)
    r = cal.replay(synthetic(), cal.ours(("p99",), margin=margin), n=100, effect=("scale_pct", 10), seed=500)
    assert r.rate >= 0.9, (r.hits, r.n)


def test_sequential_test_spends_alpha_and_decides() -> None:
    test = SequentialTest(looks=4, metrics=("p50",), margin=FINE, weights=[1, 1, 1, 2])
    assert [round(test.alpha_at(k), 4) for k in (1, 2, 3, 4)] == [0.01, 0.01, 0.01, 0.02]
    a, b = cal.split_aa(cal.synthetic_run(seconds=40, rps=800, seed=4), seed=5)
    worse = cal.with_effect(b, "add_ms", 3.0)
    first = test.look(a, worse)
    assert first.action == "rollback" and first.reasons[0].startswith("p50 rose")
    aa = SequentialTest(looks=2, metrics=("p50",), margin=FINE)
    assert aa.look(a, b).action == "continue"
    final = aa.look(a, b)
    assert final.action == "promote" and final.look == 2
    with pytest.raises(RuntimeError, match="declared looks are used"):
        aa.look(a, b)


def test_required_duration_predicts_the_power_it_promises() -> None:
    pilot = cal.synthetic_run(seconds=30, rps=1000, seed=77)
    seconds = required_duration(1.0, "p50", rps=1000, pilot=pilot, margin=FINE)
    assert 10 <= seconds <= 120
    r = cal.replay(
        synthetic(seconds=seconds), cal.ours(("p50",), margin=FINE), n=40, effect=("add_ms", 1.0), seed=9
    )
    assert r.rate >= 0.75, (seconds, r.hits)
    with pytest.raises(ValueError, match=r"does not exceed the 0\.5 margin"):
        required_duration(0.4, "p50", rps=1000, pilot=pilot, margin=FINE)


def test_reference_judges_behave_as_documented() -> None:
    a, b = cal.split_aa(cal.synthetic_run(seconds=60, rps=1000, seed=3), seed=4)
    worse = cal.with_effect(b, "scale_pct", 60)
    # Kayenta's one-minute points: a one-minute run has one point per arm and can never fail...
    assert cal.kayenta("p50")(a, worse) is False
    # ...while with enough points its Mann-Whitney test does see a 60 % slowdown.
    assert cal.kayenta("p50", window=10)(a, worse) is True
    assert cal.flagger("p99", limit=1e6)(a, worse) is False and cal.flagger("p99", limit=0.1)(a, b) is True
    assert cal.naive()(a, cal.with_effect(b, "add_ms", 0.2)) is True  # trivia called significant


# ---------------------------------------------------------------------------------------------
# Scenarios real traffic brings: A/A false alarms of compare() and of the canary looking after
# every window (the anytime-valid test), for every metric (issue 15).

WILSON_MAX = 0.08


def _scenario_data(scenario: cal.Scenario, recorded: pd.DataFrame | None = None):
    if recorded is not None:
        return cal.segments(recorded)
    return lambda seed: cal.synthetic_run(seconds=60, rps=scenario.rps, seed=seed)


def _assert_calibrated(fa: cal.FalseAlarms, where: str) -> None:
    rates = {**{m: r for m, r in fa.per_metric.items()}, "any metric": fa.any_metric, "canary": fa.canary}
    for what, r in rates.items():
        assert r.rate <= ALPHA and r.wilson.high <= WILSON_MAX, (where, what, r.hits, r.n, r.wilson)


@pytest.mark.heavy
@pytest.mark.parametrize("name", list(cal.SCENARIOS))
def test_aa_false_alarms_in_every_scenario(name: str) -> None:
    scenario = cal.SCENARIOS[name]
    fa = cal.false_alarms(_scenario_data(scenario), scenario.split, n=200, seed=8000)
    _assert_calibrated(fa, f"synthetic, {name}")


@pytest.mark.heavy
@pytest.mark.parametrize("name", list(cal.SCENARIOS))
def test_aa_false_alarms_in_every_scenario_on_the_recorded_run(name: str) -> None:
    scenario = cal.SCENARIOS[name]
    fa = cal.false_alarms(_scenario_data(scenario, pd.read_parquet(SAMPLE)), scenario.split, n=200, seed=9000)
    _assert_calibrated(fa, f"recorded, {name}")


def test_scenarios_make_what_they_say() -> None:
    base = cal.synthetic_run(seconds=60, rps=1000, seed=5)
    a, b = cal.error_bursts_per_arm(base, seed=6)
    assert abs(len(a) - len(b)) < 0.05 * len(base)
    errs = [(x["status"] >= 500).mean() for x in (a, b)]
    assert max(errs) > 0.005  # bursts: far above the 0.1 % background
    shared_a, shared_b = cal.error_bursts_shared(base, seed=6)
    per_second = [x.groupby(x["timestamp"].dt.floor("1s"))["status"].apply(lambda s: (s >= 500).mean())
                  for x in (shared_a, shared_b)]  # fmt: skip
    both = pd.concat(per_second, axis=1).dropna()
    assert both.corr().iloc[0, 1] > 0.8  # shared bursts: both arms at once
    la, lb = cal.latency_bursts_per_arm(base, seed=7)
    assert la["latency_ms"].max() > base["latency_ms"].quantile(0.999) or lb["latency_ms"].max() > base[
        "latency_ms"
    ].quantile(0.999)
    stable, canary = cal.low_traffic_canary(base, seed=8)
    assert 5500 < len(stable) + len(canary) < 6500 and 0.03 < len(canary) / (len(stable) + len(canary)) < 0.07


# ---------------------------------------------------------------------------------------------
# Time to roll back: a canary at 5 % of 1000 rps


@pytest.mark.heavy
def test_time_to_roll_back_a_p99_regression() -> None:
    """+20 % p99 at 5 % of 1000 rps: median <= 60 s of canary traffic over 50 replays (the per-window
    p99 of 250 canary requests alone needed 80 s; the tail exceedances make it ~45 s)."""
    slow = cal.rollback_times(cal.rollback_anytime, n=50, effect=("scale_pct", 20.0), seed=100, seconds=180)
    assert slow.median <= 60.0 and slow.rolled_back.hits == 50, sorted(slow.seconds)


@pytest.mark.heavy
def test_no_false_rollbacks_over_every_window_look() -> None:
    healthy = cal.rollback_times(cal.rollback_anytime, n=100, seed=300, seconds=300)
    r = healthy.rolled_back
    assert r.rate <= ALPHA and r.wilson.high <= WILSON_MAX, (r.hits, r.n)


def test_time_to_roll_back_quick() -> None:
    """Fast tier: 12 regressed canaries, median <= 60 s of canary traffic; Flagger's default analysis
    cannot act before 5 failed one-minute checks."""
    slow = cal.rollback_times(cal.rollback_anytime, n=12, effect=("scale_pct", 20.0), seed=700, seconds=120)
    assert slow.median <= 60.0, sorted(slow.seconds)
    a, b = cal.canary_pair(701, seconds=330)
    b = cal.with_effect(b, "errors_pts", 5.0)  # every minute fails the 99 % success rate
    assert cal.rollback_flagger(a, b, p99_limit_ms=1e9) == 300.0
    assert cal.rollback_alpha_spending(a, b) == 60.0 and cal.rollback_anytime(a, b) < 60.0
