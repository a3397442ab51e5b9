"""SMP export for every mode (a point without sidecars has no sidecar cost: null, not a crash), and
``workbench export smp RUN_ID`` writing a stored run's points, read back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_workbench
from workbench.load import storage
from workbench.load.formats.smp import read_smp, to_smp, write_smp
from workbench.load.results import LoadResult


def _point(mode: str, rps: float = 100.0) -> LoadResult:
    n = 300
    start = pd.Timestamp("2026-01-01", tz="UTC")
    samples = pd.DataFrame({
        "timestamp": start + pd.to_timedelta(np.linspace(0, 3, n, endpoint=False), unit="s"),
        "latency_ms": np.linspace(1.0, 4.0, n), "status": np.full(n, 200), "variant": np.full(n, "v1"),
    })  # fmt: skip
    sidecars = mode != "none"
    cost = {"cpu_cores": 0.12 if sidecars else math.nan, "rss_mib": 40.0 if sidecars else math.nan,
            "cpu_cores_client": math.nan,
            "cpu_mcores_per_1000rps": 1200.0 if sidecars else math.nan}  # fmt: skip
    meta = {"mode": mode, "rps": rps, "requested_rps": rps, "connections": 16, "duration_s": 3.0,
            "start": start.isoformat(), "end": (start + pd.Timedelta(seconds=3)).isoformat(),
            "point": f"{mode}_rps{rps:g}_c16_rep0", "backend": "local", "generator": "k6",
            "host": {"host_cpu_pct": 40.0, "cores": 2, "loadgen_cpu_cores": 0.2},
            "proxy_cost": cost}  # fmt: skip
    return LoadResult(meta, samples)


@pytest.mark.parametrize("mode", ["none", "serveronly", "both", "both-mtls"])
def test_every_mode_exports_and_a_missing_figure_is_null(mode: str, tmp_path: Path) -> None:
    doc = to_smp(_point(mode))
    sidecar = doc["service_mesh_config"]["sidecar"]
    if mode == "none":
        assert sidecar["cpu_mCores"] is None and sidecar["mem_mb"] is None
        assert doc["x_mesh_workbench"]["proxy_cost"]["cpu_cores"] is None
    else:
        assert sidecar["cpu_mCores"] == 120 and sidecar["mem_mb"] == 42
    assert doc["service_mesh_config"]["mtls_enabled"] == (mode == "both-mtls")
    assert doc["x_mesh_workbench"]["saturation"]["saturated"] is False
    back = read_smp(write_smp(_point(mode), tmp_path / "p.smp.json"))  # strict JSON: no NaN token
    assert back == json.loads(json.dumps(doc))
    assert "NaN" not in (tmp_path / "p.smp.json").read_text()


def test_export_command_writes_every_stored_point_and_they_read_back(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "20260101-000000-0001"
    points = [_point(m) for m in ("none", "both")]
    for p in points:
        storage.save(p, run / "sidecar-overhead" / "points", p.meta["point"])
    storage.save(_point("both", 200.0), run / "catalog-ab", "ab")
    (run / "run.json").write_text("{}")
    proc = run_workbench("export", "smp", "latest", "--data", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    written = sorted((run / "smp").rglob("*.smp.json"))
    assert [p.relative_to(run / "smp").as_posix() for p in written] == [
        "catalog-ab/ab.smp.json",
        "sidecar-overhead/points/both_rps100_c16_rep0.smp.json",
        "sidecar-overhead/points/none_rps100_c16_rep0.smp.json",
    ]
    assert proc.stdout.strip().endswith(f"3 SMP documents in {run / 'smp'}")
    none = read_smp(run / "smp" / "sidecar-overhead" / "points" / "none_rps100_c16_rep0.smp.json")
    lat = none["performance_test_result"]["latencies_ms"]
    assert lat["p50"] == pytest.approx(points[0].summary()["p50"])
    assert none["performance_test_config"]["clients"][0]["rps"] == 100
    assert none["service_mesh_config"]["sidecar"]["cpu_mCores"] is None
    missing = run_workbench("export", "smp", "no-such-run", "--data", str(tmp_path / "runs"))
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr
