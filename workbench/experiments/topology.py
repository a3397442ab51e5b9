"""Topology: the service graph the mesh observes under load, and which service's own work changed.

``run`` sends load to the entry service (``frontend``) in two halves — a baseline, then a second
half, optionally with a known ``change`` to one version's behaviour (local mesh) — and stores what
was measured as soon as it is: the sidecars' access logs of this run (local mesh; gzip, one file
per sidecar, with ``sidecars.json`` naming them), Prometheus per-window frames of both telemetry
views (JSON), and the phase times. A change is undone in a ``finally``.

``analyse`` is pure over those files: the graph (from the access logs, else from telemetry; on a
cluster completed by its objects), the per-edge table, and — unless ``localize: false`` —
``workbench.analysis.localize`` ranks the services by the change of their self-time and originated errors
between the halves, names the culprit and marks it on the graph. When the local mesh traces
(``backend.tracing``), the run's spans are stored too (``spans.parquet``) and localization uses
them (exact parent/child links); otherwise the access logs, otherwise telemetry — the headline
and ``figures["localization_evidence"]`` say which.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from workbench.analysis import localize as loc
from workbench.analysis.proxycost import FLUSH_S
from workbench.analysis.topology import ServiceGraph
from workbench.analysis.traces import traces_between
from workbench.backends.base import Behaviours
from workbench.experiments.session import ExperimentResult, Session
from workbench.load.results import LoadProfile
from workbench.metrics import dialects
from workbench.metrics.histogram import Histogram
from workbench.report.plots import COLOURS, styled
from workbench.traces import critical
from workbench.traces import spans as sp

LOGS = "access_logs"
SPANS = "spans.parquet"
DATA_PLANE = "data_plane.json"
PROM_WINDOW_S = 5  # Envoy flushes its histograms to /stats every 5 s (counters: live)


def data_plane(layout: Any) -> list[dict[str, Any]]:
    """The ambient layout's node proxies (with the services on their node) and waypoints (with the
    services they serve), as ``analysis.topology.Proxy`` fields."""
    out: list[dict[str, Any]] = []
    for node, sc in layout.node_proxies.items():
        served = [svc for svc, n in layout.nodes.items() if n == node]
        out.append({"name": sc.name, "role": "node proxy", "serves": served, "node": node})
    out += [
        {"name": sc.name, "role": "waypoint", "serves": list(sc.callees)} for sc in layout.waypoints.values()
    ]
    return out


def _window_s(s: Session, half_s: float) -> float:
    """Statistics windows: the spec's, but at most a tenth of a half so each half has >= 10."""
    return max(0.25, min(float(s.spec.window or 5.0), half_s / 10))


def run(s: Session) -> None:
    """Load in two halves (a change before the second), then store logs, telemetry and phases."""
    spec, mesh = s.spec, s.backend()
    local = isinstance(mesh, Behaviours)
    duration = float(spec.duration or 10.0)
    halves = [("baseline", duration / 2), ("changed", duration / 2)] if spec.localize else [("all", duration)]
    tail = None
    if local:
        sidecars = {
            sc.name: {"service": sc.service, "version": sc.version, "direction": sc.direction}
            for sc in mesh.layout.sidecars
        }
        s.save_json("sidecars.json", sidecars)
        if mesh.layout.node_proxies:  # ambient: the shared proxies the graph draws
            s.save_json(DATA_PLANE, data_plane(mesh.layout))
        tail = loc.AccessLogTail(Path(mesh.run_dir) / "envoy", sidecars).skip()
    spans_tail = (
        sp.SpanTail(mesh.traces_dir).skip() if local and getattr(mesh, "sampling", None) is not None else None
    )
    phases: list[dict[str, Any]] = []
    try:
        phases = load_in_halves(s, mesh, halves, local)
    finally:
        if tail is not None:
            time.sleep(2.5 if spans_tail is not None else FLUSH_S)  # the logs' flush interval; spans ~2 s
            _store_logs(s.store / LOGS, tail.read_raw())
        if spans_tail is not None:
            sp.write(spans_tail.read(), s.store / SPANS)
    if phases:
        _store_telemetry(s, mesh, phases[0]["start"], phases[-1]["end"])


