"""History across runs: each experiment's headline figures over the stored runs, with intervals.

``history_frame`` reads every stored run's ``result.json`` (no load data, so it is fast) into one
long table; ``write_history`` renders ``reports/history.html`` from it: per experiment, its
verdict in each run, and its figures as time series (one chart per unit, error bars from each
figure's interval), plotly.js inlined once so the page works offline. ``workbench history``
prints the same table; ``workbench compare`` says whether a run regressed against another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from workbench.report import numbers
from workbench.report.runs import StoredRun, list_runs

HISTORY_FILE = "history.html"
MAX_CHARTS = 4  # per experiment
MAX_TRACES = 8  # per chart
COLUMNS = ["run_id", "started", "quick", "experiment", "kind", "verdict", "severity", "figure", "value",
           "ci_low", "ci_high", "unit"]  # fmt: skip
SKIPPED_UNITS = {"text", "bool", "split", "count"}  # not a time series a reader compares


def history_frame(runs: list[StoredRun], experiment: str | None = None) -> pd.DataFrame:
    """One row per run, experiment and numeric figure: value, its interval, unit, the verdict."""
    rows = []
    for run in runs:
        for name in run.experiments:
            if experiment is not None and name != experiment:
                continue
            result = run.result(name)
            if result is None:
                continue
            base = {"run_id": run.run_id, "started": run.started, "quick": run.quick, "experiment": name,
                    "kind": result.get("kind", ""), "verdict": result.get("verdict", "failed"),
                    "severity": result.get("severity", "error")}  # fmt: skip
            figures = result.get("figures") or {}
            rows.append({**base, "figure": "", "value": None, "ci_low": None, "ci_high": None, "unit": ""})
            for key, value in figures.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                ci_key = numbers.interval_key(key, figures)
                lo, hi = figures[ci_key] if ci_key else (None, None)
                rows.append({**base, "figure": key, "value": float(value), "ci_low": lo, "ci_high": hi,
                             "unit": numbers.unit_of(key)})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def table(frame: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """One experiment's runs as rows for people: run, start, verdict, each figure formatted."""
    rows = []
    for run_id, g in frame[frame["experiment"] == experiment].groupby("run_id", sort=True):
        first = g.iloc[0]
        row = {"run": run_id, "quick": "yes" if first["quick"] else "no", "verdict": first["verdict"]}
        for _, r in g[g["figure"] != ""].iterrows():
            if r["unit"] in SKIPPED_UNITS:
                continue
            key = str(r["figure"])
            figures = {key: r["value"], f"{key}_ci": [r["ci_low"], r["ci_high"]]}
            row[numbers.label(key)] = numbers.format_figure(key, r["value"], figures)
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def charts(frame: pd.DataFrame, experiment: str) -> list[Any]:
    """The experiment's figures over time: one chart per unit, a trace per figure with error bars."""
    import plotly.graph_objects as go

    from workbench.report.plots import PALETTE, styled

    g = frame[(frame["experiment"] == experiment) & (frame["figure"] != "")]
    g = g[~g["unit"].isin(SKIPPED_UNITS)]
    out = []
    for unit, by_unit in list(g.groupby("unit", sort=False))[:MAX_CHARTS]:
        fig = go.Figure()
        for i, (key, s) in enumerate(list(by_unit.groupby("figure", sort=False))[:MAX_TRACES]):
            s = s.sort_values("started")
            has_ci = s["ci_low"].notna() & s["ci_high"].notna()
            fig.add_trace(
                go.Scatter(
                    x=s["started"], y=s["value"], mode="lines+markers", name=numbers.label(str(key)),
                    line={"color": PALETTE[i % len(PALETTE)]},
                    marker={"symbol": ["circle-open" if q else "circle" for q in s["quick"]], "size": 9},
                    error_y={"type": "data", "symmetric": False, "visible": bool(has_ci.any()),
                             "array": (s["ci_high"] - s["value"]).where(has_ci, 0).clip(lower=0),
                             "arrayminus": (s["value"] - s["ci_low"]).where(has_ci, 0).clip(lower=0)},
                    text=[f"run {r}: {v}" for r, v in zip(s["run_id"], s["verdict"], strict=True)],
                    hovertemplate="%{text}<br>%{y}<extra>%{fullData.name}</extra>",
                )
            )  # fmt: skip
        axis = numbers.HEADER_UNITS.get(unit, str(unit))  # type: ignore[arg-type]
        runs = by_unit["run_id"].nunique()
        fig = styled(fig, f"{experiment}: {axis} figures across runs",
                     f"{runs} run(s); bars are each run's interval; open markers are --quick runs",
                     "run started", axis, height=380)  # fmt: skip
        out.append(fig)
    return out


def write_history(reports: str | Path, data_root: str | Path, experiment: str | None = None) -> Path:
    """Render ``reports/history.html`` from the runs stored under ``data_root``; return its path."""
    import plotly.io as pio
    from jinja2 import Environment
    from plotly.offline import get_plotlyjs

    runs = list_runs(data_root)
    frame = history_frame(runs, experiment)
    sections = []
    for name in dict.fromkeys(frame["experiment"]):
        t = table(frame, name)
        figs = [pio.to_html(f, include_plotlyjs=False, full_html=False, config={"responsive": True})
                for f in charts(frame, name)]  # fmt: skip
        kind = frame.loc[frame["experiment"] == name, "kind"].iloc[0]
        rows = t.to_html(border=0, escape=True) if len(t) else ""
        sections.append({"name": name, "kind": kind, "figures": figs, "table": rows})
    page = (
        Environment(autoescape=True)
        .from_string(PAGE)
        .render(
            runs=len(runs),
            root=str(Path(data_root).resolve()),
            sections=sections,
            plotlyjs=get_plotlyjs(),
            newest=runs[-1].run_id if runs else "",
            oldest=runs[0].run_id if runs else "",
        )
    )
    target = Path(reports) / HISTORY_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mesh Workbench — history</title>
<script type="text/javascript">{{ plotlyjs | safe }}</script>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border-bottom: 1px solid #ddd; padding: .35em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f5f5f5; }
details { margin: .5em 0 2em; } summary { cursor: pointer; color: #444; }
.desc { color: #666; font-size: .9em; }
</style></head><body>
<h1>Mesh Workbench — history across runs</h1>
<p class=desc>{{ runs }} stored run(s) in <code>{{ root }}</code>
{%- if runs %}, {{ oldest }} … {{ newest }}{% endif %}. Whether a run regressed against another,
with run-to-run variation: <code>workbench compare RUN_A RUN_B</code>.</p>
{% for s in sections %}
<h2>{{ s.name }} <span class=desc>({{ s.kind }})</span></h2>
{% for f in s.figures %}{{ f | safe }}{% endfor %}
{% if s.table %}<details><summary>Every run: verdict and figures</summary>
{{ s.table | safe }}</details>{% endif %}
{% else %}<p>No stored runs yet: <code>workbench run</code> stores each run under data/runs/.</p>
{% endfor %}
</body></html>
"""
