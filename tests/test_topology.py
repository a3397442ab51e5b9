"""Service topology blueprint and bottleneck localization: on a recorded local-mesh run
(data/sample/topology, made by benchmarks/record_topology_sample.py) and on a live mesh."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from conftest import REPO
from workbench.analysis.localize import LOG_COLUMNS, AccessLogTail, hops, localize, telemetry_windows
from workbench.analysis.topology import ServiceGraph
from workbench.backends.local import LocalMesh
from workbench.experiments import NOTEBOOKS
from workbench.experiments.topology import frame_from_json, saturation_caveat
from workbench.load.results import LoadProfile

SAMPLE = REPO / "data" / "sample" / "topology"
DEMO_EDGES = {
    ("loadgen", "frontend"),
    ("frontend", "catalog"),
    ("catalog", "pricing"),
    ("frontend", "reviews"),
    ("reviews", "ratings"),
}


@pytest.fixture(scope="module")
def sample() -> tuple[pd.DataFrame, dict]:
    logs = pd.read_parquet(SAMPLE / "access_logs.parquet")
    for column in logs.columns:  # categories back to plain values, as read_access_logs gives them
        if isinstance(logs[column].dtype, pd.CategoricalDtype):
            logs[column] = logs[column].astype(str)
    return logs, json.loads((SAMPLE / "meta.json").read_text())


def _halves(logs: pd.DataFrame, meta: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    (b0, b1), (c0, c1) = ((p["start"], p["end"]) for p in meta["phases"])
    return logs[logs["start"].between(b0, b1)], logs[logs["start"].between(c0, c1)]


def test_sample_is_small() -> None:
    size = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert size < 400 * 1024, f"data/sample/topology is {size / 1024:.0f} KiB"


def test_graph_from_recorded_run_has_exactly_the_demo_edges(sample: tuple[pd.DataFrame, dict]) -> None:
    logs, meta = sample
    graph = ServiceGraph.from_access_logs(logs)
    assert graph.edge_set() == DEMO_EDGES
    for e in graph.edges:
        assert e.rps == pytest.approx(meta["rps"], rel=0.15), e
        assert e.error_rate == 0 and 0 < e.p50_ms <= e.p99_ms
    assert graph.nodes["catalog"].versions.keys() == {"v1"}  # the split sends everything to v1
    depths = {n: graph.nodes[n].depth for n in graph.nodes}
    assert depths == {"loadgen": 0, "frontend": 1, "catalog": 2, "reviews": 2, "pricing": 3, "ratings": 3}
    table = graph.to_frame()
    assert set(zip(table["source"], table["destination"], strict=True)) == DEMO_EDGES


def test_exports_contain_every_edge(sample: tuple[pd.DataFrame, dict]) -> None:
    graph = ServiceGraph.from_access_logs(sample[0]).mark("reviews", "the culprit")
    mermaid, dot = graph.to_mermaid(), graph.to_dot()
    assert mermaid.startswith("graph LR\n") and "style reviews stroke:" in mermaid
    assert dot.startswith("digraph services {") and dot.rstrip().endswith("}")
    for src, dst in DEMO_EDGES:
        assert f"  {src} -->|" in mermaid and any(
            line.startswith(f"  {src} -->|") and line.endswith(f"| {dst}") for line in mermaid.splitlines()
        )
        assert f'"{src}" -> "{dst}"' in dot
    data = json.loads(json.dumps(graph.to_json()))  # plain JSON, no NaN
    assert {(e["source"], e["destination"]) for e in data["edges"]} == DEMO_EDGES
    again = ServiceGraph.from_json(data)
    assert again.edge_set() == DEMO_EDGES and again.nodes["reviews"].mark == "the culprit"


def test_figure_is_layered_and_marks_the_culprit(sample: tuple[pd.DataFrame, dict]) -> None:
    graph = ServiceGraph.from_access_logs(sample[0]).mark("reviews", "reviews is the bottleneck")
    fig = graph.figure()
    assert fig.layout.title.text and "culprit: reviews" in fig.layout.meta["reading"]
    assert fig.layout.xaxis.title.text and "(" in fig.layout.yaxis.title.text
    names = [t.name for t in fig.data]
    assert "culprit" in names and "versions (size: share of rps)" in names
    services = next(t for t in fig.data if t.name == "services")
    x = dict(zip([s.replace("<b>", "").replace("</b>", "") for s in services.text], services.x, strict=True))
    assert x["loadgen"] < x["frontend"] < x["catalog"] < x["pricing"]


def test_localization_on_the_recorded_run_names_the_injected_service(
    sample: tuple[pd.DataFrame, dict],
) -> None:
    logs, meta = sample
    culprit = meta["change"]["service"]
    base, changed = _halves(logs, meta)
    result = localize(base, changed, window="0.5s")
    assert result.culprit == culprit and result.top(1) == [culprit]
    assert culprit in result.explanation and "only pass" in result.explanation
    assert "frontend" in result.explanation  # the entry service merely passes it on
    frame = result.to_frame()
    assert (
        frame.iloc[0]["verdict"] == "worse"
        and frame.iloc[0]["estimate"] > 0.5 * meta["change"]["service_time_ms"]
    )
    assert (frame.iloc[1:]["verdict"] != "worse").all()


def _synthetic_hops(stretch: list[float], added_ms: dict[str, float], seed: int) -> pd.DataFrame:
    """Per-request hops of five services in windows of 0.5 s, 50 requests each: a service's
    baseline work is stretched by the host (``stretch`` per window, times a 10 % window-to-window
    jitter); ``added_ms`` is time a change adds (a sleep: a busy host does not stretch it)."""
    rng = np.random.default_rng(seed)
    levels = {"frontend": 10.0, "catalog": 8.0, "reviews": 8.0, "ratings": 5.0, "pricing": 5.0}
    t0, rows = 1_700_000_000.0, []
    for w, f in enumerate(stretch):
        for service, level in levels.items():
            start = t0 + 0.5 * w + np.sort(rng.uniform(0, 0.5, 50))
            jitter = rng.lognormal(0.0, 0.1)
            own = level * f * jitter * rng.lognormal(0.0, 0.25, 50) + added_ms.get(service, 0.0)
            rows.append(
                pd.DataFrame(
                    {
                        "timestamp": pd.to_datetime(start, unit="s"),
                        "service": service,
                        "self_ms": own,
                        "status": 200,
                        "originated": False,
                        "failed_call": False,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def test_a_host_slowing_down_during_the_change_does_not_hide_or_invent_a_culprit() -> None:
    """The common-mode correction takes the host's stretch of each service's baseline work off;
    time the change adds is not stretched. Dividing by the host factor instead shrank pricing's
    +8 ms and, with the host drifting from 1.0 to 2.0 within the changed phase, made its windows
    trend: lower bounds of 0.9-3.7 ms here, and a quick topology run on a busy CI host missed it."""
    drifting = list(np.linspace(1.0, 2.0, 10))
    for seed in range(5):
        base = _synthetic_hops([1.0] * 10, {}, seed)
        changed = _synthetic_hops(drifting, {"pricing": 8.0}, seed + 100)
        result = localize(base, changed, window=0.5)
        ranked = result.to_frame().set_index("service")
        assert result.culprit == "pricing", ranked
        assert ranked.loc["pricing", "ci_low"] > 4.0, ranked
        assert 6.5 < ranked.loc["pricing", "estimate"] < 9.5, ranked
        assert (ranked.drop(index="pricing")["verdict"] != "worse").all(), ranked
        # the host busier by 30 % and no change: nobody is the culprit (what the correction is for)
        busy = _synthetic_hops([1.3] * 10, {}, seed + 200)
        assert localize(base, busy, window=0.5).culprit is None
        assert localize(base, busy, window=0.5, common_mode=False).culprit is not None


def _log(
    sidecar: str, start: float, ms: float, status: int, dest: str, caller: str, flags: str = "-"
) -> tuple:
    """One access-log row (``LOG_COLUMNS``) of request ``a``; every version is v1."""
    service, version, direction = sidecar.split("-")
    return (sidecar, service, version, direction, start, ms, status, flags, dest, "v1", caller, "a")


def test_a_saturated_half_puts_a_caution_in_the_headline() -> None:
    calm = {"name": "baseline", "saturated": False, "saturation": "not saturated (host CPU 40 %)"}
    busy = {
        "name": "changed",
        "saturated": True,
        "saturation": "saturated: host CPU 97 % >= 85 % of all cores",
    }
    assert saturation_caveat([calm, calm | {"name": "changed"}]) == ""
    assert saturation_caveat([{"name": "baseline"}]) == ""  # runs stored before the guard
    text = saturation_caveat([calm, busy])
    assert text.startswith(". Caution, the load was saturated in changed (saturated: host CPU 97 %")
    assert "baseline" not in text and "a caller of the service that changed can look slower" in text


def test_self_time_subtracts_the_slowest_concurrent_call() -> None:
    """frontend (10 ms) calls catalog (6 ms) and reviews (4 ms) at once: its own time is 4 ms, not 0."""
    t = 1_700_000_000.0
    rows = [
        _log("frontend-v1-inbound", t, 10.0, 503, "frontend", "loadgen"),
        _log("frontend-v1-outbound", t + 0.001, 6.0, 503, "catalog", "frontend"),
        _log("frontend-v1-outbound", t + 0.001, 4.0, 200, "reviews", "frontend"),
        _log("catalog-v1-inbound", t + 0.0012, 5.5, 503, "catalog", "frontend"),
        _log("reviews-v1-inbound", t + 0.0012, 3.5, 200, "reviews", "frontend"),
        _log("catalog-v1-outbound", t + 0.002, 1.0, 503, "pricing", "catalog", flags="UF"),
    ]
    logs = pd.DataFrame(rows, columns=LOG_COLUMNS)
    h = hops(logs).set_index("service")
    assert h.loc["frontend", "self_ms"] == pytest.approx(4.0)
    assert h.loc["catalog", "self_ms"] == pytest.approx(4.5)
    assert not h.loc["frontend", "originated"] and not h.loc["catalog", "originated"]  # both pass it on
    assert h.loc["pricing", "originated"]  # Envoy answered for pricing (UF): the failure starts there


def test_cluster_objects_add_versions_and_sidecar_coverage(sample: tuple[pd.DataFrame, dict]) -> None:
    graph = ServiceGraph.from_access_logs(sample[0])
    deployments = pd.DataFrame(
        [
            {
                "namespace": "shop",
                "name": "catalog-v1",
                "app": "catalog",
                "version": "v1",
                "replicas": 2,
                "ready": 2,
            },
            {
                "namespace": "shop",
                "name": "catalog-v2",
                "app": "catalog",
                "version": "v2",
                "replicas": 1,
                "ready": 1,
            },
            {
                "namespace": "shop",
                "name": "search-v1",
                "app": "search",
                "version": "v1",
                "replicas": 1,
                "ready": 1,
            },
        ]
    )
    services = pd.DataFrame([{"name": "catalog", "app": "catalog", "port": 9080}])
    pods = pd.DataFrame(
        [
            {"app": "catalog", "version": "v1", "meshed": True},
            {"app": "catalog", "version": "v1", "meshed": True},
            {"app": "catalog", "version": "v2", "meshed": False},
            {"app": "search", "version": "v1", "meshed": True},
        ]
    )
    graph.add_cluster_objects(deployments, services, pods)
    assert graph.nodes["catalog"].versions["v2"] == {
        "rps": 0.0,
        "deployment": "catalog-v2",
        "replicas": 1,
        "ready": 1,
        "pods": 1,
        "meshed": 0,
    }
    assert graph.nodes["catalog"].objects["sidecar_coverage"] == pytest.approx(2 / 3)
    assert "search" in graph.nodes and graph.nodes["search"].rps == 0  # declared, no traffic seen
    assert graph.edge_set() == DEMO_EDGES


def test_telemetry_graph_and_self_times_from_recorded_prometheus(sample: tuple[pd.DataFrame, dict]) -> None:
    _, meta = sample
    with gzip.open(SAMPLE / "prometheus.json.gz", "rt") as fh:
        prom = json.load(fh)
    outbound, inbound = frame_from_json(prom["outbound"]), frame_from_json(prom["inbound"])
    graph = ServiceGraph.from_telemetry(outbound, prom["window_s"])
    assert graph.edge_set() == DEMO_EDGES
    assert graph.edge("frontend", "catalog").rps == pytest.approx(meta["rps"], rel=0.25)
    # Self-time means per window from histograms (Envoy flushes them every 5 s, so only the
    # windows with a flush carry a histogram); each demo service gets its own table.
    tables = telemetry_windows(inbound, outbound, prom["window_s"])
    assert set(tables) == {"frontend", "catalog", "pricing", "reviews", "ratings"}
    for service, table in tables.items():
        assert (table["count"] > 0).all() and (table["mean"] >= 0).all(), service


def test_topology_has_a_notebook() -> None:
    assert NOTEBOOKS["topology"] == "topology" and (REPO / "notebooks" / "topology.ipynb").exists()


# ----------------------------------------------------------------------------------------------
# Live: a real mesh


@pytest.mark.slow
def test_live_delay_on_pricing_is_localized_to_pricing_not_its_callers() -> None:
    with LocalMesh(mode="both", wait_for_metrics=False) as mesh:
        tail = AccessLogTail(mesh.run_dir / "envoy")
        mesh.run_load("frontend", LoadProfile(rps=120, connections=8, duration_s=2))  # warm connections
        tail.skip()
        t0 = time.time()
        mesh.run_load("frontend", LoadProfile(rps=120, connections=8, duration_s=5))
        t1 = time.time()
        before = mesh.behaviour("pricing", "v1").service_time_ms
        mesh.set_behaviour("pricing", "v1", service_time_ms=before + 8)
        try:
            t2 = time.time()
            mesh.run_load("frontend", LoadProfile(rps=120, connections=8, duration_s=5))
        finally:
            mesh.set_behaviour("pricing", "v1", service_time_ms=before)
        time.sleep(1.2)  # Envoy flushes its access logs every second
        logs = tail.read()
    result = localize(logs[logs["start"].between(t0, t1)], logs[logs["start"] >= t2], window="0.5s")
    assert result.top(1) == ["pricing"], result.to_frame()
    assert result.culprit == "pricing"
    ranked = result.to_frame().set_index("service")
    assert ranked.loc["pricing", "estimate"] > 4  # about +8 ms of its own time
    for passer in ("catalog", "frontend"):  # slower too, end to end, but not by their own work
        assert ranked.loc[passer, "verdict"] != "worse"


@pytest.mark.slow
def test_topology_notebook_quick_shows_the_graph_and_the_culprit(tmp_path: Path) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text(
        "backend: local\nexperiments:\n"
        "  - {name: blue, kind: topology, rps: 120, duration: 30s, warmup: 2s,\n"
        "     change: {service: pricing, service_time_ms: 8}}\n"
    )
    out = tmp_path / "topology.ipynb"
    pm.execute_notebook(
        str(REPO / "notebooks" / "topology.ipynb"),
        str(out),
        cwd=str(REPO / "notebooks"),
        parameters={
            "config_file": str(config),
            "experiment": "blue",
            "quick": True,
            "run_dir": str(tmp_path / "run"),
        },
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(str(o.get("text", "")) + "".join(map(str, o.get("data", {}).values())) for o in outputs)
    figures = sum("Plotly.newPlot" in str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert figures == 2  # the topology network and the ranking
    assert "**culprit found**" in text and "pricing is the bottleneck" in text
    assert "catalog" in text and "loadgen" in text  # the edge table
    stored = tmp_path / "run" / "blue"
    assert (stored / "access_logs").is_dir() and (stored / "prometheus.json").exists()
    phases = json.loads((stored / "phases.json").read_text())["phases"]
    assert [p["name"] for p in phases] == ["baseline", "changed"]
    assert all(isinstance(p["saturated"], bool) and "host CPU" in p["saturation"] for p in phases), phases
