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
