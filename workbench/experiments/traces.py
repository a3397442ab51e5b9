"""Traces: request flows through the mesh — waterfalls, critical paths, who makes the latency.

``run`` (local mesh, tracing on): load on the entry service in two halves (a baseline, then a
second half, optionally with a known ``change``), like ``topology``; the span receiver's new part
files are read afterwards and stored as ``spans.parquet`` with the receiver's counters
(``receiver.json``: spans dropped, invalid) and the phase times. On a cluster with
``backend.traces`` (``{jaeger: URL}`` or ``{tempo: URL}``) it generates no load: it waits
``duration`` (the two halves) and reads the traces of ``service`` in that range from the store.

``analyse`` is pure over those files, so it works on any stored run: critical paths and self
times (``traces.critical``), each service's share of end-to-end latency on the critical path at
p50 and p99, the slowest ``slowest`` traces (and ``request_id``'s) as waterfalls, the request-flow
graph (rps, error %, critical-path time per edge), and between the halves: which service's
critical-path self time changed (intervals from ``workbench.stats``, windows as the unit) and the
trace-based localization (``analysis.localize.localize_spans``). The slowest traces are also
exported as Jaeger UI JSON and OTLP JSON next to the data.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa

from workbench.analysis import localize as loc
from workbench.analysis.topology import ServiceGraph
from workbench.analysis.traces import compare_critical_path, traces_between
from workbench.backends.base import Behaviours
from workbench.errors import BackendError
from workbench.experiments.session import ExperimentResult, Session
from workbench.experiments.topology import load_in_halves, record_localization
from workbench.report.plots import interval_chart
from workbench.traces import critical, jaeger, otlp, views
from workbench.traces import spans as sp

SPANS = "spans.parquet"
FLUSH_WAIT_S = 2.5  # Envoy exports every second, the receiver writes a part file every second


def run(s: Session) -> None:
    """Load (or, on a cluster, wait) in two halves, then store the spans, counters and phases."""
    spec, backend = s.spec, s.backend()
    if not isinstance(backend, Behaviours):
        return _run_cluster(s, backend)
    if getattr(backend, "sampling", None) is None:
        raise ValueError(
            "traces: tracing is off on this local mesh: set backend.tracing (e.g. {sampling: 100}) in "
            "experiments.yaml, or start it with 'workbench local up --tracing 100'"
        )
    duration = float(spec.duration or 10.0)
    halves = [("baseline", duration / 2), ("changed", duration / 2)] if spec.compare else [("all", duration)]
    before_sampling = backend.sampling
    if spec.sampling is not None and spec.sampling != before_sampling:
        backend.set_sampling(spec.sampling)
    tail = sp.SpanTail(backend.traces_dir).skip()

    def drop_warmup_spans() -> None:
        time.sleep(FLUSH_WAIT_S)
        tail.read()  # the warm-up's spans are not this run's

    try:
        load_in_halves(s, backend, halves, True, drop_warmup_spans)
    finally:
        if spec.sampling is not None and spec.sampling != before_sampling:
            backend.set_sampling(before_sampling)
        time.sleep(FLUSH_WAIT_S)
        sp.write(tail.read(), s.store / SPANS)
        try:
            s.save_json("receiver.json", backend.trace_stats())
        except BackendError as exc:  # keep the spans; say why the counters are missing
            s.save_json("receiver.json", {"error": str(exc)})


def _run_cluster(s: Session, backend: Any) -> None:
    source = getattr(s.config.backend, "traces", None)
    if source is None:
        raise ValueError("traces on a cluster need backend.traces: {jaeger: URL} or {tempo: URL}")
    spec = s.spec
    duration = float(spec.duration or 10.0)
    start = time.time()
    s.progress(f"observing {spec.service} for {duration:g} s; then reading traces from {source.kind()}")
    time.sleep(duration)
    end = time.time()
    half = (start + end) / 2
    phases = [
        {"name": "baseline", "start": start, "end": half},
        {"name": "changed", "start": half, "end": end},
    ]
    _save_phases(s, phases if spec.compare else [{"name": "all", "start": start, "end": end}])
    client = source.client()
    records = client.search(spec.service, int(start * 1e6), int(end * 1e6), limit=spec.limit)
    table, intake = sp.table(records)
    sp.write(table, s.store / SPANS)
    s.save_json("receiver.json", {"source": source.kind(), "intake": intake.to_dict()})


def _save_phases(s: Session, phases: list[dict[str, Any]]) -> None:
    change = s.spec.change.model_dump() if s.spec.change else None
    s.save_json("phases.json", {"phases": phases, "change": change})


def analyse(s: Session) -> ExperimentResult:
    """Critical paths, shares, waterfalls, flow graph and (two halves) what changed; from stored data."""
    spec = s.spec
    phases = s.load_json("phases.json")["phases"]
    table = sp.read(s.store / SPANS)
    receiver = s.load_json("receiver.json") if (s.store / "receiver.json").exists() else {}
    if table.num_rows == 0:
        raise ValueError(
            f"{s.store / SPANS}: no spans were stored "
            f"(is the tracer exporting? receiver: {receiver or 'no counters'})"
        )
    cp = critical.analyse(table)
    shares = cp.shares((0.5, 0.99))
    complete = cp.traces[cp.traces["complete"]]
    e2e = complete["duration_us"].to_numpy(dtype=float) / 1000.0
    slow = views.slowest(cp, spec.slowest)
    figures: dict[str, Any] = {
        "traces": len(cp.traces),
        "spans": int(table.num_rows),
        "complete_traces": len(complete),
        "e2e_p50_ms": float(np.quantile(e2e, 0.5)) if len(e2e) else float("nan"),
        "e2e_p99_ms": float(np.quantile(e2e, 0.99)) if len(e2e) else float("nan"),
        "orphan_spans": cp.quality.get("orphans", 0),
        "clamped_spans": cp.quality.get("clamped", 0),
        "dropped_spans": int(receiver.get("dropped_spans", 0)),
        "invalid_spans": int(receiver.get("invalid_spans", 0)),
    }
    for band in ("p50", "p99"):
        top = shares[shares["band"] == band]
        if len(top):
            figures[f"top_{band}"] = str(top.iloc[0]["service"])
            figures[f"top_{band}_share_pct"] = round(100 * float(top.iloc[0]["share"]), 1)
    graph = ServiceGraph.from_spans(table, cp)
    tables: dict[str, pd.DataFrame] = {
        "shares": shares,
        "slowest": _trace_table(cp, slow),
        "edges": graph.to_frame(),
        "quality": pd.DataFrame([{"check": k, "count": v} for k, v in cp.quality.items()]),
    }
    details: dict[str, Any] = {"spans": table, "cp": cp, "graph": graph, "slowest": slow}
    if spec.request_id:
        try:
            details["request"] = views.traces_of_request(table, cp, spec.request_id)
        except KeyError as exc:
            details["request_missing"] = str(exc).strip("'\"")
    _export(s.store, table, cp, slow)
    lost = figures["dropped_spans"] + figures["invalid_spans"]
    headline = (
        f"{len(complete)} complete traces; end to end p50 {figures['e2e_p50_ms']:.3g} ms, "
        f"p99 {figures['e2e_p99_ms']:.3g} ms. On the critical path {figures.get('top_p50', '?')} "
        f"holds the most at p50 ({figures.get('top_p50_share_pct', float('nan')):.0f} %), "
        f"{figures.get('top_p99', '?')} at p99 "
        f"({figures.get('top_p99_share_pct', float('nan')):.0f} %). {cp.explain_quality()}"
        + (f" The receiver lost {lost} spans (dropped or invalid)." if lost else "")
    )
    verdict, severity, checks = "measured", "ok", []
    if spec.compare and len(phases) == 2:
        (b0, b1), (c0, c1) = ((p["start"], p["end"]) for p in phases)
        base, changed = traces_between(table, cp, b0, b1), traces_between(table, cp, c0, c1)
        window = max(0.25, min(float(spec.window or 1.0), (b1 - b0) / 10))
        try:
            cpa, cpb = critical.analyse(base), critical.analyse(changed)
            comparison = compare_critical_path(cpa, cpb, window, s.margin, spec.alpha)
            tables["critical_path_change"] = comparison
            result = loc.localize_spans(base, changed, window=window, margin=s.margin, alpha=spec.alpha)
        except ValueError as exc:
            headline += f" No comparison of the halves: {exc}."
        else:
            verdict, severity = record_localization(result, graph, details, tables, figures)
            headline += f" Localized from traces: {result.explanation}"
            checks = [
                {"name": f"critical-path:{r.service}", "verdict": r.verdict, "severity": "ok",
                 "explanation": r.explanation, "estimate": r.estimate, "ci": [r.ci_low, r.ci_high]}
                for r in comparison.itertuples()
            ]  # fmt: skip
    if spec.change is not None:
        figures["changed_service"] = spec.change.service
    return ExperimentResult(
        spec.name, "traces", verdict, severity, headline, figures, tables, details, checks
    )  # type: ignore[arg-type]


def _trace_table(cp: critical.CriticalPath, rows: list[int]) -> pd.DataFrame:
    out = []
    for t in rows:
        info = cp.traces.loc[t]
        path = cp.path_of(t)
        by_service: dict[str, float] = {}
        for r in path:
            name = cp.services[cp.service[r]]
            by_service[name] = by_service.get(name, 0.0) + cp.self_us[r] / 1000.0
        top = max(by_service.items(), key=lambda kv: kv[1]) if by_service else ("", 0.0)
        out.append(
            {"trace_id": info["trace_id"], "e2e_ms": info["duration_us"] / 1000.0,
             "spans": int(info["spans"]),
             "critical_spans": len(path), "top_service": top[0], "top_service_ms": top[1],
             "critical_path": " → ".join(dict.fromkeys(cp.services[cp.service[r]] for r in path))}
        )  # fmt: skip
    return pd.DataFrame(out)


def _export(store: Path, table: pa.Table, cp: critical.CriticalPath, rows: list[int]) -> None:
    """The slowest traces as Jaeger UI JSON and OTLP JSON files, to open in the tools users run."""
    mask = np.isin(cp.trace, np.asarray(rows, dtype=np.int64))
    part = table.filter(pa.array(mask))
    (store / "slowest.jaeger.json").write_text(json.dumps(jaeger.to_json(part)))
    (store / "slowest.otlp.json").write_text(json.dumps(otlp.to_json(part)))


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """Shares at p50/p99, waterfalls (slowest; the requested id), the flow graph, and the change."""
    out: dict[str, go.Figure] = {}
    d = result.details
    table, cp = d.get("spans"), d.get("cp")
    if table is None or cp is None:
        return out
    out["shares"] = views.shares_figure(result.tables["shares"])
    out["slowest"] = views.waterfall(
        table, cp, d.get("slowest", []), f"The {len(d.get('slowest', []))} slowest requests"
    )
    if d.get("request"):
        out["request"] = views.waterfall(table, cp, d["request"], "The requested request")
    graph = d.get("graph")
    if graph is not None:
        out["flow"] = graph.figure(
            title=f"Request flow: {result.name} (edge label: rps · errors · p99 · critical path)"
        )
    change = result.tables.get("critical_path_change")
    if change is not None and len(change):
        frame = change.set_index("service")[["estimate", "ci_low", "ci_high", "margin", "verdict"]]
        frame = frame.replace([math.inf, -math.inf], np.nan)
        out["change"] = interval_chart(
            frame, "Which service's critical-path self time changed (second half − first)",
            "mean per request, windows as the unit; the services add up to the end-to-end row",
        )  # fmt: skip
    return out
