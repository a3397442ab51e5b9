"""Load test: latency against requests per second and against concurrent connections.

``run`` sweeps rps x connections (x sidecar ``modes``, x ``repetitions``, interleaved) with
``load.sweep.run_sweep``; every point is stored under ``<store>/points`` as soon as it is measured.
``analyse`` reads only those points: the table, and the knee against the spec's ``slo_p99_ms`` —
the highest rate whose p99 is within the SLO with >= 99 % of the requested rate achieved.

Verdict ``pass`` says up to which rate the SLO holds; ``fail`` (severity worse) only when even the
lowest rate misses it at every connection count of some mode. Too few connections for a rate is
not a failure of the mesh (an open-model generator with c connections and latency L cannot exceed
c / L rps), so each rate counts as met when some connection count meets it.

The report leads with the sidecars' direct cost: each point keeps its proxies' traversals (their
access logs, ``analysis.proxycost``), and the headline says what each sidecar traversal adds
(own time p50, with an interval over ``repetitions`` when there are several) at the lowest load
that was not saturated; with a ``none`` mode in the sweep, the end-to-end difference at that load
follows as the cross-check, then how the two agree. Every point records whether it was saturated
(host CPU over all cores, k6's own CPU, achieved vs requested, dropped); the meshes it measures
pause the workbench's own scraping while the points run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.analysis import proxycost
from workbench.backends.local.layout import MODES
from workbench.experiments.session import ExperimentResult, Session
from workbench.load.results import LoadResult
from workbench.load.sweep import Point, SweepSpec, knee, run_sweep, table
from workbench.report.plots import COLOURS, PALETTE, styled
from workbench.stats.trials import paired_trials

POINTS, TRAVERSALS = "points", "traversals"
CLUSTER = "cluster"  # the "mode" of a cluster's points: its own data plane
MIN_ACHIEVED_PCT = 99.0
PERCENTILES = ("p50", "p90", "p99")
DASHES = {"p50": "solid", "p90": "dash", "p99": "dot"}


def modes(s: Session) -> tuple[str, ...]:
    """The sidecar modes to sweep: the spec's ``modes``, else the backend's own mode (on a cluster:
    ``cluster``, the one data plane there is)."""
    return tuple(s.spec.modes or [getattr(s.config.backend, "mode", CLUSTER)])


def sweep_spec(s: Session) -> SweepSpec:
    """The experiment as a sweep: its grid, modes, repetitions, durations and the suite's seed."""
    spec = s.spec
    return SweepSpec(
        service=spec.service,
        rps=tuple(spec.rps),
        connections=tuple(spec.connections),
        modes=modes(s),
        repetitions=spec.repetitions,
        duration_s=spec.duration,
        warmup_s=spec.warmup or 0.0,
        model=spec.model,
        path=spec.path,
        seed=s.seed,
    )


def run(s: Session) -> None:
    """Measure every point not yet stored; the meshes it starts stop again after their points."""
    sweep = sweep_spec(s)
    store = s.store / POINTS
    total = len(sweep.points())
    done = len(list(store.glob("*.json"))) if store.exists() else 0
    s.progress(f"sweep of {total} points ({done} already stored), {sweep.duration_s:g} s each")
    counter = {"n": done}

    def on_point(point: Point, result: LoadResult) -> None:
        counter["n"] += 1
        summary = result.summary()
        s.progress(
            f"point {counter['n']}/{total}: {point.mode} {point.rps:g} rps x {point.connections} conns "
            f"(rep {point.repetition}): achieved {summary['actual_rps']:.0f} rps, "
            f"p99 {summary['p99']:.1f} ms; "
            f"{result.saturation().explain()}; {proxycost.observer_note(result)}"
        )

    recorder = proxycost.TraversalRecorder(s.store / TRAVERSALS)
    with s.quiet_others():
        run_sweep(sweep, lambda mode: _quiet(s.mesh(mode)), store, progress=False, on_point=on_point,
                  on_measured=recorder, before_point=recorder.before)  # fmt: skip


