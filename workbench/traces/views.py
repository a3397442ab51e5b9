"""Plotly views of traces: waterfalls (one request, or the slowest N of a window) with the critical
path marked, and each service's share of end-to-end latency on the critical path at p50 and p99.

The request-flow graph (services as nodes; edges with rps, error % and critical-path time) is
``analysis.topology.ServiceGraph.from_spans(...).figure()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.compute as pc

from workbench.report.plots import COLOURS, PALETTE, styled
from workbench.traces.critical import CriticalPath

__all__ = ["shares_figure", "slowest", "traces_of_request", "waterfall"]


def slowest(
    cp: CriticalPath, n: int = 5, start_us: int | None = None, end_us: int | None = None
) -> list[int]:
    """Rows of ``cp.traces`` of the ``n`` slowest complete traces that started in [start, end)."""
    t = cp.traces[(cp.traces["root"] >= 0) & cp.traces["complete"]]
    if start_us is not None:
        t = t[t["start_us"] >= start_us]
    if end_us is not None:
        t = t[t["start_us"] < end_us]
    return list(t.sort_values("duration_us", ascending=False).index[:n])


def traces_of_request(spans: pa.Table, cp: CriticalPath, request_id: str) -> list[int]:
    """Rows of ``cp.traces`` whose spans carry ``x-request-id`` ``request_id`` (KeyError when none)."""
    mask = pc.equal(spans.column("request_id"), request_id).to_numpy(zero_copy_only=False)
    rows = sorted(set(cp.trace[mask].tolist()))
    if not rows:
        raise KeyError(f"no span carries request id {request_id!r}")
    return rows


def _label(r: pd.Series) -> str:
    role = {"client": "→ client", "server": "server", "app": "app"}.get(r["role"], r["role"])
    version = f" {r['version']}" if r["version"] else ""
    peer = f" → {r['peer']}" if r["role"] == "client" and r["peer"] else ""
    return f"{'  ' * int(max(r['depth'], 0))}{r['service']}{version} · {role}{peer}"


def waterfall(
    spans: pa.Table, cp: CriticalPath, traces: Sequence[int], title: str = "Waterfall"
) -> go.Figure:
    """One bar per span from its start to its end (ms from its trace's start), indented by depth,
    coloured by service; spans on the critical path solid with their self time in the hover, the
    others faded. Several traces are stacked, each under a header row naming it."""
    rows = np.flatnonzero(np.isin(cp.trace, np.asarray(list(traces), dtype=np.int64)))
    take = spans.take(pa.array(rows)).to_pandas()
    take = take.assign(row=rows, depth=cp.depth[rows], on_path=cp.on_path[rows], self_us=cp.self_us[rows],
                       cstart=cp.start_us[rows], cend=cp.end_us[rows], trace=cp.trace[rows],
                       parent_row=cp.parent[rows])  # fmt: skip
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(take["service"].unique()))}
    ys, xs, bases, fills, hovers, opacity = [], [], [], [], [], []
    order: list[str] = []
    for k, t in enumerate(traces):
        info = cp.traces.loc[t]
        mine = take[take["trace"] == t]
        mine = _tree_order(mine)
        header = f"<b>trace {str(info['trace_id'])[:12]}… {info['duration_us'] / 1000:.3g} ms</b>"
        order.append(header)
        t0 = int(info["start_us"])
        for _, r in mine.iterrows():
            label = f"{_label(r)} [{k + 1}.{len(order)}]"
            order.append(label)
            ys.append(label)
            xs.append(max((r["cend"] - r["cstart"]) / 1000.0, 0.002))
            bases.append((r["cstart"] - t0) / 1000.0)
            fills.append(colours[r["service"]])
            opacity.append(1.0 if r["on_path"] else 0.35)
            status = f"status {r['status']}" + (" (error)" if r["error"] else "")
            cpt = f"<br>on the critical path: self {r['self_us'] / 1000:.3g} ms" if r["on_path"] else ""
            hovers.append(
                f"{r['service']} {r['version']} {r['role']} {r['name']}<br>start +{bases[-1]:.3g} ms, "
                f"duration {(r['cend'] - r['cstart']) / 1000:.3g} ms, {status}{cpt}"
            )
    fig = go.Figure(
        go.Bar(
            x=xs, y=ys, base=bases, orientation="h", marker={"color": fills, "opacity": opacity,
            "line": {"color": [COLOURS["bad"] if o == 1.0 else "rgba(0,0,0,0)" for o in opacity],
                     "width": 1.5}},
            hovertext=hovers, hoverinfo="text", showlegend=False,
        )
    )  # fmt: skip
    for service, colour in colours.items():  # a legend of services
        fig.add_trace(go.Bar(x=[None], y=[None], marker_color=colour, name=service, orientation="h"))
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(order)), tickfont={"size": 10})
    reading = (
        "solid bars with a red outline are on the critical path; faded bars ran in parallel with it"
        if len(traces)
        else "no trace to show"
    )
    return styled(fig, title, reading, "ms since the request started", "span", height=160 + 18 * len(order))


def _tree_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Spans in depth-first order, children by start, as a waterfall lists them (orphans and
    their subtrees after the root's tree)."""
    rows = set(frame["row"].tolist())
    children: dict[int, list[tuple[int, int]]] = {}
    tops = []
    for row, parent, start in zip(frame["row"], frame["parent_row"], frame["cstart"], strict=True):
        if parent in rows:
            children.setdefault(int(parent), []).append((int(start), int(row)))
        else:
            tops.append((int(start), int(row)))
    order: list[int] = []
    stack = [r for _, r in sorted(tops, reverse=True)]
    while stack:
        row = stack.pop()
        order.append(row)
        stack += [r for _, r in sorted(children.get(row, []), reverse=True)]
    return frame.set_index("row").loc[order].reset_index()


def shares_figure(
    shares: pd.DataFrame, title: str = "Who makes the latency: critical-path share"
) -> go.Figure:
    """Grouped bars: per service its mean share of end-to-end latency on the critical path, one
    group per band (p50, p99)."""
    fig = go.Figure()
    bands = list(dict.fromkeys(shares["band"])) if len(shares) else []
    colours = [COLOURS["baseline"], COLOURS["bad"], COLOURS["ok"], "#ff7f0e"]
    for i, band in enumerate(bands):
        part = shares[shares["band"] == band]
        e2e = float(part["e2e_ms"].iloc[0]) if len(part) else float("nan")
        fig.add_trace(
            go.Bar(
                x=list(part["service"]), y=list(100 * part["share"]), marker_color=colours[i % len(colours)],
                name=f"{band} requests (mean {e2e:.3g} ms, {int(part['traces'].iloc[0])} traces)",
                hovertext=[f"{s}: {100 * v:.1f} % · {m:.3g} ms on the critical path"
                           for s, v, m in zip(part["service"], part["share"], part["self_ms"], strict=True)],
                hoverinfo="text",
            )
        )  # fmt: skip
    reading = "no complete traces"
    if len(bands) >= 2:
        tops = [shares[shares["band"] == b].iloc[0] for b in bands[:2]]
        reading = (
            f"at {bands[0]} {tops[0]['service']} holds the most ({100 * tops[0]['share']:.0f} %); "
            f"at {bands[1]} {tops[1]['service']} ({100 * tops[1]['share']:.0f} %)"
        )
    fig.update_layout(barmode="group")
    return styled(fig, title, reading, "service", "% of end-to-end latency on the critical path")
