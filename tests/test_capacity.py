"""Capacity search by bracketing and bisection (``workbench.load.capacity``): to ±5 %, not in steps."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from workbench.load.capacity import Step, search


def _limit(capacity: float, seen: list[float]):
    def measure(rps: float) -> Step:
        seen.append(rps)
        return Step(rps, rps <= capacity, f"{'within' if rps <= capacity else 'beyond'} {capacity:g}")

    return measure


@pytest.mark.parametrize(
    ("capacity", "start"), [(1234.0, 1000.0), (1234.0, 5000.0), (2999.0, 1000.0), (87.0, 50.0)]
)
def test_bisection_finds_the_capacity_to_five_percent(capacity: float, start: float) -> None:
    seen: list[float] = []
    found = search(_limit(capacity, seen), start, rel_tol=0.05)
    assert found.rps <= capacity < found.upper  # the bracket holds the truth
    assert found.upper - found.rps <= 0.05 * found.rps + 1  # whole rps
    assert found.rps >= 0.95 * capacity - 1 and found.resolved
    assert len(seen) <= 10 and [s.rps for s in found.steps] == seen
    assert "did not pass" in found.explain()


def test_fixed_steps_could_not_tell_point_nine_from_point_five() -> None:
    """1000-rps steps put 1900 and 1100 rps in the same bucket; bisection tells them apart."""
    a = search(_limit(1900.0, []), 1000.0, rel_tol=0.05).rps
    b = search(_limit(1100.0, []), 1000.0, rel_tol=0.05).rps
    assert a / b == pytest.approx(1900 / 1100, rel=0.1)


def test_no_passing_rate_and_no_failing_rate_are_said_as_such() -> None:
    never = search(lambda r: Step(r, False, "refused"), 100.0, rel_tol=0.05, max_steps=5)
    assert never.rps == 0 and not never.resolved and never.explain().startswith("no rate passed")
    always = search(lambda r: Step(r, True, "fine"), 100.0, rel_tol=0.05, max_rps=800)
    assert always.rps == 800 and math.isinf(always.upper) and "at least 800 rps" in always.explain()
    with pytest.raises(ValueError):
        search(lambda r: Step(r, True, ""), 0.0)


def test_auto_rate_is_half_the_probe_rounded_down_and_a_stored_choice_is_reused(tmp_path: Path) -> None:
    from workbench.experiments import autorate, open_session

    assert [autorate._round_down(x) for x in (173.0, 86.5, 1234.0, 0.4)] == [170.0, 86.0, 1200.0, 1.0]
    config = tmp_path / "experiments.yaml"
    config.write_text(
        "experiments:\n"
        "  - {name: ab-auto, kind: ab, service: catalog, variants: {baseline: v1, candidate: v2},\n"
        "     split: {v1: 50, v2: 50}, rps: auto}\n"
        "  - {name: ab-fixed, kind: ab, service: catalog, variants: {baseline: v1, candidate: v2},\n"
        "     split: {v1: 50, v2: 50}, rps: 250}\n"
    )

    def no_probe() -> object:
        raise AssertionError("no probe may run: the rate is known")

    fixed = autorate.choose(open_session(config, "ab-fixed", run_dir=tmp_path / "run"), no_probe, what="x",
                            connections=16)  # fmt: skip
    assert (fixed.rps, fixed.auto) == (250.0, False)
    s = open_session(config, "ab-auto", run_dir=tmp_path / "run")
    stored = autorate.Rate(95.0, True, "rps auto: 95 rps, 50 % of the probed capacity", 190.0, {"steps": []})
    s.save_json(autorate.PROBE_FILE, dataclasses.asdict(stored))
    assert autorate.choose(s, no_probe, what="x", connections=16) == stored
    assert autorate.stored(s) == stored
