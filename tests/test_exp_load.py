"""The loadtest and mesh_compare experiment kinds, on the real local mesh and on Istio's fortio files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest
from scipy import stats as sps

from conftest import REPO
from workbench.experiments import loadtest, mesh_compare, open_session
from workbench.experiments.session import ExperimentResult, read_result
from workbench.load import storage
from workbench.load.results import LoadResult

SUITE = """
backend: local
defaults: {warmup: 1s, slo_p99_ms: 1000}
experiments:
  - {name: lt, kind: loadtest, service: frontend, rps: [50, 150], connections: [8], duration: 3s}
  - {name: mc, kind: mesh_compare, modes: [none, both], rps: 100, connections: [16], trials: 2, duration: 3s}
  - {name: nothing, kind: mesh_compare, fortio_results: [no-such-dir/*_qps_*.json]}
  - {name: stored, kind: mesh_compare, modes: [none, both], rps: 100, connections: [16], trials: 3}
"""
FORTIO = """
experiments:
  - {name: istio, kind: mesh_compare, fortio_results: ["istio-1.2-fortio/*_qps_*.json"], baseline: base}
  - {name: wrong-base, kind: mesh_compare, fortio_results: ["istio-1.2-fortio/*_qps_*.json"], baseline: nope}
"""
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "experiments.yaml"
    path.write_text(SUITE)
    return path


def _run(config: Path, name: str, run_dir: Path, module: object, replay: bool = False) -> ExperimentResult:
    s = open_session(config, name, run_dir=run_dir, replay=replay)  # the suite's specs are short already
    try:
        return s.execute(module)  # type: ignore[arg-type]
    finally:
        s.close()


def _same(a: ExperimentResult, b: ExperimentResult) -> None:
    assert (b.verdict, b.severity, b.headline) == (a.verdict, a.severity, a.headline)
    assert json.dumps(b.to_json()["figures"]) == json.dumps(a.to_json()["figures"])


def _check_figures(figs: dict) -> None:
    for name, fig in figs.items():
        layout = fig.layout
        assert layout.title.text and layout.meta["reading"], name
        assert layout.xaxis.title.text and "(" in layout.yaxis.title.text, f"{name}: axis titles, y units"


def _notebook(name: str, out: Path, **parameters: object) -> tuple[str, int]:
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                        cwd=str(NOTEBOOKS), progress_bar=False)  # fmt: skip
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(str(o.get("text", "")) + "".join(map(str, o.get("data", {}).values())) for o in outputs)
    figures = sum("Plotly.newPlot" in str(o.get("data", {}).get("text/html", "")) for o in outputs)
    return text, figures


# ----------------------------------------------------------------------------------------------
# loadtest


@pytest.fixture(scope="module")
def load_run(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExperimentResult]:
    run_dir = tmp_path_factory.mktemp("lt-run")
    return run_dir, _run(suite, "lt", run_dir, loadtest)


@pytest.mark.slow
def test_loadtest_measures_every_point_and_judges_the_slo(load_run: tuple[Path, ExperimentResult]) -> None:
    run_dir, result = load_run
    points = run_dir / "lt" / "points"
    assert len(list(points.glob("*.parquet"))) == 2 and len(list(points.glob("*.json"))) == 2
    table = result.tables["points"]
    assert sorted(table["rps"]) == [50, 150] and set(table["connections"]) == {8}
    low = table[table["rps"] == 50].iloc[0]
    assert low["achieved_rps"] == pytest.approx(50, rel=0.1)
    assert 0 < low["p50"] <= low["p90"] <= low["p99"] and low["error_pct"] == 0
    assert low["cpu_cores"] > 0  # the sidecars' cost from Prometheus is stored with the point
    assert (result.verdict, result.severity) in (("pass", "ok"), ("fail", "worse"))
    f = result.figures
    assert f["slo_p99_ms"] == 1000 and f["points"] == 2 and f["max_achieved_rps"] > 0
    assert f["knee_rps"] in (50, 150) or math.isnan(f["knee_rps"])
    assert f["p99_ms_lowest_load"] == pytest.approx(low["p99"])
    figs = loadtest.figures(result)
    assert set(figs) == {"by_connections", "by_rps", "achieved"}
    _check_figures(figs)
    assert read_result(run_dir / "lt")["verdict"] == result.verdict


@pytest.mark.slow
def test_loadtest_replay_and_notebook_reuse_the_stored_points(
    suite: Path, load_run: tuple[Path, ExperimentResult], tmp_path: Path
) -> None:
    run_dir, result = load_run
    points = run_dir / "lt" / "points"
    before = {p.name: p.stat().st_mtime_ns for p in points.iterdir()}
    _same(result, _run(suite, "lt", run_dir, loadtest, replay=True))
    text, figures = _notebook("loadtest", tmp_path / "lt.ipynb", config_file=str(suite), experiment="lt",
                              run_dir=str(run_dir), quick=False, replay=True)  # fmt: skip
    assert f"**{result.verdict}**" in text and result.headline in text and figures == 3
    assert {p.name: p.stat().st_mtime_ns for p in points.iterdir()} == before  # no load was run


def _point(rps: float, latency_ms: float, achieved_pct: float = 100.0) -> LoadResult:
    duration = 10.0
    n = int(rps * duration * achieved_pct / 100)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    samples = pd.DataFrame({
        "timestamp": start + pd.to_timedelta(np.linspace(0, duration, n, endpoint=False), unit="s"),
        "latency_ms": np.full(n, latency_ms), "status": np.full(n, 200), "variant": np.full(n, "v1"),
    })  # fmt: skip
    meta = {"mode": "both", "rps": rps, "requested_rps": rps, "connections": 8, "repetition": 0,
            "duration_s": duration, "start": start.isoformat()}  # fmt: skip
    return LoadResult(meta, samples)


@pytest.mark.parametrize(
    ("grid", "verdict", "knee"),
    [
        ([(50, 5.0, 100), (150, 8.0, 100), (300, 2000.0, 100)], "pass", 150),  # p99 beyond the SLO at 300
        ([(50, 5.0, 100), (150, 8.0, 90)], "pass", 50),  # 150 rps not achieved
        ([(50, 1500.0, 100), (150, 1600.0, 100)], "fail", math.nan),  # even the lowest rate misses it
        ([(50, 5.0, 95), (150, 5.0, 100)], "fail", math.nan),  # the lowest rate not achieved
    ],
)
def test_loadtest_verdict_follows_the_knee(
    suite: Path, tmp_path: Path, grid: list[tuple[float, float, float]], verdict: str, knee: float
) -> None:
    for rps, latency, achieved in grid:
        storage.save(_point(rps, latency, achieved), tmp_path / "lt" / "points", f"both_rps{rps:g}_c8_rep0")
    result = _run(suite, "lt", tmp_path, loadtest, replay=True)
    assert result.verdict == verdict and result.severity == ("ok" if verdict == "pass" else "worse")
    assert result.figures["knee_rps"] == knee or (math.isnan(knee) and math.isnan(result.figures["knee_rps"]))
    assert ("SLO met up to" in result.headline) == (verdict == "pass")


# ----------------------------------------------------------------------------------------------
# mesh_compare on the local mesh


def test_a_compared_mesh_runs_only_what_the_target_calls(suite: Path, tmp_path: Path) -> None:
    from workbench.errors import BackendError

    s = open_session(suite, "mc", run_dir=tmp_path)
    built = []
    try:
        built.append(mesh := s.mesh("both", fresh=True, serving="catalog"))  # built, not started
        assert list(mesh.topology.services) == ["catalog", "pricing"] and not mesh.telemetry
        built.append(mesh := s.mesh("both", fresh=True, serving="frontend"))
        assert list(mesh.topology.services) == ["frontend", "catalog", "pricing", "reviews", "ratings"]
        built.append(mesh := s.mesh("both", fresh=True))
        assert len(mesh.topology.services) == 5  # no target: the whole topology
        with pytest.raises(BackendError, match="no service 'nope'; services: frontend"):
            s.mesh("both", fresh=True, serving="nope")
    finally:
        for mesh in built:  # a mesh that was never started still owns its run directory
            mesh.stop()
        s.close()
    assert not any(mesh.run_dir.exists() for mesh in built)


@pytest.mark.slow
def test_mesh_compare_runs_interleaved_trials_and_measures_the_sidecars(suite: Path, tmp_path: Path) -> None:
    result = _run(suite, "mc", tmp_path, mesh_compare)
    names = sorted(p.stem for p in (tmp_path / "mc" / "points").glob("*.json"))
    assert names == [f"{m}_rps100_c16_rep{r}" for m in ("both", "none") for r in (0, 1)]
    points = result.tables["points"]
    assert len(points) == 4 and {"saturated", "host_cpu_pct", "loadgen_cpu_cores"} <= set(points.columns)
    assert (points["host_cpu_pct"] > 0).all() and (points["loadgen_cpu_cores"] > 0).all()
    assert result.verdict == ("saturated" if points["saturated"].any() else "measured")
    over = result.tables["overhead"]
    assert set(zip(over["mode"], over["connections"], over["metric"], strict=True)) == {
        ("both", 16, "p50"), ("both", 16, "p90"), ("both", 16, "p99")
    }  # fmt: skip
    p50 = over[over["metric"] == "p50"].iloc[0]
    assert p50["estimate"] > 0, "four sidecar hops per call must add latency"
    # the interval is the paired t over the two trials' own p50s (1 df), nothing pooled
    trial = points.pivot(index="trial", columns="mode", values="p50")
    ref = sps.ttest_rel(trial["both"], trial["none"]).confidence_interval(1 - 2 * 0.05 / 3)
    assert (p50["ci_low"], p50["ci_high"]) == pytest.approx((ref.low, ref.high))
    assert p50["trials"] == 2 and "1 df" in p50["method"]
    assert result.figures["delta_p50_both_c16"] == pytest.approx(p50["estimate"])
    # direct: each sidecar's own time per traversal, per role, from the access logs of every point
    proxy = result.tables["proxy_cost"].set_index("role")
    # client outbound: loadgen, frontend x2, catalog, reviews; on the critical path: loadgen out,
    # frontend in and out, catalog (or reviews) in and out, the leaf's in
    assert proxy.loc["client outbound", "per_request"] == pytest.approx(5)
    assert proxy.loc["server inbound", "per_request"] == pytest.approx(5)
    assert proxy.loc["all sidecars", "critical_traversals"] == 6
    per_point = result.tables["traversal_points"]
    assert set(per_point["point"]) == {f"both_rps100_c16_rep{r}" for r in (0, 1)}  # mode none: no sidecar
    for role in ("client outbound", "server inbound"):
        rows = per_point[per_point["role"] == role]
        assert rows["own_p50_us"].between(10, 5000).all() and (rows["cpu_cores"] > 0).all()
    if result.verdict == "measured":
        assert result.figures["own_p50_us_both"] == pytest.approx(proxy.loc["all sidecars", "own_p50_us"])
        assert result.headline.startswith("Each sidecar traversal adds ")
        assert "end to end, both adds +" in result.headline and "critical path" in result.headline
    observer = result.tables["observer"].set_index("mode")
    assert math.isnan(observer.loc["both", "Prometheus (workbench)"])  # not running in compared meshes
    assert (
        observer.loc["both", "load generator (k6)"] > 0 and observer.loc["both", "sidecars on the path"] > 0
    )
    decision, sources = result.tables["decision"], result.tables["decision_sources"]
    assert list(decision.columns) == [mesh_compare.MEASURED, "Istio", "Linkerd", "Consul"]
    assert "both vs none" in decision.loc["added latency", mesh_compare.MEASURED]
    assert (
        "0.20 vCPU" in decision.loc["proxy CPU", "Istio"]
        and "Istio 1.24" in decision.loc["proxy CPU", "Istio"]
    )
    assert sources.loc["proxy CPU", "Istio"].startswith("https://istio.io/v1.24/")
    assert sources.loc["added latency", "Linkerd"].startswith("https://linkerd.io/")
    features = ["mTLS", "authorization", "traffic split", "header routing", "fault injection",
                "observability", "multi-cluster"]  # fmt: skip
    meshes = ("Istio", "Linkerd", "Consul")
    assert all(sources.loc[f, m].startswith("https://") for f in features for m in meshes)
    figs = mesh_compare.figures(result)
    # the CPU figure draws the trials that were not saturated (a saturated point's CPU is queueing's,
    # not the proxies'): it is there when any trial was not, whatever the verdict says of the rest
    cpu_known = bool(np.isfinite(result.tables["proxy_cost"]["vcpu_per_1000_traversals"]).any())
    expected = {"overhead", "percentiles", "own_time"} | ({"proxy_cpu"} if cpu_known else set())
    assert set(figs) == expected
    _check_figures(figs)
    _same(result, _run(suite, "mc", tmp_path, mesh_compare, replay=True))


def _stored_point(
    mode: str, trial: int, p50: float, host_cpu: float = 40.0, rps: float = 100.0
) -> LoadResult:
    """A stored trial point with its latency centred on ``p50`` (ms) and the host CPU it recorded."""
    n = 400
    start = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=trial)
    rng = np.random.default_rng(trial * 10 + len(mode))
    samples = pd.DataFrame({
        "timestamp": start + pd.to_timedelta(np.linspace(0, 4, n, endpoint=False), unit="s"),
        "latency_ms": p50 + rng.normal(0, 0.01, n), "status": np.full(n, 200), "variant": np.full(n, "v1"),
    })  # fmt: skip
    meta = {"mode": mode, "rps": rps, "requested_rps": rps, "connections": 16, "repetition": trial - 1,
            "duration_s": 4.0, "start": start.isoformat(), "point": f"{mode}_rps{rps:g}_c16_rep{trial - 1}",
            "host": {"host_cpu_pct": host_cpu, "cores": 2, "loadgen_cpu_cores": 0.2}}  # fmt: skip
    return LoadResult(meta, samples)


def _store(tmp_path: Path, points: list[LoadResult]) -> None:
    for r in points:
        storage.save(r, tmp_path / "stored" / "points", r.meta["point"])


def test_mesh_compare_interval_comes_from_between_trial_variation(suite: Path, tmp_path: Path) -> None:
    """Each trial shifts both arms alike (run-to-run variation); the per-trial difference is 2, 2.5
    and 2 ms. The interval is the paired t over those three, however tight each trial's windows are."""
    base = {1: 5.0, 2: 7.0, 3: 6.0}
    extra = {1: 2.0, 2: 2.5, 3: 2.0}
    _store(tmp_path, [_stored_point("none", t, base[t]) for t in (1, 2, 3)]
           + [_stored_point("both", t, base[t] + extra[t]) for t in (1, 2, 3)])  # fmt: skip
    result = _run(suite, "stored", tmp_path, mesh_compare, replay=True)
    p50 = result.tables["overhead"].set_index("metric").loc["p50"]
    ref = sps.ttest_rel([7.0, 9.5, 8.0], [5.0, 7.0, 6.0]).confidence_interval(1 - 2 * 0.05 / 3)
    assert p50["estimate"] == pytest.approx(13 / 6, abs=0.01)
    assert (p50["ci_low"], p50["ci_high"]) == pytest.approx((ref.low, ref.high), abs=0.01)
    assert p50["ci_high"] - p50["ci_low"] > 0.5  # the windows' noise (0.01 ms) would have given ~0.01
    assert p50["ci_low"] > 1.0 and p50["verdict"] == "worse"  # beyond the 1 ms margin, even over 3 trials
    assert result.verdict == "measured" and "trials as replicates, 3 per mode" in result.headline


def test_a_saturated_point_is_not_reported_as_proxy_overhead(suite: Path, tmp_path: Path) -> None:
    both = [_stored_point("both", t, 9.0, host_cpu=91.0 if t == 2 else 50.0) for t in (1, 2, 3)]
    _store(tmp_path, [_stored_point("none", t, 5.0) for t in (1, 2, 3)] + both)
    result = _run(suite, "stored", tmp_path, mesh_compare, replay=True)
    assert result.verdict == "saturated" and result.severity == "inconclusive"
    assert result.headline.startswith(
        "saturated: 1 of 6 points (both trial 2 at 16 connections: host CPU 91 %"
    )
    assert "not reported as proxy overhead" in result.headline and "adds" not in result.headline
    over = result.tables["overhead"]
    assert set(over["verdict"]) == {"saturated"}
    assert all(c["verdict"] == "saturated" and c["severity"] == "inconclusive" for c in result.checks)


def test_mesh_compare_without_matching_files_names_pattern_and_directory(suite: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no-such-dir/\*_qps_\*\.json") as err:
        _run(suite, "nothing", tmp_path, mesh_compare)
    assert str(suite.parent) in str(err.value)
    assert read_result(tmp_path / "nothing")["status"] == "failed"


# ----------------------------------------------------------------------------------------------
# mesh_compare over Istio 1.2's published fortio runs


@pytest.fixture
def fortio_suite(shared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "suite" / "istio-1.2-fortio"
    shutil.copytree(shared / "fixtures" / "istio-1.2-fortio", copy)
    config = tmp_path / "suite" / "experiments.yaml"
    config.write_text(FORTIO)
    return config


def _fortio_p50_ms(directory: Path, conns: int, arm: str) -> float:
    (path,) = directory.glob(f"*_qps_1000_c_{conns}_1024_{arm}.json")
    pct = json.loads(path.read_text())["DurationHistogram"]["Percentiles"]
    return 1000 * next(p["Value"] for p in pct if p["Percentile"] == 50)


def test_fortio_ingest_reports_the_files_own_differences(fortio_suite: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = _run(fortio_suite, "istio", run_dir, mesh_compare)
    assert result.verdict == "measured"
    over = result.tables["overhead"]
    assert len(over) == 7 * 2 * 3 and set(over["mode"]) == {"serveronly", "both"}
    assert over["ci_low"].isna().all() and set(over["verdict"]) == {"no interval"}
    files = fortio_suite.parent / "istio-1.2-fortio"
    expected = _fortio_p50_ms(files, 16, "both") - _fortio_p50_ms(files, 16, "base")
    assert result.figures["delta_p50_both_c16"] == pytest.approx(expected, abs=1e-3)  # 1 µs
    assert "no interval" in result.headline and "vs base" in result.headline
    decision, sources = result.tables["decision"], result.tables["decision_sources"]
    assert list(decision.columns) == [mesh_compare.INGESTED, "Istio", "Linkerd", "Consul"]
    assert "both vs base" in decision.loc["added latency", mesh_compare.INGESTED]
    assert "the files name Istio" in sources.loc["added latency", mesh_compare.INGESTED]
    assert decision.loc["added latency", "Consul"].startswith(
        "no published"
    )  # never filled in by a measurement
    figs = mesh_compare.figures(result)
    assert set(figs) == {"overhead", "percentiles"}
    _check_figures(figs)
    shutil.rmtree(files)  # the stored copy is all a report needs
    _same(result, _run(fortio_suite, "istio", run_dir, mesh_compare, replay=True))


def test_fortio_unknown_baseline_names_the_field(fortio_suite: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"baseline: 'nope' is not among the measured arms \(.*base.*\)"):
        _run(fortio_suite, "wrong-base", tmp_path, mesh_compare)


@pytest.mark.slow
def test_mesh_compare_notebook_over_fortio_results(fortio_suite: Path, tmp_path: Path) -> None:
    text, figures = _notebook("mesh_compare", tmp_path / "mc.ipynb", config_file=str(fortio_suite),
                              experiment="istio", run_dir=str(tmp_path / "run"), quick=True)  # fmt: skip
    assert "**measured**" in text and "both adds +" in text and figures == 2
    assert "[docs](https://linkerd.io/2/features/automatic-mtls/)" in text
