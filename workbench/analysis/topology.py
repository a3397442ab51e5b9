"""The service topology blueprint: who calls whom, how often, how well — from telemetry and cluster objects.

A :class:`ServiceGraph` holds services (with their versions as sub-nodes) and edges source →
destination with rps, error rate and p50/p99. It is built from what the mesh observed — the local
mesh's access logs (:meth:`ServiceGraph.from_access_logs`) or Prometheus per-window frames of any
telemetry dialect (:meth:`ServiceGraph.from_telemetry`: the envoy dialect's outbound view locally,
Istio's source/destination metrics on a cluster) — and, on a cluster, completed by its objects
(:meth:`ServiceGraph.add_cluster_objects`: Services, Deployments, pods with sidecar status), so a
service that received no traffic, or a pod without a sidecar, still shows. Exports: JSON,
Mermaid (``graph LR``) and Graphviz DOT; :meth:`ServiceGraph.figure` draws a layered plotly
network (layers by call depth, edge width by rps, colour by error rate or p99), with a culprit
from ``workbench.analysis.localize`` marked.

In the local mesh's ambient modes the data plane is not one proxy per pod, so the graph also holds
its shared proxies (:meth:`ServiceGraph.with_data_plane`): each node proxy (L4, one per node,
linked to the services whose pods run there) and each waypoint (L7, linked to the services it
serves), drawn and exported with their role.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from workbench.load.results import error_mask
from workbench.metrics.histogram import merge
from workbench.report.plots import COLOURS, styled

__all__ = ["Edge", "Node", "Proxy", "ServiceGraph"]

CLIENTS = ("loadgen",)  # callers that are load generators, not services


@dataclass
class Edge:
    """Calls from ``source`` to ``destination`` over the observed time."""

    source: str
    destination: str
    requests: float
    errors: float
    rps: float
    error_rate: float  # share 0..1 (NaN without requests)
    p50_ms: float
    p99_ms: float
    versions: dict[str, float] = field(default_factory=dict)  # destination version -> rps
    cp_ms: float = float("nan")  # traces: mean time per request this call holds the critical path

    @property
    def label(self) -> str:
        p99 = f" · p99 {self.p99_ms:.3g} ms" if math.isfinite(self.p99_ms) else ""
        cp = f" · cp {self.cp_ms:.3g} ms" if math.isfinite(self.cp_ms) else ""
        return f"{self.rps:.3g} rps · {100 * _nan0(self.error_rate):.2g}% err{p99}{cp}"


@dataclass
class Node:
    """A service (or a client such as the load generator) and its versions."""

    name: str
    kind: Literal["service", "client"] = "service"
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> rps, pods, meshed, ...
    depth: int = 0
    rps: float = 0.0  # inbound
    error_rate: float = float("nan")
    p99_ms: float = float("nan")
    namespace: str = ""
    objects: dict[str, Any] = field(default_factory=dict)  # kube service, deployments, sidecar coverage
    mark: str = ""  # e.g. the localization's explanation for the culprit


@dataclass
class Proxy:
    """A shared data-plane proxy of the ambient modes and the services it carries."""

    name: str  # e.g. "node-1-node-proxy", "catalog-waypoint"
    role: Literal["node proxy", "waypoint"]
    serves: list[str]  # node proxy: the services whose pods run on its node; waypoint: the services it serves
    node: str = ""  # a node proxy's node


@dataclass
class ServiceGraph:
    """Nodes and edges; see the module docstring."""

    nodes: dict[str, Node]
    edges: list[Edge]
    seconds: float  # the time the rates average over
    source: str  # where the graph came from, for the figure's reading
    proxies: list[Proxy] = field(default_factory=list)  # ambient: node proxies and waypoints

    # ------------------------------------------------------------------ building
    @classmethod
    def from_edges(cls, rows: pd.DataFrame, seconds: float, source: str) -> ServiceGraph:
        """From one row per (source, destination, version) with requests, errors, p50_ms, p99_ms."""
        nodes: dict[str, Node] = {}
        edges: list[Edge] = []
        seconds = max(float(seconds), 1e-9)
        for (src, dst), group in rows.groupby(["source", "destination"], sort=True):
            src, dst = str(src) or "unknown", str(dst)
            req, err = float(group["requests"].sum()), float(group["errors"].sum())
            if req <= 0:  # a route every sidecar knows but nobody used
                continue
            w = group["requests"].to_numpy(float)
            p50 = _weighted(group["p50_ms"].to_numpy(float), w)
            p99 = (
                float(np.nanmax(group["p99_ms"].to_numpy(float))) if group["p99_ms"].notna().any() else np.nan
            )
            versions = {
                str(v): float(r) / seconds
                for v, r in zip(group["version"], w, strict=True)
                if str(v) and r > 0
            }
            cp = float(group["cp_ms"].sum()) if "cp_ms" in group.columns else np.nan
            edges.append(
                Edge(src, dst, req, err, req / seconds, err / req if req else np.nan, p50, p99, versions, cp)
            )
            for name in (src, dst):
                nodes.setdefault(name, Node(name, "client" if name in CLIENTS else "service"))
        for e in edges:
            node = nodes[e.destination]
            for v, r in e.versions.items():
                node.versions.setdefault(v, {"rps": 0.0})["rps"] += r
        inbound = pd.DataFrame([asdict(e) for e in edges]) if edges else pd.DataFrame()
        for name, node in nodes.items():
            mine = inbound[inbound["destination"] == name] if len(inbound) else inbound
            if len(mine):
                node.rps = float(mine["rps"].sum())
                node.error_rate = (
                    float(mine["errors"].sum() / mine["requests"].sum()) if mine["requests"].sum() else np.nan
                )
                node.p99_ms = float(mine["p99_ms"].max())
        graph = cls(nodes, edges, seconds, source)
        graph._layer()
        return graph

    @classmethod
    def from_access_logs(cls, logs: pd.DataFrame) -> ServiceGraph:
        """From Envoy access logs (``analysis.localize.read_access_logs``): exact per-request times."""
        from workbench.analysis.localize import edges_from_logs

        edges = edges_from_logs(logs)
        if not len(edges):
            return cls({}, [], 0.0, "access logs (empty)")
        seconds = float(logs["start"].max() - logs["start"].min()) or 1.0
        failed = error_mask(edges["status"].to_numpy())
        rows = (
            edges.assign(bad=failed)
            .groupby(["source", "destination", "version"], sort=True)
            .agg(
                requests=("duration_ms", "size"),
                errors=("bad", "sum"),
                p50_ms=("duration_ms", lambda x: float(np.quantile(x, 0.5))),
                p99_ms=("duration_ms", lambda x: float(np.quantile(x, 0.99))),
            )
            .reset_index()
        )
        return cls.from_edges(rows, seconds, "Envoy access logs (per request)")

    @classmethod
    def from_spans(cls, spans: Any, cp: Any = None) -> ServiceGraph:
        """From traces (a ``traces.spans`` table; ``cp`` its ``traces.critical.analyse``): exact
        parent/child calls, with each edge's critical-path time (``analysis.traces.flow_edges``)."""
        from workbench.analysis.traces import flow_edges
        from workbench.traces.critical import analyse

        if spans.num_rows == 0:
            return cls({}, [], 0.0, "traces (empty)")
        cp = cp if cp is not None else analyse(spans)
        rows = flow_edges(spans, cp)
        t = cp.traces[cp.traces["root"] >= 0]
        seconds = (
            float((t["start_us"] + t["duration_us"]).max() - t["start_us"].min()) / 1e6 if len(t) else 0.0
        )
        return cls.from_edges(rows, seconds or 1.0, "traces (exact parent/child, critical path)")

    @classmethod
    def from_telemetry(cls, frame: pd.DataFrame, window_s: float | None = None) -> ServiceGraph:
        """From a ``metrics.dialects.windows`` frame (outbound view: one row per window and edge).

        A workload-named source (Istio's ``source_workload`` ``catalog-v1``) maps to its service.
        """
        if not len(frame):
            return cls({}, [], 0.0, "telemetry (empty)")
        times = np.sort(frame["time"].unique())
        if window_s is None:
            steps = np.diff(times).astype("timedelta64[ms]").astype(float) / 1000 if len(times) > 1 else []
            window_s = float(min(steps)) if len(steps) else 1.0
        seconds = len(times) * window_s
        services = set(frame["destination"].astype(str))
        frame = frame.assign(source=[_service_of(str(s), services) for s in frame["source"]])
        rows = []
        for (src, dst, ver), group in frame.groupby(["source", "destination", "version"], sort=True):
            hists = [h for h in group["histogram"] if h.count > 0]
            h = merge(*hists) if len(hists) > 1 else (hists[0] if hists else None)
            rows.append(
                {
                    "source": src,
                    "destination": dst,
                    "version": ver,
                    "requests": float(group["requests"].sum()),
                    "errors": float(group["errors"].sum()),
                    "p50_ms": h.quantile(0.5) if h else np.nan,
                    "p99_ms": h.quantile(0.99) if h else np.nan,
                }
            )
        dialect = str(frame["dialect"].iloc[0]) if "dialect" in frame.columns else "?"
        return cls.from_edges(pd.DataFrame(rows), seconds, f"Prometheus, {dialect} dialect")

    def add_cluster_objects(
        self,
        deployments: pd.DataFrame,
        services: pd.DataFrame | None = None,
        pods: pd.DataFrame | None = None,
    ) -> ServiceGraph:
        """Add what the cluster declares (``backends.kubernetes.cluster.Cluster`` frames):
        every app with a Deployment or Service becomes a node, each Deployment's version a
        sub-node with replicas, and pods give sidecar coverage (meshed / pods) per version."""
        for _, d in deployments.iterrows():
            app = str(d.get("app") or d.get("name"))
            node = self.nodes.setdefault(app, Node(app))
            node.namespace = str(d.get("namespace", ""))
            version = str(d.get("version") or "")
            info = node.versions.setdefault(version, {"rps": 0.0})
            info.update(
                deployment=str(d.get("name")),
                replicas=int(d.get("replicas", 0) or 0),
                ready=int(d.get("ready", 0) or 0),
            )
            node.objects.setdefault("deployments", []).append(str(d.get("name")))
        if services is not None:
            for _, s in services.iterrows():
                app = str(s.get("app") or s.get("name"))
                if app in self.nodes or str(s.get("name")) in self.nodes:
                    node = self.nodes.get(app) or self.nodes[str(s.get("name"))]
                    node.objects["kube_service"] = str(s.get("name"))
                    node.objects["port"] = s.get("port")
        if pods is not None and len(pods):
            for (app, version), group in pods.groupby(["app", "version"], sort=True):
                if str(app) not in self.nodes:
                    continue
                info = self.nodes[str(app)].versions.setdefault(str(version), {"rps": 0.0})
                info.update(pods=len(group), meshed=int(group["meshed"].sum()))
            for name, node in self.nodes.items():
                mine = pods[pods["app"] == name]
                if len(mine):
                    node.objects["sidecar_coverage"] = float(mine["meshed"].mean())
        self._layer()
        return self

    @classmethod
    def from_cluster(
        cls,
        cluster: Any,
        namespace: str | None = None,
        telemetry: pd.DataFrame | None = None,
        window_s: float | None = None,
    ) -> ServiceGraph:
        """A cluster's graph: edges from ``telemetry`` (a dialects frame) when given, plus its objects."""
        graph = (
            cls.from_telemetry(telemetry, window_s) if telemetry is not None else cls({}, [], 0.0, "cluster")
        )
        graph.source += " + cluster objects"
        return graph.add_cluster_objects(
            cluster.deployments(namespace), cluster.kube_services(namespace), cluster.pods(namespace)
        )

    # ------------------------------------------------------------------ queries
    def _layer(self) -> None:
        """depth = the longest call chain from a node nobody calls (clients and entry services)."""
        callers: dict[str, list[str]] = {}
        for e in self.edges:
            callers.setdefault(e.destination, []).append(e.source)
        memo: dict[str, int] = {}

        def depth(n: str, path: tuple[str, ...] = ()) -> int:
            if n in memo:
                return memo[n]
            parents = [p for p in callers.get(n, []) if p not in path and p != n]
            memo[n] = 0 if not parents else 1 + max(depth(p, (*path, n)) for p in parents)
            return memo[n]

        for name, node in self.nodes.items():
            node.depth = depth(name)

    def edge(self, source: str, destination: str) -> Edge | None:
        return next((e for e in self.edges if e.source == source and e.destination == destination), None)

    def edge_set(self) -> set[tuple[str, str]]:
        return {(e.source, e.destination) for e in self.edges}

    def to_frame(self) -> pd.DataFrame:
        """The per-edge table: rps, error rate (%), p50/p99 (ms), versions' rps; from traces also
        ``cp_ms``, the mean time per request the edge holds the critical path."""
        rows = [
            {
                "source": e.source,
                "destination": e.destination,
                "rps": e.rps,
                "requests": int(e.requests),
                "error_pct": 100 * _nan0(e.error_rate),
                "p50_ms": e.p50_ms,
                "p99_ms": e.p99_ms,
                "versions": ", ".join(f"{v} {r:.3g} rps" for v, r in sorted(e.versions.items())),
                "cp_ms": e.cp_ms,
            }
            for e in self.edges
        ]
        cols = ["source", "destination", "rps", "requests", "error_pct", "p50_ms", "p99_ms", "versions"]
        if any(math.isfinite(e.cp_ms) for e in self.edges):
            cols.append("cp_ms")
        return pd.DataFrame(rows, columns=cols)

    def with_data_plane(self, proxies: list[Proxy] | list[dict[str, Any]]) -> ServiceGraph:
        """Add the ambient data plane's node proxies and waypoints (``Proxy`` or its fields)."""
        self.proxies = [p if isinstance(p, Proxy) else Proxy(**p) for p in proxies]
        return self

    def mark(self, service: str, note: str) -> ServiceGraph:
        """Mark a node (the localization's culprit) with a note shown in the figure and exports."""
        if service not in self.nodes:
            raise KeyError(f"no service {service!r} in the graph; there are: {', '.join(self.nodes)}")
        self.nodes[service].mark = note
        return self

    # ------------------------------------------------------------------ exports
    def to_json(self) -> dict[str, Any]:
        """Plain data (``json.dumps``-able; NaN → None)."""
        return _clean(
            {
                "source": self.source,
                "seconds": self.seconds,
                "nodes": [asdict(n) for n in self.nodes.values()],
                "edges": [asdict(e) for e in self.edges],
                "proxies": [asdict(p) for p in self.proxies],
            }
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceGraph:
        nodes = {n["name"]: Node(**{k: _nan(v) for k, v in n.items()}) for n in data["nodes"]}
        edges = [Edge(**{k: _nan(v) for k, v in e.items()}) for e in data["edges"]]
        graph = cls(nodes, edges, float(data["seconds"]), str(data["source"]))
        return graph.with_data_plane(data.get("proxies") or [])

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart (``graph LR``): nodes list their versions, edges their figures."""
        lines = ["graph LR"]
        for name, node in self.nodes.items():
            versions = " · ".join(sorted(v for v in node.versions if v))
            label = f"{name}<br/>{versions}" if versions else name
            shape = f'(["{label}"])' if node.kind == "client" else f'["{label}"]'
            lines.append(f"  {_ident(name)}{shape}")
        for e in self.edges:
            lines.append(f'  {_ident(e.source)} -->|"{e.label}"| {_ident(e.destination)}')
        for p in self.proxies:  # ambient: shared proxies, dotted to the services they carry
            shape = (
                f'[["{p.name}<br/>{p.role}"]]' if p.role == "node proxy" else f'{{"{p.name}<br/>{p.role}"}}'
            )
            lines.append(f"  {_ident(p.name)}{shape}")
            lines += [f"  {_ident(p.name)} -.- {_ident(s)}" for s in p.serves if s in self.nodes]
        for name, node in self.nodes.items():
            if node.mark:
                lines.append(f"  style {_ident(name)} stroke:{COLOURS['bad']},stroke-width:4px")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """Graphviz DOT: left to right, versions in each node's label, edge pen width by rps."""
        top = max((e.rps for e in self.edges), default=1.0) or 1.0
        lines = [
            "digraph services {",
            "  rankdir=LR;",
            '  node [shape=box, style=rounded, fontname="Helvetica"];',
        ]
        for name, node in self.nodes.items():
            versions = ", ".join(sorted(v for v in node.versions if v))
            label = f"{name}\\n{versions}" if versions else name
            extra = f', color="{COLOURS["bad"]}", penwidth=3' if node.mark else ""
            shape = ", shape=ellipse" if node.kind == "client" else ""
            lines.append(f'  "{name}" [label="{label}"{shape}{extra}];')
        for e in self.edges:
            width = 1 + 5 * e.rps / top
            colour = _colour(_nan0(e.error_rate), 0.05)
            lines.append(
                f'  "{e.source}" -> "{e.destination}" [label="{e.label}", penwidth={width:.2f}, '
                f'color="{colour}"];'
            )
        for p in self.proxies:
            shape = "box3d" if p.role == "node proxy" else "diamond"
            lines.append(f'  "{p.name}" [label="{p.name}\\n{p.role}", shape={shape}];')
            lines += [
                f'  "{p.name}" -> "{s}" [style=dotted, arrowhead=none];' for s in p.serves if s in self.nodes
            ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ figure
    def figure(
        self, colour_by: Literal["error_rate", "p99"] = "error_rate", title: str = "Service topology"
    ) -> go.Figure:
        """Layered network: x = call depth, edges' width by rps and colour by error rate (or p99),
        versions as small sub-nodes under their service, a marked culprit ringed in red."""
        pos = self._positions()
        fig = go.Figure()
        top = max((e.rps for e in self.edges), default=1.0) or 1.0
        values = [
            _nan0(e.error_rate) * 100 if colour_by == "error_rate" else _nan0(e.p99_ms) for e in self.edges
        ]
        vmax = max([*values, 5.0 if colour_by == "error_rate" else 1.0])
        for e, value in zip(self.edges, values, strict=True):
            (x0, y0), (x1, y1) = pos[e.source], pos[e.destination]
            colour = sample_colorscale("RdYlGn_r", [min(value / vmax, 1.0)])[0]
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[y0, y1],
                    mode="lines",
                    line={"width": 1.5 + 10 * e.rps / top, "color": colour},
                    hoverinfo="skip",
                    showlegend=False,
                )
            )
            fig.add_annotation(
                x=x1 - 0.12,
                y=y0 + (y1 - y0) * (1 - 0.12 / max(x1 - x0, 0.12)),
                ax=x0,
                ay=y0,
                xref="x",
                yref="y",
                axref="x",
                ayref="y",
                showarrow=True,
                arrowhead=3,
                arrowwidth=1.5,
                arrowcolor=colour,
                text="",
            )
            fig.add_trace(
                go.Scatter(
                    x=[(x0 + x1) / 2],
                    y=[(y0 + y1) / 2 + 0.08],
                    mode="text",
                    text=[e.label],
                    textfont={"size": 10},
                    hovertext=[f"{e.source} → {e.destination}: {e.label}"],
                    hoverinfo="text",
                    showlegend=False,
                )
            )
        names = list(self.nodes)
        marked = [n for n in names if self.nodes[n].mark]
        fig.add_trace(
            go.Scatter(
                x=[pos[n][0] for n in names],
                y=[pos[n][1] for n in names],
                mode="markers+text",
                text=[f"<b>{n}</b>" for n in names],
                textposition="top center",
                name="services",
                marker={
                    "size": 30,
                    "color": [
                        COLOURS["grey"] if self.nodes[n].kind == "client" else COLOURS["baseline"]
                        for n in names
                    ],
                    "line": {"width": 1, "color": "white"},
                },
                hovertext=[self._hover(n) for n in names],
                hoverinfo="text",
            )
        )
        vx, vy, vt, vs, vh = [], [], [], [], []
        for n in names:
            node = self.nodes[n]
            vers = sorted(v for v in node.versions if v)
            for i, v in enumerate(vers):
                info = node.versions[v]
                vx.append(pos[n][0] + (i - (len(vers) - 1) / 2) * 0.14)
                vy.append(pos[n][1] - 0.3)
                vt.append(v)
                vs.append(
                    8 + 14 * math.sqrt(_nan0(info.get("rps", 0.0)) / max(node.rps, 1e-9)) if node.rps else 8
                )
                vh.append(f"{n} {v}: " + ", ".join(f"{k} {_fmt(x)}" for k, x in info.items()))
        if vx:
            fig.add_trace(
                go.Scatter(
                    x=vx,
                    y=vy,
                    mode="markers+text",
                    text=vt,
                    textposition="bottom center",
                    name="versions (size: share of rps)",
                    hovertext=vh,
                    hoverinfo="text",
                    marker={"size": vs, "color": "#9ecae1", "line": {"width": 1, "color": "#3182bd"}},
                )
            )
        self._draw_proxies(fig, pos)
        if marked:
            fig.add_trace(
                go.Scatter(
                    x=[pos[n][0] for n in marked],
                    y=[pos[n][1] for n in marked],
                    mode="markers",
                    name="culprit",
                    marker={
                        "size": 46,
                        "color": "rgba(0,0,0,0)",
                        "line": {"width": 4, "color": COLOURS["bad"]},
                    },
                    hovertext=[self.nodes[n].mark for n in marked],
                    hoverinfo="text",
                )
            )
        unit = "error rate (%)" if colour_by == "error_rate" else "p99 (ms)"
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                showlegend=False,
                hoverinfo="skip",
                marker={
                    "colorscale": "RdYlGn_r",
                    "cmin": 0,
                    "cmax": vmax,
                    "color": [0],
                    "colorbar": {"title": f"edge {unit}", "thickness": 12},
                },
            )
        )
        depth = max((n.depth for n in self.nodes.values()), default=0)
        fig.update_xaxes(
            tickvals=list(range(depth + 1)), range=[-0.5, depth + 0.5], showgrid=False, zeroline=False
        )
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
        reading = (
            f"{len(self.nodes)} nodes, {len(self.edges)} edges over {self.seconds:.0f} s ({self.source})"
        )
        if marked:
            reading = f"culprit: {', '.join(marked)} — " + reading
        fig = styled(
            fig, title, reading, "call depth (hops from the entry)", "services (edge width: rps)", height=520
        )
        if marked:
            note = self.nodes[marked[0]].mark
            fig.add_annotation(
                text=_wrap(note),
                xref="paper",
                yref="paper",
                x=0,
                y=-0.02,
                showarrow=False,
                align="left",
                xanchor="left",
                yanchor="top",
                font={"size": 11, "color": COLOURS["bad"]},
            )
            fig.update_layout(margin={"b": 120})
        return fig

    def _draw_proxies(self, fig: go.Figure, pos: dict[str, tuple[float, float]]) -> None:
        """Ambient: node proxies as squares in a row under the services, waypoints as diamonds above
        the services they serve, each dotted to its services and labelled with its role."""
        if not self.proxies:
            return
        bottom = min((y for _, y in pos.values()), default=0.0) - 1.0
        top = max((y for _, y in pos.values()), default=0.0)
        points: dict[str, tuple[float, float]] = {}
        nodes = [p for p in self.proxies if p.role == "node proxy"]
        for i, p in enumerate(nodes):
            xs = [pos[s][0] for s in p.serves if s in pos]
            points[p.name] = (float(np.mean(xs)) if xs else float(i), bottom - 0.25 * (i % 2))
        for p in self.proxies:
            if p.role == "waypoint":
                xs = [pos[s][0] for s in p.serves if s in pos]
                ys = [pos[s][1] for s in p.serves if s in pos]
                one = len(xs) == 1
                points[p.name] = (xs[0] + 0.18 if one else float(np.mean(xs or [0.0])),
                                  ys[0] + 0.32 if one else top + 0.9)  # fmt: skip
        for p in self.proxies:
            x0, y0 = points[p.name]
            for s in (s for s in p.serves if s in pos):
                fig.add_trace(go.Scatter(x=[x0, pos[s][0]], y=[y0, pos[s][1]], mode="lines", hoverinfo="skip",
                                         showlegend=False, line={"width": 1, "dash": "dot",
                                                                 "color": COLOURS["grey"]}))  # fmt: skip
        for role, symbol, colour in (("node proxy", "square", "#756bb1"), ("waypoint", "diamond", "#e6550d")):
            mine = [p for p in self.proxies if p.role == role]
            if not mine:
                continue
            fig.add_trace(go.Scatter(
                x=[points[p.name][0] for p in mine], y=[points[p.name][1] for p in mine],
                mode="markers+text", text=[p.node or p.name.removesuffix("-waypoint") for p in mine],
                textposition="bottom center" if role == "node proxy" else "top center",
                name="node proxies (L4: mTLS tunnels)" if role == "node proxy" else "waypoints (L7 policy)",
                marker={"symbol": symbol, "size": 18, "color": colour,
                        "line": {"width": 1, "color": "white"}},
                hovertext=[f"<b>{p.name}</b> ({role})<br>carries: {', '.join(p.serves)}" for p in mine],
                hoverinfo="text",
            ))  # fmt: skip

    def _positions(self) -> dict[str, tuple[float, float]]:
        layers: dict[int, list[str]] = {}
        for name, node in sorted(self.nodes.items(), key=lambda kv: kv[0]):
            layers.setdefault(node.depth, []).append(name)
        # order each layer by the mean position of its callers, to reduce crossings
        pos: dict[str, tuple[float, float]] = {}
        callers: dict[str, list[str]] = {}
        for e in self.edges:
            callers.setdefault(e.destination, []).append(e.source)
        for d in sorted(layers):
            names = layers[d]
            if d:
                names.sort(
                    key=lambda n: np.mean([pos[c][1] for c in callers.get(n, []) if c in pos] or [0.0])
                )
            for i, n in enumerate(names):
                pos[n] = (float(d), (len(names) - 1) / 2 - i)
        return pos

    def _hover(self, name: str) -> str:
        node = self.nodes[name]
        parts = [f"<b>{name}</b> ({node.kind})", f"inbound {node.rps:.3g} rps"]
        if math.isfinite(node.error_rate):
            parts.append(f"errors {100 * node.error_rate:.2g}%")
        if math.isfinite(node.p99_ms):
            parts.append(f"p99 {node.p99_ms:.3g} ms")
        parts += [f"{k}: {_fmt(v)}" for k, v in node.objects.items()]
        if node.mark:
            parts.append(_wrap(node.mark))
        return "<br>".join(parts)


# -------------------------------------------------------------------------------------------------
# Helpers


def _service_of(name: str, services: set[str]) -> str:
    from workbench.analysis.localize import _service_of as impl

    return impl(name, services)


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values) & (weights > 0)
    return float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")


def _nan0(x: float) -> float:
    return 0.0 if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _nan(x: Any) -> Any:
    return float("nan") if x is None else x


def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _colour(error_rate: float, full: float) -> str:
    """Hex colour (DOT wants hex) on the green → red scale, red at ``full``."""
    rgb = sample_colorscale("RdYlGn_r", [min(error_rate / full, 1.0)])[0]
    r, g, b = (round(float(x)) for x in re.findall(r"[\d.]+", rgb)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _wrap(text: str, width: int = 110) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "<br>".join([*lines, line])


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value