@contextmanager
def _quiet(mesh_cm: AbstractContextManager[Any]) -> Iterator[Any]:
    """The mesh of ``mesh_cm`` with its own scraping paused while its points run."""
    with mesh_cm as mesh, mesh.quiet() if hasattr(mesh, "quiet") else nullcontext():
        yield mesh


def points(s: Session) -> pd.DataFrame:
    """The stored points' table; FileNotFoundError naming the directory when there are none."""
    store = s.store / POINTS
    frame = table(store) if store.exists() else pd.DataFrame()
    if frame.empty:
        raise FileNotFoundError(f"{store}: no stored sweep points for experiment {s.spec.name!r}")
    return frame


def _medians(frame: pd.DataFrame) -> pd.DataFrame:
    cols = ["achieved_rps", "achieved_pct", "dropped_pct", *PERCENTILES, "error_pct"]
    return frame.groupby(["mode", "connections", "rps"], as_index=False)[cols].median()


def _meets(row: pd.Series, slo: float) -> bool:
    return bool(row["p99"] <= slo and row["achieved_pct"] >= MIN_ACHIEVED_PCT)


def _lowest_load(med: pd.DataFrame, slo: float) -> pd.Series:
    """The lowest rate at the fewest connections that carry it (else at the most connections)."""
    low = med[np.isclose(med["rps"], med["rps"].min())].sort_values("connections")
    carried = low[low["achieved_pct"] >= MIN_ACHIEVED_PCT]
    return carried.iloc[0] if len(carried) else low.iloc[-1]


def _mode_summary(mode: str, med: pd.DataFrame, knees: pd.DataFrame, slo: float) -> dict[str, Any]:
    k = knees[knees["mode"] == mode].dropna(subset=["knee_rps"])
    best = k.sort_values(["knee_rps", "connections"], ascending=[False, True]).iloc[0] if len(k) else None
    own = med[med["mode"] == mode]
    lowest = _lowest_load(own, slo)
    return {
        "mode": mode,
        "knee_rps": float(best["knee_rps"]) if best is not None else math.nan,
        "knee_connections": int(best["connections"]) if best is not None else None,
        "lowest_rps": float(lowest["rps"]),
        "lowest_connections": int(lowest["connections"]),
        "p99_ms_lowest_load": float(lowest["p99"]),
        "achieved_pct_lowest_load": float(lowest["achieved_pct"]),
        "max_achieved_rps": float(own["achieved_rps"].max()),
    }


