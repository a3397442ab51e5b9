"""The A/B's ground truth (``experiments.ab.joined``): a direct run in two parts, half before and
half after the A/B, judged as one result whose windows fall inside one part or the other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.experiments.ab import joined
from workbench.load.results import LoadResult
from workbench.stats import compare


def _part(start: float, seconds: int, rps: int, shift_ms: float, seed: int, dropped: int) -> LoadResult:
    """A direct run's samples: v1 and v2 alternate; v2 is ``shift_ms`` slower."""
    rng = np.random.default_rng(seed)
    n = seconds * rps
    t = start + np.sort(rng.uniform(0, seconds, n))
    variant = np.where(np.arange(n) % 2 == 0, "v1", "v2")
    lat = rng.lognormal(np.log(8.0), 0.3, n) + np.where(variant == "v2", shift_ms, 0.0)
    samples = pd.DataFrame({"timestamp": pd.to_datetime(t, unit="s", utc=True), "latency_ms": lat,
                            "status": 200, "variant": variant.astype(object)})  # fmt: skip
    iso = [pd.Timestamp(x, unit="s", tz="UTC").isoformat() for x in (start, start + seconds)]
    meta = {"rps": rps, "duration_s": float(seconds), "start": iso[0], "end": iso[1], "backend": "direct",
            "dropped_iterations": dropped, "requests_total": n}  # fmt: skip
    return LoadResult(meta, samples)


def test_two_parts_make_one_result_with_windows_only_where_they_ran() -> None:
    before = _part(1_700_000_000, 10, 100, 2.0, 1, dropped=3)
    after = _part(1_700_000_040, 10, 100, 2.0, 2, dropped=1)  # the A/B ran in between
    both = joined([before, after])
    assert both.meta["duration_s"] == 20 and both.meta["dropped_iterations"] == 4
    assert both.meta["requests_total"] == 2000 and both.count == 2000
    assert both.summary()["actual_rps"] == pytest.approx(100)  # not 2000 requests over 50 s
    assert [p["start"] for p in both.meta["parts"]] == [before.meta["start"], after.meta["start"]]
    assert both.meta["start"] == before.meta["start"] and both.meta["end"] == after.meta["end"]
    assert both.samples["timestamp"].is_monotonic_increasing
    arms = both.by_variant()
    row = compare(arms["v1"], arms["v2"], metrics=["p50"], window="2s").to_frame().loc["p50"]
    assert row["n_windows"] == 10  # five per part, none in the 30 s gap
    assert 1.5 < row["estimate"] < 2.5
    with pytest.raises(ValueError, match="at least one"):
        joined([])