def load_in_halves(
    s: Session, mesh: Any, halves: list[tuple[str, float]], local: bool, after_warmup: Any = None
) -> list[dict[str, Any]]:
    """Warm-up (then ``after_warmup()``), then each half's load on ``spec.service`` — the spec's
    ``change`` applied before the ``changed`` half and undone in a ``finally`` — saving
    ``phases.json`` as each half ends; returns the phases (name, start, end, and whether the half's
    load point was saturated, ``LoadResult.saturation``)."""
    spec = s.spec
    phases: list[dict[str, Any]] = []
    undo: tuple[str, str, dict[str, Any]] | None = None
    try:
        if spec.warmup:
            s.progress(f"warm-up: {spec.rps:g} rps for {spec.warmup:g} s")
            mesh.run_load(spec.service, _profile(spec, spec.warmup, s.seed))
        if after_warmup is not None:
            after_warmup()
        for name, seconds in halves:
            if name == "changed" and spec.change is not None:
                undo = _apply(mesh, spec.change, local)
                s.progress(f"changed {spec.change.service}: {_describe(spec.change)}")
            s.progress(f"{name}: {spec.rps:g} rps on {spec.service} for {seconds:g} s")
            start = time.time()
            sat = mesh.run_load(spec.service, _profile(spec, seconds, s.seed)).saturation()
            phases.append({"name": name, "start": start, "end": time.time(),
                           "saturated": sat.saturated, "saturation": sat.explain()})  # fmt: skip
            s.save_json(
                "phases.json", {"phases": phases, "change": spec.change.model_dump() if spec.change else None}
            )
    finally:
        if undo is not None:
            mesh.set_behaviour(undo[0], undo[1], **undo[2])
    return phases


def _profile(spec: Any, seconds: float, seed: int | None) -> LoadProfile:
    return LoadProfile(
        rps=spec.rps if spec.model == "open" else None,
        connections=spec.connections,
        duration_s=seconds,
        warmup_s=0,
        model=spec.model,
        path=spec.path,
        seed=seed,
    )


def _apply(mesh: Any, change: Any, local: bool) -> tuple[str, str, dict[str, Any]]:
    """Apply a known behaviour change; return what undoes it."""
    if not local:
        raise ValueError("change: a known behaviour change needs the local mesh (its demo app's behaviour)")
    versions = (
        list(mesh.topology.services[change.service].versions)
        if change.service in mesh.topology.services
        else []
    )
    if not versions:
        raise ValueError(f"change.service: no service {change.service!r} in the mesh")
    version = change.version or versions[0]
    if version not in versions:
        raise ValueError(
            f"change.version: {change.service} has no version {version!r} ({', '.join(versions)})"
        )
    before = mesh.behaviour(change.service, version)
    patch: dict[str, Any] = {}
    if change.service_time_ms is not None:
        patch["service_time_ms"] = before.service_time_ms + change.service_time_ms
    if change.error_rate is not None:
        patch["error_rate"] = change.error_rate
    if not patch:
        raise ValueError("change: give service_time_ms (added) and/or error_rate")
    mesh.set_behaviour(change.service, version, **patch)
    return change.service, version, {k: getattr(before, k) for k in patch}


def _describe(change: Any) -> str:
    parts = []
    if change.service_time_ms is not None:
        parts.append(f"service time +{change.service_time_ms:g} ms")
    if change.error_rate is not None:
        parts.append(f"error rate {100 * change.error_rate:g} %")
    return ", ".join(parts)


