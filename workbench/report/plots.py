"""Figures for reports: every figure has a title, axis titles with units, and a one-line reading.

Figures are plotly objects; notebooks set ``plotly.io.renderers.default = "notebook"`` (see
``setup_notebook``) so nbconvert embeds them in self-contained, offline HTML.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

COLOURS = {
    "baseline": "#1f77b4",
    "candidate": "#d62728",
    "stable": "#1f77b4",
    "canary": "#d62728",
    "ok": "#2ca02c",
    "bad": "#d62728",
    "grey": "#7f7f7f",
}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def setup_notebook() -> None:
    """Make plotly output that papermill keeps and nbconvert renders offline (plotly.js inlined)."""
    pio.renderers.default = "notebook"
    pio.templates.default = "plotly_white"


def styled(fig: go.Figure, title: str, reading: str, x: str, y: str, height: int = 420) -> go.Figure:
    """Apply the report conventions: title, the reading as a subtitle, axis titles with units."""
    fig.update_layout(
        title={"text": f"{title}<br><sup>{reading}</sup>", "x": 0.01, "xanchor": "left"},
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin={"t": 80, "l": 60, "r": 20, "b": 50},
        legend={"orientation": "h", "y": -0.18},
    )
    fig.layout.meta = {"reading": reading}
    return fig


def ecdf(values: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their cumulative share in percent (thinned to <= 2000 points)."""
    x = np.sort(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float))
    if len(x) == 0:
        return x, x
    y = np.arange(1, len(x) + 1) / len(x) * 100.0
    if len(x) > 2000:
        idx = np.unique(np.concatenate([np.linspace(0, len(x) - 1, 2000).astype(int), [len(x) - 1]]))
        x, y = x[idx], y[idx]
    return x, y


def latency_cdf(
    arms: dict[str, pd.Series], title: str, reading: str, colours: Sequence[str] | None = None
) -> go.Figure:
    """Latency CDF per arm (log x axis), the whole distribution rather than a few percentiles."""
    fig = go.Figure()
    for i, (name, lat) in enumerate(arms.items()):
        x, y = ecdf(lat.to_numpy())
        colour = (colours or PALETTE)[i % len(colours or PALETTE)]
        fig.add_trace(
            go.Scatter(x=x, y=y, mode="lines", name=f"{name} (n={len(lat):,})", line={"color": colour})
        )
    fig.update_xaxes(type="log")
    return styled(fig, title, reading, "latency (ms, log scale)", "requests at or below (%)")


def interval_chart(frame: pd.DataFrame, title: str, reading: str, unit: str = "ms") -> go.Figure:
    """Estimates with confidence intervals and the practical margin band, one row per metric.

    ``frame``: index = label, columns estimate, ci_low, ci_high, margin, verdict.
    """
    fig = go.Figure()
    labels = [str(i) for i in frame.index]
    colour = [COLOURS["bad"] if v == "worse" else COLOURS["ok"] if v in ("better", "equivalent") else
              COLOURS["grey"] for v in frame["verdict"]]  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=frame["estimate"],
            y=labels,
            mode="markers",
            marker={"size": 11, "color": colour},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": (frame["ci_high"] - frame["estimate"]).clip(lower=0),
                "arrayminus": (frame["estimate"] - frame["ci_low"]).clip(lower=0),
            },
            text=frame["verdict"],
            name="difference and interval",
        )
    )
    for label, margin in zip(labels, frame["margin"], strict=True):
        if np.isfinite(margin):
            fig.add_shape(
                type="rect", x0=-margin, x1=margin, y0=labels.index(label) - 0.3,
                y1=labels.index(label) + 0.3, fillcolor="rgba(44,160,44,0.12)", line={"width": 0},
            )  # fmt: skip
    fig.add_vline(x=0, line={"color": COLOURS["grey"], "dash": "dot"})
    return styled(fig, title, reading, f"candidate − baseline ({unit}; green band = ±margin)", "metric",
                  height=160 + 50 * len(frame))  # fmt: skip


def add_markers(
    fig: go.Figure, events: Iterable[dict[str, Any]], origin: pd.Timestamp | None = None, **where: Any
) -> go.Figure:
    """Vertical markers for events (``time``, ``label``) on a time-axis figure.

    With ``origin`` the x axis is seconds since it (as the canary timeline's); ``where`` goes to
    ``add_vline`` (e.g. ``row="all", col=1`` on a figure with subplots).
    """
    for ev in events:
        x: Any = pd.Timestamp(ev["time"])
        if origin is not None:
            x = (x - pd.Timestamp(origin)).total_seconds()
        fig.add_vline(x=x, line={"color": COLOURS["grey"], "dash": "dash", "width": 1}, **where)
        fig.add_annotation(
            x=x, y=1.0, yref="paper", text=ev["label"], showarrow=False,
            xanchor="left", yanchor="bottom", font={"size": 10}, textangle=-30,
        )  # fmt: skip
    return fig