def analyse(s: Session) -> ExperimentResult:
    """Table, knee and verdict from the stored points alone (``workbench report`` re-runs this)."""
    spec = s.spec
    slo = float(spec.slo_p99_ms)
    frame = points(s)
    med = _medians(frame)
    knees = knee(frame, slo, MIN_ACHIEVED_PCT)
    summaries = [_mode_summary(m, med, knees, slo) for m in med["mode"].drop_duplicates()]
    failing = [m for m in summaries if math.isnan(m["knee_rps"])]
    rule = f"p99 <= {slo:g} ms with >= {MIN_ACHIEVED_PCT:g} % of the requested rate"
    if failing:
        verdict, severity = "fail", "worse"
        parts = [f"{m['mode']}: p99 {m['p99_ms_lowest_load']:.1f} ms, {m['achieved_pct_lowest_load']:.0f} "
                 f"% achieved at {m['lowest_rps']:g} rps x {m['lowest_connections']} conns"
                 for m in failing]  # fmt: skip
        headline = f"even the lowest load misses the SLO ({rule}): " + "; ".join(parts)
    else:
        verdict, severity = "pass", "ok"
        parts = [f"{m['knee_rps']:g} rps ({m['mode']}, {m['knee_connections']} conns)" for m in summaries]
        top, met = float(med["rps"].max()), min(m["knee_rps"] for m in summaries)
        headline = f"SLO met up to {met:g} rps ({rule}): " + "; ".join(parts)
        if all(m["knee_rps"] >= top for m in summaries):
            headline += "; the highest rate tried, so the knee lies beyond this sweep"
    costs = proxycost.sweep_costs(s.store / POINTS, s.store / TRAVERSALS)
    proxy = proxycost.over_trials(costs, by=("mode", "rps", "connections"), alpha=spec.alpha,
                                  replicate="repetition")  # fmt: skip
    lead, own = _direct_lead(frame, proxy)
    if lead:
        headline = f"{lead[0].upper()}{lead[1:]}. {headline[0].upper()}{headline[1:]}"
    figures: dict[str, Any] = {
        "slo_p99_ms": slo,
        "knee_rps": min(m["knee_rps"] for m in summaries),
        "p99_ms_lowest_load": max(m["p99_ms_lowest_load"] for m in summaries),
        "max_achieved_rps": max(m["max_achieved_rps"] for m in summaries),
        "points": len(frame),
    }
    if len(summaries) > 1:
        for m in summaries:
            figures[f"knee_rps_{m['mode']}"] = m["knee_rps"]
            figures[f"p99_ms_lowest_load_{m['mode']}"] = m["p99_ms_lowest_load"]
    if own is not None:
        figures["own_p50_us"] = own["own_p50_us"]
        figures["own_p50_us_ci"] = [own["own_p50_ci_low"], own["own_p50_ci_high"]]
    figures["saturated_points"] = int(frame["saturated"].sum()) if "saturated" in frame else 0
    tables = {
        "summary": pd.DataFrame(summaries).set_index("mode"),
        "knee": knees.set_index(["mode", "connections"]),
        "points": frame,
        "proxy_cost": proxy,
    }
    return ExperimentResult(spec.name, "loadtest", verdict, severity, headline, figures, tables,  # type: ignore[arg-type]
                            {"medians": med, "slo_p99_ms": slo})  # fmt: skip


def _direct_lead(points: pd.DataFrame, proxy: pd.DataFrame) -> tuple[str, pd.Series | None]:
    """The sidecars' own time per traversal at the lowest load that was not saturated (the
    heaviest sidecar mode swept), then with a ``none`` mode the end-to-end difference there and
    how the two agree; ("", None) when no point carried a sidecar traversal."""
    if not len(proxy):
        return "", None
    measured = proxy[proxy["trials"] > 0]
    modes = [m for m in reversed(MODES) if m in set(measured["mode"])]
    if not modes:
        return "", None
    mode = modes[0]
    mine = measured[measured["mode"] == mode].sort_values(["rps", "connections"])
    rps, conns = mine.iloc[0]["rps"], mine.iloc[0]["connections"]
    group = proxy[(proxy["mode"] == mode) & (proxy["rps"] == rps) & (proxy["connections"] == conns)]
    top = proxycost.overall(group)
    if top is None:
        return "", None
    where = f"{mode} at {rps:g} rps x {conns} connections, the lowest load not saturated"
    text = proxycost.sentence(group, where, "repetition")
    at = points[(points["rps"] == rps) & (points["connections"] == conns) & ~points["saturated"]]
    a, b = at[at["mode"] == "none"].set_index("repetition"), at[at["mode"] == mode].set_index("repetition")
    if len(a) and len(b):
        paired = a.index.intersection(b.index)
        xa, xb = (a.loc[paired], b.loc[paired]) if len(paired) == max(len(a), len(b)) else (a, b)
        delta = paired_trials(xa["p50"].to_numpy(float), xb["p50"].to_numpy(float))
        row = pd.Series({"estimate": delta.estimate, "ci_low": delta.ci.low, "ci_high": delta.ci.high})
        interval = (f" [{delta.ci.low:+.2f}, {delta.ci.high:+.2f}] over {delta.n_trials} repetitions"
                    if delta.ci.finite else " (no interval: one repetition per point)")  # fmt: skip
        text += f"; end to end, {mode} vs none adds {delta.estimate:+.2f} ms p50{interval}"
        agree = proxycost.agreement(group, proxy.iloc[:0], row, "none")
        text += f"; {agree}" if agree else ""
    return text, top


