"""The explorer behind ``notebooks/explore.ipynb``: a stored run's load, looked at interactively.

Pick a stored run, an experiment, a metric and a window size; three plotly ``FigureWidget``s
follow the choice: the metric per time window of each stream (an A/B arm, a sweep point, a canary
step's version ...), the latency distribution of each stream, and each stream against the first
one (the baseline) with ``stats.compare`` — paired when they ran at the same time, else unpaired —
against the experiment's margins. It reads only stored data: no mesh, no load.

Everything the widgets do is a method (``select``, ``windows``, ``comparison``), so it can be
driven and tested without a browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.report import numbers
from workbench.report.plots import COLOURS, PALETTE, ecdf, styled
from workbench.report.runs import StoredRun, list_runs, open_run
from workbench.stats.compare import Comparison, Margin, compare
from workbench.stats.windows import QUANTILE_METRICS, start_of, window_table

METRICS = (*QUANTILE_METRICS, "mean", "error_rate")
WINDOWS_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class Explorer:
    """State (run, experiment, metric, window) and the three figures that show it."""

    def __init__(
        self, data_root: str | Path = "../data/runs", run_id: str = "latest", experiment: str = "",
        metric: str = "p50", window_s: float = 5.0, fallback: str | Path | None = None,
    ) -> None:  # fmt: skip
        import plotly.graph_objects as go

        self.data_root = Path(data_root)
        self.runs: list[StoredRun] = list_runs(self.data_root)
        if not self.runs and fallback is not None:  # e.g. a fresh clone: the sample runs
            self.data_root, self.runs = Path(fallback), list_runs(fallback)
        if not self.runs:
            raise FileNotFoundError(f"no stored run in {self.data_root.resolve()}: run 'workbench run' first")
        self.run = open_run(self.data_root, run_id)
        self.metric, self.window_s = metric, float(window_s)
        self.experiment = experiment or next(iter(self.experiments_with_load()), "")
        self.streams: dict[str, Any] = {}
        self.figures = {name: go.FigureWidget() for name in ("windows", "distribution", "comparison")}
        self._controls: dict[str, Any] = {}
        self.select()

    # ------------------------------------------------------------------------------------------
    # What can be chosen

    def run_ids(self) -> list[str]:
        return [r.run_id for r in reversed(self.runs)]

    def experiments_with_load(self) -> list[str]:
        """The run's experiments that stored load to look at."""
        return [n for n in self.run.experiments if any((self.run.path / n).glob("*.parquet"))]

    # ------------------------------------------------------------------------------------------
    # Choosing

    def select(
        self, run_id: str | None = None, experiment: str | None = None, metric: str | None = None,
        window_s: float | None = None,
    ) -> None:  # fmt: skip
        """Change any of the four choices and redraw the three figures."""
        if metric is not None and metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
        if window_s is not None and not window_s > 0:
            raise ValueError(f"window must be positive seconds (got {window_s})")
        if run_id is not None and run_id != self.run.run_id:
            self.run = open_run(self.data_root, run_id)
            if experiment is None and self.experiment not in self.run.experiments:
                experiment = next(iter(self.experiments_with_load()), "")
        if experiment is not None:
            self.experiment = experiment
        self.metric = metric or self.metric
        self.window_s = float(window_s or self.window_s)
        self.streams = self.run.streams(self.experiment) if self.experiment else {}
        self._draw()

    def windows(self) -> dict[str, pd.DataFrame]:
        """Each stream's window table (one origin for all, so concurrent streams pair up)."""
        starts = [t for t in (start_of(r) for r in self.streams.values()) if t is not None]
        origin = min(starts) if starts else pd.Timestamp(0, tz="UTC")
        return {name: window_table(r, self.window_s, origin) for name, r in self.streams.items()}

    def comparison(self) -> dict[str, Comparison]:
        """Each stream against the first one, on the chosen metric and window, at the experiment's margins."""
        if len(self.streams) < 2:
            return {}
        spec = self.run.spec(self.experiment)
        m = getattr(spec, "margins", None)
        margin = Margin(m.latency_ms, m.latency_pct, m.error_rate_pct) if m is not None else Margin()
        alpha = float(getattr(spec, "alpha", None) or 0.05)
        (base_name, base), *others = self.streams.items()
        return {
            f"{name} − {base_name}": compare(base, r, (self.metric,), self.window_s, margin, alpha)
            for name, r in others
        }

    # ------------------------------------------------------------------------------------------
    # Drawing

    def _draw(self) -> None:
        tables = self.windows()
        unit = "percentage points" if self.metric == "error_rate" else "ms"
        with self.figures["windows"].batch_update():
            fig = self.figures["windows"]
            fig.data = []
            for i, (name, w) in enumerate(tables.items()):
                y = 100 * w["errors"] / w["count"] if self.metric == "error_rate" else w[self.metric]
                fig.add_scatter(x=w.index.to_numpy() * self.window_s, y=y, mode="lines+markers", name=name,
                                line={"color": PALETTE[i % len(PALETTE)]})  # fmt: skip
            styled(fig, f"{self.experiment}: {self.metric} per {self.window_s:g} s window",
                   f"run {self.run.run_id}; {len(tables)} stream(s)", "time since the first request (s)",
                   "error rate (%)" if self.metric == "error_rate" else f"{self.metric} (ms)")  # fmt: skip
        with self.figures["distribution"].batch_update():
            fig = self.figures["distribution"]
            fig.data = []
            for i, (name, r) in enumerate(self.streams.items()):
                x, y = ecdf(r.samples["latency_ms"].to_numpy())
                fig.add_scatter(x=x, y=y, mode="lines", name=f"{name} (n={len(r.samples):,})",
                                line={"color": PALETTE[i % len(PALETTE)]})  # fmt: skip
            fig.update_xaxes(type="log")
            styled(fig, f"{self.experiment}: latency distribution", "the whole distribution of each stream",
                   "latency (ms, log scale)", "requests at or below (%)")  # fmt: skip
        comparisons = self.comparison()
        with self.figures["comparison"].batch_update():
            fig = self.figures["comparison"]
            fig.data = []
            labels, est, lo, hi, verdicts = [], [], [], [], []
            for label, c in comparisons.items():
                r = c[self.metric]
                labels.append(label)
                est.append(r.estimate)
                lo.append(r.ci.low)
                hi.append(r.ci.high)
                verdicts.append(r.verdict)
            colour = [COLOURS["bad"] if v == "worse" else COLOURS["ok"] if v in ("better", "equivalent")
                      else COLOURS["grey"] for v in verdicts]  # fmt: skip
            fig.add_scatter(
                x=est, y=labels, mode="markers", marker={"size": 11, "color": colour}, text=verdicts,
                error_x={"type": "data", "symmetric": False, "array": np.subtract(hi, est).clip(min=0),
                         "arrayminus": np.subtract(est, lo).clip(min=0)}, name="difference and interval",
            )  # fmt: skip
            zero = {"type": "line", "x0": 0, "x1": 0, "xref": "x", "y0": 0, "y1": 1, "yref": "paper",
                    "line": {"color": COLOURS["grey"], "dash": "dot"}}  # fmt: skip
            fig.layout.shapes = [zero]
            reading = "; ".join(
                f"{label}: {numbers.interval(e, a, b, 'pts' if self.metric == 'error_rate' else 'ms')} {v}"
                for label, e, a, b, v in zip(labels, est, lo, hi, verdicts, strict=True)
            )
            styled(fig, f"{self.metric}: each stream against {next(iter(self.streams), 'the first')}",
                   reading or "one stream only: nothing to compare", f"difference ({unit})", "stream",
                   height=200 + 40 * max(1, len(labels)))  # fmt: skip

    def describe(self) -> pd.DataFrame:
        """What the figures show now: one row per figure, its traces and points."""
        rows = []
        for name, f in self.figures.items():
            points = sum(0 if t.x is None else len(t.x) for t in f.data)
            title = str(f.layout.title.text or "").split("<br>")[0]
            rows.append({"figure": name, "traces": len(f.data), "points": int(points), "title": title})
        return pd.DataFrame(rows).set_index("figure")

    # ------------------------------------------------------------------------------------------
    # Widgets

    def ui(self) -> Any:
        """Drop-downs for run, experiment, metric and window above the three figures."""
        import ipywidgets as w

        c = self._controls
        c["run"] = w.Dropdown(options=self.run_ids(), value=self.run.run_id, description="run")
        c["experiment"] = w.Dropdown(options=self.experiments_with_load(), value=self.experiment or None,
                                     description="experiment")  # fmt: skip
        c["metric"] = w.Dropdown(options=list(METRICS), value=self.metric, description="metric")
        c["window"] = w.Dropdown(options=[(f"{s:g} s", s) for s in sorted({*WINDOWS_S, self.window_s})],
                                 value=self.window_s, description="window")  # fmt: skip

        def on_run(change: dict[str, Any]) -> None:
            self.select(run_id=change["new"])
            c["experiment"].options = self.experiments_with_load()
            c["experiment"].value = self.experiment or None

        c["run"].observe(on_run, names="value")
        c["experiment"].observe(lambda ch: ch["new"] and self.select(experiment=ch["new"]), names="value")
        c["metric"].observe(lambda ch: self.select(metric=ch["new"]), names="value")
        c["window"].observe(lambda ch: self.select(window_s=ch["new"]), names="value")
        controls = w.HBox([c["run"], c["experiment"], c["metric"], c["window"]])
        return w.VBox([controls, *self.figures.values()])
