"""Sweeps over rps x connections x mode on the real local mesh, stored point by point."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from workbench.backends.local import LocalMesh
from workbench.load import storage
from workbench.load.formats.smp import to_smp
from workbench.load.sweep import SweepSpec, by_connections, knee, run_sweep


def test_points_interleave_modes_across_repetitions() -> None:
    spec = SweepSpec(
        service="pricing", rps=(100, 200), connections=(1,), modes=("none", "both"), repetitions=3
    )
    order = [(p.repetition, p.mode) for p in spec.points()]
    blocks = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert blocks == [(0, "none"), (0, "both"), (1, "both"), (1, "none"), (2, "none"), (2, "both")]
    assert len(spec.points()) == 2 * 1 * 2 * 3
    assert len({p.name for p in spec.points()}) == len(spec.points())


def test_knee_is_the_last_rate_within_slo_before_the_first_failure() -> None:
    points = pd.DataFrame(
        {
            "mode": ["both"] * 4,
            "connections": [16] * 4,
            "rps": [500, 1000, 2000, 3000],
            "repetition": [0] * 4,
            "p99": [3.0, 4.0, 60.0, 5.0],  # 3000 recovering is noise: the knee stays at 1000
            "achieved_pct": [100.0, 99.5, 99.9, 99.9],
        }
    )
    assert knee(points, slo_p99_ms=50)["knee_rps"].tolist() == [1000]
    assert knee(points.assign(achieved_pct=[100, 98, 100, 100]), 50)["knee_rps"].tolist() == [500]


@pytest.mark.slow
def test_live_sweep_stores_reloads_and_summarizes(tmp_path: Path) -> None:
    spec = SweepSpec(
        service="pricing", rps=(100, 200), connections=(4, 8), modes=("serveronly", "both"),
        repetitions=1, duration_s=2, warmup_s=1,
    )  # fmt: skip
    seen: list[str] = []
    table = run_sweep(spec, lambda mode: LocalMesh(mode=mode), tmp_path, progress=False,
                      on_point=lambda p, r: seen.append(p.name))  # fmt: skip
    assert len(seen) == 8 and len(list(tmp_path.glob("*.parquet"))) == 8 and len(table) == 8
    for _, row in table.iterrows():
        assert row["achieved_pct"] == pytest.approx(100, abs=10), row
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] <= row["max"]
        assert row["error_pct"] == 0
        assert row["cpu_cores"] > 0 and row["rss_mib"] > 5 and row["cpu_mcores_per_1000rps"] > 0
        assert row["cpu_cores_server"] > 0
        assert 0 < row["host_cpu_pct"] <= 100 and row["loadgen_cpu_cores"] > 0
        limits = row["host_cpu_pct"] >= 85 or row["achieved_pct"] < 99 or row["dropped_pct"] > 1
        assert row["saturated"] == limits and (row["saturation"].startswith("saturated")) == limits
        if row["mode"] == "both":
            assert row["cpu_cores_client"] > 0
        else:
            assert math.isnan(row["cpu_cores_client"])  # no client sidecar in serveronly
    # A stored point reloads into the same summary.
    one = storage.load(next(tmp_path.glob("both_rps200_c8_rep0.json")))
    assert one.summary()["p99"] == pytest.approx(
        table.query("mode == 'both' and rps == 200 and connections == 8")["p99"].iloc[0]
    )
    # Re-running measures nothing new: the stored points are kept.
    seen.clear()
    again = run_sweep(spec, lambda mode: LocalMesh(mode=mode), tmp_path, progress=False,
                      on_point=lambda p, r: seen.append(p.name))  # fmt: skip
    assert seen == [] and len(again) == 8
    curve = by_connections(table, rps=200)
    assert set(curve["connections"]) == {4, 8} and set(curve["mode"]) == {"serveronly", "both"}
    # 2 s points on a loaded machine can miss 99 % by a request or two; the rule itself is unit-tested
    assert set(knee(table, slo_p99_ms=1000, min_achieved_pct=90)["knee_rps"]) == {200}
    smp = to_smp(one)
    lat = smp["performance_test_result"]["latencies_ms"]
    assert lat["p50"] == pytest.approx(one.summary()["p50"]) and lat["min"] <= lat["p50"] <= lat["max"]
    assert smp["performance_test_config"]["clients"][0]["connections"] == 8
    assert smp["service_mesh_config"]["sidecar"]["cpu_mCores"] >= 0
    assert smp["x_mesh_workbench"]["p999_ms"] >= lat["p99"]
