"""Tracing on the real local mesh: every sampled frontend request is one trace whose span tree is
the demo topology's call graph, and its critical-path self times sum to its duration."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from workbench.backends.local import LocalMesh
from workbench.backends.local.topology import load_topology
from workbench.load.results import LoadProfile
from workbench.traces import critical
from workbench.traces.spans import SpanTail

pytestmark = pytest.mark.slow


def expected_tree(mode: str) -> tuple:
    """The span tree a request to frontend makes in ``mode``: (service, role, children) nested."""
    topo = load_topology()

    def visit(service: str) -> tuple:
        calls = tuple(sorted(call(c) for c in topo.services[service].calls))
        if mode == "none":
            return (service, "app", calls)
        return (service, "server", ((service, "app", calls),))

    def call(callee: str) -> tuple:
        if mode in ("both", "both-mtls"):
            return ("", "client", (visit(callee),))  # the caller's client sidecar span
        return visit(callee)

    root = visit("frontend")
    return ("loadgen", "client", (root,)) if mode in ("both", "both-mtls") else root


def tree_of(rows: list[dict], children: dict[str, list[dict]], row: dict) -> tuple:
    kids = tuple(sorted(tree_of(rows, children, c) for c in children.get(row["span_id"], [])))
    service = "" if row["role"] == "client" and row["service"] != "loadgen" else row["service"]
    return (service, row["role"], kids)


def traced_run(mode: str, tracer: str, rps: float = 40, seconds: float = 3) -> tuple[pa.Table, int, dict]:
    with LocalMesh(mode=mode, tracing=100, tracer=tracer, wait_for_metrics=False) as mesh:
        mesh.run_load("frontend", LoadProfile(rps=20, connections=4, duration_s=1))  # connections warm
        time.sleep(2.5)
        tail = SpanTail(mesh.traces_dir).skip()
        tail.read()
        result = mesh.run_load("frontend", LoadProfile(rps=rps, connections=4, duration_s=seconds))
        time.sleep(2.5)  # Envoy exports every second, the receiver writes every second
        table = tail.read()
        stats = mesh.trace_stats()
    return table, len(result.samples), stats


@pytest.mark.parametrize(
    ("mode", "tracer"),
    # both is Zipkin's and the live-sampling test's mode; both-mtls has the same span tree, over mTLS
    [("serveronly", "opentelemetry"), ("none", "opentelemetry"), ("both-mtls", "opentelemetry")],
)  # fmt: skip
def test_every_request_is_one_trace_shaped_like_the_call_graph(mode: str, tracer: str) -> None:
    table, requests, stats = traced_run(mode, tracer)
    assert stats["dropped_spans"] == 0 and stats["invalid_spans"] == 0 and stats["bad_requests"] == 0
    cp = critical.analyse(table)
    complete = cp.traces[cp.traces["complete"]]
    assert cp.quality["orphans"] == 0 and cp.quality["duplicates"] == 0 and cp.quality["outside"] == 0
    # one trace per request the load generator made (all sampled), each complete
    assert len(cp.traces) == requests and len(complete) == requests
    want = expected_tree(mode)
    rows = table.to_pylist()
    by_trace: dict[str, list[dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace_id"], []).append(r)
    for trace_rows in by_trace.values():
        children: dict[str, list[dict]] = {}
        for r in trace_rows:
            children.setdefault(r["parent_id"], []).append(r)
        (root,) = children[""]
        assert tree_of(trace_rows, children, root) == want
    # the critical path's self times add up to each trace's end-to-end duration (within 2 %)
    d = complete["duration_us"].astype(float)
    assert ((complete["cp_us"] - d).abs() <= 0.02 * d).all()
    # every span of a trace carries the request id its sidecars logged (modes with sidecars)
    if mode != "none":
        ids = {r["request_id"] for r in rows if r["role"] != "app"}
        assert "" not in ids and len(ids) == requests


def test_zipkin_tracer_links_client_server_and_app_spans() -> None:
    """Envoy's Zipkin tracer (B3, separate client and server spans): every request is one complete
    trace of the call graph's shape. Zipkin reports whole microseconds and, now and then, a span a
    little outside its parent: those are clamped or left out and counted, never fatal."""
    table, requests, stats = traced_run("both", "zipkin")
    assert stats["dropped_spans"] == 0 and stats["invalid_spans"] == 0 and stats["bad_requests"] == 0
    cp = critical.analyse(table)
    assert cp.quality["orphans"] == 0 and len(cp.traces) == requests
    odd = cp.quality["outside"] + cp.quality["clamped"]
    print(cp.explain_quality())
    assert odd <= 0.02 * table.num_rows
    rows = table.to_pylist()
    by_trace: dict[str, list[dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace_id"], []).append(r)
    shaped = 0
    for trace_rows in by_trace.values():
        children: dict[str, list[dict]] = {}
        for r in trace_rows:
            children.setdefault(r["parent_id"], []).append(r)
        shaped += tree_of(trace_rows, children, children[""][0]) == expected_tree("both")
    assert shaped == requests
    d = cp.traces["duration_us"].astype(float)
    assert ((cp.traces["cp_us"] - d).abs() <= 0.02 * d).all()


def test_sampling_changes_live() -> None:
    with LocalMesh(mode="both", tracing=100, wait_for_metrics=False) as mesh:
        mesh.set_sampling(0)
        tail = SpanTail(mesh.traces_dir).skip()
        result = mesh.run_load("frontend", LoadProfile(rps=40, connections=4, duration_s=2))
        time.sleep(2.5)
        none = tail.read()
        mesh.set_sampling(50)
        result = mesh.run_load("frontend", LoadProfile(rps=60, connections=4, duration_s=3))
        time.sleep(2.5)
        half = critical.analyse(tail.read())
        # untraced(): sampling 0 for a block (a measurement the tracer must not slow), back after,
        # also when the block fails; not a change to the mesh, so not among its recorded changes
        changes = len(mesh.changes)
        with pytest.raises(RuntimeError, match="inside"), mesh.untraced():
            mesh.run_load("frontend", LoadProfile(rps=40, connections=4, duration_s=2))
            time.sleep(2.5)
            untraced = tail.read()
            raise RuntimeError("a failure inside the block")
        assert mesh.sampling == 50 and len(mesh.changes) == changes
        after = mesh.run_load("frontend", LoadProfile(rps=60, connections=4, duration_s=3))
        time.sleep(2.5)
        again = critical.analyse(tail.read())
        recorded = [c["after"] for c in mesh.changes if c["action"] == "tracing"]
    assert none.num_rows == 0
    share = half.traces["complete"].sum() / len(result.samples)
    assert 0.3 < share < 0.7 and half.quality["orphans"] == 0  # whole traces are sampled, not spans
    assert untraced.num_rows == 0
    assert 0.3 < again.traces["complete"].sum() / len(after.samples) < 0.7
    assert recorded == [{"sampling": 0}, {"sampling": 50}]