def _store_logs(directory: Path, raw: dict[str, list[str]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in raw.items():
        (directory / name).mkdir(exist_ok=True)
        with gzip.open(directory / name / "access.log.gz", "wt", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


def _store_telemetry(s: Session, mesh: Any, start: float, end: float) -> None:
    """Both views of the mesh's telemetry in Prometheus, per window, as JSON."""
    local = isinstance(mesh, Behaviours)  # the local mesh: Envoy's own metrics, flushed every 5 s
    dialect = "envoy" if local else mesh.dialect
    window = PROM_WINDOW_S if local else max(5, int(s.spec.window or 5))
    if local:
        # Whole windows end at multiples of the window, the last at or before ``end``; a query at
        # that time reads the samples scraped up to it, so one scrape (1 s) past it is enough.
        last_end = math.floor(end / window) * window
        time.sleep(max(0.0, last_end + 1.5 - time.time()))
    try:
        url = mesh.prometheus_url()
        frames = {
            v: dialects.windows(url, dialect, start, end, window, view=v) for v in ("outbound", "inbound")
        }
    except Exception as exc:  # telemetry is a cross-check locally; keep the run's other data
        s.save_json("prometheus.json", {"error": f"{type(exc).__name__}: {exc}"})
        return
    s.save_json(
        "prometheus.json",
        {
            "dialect": dialect,
            "window_s": window,
            "start": start,
            "end": end,
            **{v: frame_to_json(f) for v, f in frames.items()},
        },
    )


def frame_to_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A ``dialects.windows`` frame as JSON rows (time ISO, histogram as its dict, +Inf as null)."""
    rows = []
    for r in frame.to_dict("records"):
        h = r["histogram"].to_dict()
        h["upper"] = [x if math.isfinite(x) else None for x in h["upper"]]
        rows.append({**r, "time": pd.Timestamp(r["time"]).isoformat(), "histogram": h})
    return rows


def frame_from_json(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Inverse of :func:`frame_to_json`."""
    if not rows:
        return pd.DataFrame(columns=dialects.COLUMNS)
    out = []
    for r in rows:
        h = dict(r["histogram"])
        h["upper"] = [float("inf") if x is None else x for x in h["upper"]]
        out.append({**r, "time": pd.Timestamp(r["time"]), "histogram": Histogram.from_dict(h)})
    return pd.DataFrame(out)[dialects.COLUMNS]


def stored_logs(store: Path) -> pd.DataFrame | None:
    """The run's access logs (None when there are none: a cluster run)."""
    directory = store / LOGS
    if not directory.is_dir():
        return None
    sidecars = (
        json.loads((store / "sidecars.json").read_text()) if (store / "sidecars.json").exists() else None
    )
    return loc.read_access_logs(directory, sidecars)


def analyse(s: Session) -> ExperimentResult:
    """Graph, edge table and (unless ``localize: false``) the ranked services; from stored data."""
    spec = s.spec
    phases = s.load_json("phases.json")["phases"]
    logs = stored_logs(s.store)
    prom = s.load_json("prometheus.json") if (s.store / "prometheus.json").exists() else {}
    telemetry = {v: frame_from_json(prom[v]) for v in ("outbound", "inbound") if v in prom}
    if logs is not None and len(logs):
        start, end = phases[0]["start"], phases[-1]["end"]
        logs = logs[(logs["start"] >= start) & (logs["start"] <= end)]
        graph = ServiceGraph.from_access_logs(logs)
    elif "outbound" in telemetry:
        graph = ServiceGraph.from_telemetry(telemetry["outbound"], prom.get("window_s"))
    else:
        raise ValueError(
            f"{s.store}: neither access logs nor telemetry stored: nothing to build the graph from"
        )
    if (s.store / DATA_PLANE).exists():
        graph.with_data_plane(s.load_json(DATA_PLANE))
    tables: dict[str, pd.DataFrame] = {"edges": graph.to_frame()}
    if "outbound" in telemetry and len(telemetry["outbound"]):
        tables["edges_prometheus"] = ServiceGraph.from_telemetry(
            telemetry["outbound"], prom.get("window_s")
        ).to_frame()
    figures: dict[str, Any] = {
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "entry_rps": graph.nodes[spec.service].rps if spec.service in graph.nodes else 0.0,
    }
    details: dict[str, Any] = {"graph": graph}
    checks: list[dict[str, Any]] = []
    verdict, severity = "measured", "ok"
    headline = (
        f"{len(graph.nodes)} services/clients, {len(graph.edges)} edges at {figures['entry_rps']:.3g} rps"
    )
    if spec.localize and len(phases) == 2:
        result = _localize(s, phases, logs, telemetry, prom)
        if result is not None:
            verdict, severity = record_localization(result, graph, details, tables, figures)
            figures["ranking"] = result.top(len(result.ranking))
            headline += f". Localized from {result.evidence}: " + result.explanation
            checks = [
                {
                    "name": f"self:{c.service}",
                    "verdict": c.verdict,
                    "severity": "worse" if c.verdict == "worse" else "ok",
                    "explanation": c.explain(),
                }
                for c in result.ranking
            ]
        else:
            headline += (". Not localized: no access logs here, and a half had no whole telemetry window "
                         "(run longer)")  # fmt: skip
        headline += saturation_caveat(phases)
    if spec.change is not None:
        figures["changed_service"] = spec.change.service
    return ExperimentResult(
        spec.name, "topology", verdict, severity, headline, figures, tables, details, checks
    )  # type: ignore[arg-type]


def saturation_caveat(phases: list[dict[str, Any]]) -> str:
    """A sentence for the headline when a half's load point was saturated, else ''. On a saturated
    host a service's self-time grows with the requests in flight: a slower callee keeps more
    requests waiting in its callers, whose own time then rises too, so a caller can be ranked
    above (or named instead of) the service that changed (benchmarks/localization.py: at the
    chain's capacity the frontend was named for pricing's change)."""
    busy = [p for p in phases if p.get("saturated")]
    if not busy:
        return ""
    which = ", ".join(f"{p['name']} ({p['saturation']})" for p in busy)
    return (
        f". Caution, the load was saturated in {which}: self-times then grow with the requests in "
        "flight, so a caller of the service that changed can look slower too; run at a lower rate"
    )


def record_localization(
    result: loc.Localization,
    graph: ServiceGraph,
    details: dict[str, Any],
    tables: dict[str, Any],
    figures: dict[str, Any],
) -> tuple[str, str]:
    """Put a localization into an experiment's result parts (culprit ringed on the graph); return
    (verdict, severity): ``culprit found``/``worse`` or ``no change``/``ok``."""
    details["localization"] = result
    tables["ranking"] = result.to_frame()
    figures["culprit"] = result.culprit
    figures["localization_evidence"] = result.evidence
    if result.culprit:
        graph.mark(result.culprit, result.explanation)
        return "culprit found", "worse"
    return "no change", "ok"


def _localize(
    s: Session,
    phases: list[dict[str, Any]],
    logs: pd.DataFrame | None,
    telemetry: dict[str, pd.DataFrame],
    prom: dict[str, Any],
) -> loc.Localization | None:
    """Traces when stored (exact parent/child), else access logs, else per-window telemetry."""
    (b0, b1), (c0, c1) = ((p["start"], p["end"]) for p in phases)
    window = _window_s(s, min(b1 - b0, c1 - c0))
    if (s.store / SPANS).exists():
        table = sp.read(s.store / SPANS)
        cp = critical.analyse(table)
        halves = [traces_between(table, cp, lo, hi) for lo, hi in ((b0, b1), (c0, c1))]
        if all(h.num_rows for h in halves):
            return loc.localize_spans(*halves, window=window, margin=s.margin, alpha=s.spec.alpha)
    if logs is not None and len(logs):
        a = logs[(logs["start"] >= b0) & (logs["start"] <= b1)]
        b = logs[(logs["start"] >= c0) & (logs["start"] <= c1)]
        return loc.localize(a, b, window=window, margin=s.margin, alpha=s.spec.alpha)
    if {"inbound", "outbound"} <= set(telemetry):
        w = float(prom["window_s"])

        def part(frame: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
            t = frame["time"].map(lambda x: x.timestamp())
            return frame[(t >= lo) & (t <= hi)]

        base = (part(telemetry["inbound"], b0, b1), part(telemetry["outbound"], b0, b1))
        changed = (part(telemetry["inbound"], c0, c1), part(telemetry["outbound"], c0, c1))
        if not len(base[0]) or not len(changed[0]):  # a half shorter than a Prometheus window: no windows
            return None
        return loc.localize_telemetry(base, changed, w, margin=s.margin, alpha=s.spec.alpha)
    return None


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """The topology network (culprit marked) and, when localized, the services' scores."""
    out: dict[str, go.Figure] = {}
    graph: ServiceGraph | None = result.details.get("graph")
    if graph is not None:
        out["topology"] = graph.figure(title=f"Service topology: {result.name}")
    ranking = result.tables.get("ranking")
    if ranking is not None and len(ranking):
        colours = [
            COLOURS["bad"] if c else (COLOURS["grey"] if v != "worse" else "#ff7f0e")
            for c, v in zip(ranking["culprit"], ranking["verdict"], strict=True)
        ]
        scores = [x if math.isfinite(x) else 0.0 for x in ranking["score"]]
        fig = go.Figure(
            go.Bar(
                x=list(ranking["service"]),
                y=scores,
                marker_color=colours,
                hovertext=list(ranking["explanation"]),
                hoverinfo="text",
            )
        )
        fig.add_hline(y=1.0, line_dash="dot", line_color=COLOURS["grey"], annotation_text="margin")
        culprit = result.figures.get("culprit")
        reading = f"culprit: {culprit}" if culprit else "no service changed beyond its margin"
        out["ranking"] = styled(
            fig,
            "Which service's own work changed (second half vs first)",
            reading,
            "service (ranked)",
            "lower bound of the increase (× margin)",
        )
    return out
