"""Request flows from traces: hops, localization, the flow graph, the critical-path comparison, the
views and the ``traces`` experiment's analysis of a stored run — on synthetic traces with known effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from traces_synth import traces

from workbench import config
from workbench.analysis.localize import localize_spans
from workbench.analysis.topology import ServiceGraph
from workbench.analysis.traces import compare_critical_path, flow_edges, hops_from_spans, traces_between
from workbench.experiments import traces as traces_kind
from workbench.experiments.session import open_session
from workbench.stats.compare import Margin
from workbench.traces import critical, spans, views

SERVICES = {"frontend", "catalog", "pricing", "reviews", "ratings"}


def test_hops_give_each_visit_its_exclusive_time() -> None:
    table = traces(50, 1000.0, seed=1)
    cp = critical.analyse(table)
    assert (cp.traces["cp_us"] == cp.traces["duration_us"]).all() and cp.traces["complete"].all()
    hops = hops_from_spans(table, cp)
    assert set(hops["service"]) == SERVICES and len(hops) == 5 * 50  # loadgen is a client, not a hop
    # a visit's self time + the slowest call it waited on <= its server span (the rest: overlap)
    assert (hops["self_ms"] > 0).all() and (hops["self_ms"] <= hops["total_ms"] + 1e-9).all()
    leaf = hops[hops["service"] == "pricing"]
    assert (leaf["calls"] == 0).all() and np.allclose(leaf["self_ms"], leaf["total_ms"])
    fe = hops[hops["service"] == "frontend"]
    assert (fe["calls"] == 2).all()


def test_flow_edges_follow_the_call_graph_with_critical_path_time() -> None:
    table = traces(200, 1000.0, seed=2)
    cp = critical.analyse(table)
    edges = flow_edges(table, cp).set_index(["source", "destination"])
    assert set(edges.index) == {("loadgen", "frontend"), ("frontend", "catalog"), ("frontend", "reviews"),
                                ("catalog", "pricing"), ("reviews", "ratings")}  # fmt: skip
    assert (edges["requests"] == 200).all()
    # the entry edge holds the whole path; the two branches share the rest
    assert edges.loc[("loadgen", "frontend"), "cp_ms"] == pytest.approx(
        cp.traces["duration_us"].mean() / 1000
    )
    branches = edges.loc[("frontend", "catalog"), "cp_ms"] + edges.loc[("frontend", "reviews"), "cp_ms"]
    assert 0 < branches < edges.loc[("loadgen", "frontend"), "cp_ms"]
    graph = ServiceGraph.from_spans(table, cp)
    assert graph.edge("catalog", "pricing").rps == pytest.approx(200, rel=0.05)
    assert "cp " in graph.edge("frontend", "catalog").label


@pytest.mark.parametrize(("culprit", "effect"), [("pricing", {"delay": {"pricing": 1.5}}),
                                                 ("catalog", {"errors": {"catalog": 0.08}}),
                                                 ("frontend", {"delay": {"frontend": 1.0}})])  # fmt: skip
def test_localize_from_traces_names_the_changed_service(culprit: str, effect: dict) -> None:
    base = traces(1200, 1000.0, seed=3)
    changed = traces(1200, 1010.0, seed=4, **effect)
    result = localize_spans(base, changed, window="0.5s", margin=Margin(latency_ms=0.5, latency_pct=5))
    assert result.evidence == "traces" and "traces (exact parent/child)" in result.method
    assert result.culprit == culprit, result.to_frame()
    if culprit != "frontend":
        assert "frontend" in result.explanation  # a caller that only passes it on


def test_no_change_names_no_culprit() -> None:
    result = localize_spans(traces(1200, 1000.0, seed=5), traces(1200, 1008.0, seed=6), window="0.5s")
    assert result.culprit is None


def test_critical_path_comparison_splits_the_end_to_end_change() -> None:
    a, b = traces(2000, 1000.0, seed=7), traces(2000, 1010.0, seed=8, delay={"ratings": 3.0})
    out = compare_critical_path(critical.analyse(a), critical.analyse(b), "0.5s", Margin(latency_ms=0.5))
    by = out.set_index("service")
    # ratings also lies on more paths now: its critical-path time grows by a bit more than the 3 ms
    assert by.loc["ratings", "verdict"] == "worse" and 2.5 < by.loc["ratings", "estimate"] < 4.5
    assert by.loc["end to end", "verdict"] == "worse"
    services = by.drop(index="end to end")
    assert services["estimate"].sum() == pytest.approx(by.loc["end to end", "estimate"], abs=0.05)
    assert out.iloc[0]["service"] == "ratings"


def test_traces_between_keeps_whole_traces() -> None:
    table = traces(100, 1000.0, rps=50, seed=9)  # 2 s of requests
    cp = critical.analyse(table)
    first = traces_between(table, cp, 1000.0, 1000.999)
    assert critical.analyse(first).quality["orphans"] == 0
    assert len(set(first.column("trace_id").to_pylist())) == 50


def test_waterfall_and_shares_figures() -> None:
    table = traces(300, 1000.0, seed=10, delay={"reviews": 2.0})
    cp = critical.analyse(table)
    slow = views.slowest(cp, 3)
    durations = cp.traces.loc[slow, "duration_us"].tolist()
    assert durations == sorted(cp.traces["duration_us"], reverse=True)[:3]
    fig = views.waterfall(table, cp, slow, "slowest")
    bars = fig.data[0]
    assert len(bars.y) == 3 * 15  # 15 spans a trace
    solid = sum(1 for o in bars.marker.opacity if o == 1.0)
    assert solid == int(cp.on_path[np.isin(cp.trace, slow)].sum())
    rid = table.column("request_id")[0].as_py()
    assert len(views.traces_of_request(table, cp, rid)) == 1
    with pytest.raises(KeyError, match="no span carries"):
        views.traces_of_request(table, cp, "nope")
    shares = cp.shares()
    assert set(shares["band"]) == {"p50", "p99"}
    for _, band in shares.groupby("band"):
        assert band["share"].sum() == pytest.approx(1.0)
    assert shares[shares["band"] == "p50"].iloc[0]["service"] == "reviews"
    assert len(views.shares_figure(shares).data) == 2


def _stored_run(tmp_path: Path, delay: dict | None) -> tuple[Path, Path]:
    cfg = tmp_path / "experiments.yaml"
    cfg.write_text("experiments:\n  - {name: flows, kind: traces, duration: 10s, rps: 200, window: 1s,\n"
                   "     margins: {latency_ms: 0.5}}\n")  # fmt: skip
    run = tmp_path / "run"
    store = run / "flows"
    store.mkdir(parents=True)
    base, changed = traces(1000, 1000.0, seed=11), traces(1000, 1005.0, seed=12, delay=delay)
    import pyarrow as pa

    spans.write(pa.concat_tables([base, changed]), store / "spans.parquet")
    phases = [
        {"name": "baseline", "start": 1000.0, "end": 1005.0},
        {"name": "changed", "start": 1005.0, "end": 1010.0},
    ]
    (store / "phases.json").write_text(json.dumps({"phases": phases, "change": None}))
    (store / "receiver.json").write_text(json.dumps({"dropped_spans": 3, "invalid_spans": 0}))
    return cfg, run


def test_traces_experiment_analyses_a_stored_run(tmp_path: Path) -> None:
    cfg, run = _stored_run(tmp_path, {"pricing": 2.0})
    assert config.load(cfg).experiments[0].kind == "traces"
    s = open_session(cfg, "flows", run, replay=True)
    result = s.execute(traces_kind)
    assert result.verdict == "culprit found" and result.figures["culprit"] == "pricing"
    assert result.figures["localization_evidence"] == "traces"
    assert result.figures["complete_traces"] == 2000 and result.figures["dropped_spans"] == 3
    assert "lost 3 spans" in result.headline
    change = result.tables["critical_path_change"].set_index("service")
    assert change.loc["pricing", "verdict"] == "worse"
    figs = traces_kind.figures(result)
    assert {"shares", "slowest", "flow", "change"} <= set(figs)
    exported = json.loads((run / "flows" / "slowest.jaeger.json").read_text())
    assert len(exported["data"]) == 5
    otlp_doc = json.loads((run / "flows" / "slowest.otlp.json").read_text())
    assert {r["resource"]["attributes"][0]["value"]["stringValue"] for r in otlp_doc["resourceSpans"]} == {
        "loadgen",
        *SERVICES,
    }
    assert json.loads((run / "flows" / "result.json").read_text())["verdict"] == "culprit found"