def _label(mode: str, many_modes: bool, text: str) -> str:
    return f"{mode} {text}" if many_modes else text


def _lines(
    med: pd.DataFrame, x: str, group: str, group_text: str, slo: float | None = None
) -> tuple[go.Figure, str]:
    """p50/p90/p99 against ``x``, one colour per ``group`` value, dash per percentile."""
    fig = go.Figure()
    many = med["mode"].nunique() > 1
    symbols = ["circle", "square", "diamond", "triangle-up"]
    values = sorted(med[group].unique())
    for mi, mode in enumerate(med["mode"].drop_duplicates()):
        for gi, value in enumerate(values):
            g = med[(med["mode"] == mode) & (med[group] == value)].sort_values(x)
            for p in PERCENTILES:
                fig.add_trace(go.Scatter(
                    x=g[x], y=g[p], mode="lines+markers", name=_label(mode, many, f"{group_text(value)} {p}"),
                    line={"color": PALETTE[gi % len(PALETTE)], "dash": DASHES[p]},
                    marker={"symbol": symbols[mi % len(symbols)]},
                ))  # fmt: skip
    if slo is not None:
        fig.add_hline(y=slo, line={"color": COLOURS["bad"], "dash": "dash", "width": 1},
                      annotation_text=f"SLO p99 {slo:g} ms")  # fmt: skip
    fig.update_yaxes(type="log")
    worst = med.loc[med["p99"].idxmax()]
    return fig, f"worst p99 {worst['p99']:.1f} ms at {worst['rps']:g} rps x {worst['connections']} conns"


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """Percentiles vs connections and vs rps, and achieved vs requested rate."""
    med: pd.DataFrame = result.details["medians"]
    slo = result.details["slo_p99_ms"]
    out: dict[str, go.Figure] = {}
    fig, reading = _lines(med, "connections", "rps", lambda v: f"{v:g} rps", slo)
    fig.update_xaxes(type="log")
    out["by_connections"] = styled(
        fig, "Latency percentiles against concurrent connections (one colour per requested rate)",
        f"{reading}; solid p50, dashed p90, dotted p99", "concurrent connections (log scale)",
        "latency (ms, log scale)",
    )  # fmt: skip
    fig, reading = _lines(med, "rps", "connections", lambda v: f"{v} conns", slo)
    knee_rps = result.figures["knee_rps"]
    knee_text = f"knee at {knee_rps:g} rps" if math.isfinite(knee_rps) else "no rate met the SLO"
    out["by_rps"] = styled(
        fig, "Latency percentiles against requested rate (one colour per connection count)",
        f"{reading}; {knee_text}", "requested rate (requests/s)", "latency (ms, log scale)",
    )  # fmt: skip
    fig = go.Figure()
    many = med["mode"].nunique() > 1
    for gi, conns in enumerate(sorted(med["connections"].unique())):
        for mode in med["mode"].drop_duplicates():
            g = med[(med["mode"] == mode) & (med["connections"] == conns)].sort_values("rps")
            fig.add_trace(go.Scatter(x=g["rps"], y=g["achieved_rps"], mode="lines+markers",
                                     name=_label(mode, many, f"{conns} conns"),
                                     line={"color": PALETTE[gi % len(PALETTE)]}))  # fmt: skip
    top = float(med["rps"].max())
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="achieved = requested",
                             line={"color": COLOURS["grey"], "dash": "dot"}))  # fmt: skip
    short = med[med["achieved_pct"] < MIN_ACHIEVED_PCT]
    reading = (f"{len(short)} of {len(med)} points fell below {MIN_ACHIEVED_PCT:g} % of the requested rate"
               if len(short) else "every point achieved its requested rate")  # fmt: skip
    out["achieved"] = styled(fig, "Achieved against requested rate", reading, "requested rate (requests/s)",
                             "achieved rate (requests/s)")  # fmt: skip
    return out
