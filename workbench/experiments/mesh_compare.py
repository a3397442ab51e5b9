"""Mesh comparison: what each sidecar mode (or ingested mesh run) adds to latency, against a baseline.

Local ``modes`` run as interleaved repeated trials — the sweep's modes x ``repetitions = trials``
at one rate and each of the spec's connection counts, a fresh mesh per mode and trial (A B, B A,
...), so the trial is the unit of replication and machine drift spreads over all modes. Modes ran
at different times, so ``compare()`` is unpaired: each mode's trials are pooled, each trial cut
into equal windows aligned to its own start (about duration / 5, at least 1 s, and long enough for
100 requests so a window has a p99), and Δp50/Δp90/Δp99 get Welch intervals over those windows.
Proxy CPU and RSS come from the sweep's stored ``proxy_cost``.

``fortio_results`` ingest fortio JSON files instead of running load (Istio's published benchmark
runs, for example). The arm is the mode at the end of fortio's ``Labels`` (``..._c_16_1024_both``
-> ``both``), else the file name; fortio keeps one histogram per run and no time series, so the
differences come from the files' own percentiles and have no interval (one run per point, no
windows to estimate run-to-run variation from).

A decision matrix for "Istio, Linkerd or Consul?" puts the measured overhead beside the features
each mesh documents (``mesh_features.yaml``, with a source URL per cell). The local Envoy sidecar
stands for the Envoy-based meshes (Istio, Consul); Linkerd's own proxy is not measured here.

``meshes`` (kube contexts, each with its mesh) compares meshes on clusters instead, with trials as
replicates: ``mesh_compare_clusters.py``.
"""

from __future__ import annotations

import glob
import math
import re
import shutil
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import yaml

from workbench.experiments.session import ExperimentResult, Session
from workbench.load import storage
from workbench.load.formats import read_any
from workbench.load.results import LoadResult, empty_samples
from workbench.load.sweep import Point, SweepSpec, iter_results, run_sweep, table
from workbench.metrics.histogram import merge
from workbench.report.plots import COLOURS, PALETTE, styled
from workbench.stats.compare import compare

POINTS, FORTIO = "points", "fortio"
PERCENTILES = ("p50", "p90", "p99")
MIN_P99_REQUESTS = 100  # stats.compare needs this many requests in a window for its p99
EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
SIDECAR_ARMS = ("both-mtls", "both", "serveronly")  # the local arm that stands for a full mesh, in order
_LABEL = re.compile(r"_c_(?P<conns>\d+)_(?P<size>\d+)_(?P<arm>[^/]+)$")

Arms = dict[tuple[str, int], list[LoadResult]]


# ----------------------------------------------------------------------------------------------
# Running


def run(s: Session) -> None:
    """Run the interleaved trials on the local mesh, or ingest ``fortio_results``."""
    spec = s.spec
    if spec.fortio_results is not None:
        ingest(s)
        return
    if spec.meshes is not None:
        from workbench.experiments import mesh_compare_clusters

        mesh_compare_clusters.run(s)
        return
    sweep = SweepSpec(
        service=spec.service, rps=(spec.rps,), connections=tuple(spec.connections), modes=tuple(spec.modes),
        repetitions=spec.trials, duration_s=spec.duration, warmup_s=spec.warmup or 0.0, model=spec.model,
        path=spec.path, seed=s.seed,
    )  # fmt: skip
    total = len(sweep.points())
    s.progress(f"{len(spec.modes)} modes x {spec.trials} trials x {len(spec.connections)} connection counts "
               f"at {spec.rps:g} rps, {spec.duration:g} s each; a fresh mesh per mode and trial")  # fmt: skip
    store = s.store / POINTS
    seen = {"n": len(list(store.glob("*.json"))) if store.exists() else 0}  # a resumed run keeps its points

    def on_point(point: Point, result: LoadResult) -> None:
        seen["n"] += 1
        p50 = result.summary()["p50"]
        s.progress(f"trial {point.repetition + 1}/{spec.trials} {point.mode} x {point.connections} conns "
                   f"({seen['n']}/{total}): p50 {p50:.2f} ms")  # fmt: skip

    run_sweep(sweep, s.mesh, store, progress=False, on_point=on_point)


def resolve(patterns: list[str], base: Path) -> list[Path]:
    """Files matching ``patterns`` (globs, relative to ``base`` unless absolute), sorted, no repeats."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        for name in sorted(glob.glob(full, recursive=True)):
            if Path(name).is_file():
                found.setdefault(Path(name).resolve(), None)
    if not found:
        raise FileNotFoundError(
            f"fortio_results: no file matches {', '.join(map(repr, patterns))} (resolved against {base})"
        )
    return list(found)


def arm_of(result: LoadResult, path: Path) -> tuple[str, int]:
    """(arm, connections) of a fortio run: the mode after ``_c_<conns>_<size>_`` in its Labels or
    file name, else its whole Labels (or file name); connections from NumThreads, else the label."""
    labels = str(result.meta.get("labels") or "")
    match = _LABEL.search(labels) or _LABEL.search(path.stem)
    arm = match["arm"] if match else (labels or path.stem)
    conns = result.meta.get("connections") or (int(match["conns"]) if match else None)
    if conns is None:
        raise ValueError(f"{path}: NumThreads: missing, and the labels name no connection count")
    return arm, int(conns)


def ingest(s: Session) -> None:
    """Read every matching fortio file and store it, with its arm, under ``<store>/fortio``."""
    base = s.config_file.parent
    paths = resolve(s.spec.fortio_results, base)
    target = s.store / FORTIO
    shutil.rmtree(target, ignore_errors=True)
    for i, path in enumerate(paths):
        result = read_any(path)
        arm, conns = arm_of(result, path)
        result.meta.update({"arm": arm, "connections": conns})
        storage.save(result, target, f"{i:03d}_{path.stem}")
    s.save_json("ingest.json", {"patterns": s.spec.fortio_results, "base": str(base),
                                "files": [str(p) for p in paths]})  # fmt: skip
    s.progress(f"ingested {len(paths)} fortio result files from {base}")


# ----------------------------------------------------------------------------------------------
# Analysis


def _stored(s: Session) -> tuple[Arms, bool]:
    """The stored runs by (arm, connections), and whether they are ingested fortio runs."""
    fortio = s.spec.fortio_results is not None
    store = s.store / (FORTIO if fortio else POINTS)
    arms: Arms = defaultdict(list)
    for result in iter_results(store) if store.exists() else []:
        arm = result.meta.get("arm" if fortio else "mode")
        arms[(str(arm), int(result.meta["connections"]))].append(result)
    if not arms:
        raise FileNotFoundError(f"{store}: no stored runs for experiment {s.spec.name!r}")
    return dict(arms), fortio


def order(s: Session, arms: Arms) -> tuple[str, list[str]]:
    """(baseline, every arm in order): the spec's modes, else first seen; the baseline is the spec's
    ``baseline``, else the first mode, else an arm called base/baseline/none, else the first arm."""
    seen, modes = list(dict.fromkeys(a for a, _ in arms)), s.spec.modes or []
    names = [m for m in modes if m in seen] + [a for a in seen if a not in modes]
    base = s.spec.baseline
    if base is None and s.spec.modes:
        base = s.spec.modes[0]
    if base is None:
        base = next((n for n in ("base", "baseline", "none") if n in names), names[0])
    if base not in names:
        raise ValueError(f"baseline: {base!r} is not among the measured arms ({', '.join(names)})")
    return base, names


def window_for(duration_s: float, rate: float) -> float:
    """Equal windows per trial: ~duration/5, >= 1 s, long enough for 100 requests, >= 2 per trial."""
    target = max(1.0, duration_s / 5, MIN_P99_REQUESTS / rate if rate > 0 else 0.0)
    return duration_s / max(2, math.floor(duration_s / target))


def pooled(runs: list[LoadResult], window_s: float) -> pd.DataFrame:
    """The trials' samples laid end to end, each trial starting on a window boundary; the partial
    window at a trial's end (responses arriving after the last full window) is left out."""
    frames, slot = [], 0.0
    for r in runs:
        smp = r.samples
        if not len(smp):
            continue
        n = max(1, math.floor(float(r.meta.get("duration_s") or 0) / window_s + 1e-9))
        offset = smp["timestamp"] - smp["timestamp"].min()
        keep = offset < pd.Timedelta(seconds=n * window_s)
        frames.append(smp[keep].assign(timestamp=EPOCH + pd.Timedelta(seconds=slot) + offset[keep]))
        slot += (n + 1) * window_s
    return pd.concat(frames, ignore_index=True) if frames else empty_samples()


def _percentiles_of(runs: list[LoadResult]) -> dict[str, float]:
    """p50/p90/p99 (ms) of a point's runs: pooled samples, one run's summary, or merged histograms."""
    with_samples = [r for r in runs if len(r.samples)]
    if with_samples:
        lat = pd.concat([r.samples["latency_ms"] for r in with_samples]).to_numpy(float)
        return {p: float(np.quantile(lat, int(p[1:]) / 100)) for p in PERCENTILES}
    if len(runs) == 1:
        return {p: runs[0].summary()[p] for p in PERCENTILES}
    merged = merge(*[r.histogram for r in runs if r.histogram is not None])
    return {p: LoadResult.from_histogram({}, merged).summary()[p] for p in PERCENTILES}


def _overhead_rows(s: Session, arms: Arms, base: str, names: list[str], fortio: bool) -> list[dict[str, Any]]:
    spec, rows = s.spec, []
    for conns in sorted({c for _, c in arms}):
        if (base, conns) not in arms:
            continue
        a_runs = arms[(base, conns)]
        others = [n for n in names if n != base and (n, conns) in arms]
        if fortio:
            pa = _percentiles_of(a_runs)
            for name in others:
                pb = _percentiles_of(arms[(name, conns)])
                for p in PERCENTILES:
                    rows.append({"connections": conns, "mode": name, "metric": p, "baseline": pa[p],
                                 "candidate": pb[p], "estimate": pb[p] - pa[p], "ci_low": math.nan,
                                 "ci_high": math.nan, "verdict": "no interval", "n_windows": 0,
                                 "trials": len(arms[(name, conns)]),
                                 "method": "difference of the files' own percentiles; one run per point and "
                                           "no time windows, so no interval"})  # fmt: skip
            continue
        runs = [r for n in [base, *others] for r in arms[(n, conns)]]
        duration = min(float(r.meta.get("duration_s") or spec.duration) for r in runs)  # as measured
        w = window_for(duration, min(r.summary()["actual_rps"] for r in runs))
        pa = pooled(a_runs, w)
        for name in others:
            comp = compare(pa, pooled(arms[(name, conns)], w), metrics=PERCENTILES, window=w, margin=s.margin,
                           alpha=spec.alpha, paired=False, no_data=spec.no_data)  # fmt: skip
            for r in comp:
                rows.append({"connections": conns, "mode": name, "metric": r.metric, "baseline": r.baseline,
                             "candidate": r.candidate, "estimate": r.estimate, "ci_low": r.ci.low,
                             "ci_high": r.ci.high, "verdict": r.verdict, "n_windows": r.n_windows,
                             "trials": len(arms[(name, conns)]), "method": r.method + f", {w:.2f} s windows",
                             "margin": r.margin, "note": r.note, "explanation": r.explain()})  # fmt: skip
    return rows


def _proxy_cost(s: Session) -> pd.DataFrame:
    frame = table(s.store / POINTS)
    cols = ["achieved_rps", "cpu_cores", "cpu_cores_client", "cpu_cores_server", "rss_mib",
            "cpu_mcores_per_1000rps"]  # fmt: skip
    for c in cols:
        if c not in frame:
            frame[c] = math.nan
    cost = frame.groupby(["mode", "connections"], as_index=False)[cols].median()
    cost["rss_mib_per_1000rps"] = cost["rss_mib"] / (cost["achieved_rps"] / 1000)
    return cost


def analyse(s: Session) -> ExperimentResult:
    """Overhead per mode and connection count against the baseline, from the stored runs alone."""
    spec = s.spec
    if spec.meshes is not None:
        from workbench.experiments import mesh_compare_clusters

        return mesh_compare_clusters.analyse(s)
    arms, fortio = _stored(s)
    base, names = order(s, arms)
    overhead = pd.DataFrame(_overhead_rows(s, arms, base, names, fortio))
    percentiles = pd.DataFrame([{"mode": a, "connections": c, "trials": len(runs), **_percentiles_of(runs)}
                                for (a, c), runs in arms.items()])  # fmt: skip
    percentiles["order"] = percentiles["mode"].map(names.index)
    percentiles = percentiles.sort_values(["order", "connections"]).drop(columns="order")
    percentiles = percentiles.reset_index(drop=True)
    cost = None if fortio else _proxy_cost(s)
    tables: dict[str, pd.DataFrame] = {"overhead": overhead, "percentiles": percentiles}
    if cost is not None:
        tables["proxy_cost"] = cost
    details = {"baseline": base, "arms": names, "source": "fortio" if fortio else "local"}
    if overhead.empty:
        headline = f"no connection count has both the baseline {base!r} and another arm; nothing to compare"
        return ExperimentResult(spec.name, "mesh_compare", "inconclusive", "inconclusive", headline, {},
                                tables, details)  # fmt: skip
    figures: dict[str, Any] = {"baseline": base}
    for (conns, mode), g in overhead.groupby(["connections", "mode"]):
        for p in ("p50", "p99"):
            row = g[g["metric"] == p].iloc[0]
            figures[f"delta_{p}_{mode}_c{conns}"] = row["estimate"]
            if not fortio:
                figures[f"delta_{p}_{mode}_c{conns}_ci"] = [row["ci_low"], row["ci_high"]]
    decision, sources = decision_matrix(s, overhead, cost, base, fortio, arms)
    tables["decision"], tables["decision_sources"] = decision, sources
    if overhead["estimate"].isna().all():
        verdict, severity = "inconclusive", "inconclusive"
    else:
        verdict, severity = "measured", "ok"
    checks = [
        {
            "name": f"{r['mode']} vs {base} at {r['connections']} connections {r['metric']}",
            "verdict": r["verdict"],
            "severity": "ok",  # overhead is what is measured here, not a regression
            "explanation": r.get("explanation") or r["method"],
            "estimate": r["estimate"],
            "ci": [r["ci_low"], r["ci_high"]],
        }
        for _, r in overhead.iterrows()
    ]
    return ExperimentResult(spec.name, "mesh_compare", verdict, severity, _headline(overhead, base, fortio),
                            figures, tables, details, checks)  # fmt: skip


def _fmt(row: pd.Series, with_ci: bool = True) -> str:
    if not np.isfinite(row["estimate"]):
        return f"no {row['metric']} estimate ({row.get('note') or 'no data'})"
    text = f"{row['estimate']:+.2f} ms {row['metric']}"
    if with_ci and np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    return text


def _headline(overhead: pd.DataFrame, base: str, fortio: bool) -> str:
    mode = overhead["mode"].iloc[-1]
    conns = overhead[overhead["mode"] == mode]["connections"].max()
    g = overhead[(overhead["mode"] == mode) & (overhead["connections"] == conns)]
    p50, p99 = (g[g["metric"] == p].iloc[0] for p in ("p50", "p99"))
    text = f"{mode} adds {_fmt(p50)} and {_fmt(p99)} at {_conns(conns)} vs {base}"
    if fortio:
        return text + " (fortio's own percentiles; one run per point, so no interval)"
    return text + f" (interleaved trials, {int(p50['trials'])} per mode; intervals over time windows)"


# ----------------------------------------------------------------------------------------------
# Decision matrix


def features() -> dict[str, Any]:
    """The documented features of Istio, Linkerd and Consul, with a source URL per cell."""
    text = resources.files("workbench.experiments").joinpath("mesh_features.yaml").read_text()
    return yaml.safe_load(text)


def decision_matrix(
    s: Session, overhead: pd.DataFrame, cost: pd.DataFrame | None, base: str, fortio: bool, arms: Arms
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, sources): measured overhead where this run measured it, then each documented feature."""
    doc = features()
    meshes = list(doc["meshes"])
    cells: dict[str, dict[str, str]] = {}
    sources: dict[str, dict[str, str]] = {}
    measured = _measured_meshes(doc, arms, fortio)
    arm = _representative(overhead, fortio)
    where = f"measured here: run {s.run_id}, experiment {s.spec.name}"
    if fortio:
        files = [Path(str(r.meta.get("source_file", ""))) for runs in arms.values() for r in runs]
        where = f"ingested fortio files in {', '.join(sorted({str(f.parent) for f in files}))}"
    for metric in ("p50", "p99"):
        label = f"added {metric} latency"
        rows = overhead[(overhead["mode"] == arm) & (overhead["metric"] == metric)]
        text = "; ".join(f"{_fmt(r)} at {_conns(r['connections'])}" for _, r in rows.iterrows())
        what = f" ({'fortio runs' if fortio else 'local Envoy sidecars'}, {arm} vs {base})"
        cells[label] = {m: text + what if m in measured else _not_measured(doc, m, fortio) for m in meshes}
        sources[label] = {m: where if m in measured else "" for m in meshes}
    if cost is not None:
        own = cost[cost["mode"] == arm]
        text = "; ".join(f"{r['cpu_mcores_per_1000rps']:.0f} mcores per 1000 rps, {r['rss_mib']:.0f} MiB RSS "
                         f"at {_conns(r['connections'])}" for _, r in own.iterrows())  # fmt: skip
        label = "proxy CPU and memory"
        cells[label] = {m: f"{text} (all sidecars, {arm})" if m in measured else _not_measured(doc, m, fortio)
                        for m in meshes}  # fmt: skip
        sources[label] = {m: where if m in measured else "" for m in meshes}
    for feature, per_mesh in doc["features"].items():
        cells[feature] = {m: per_mesh[m]["summary"] for m in meshes}
        sources[feature] = {m: per_mesh[m]["source"] for m in meshes}
    frame = pd.DataFrame.from_dict(cells, orient="index")[meshes].rename_axis("row")
    return frame, pd.DataFrame.from_dict(sources, orient="index")[meshes].rename_axis("row")


def _conns(n: int) -> str:
    return f"{n} connection" + ("" if n == 1 else "s")


def _representative(overhead: pd.DataFrame, fortio: bool) -> str:
    modes = list(dict.fromkeys(overhead["mode"]))
    preferred = [m for m in SIDECAR_ARMS if m in modes] if not fortio else []
    fortio_full = [m for m in modes if m.endswith("both")] if fortio else []
    return (preferred or fortio_full or modes)[0]


def _measured_meshes(doc: dict[str, Any], arms: Arms, fortio: bool) -> set[str]:
    if not fortio:  # the local mesh runs Envoy: it stands for the Envoy-based meshes
        return {m for m, info in doc["meshes"].items() if info.get("envoy_based")}
    text = " ".join(f"{r.meta.get('source_file', '')} {r.meta.get('labels', '')}"
                    for runs in arms.values() for r in runs).lower()  # fmt: skip
    return {m for m in doc["meshes"] if m.lower() in text}


def _not_measured(doc: dict[str, Any], mesh: str, fortio: bool) -> str:
    proxy = doc["meshes"][mesh]["proxy"]
    if fortio:
        return f"not measured here (the ingested files do not name {mesh})"
    return f"not measured here ({proxy} is not part of the local mesh)"


def decision_markdown(result: ExperimentResult) -> str:
    """The decision matrix as a Markdown table, each documented cell linked to its source page."""
    cells, sources = result.tables.get("decision"), result.tables.get("decision_sources")
    if cells is None or sources is None:
        return "_no decision matrix: nothing was compared_"
    meshes = list(cells.columns)
    lines = ["| | " + " | ".join(meshes) + " |", "|---|" + "---|" * len(meshes)]
    for row in cells.index:
        out = []
        for m in meshes:
            text, src = str(cells.loc[row, m]).replace("|", "/"), str(sources.loc[row, m])
            out.append(f"{text} ([docs]({src}))" if src.startswith("http") else text)
        lines.append(f"| **{row}** | " + " | ".join(out) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Figures


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """Overhead with intervals, latency percentiles per mode, and proxy CPU per 1000 rps."""
    out: dict[str, go.Figure] = {}
    base = result.details.get("baseline", "baseline")
    overhead = result.tables.get("overhead")
    if overhead is not None and len(overhead):
        out["overhead"] = _overhead_figure(overhead, base, result.headline)
    pct = result.tables["percentiles"]
    fig = go.Figure()
    for i, (mode, g) in enumerate(pct.groupby("mode", sort=False)):
        for p, dash in zip(PERCENTILES, ("solid", "dash", "dot"), strict=True):
            fig.add_trace(go.Scatter(x=g["connections"], y=g[p], mode="lines+markers", name=f"{mode} {p}",
                                     line={"color": PALETTE[i % len(PALETTE)], "dash": dash}))  # fmt: skip
    fig.update_xaxes(type="log")
    top = pct.loc[pct["p99"].idxmax()]
    out["percentiles"] = styled(
        fig, "Latency percentiles per mode", f"highest p99 {top['p99']:.2f} ms ({top['mode']}, "
        f"{top['connections']} connections); solid p50, dashed p90, dotted p99",
        "concurrent connections (log scale)", "latency (ms)",
    )  # fmt: skip
    cost = result.tables.get("proxy_cost")
    if cost is not None and np.isfinite(cost["cpu_mcores_per_1000rps"]).any():
        fig = go.Figure()
        for i, (mode, g) in enumerate(cost.groupby("mode", sort=False)):
            fig.add_trace(go.Bar(x=[_conns(c) for c in g["connections"]], y=g["cpu_mcores_per_1000rps"],
                                 name=mode, marker={"color": PALETTE[i % len(PALETTE)]}))  # fmt: skip
        top = cost.loc[cost["cpu_mcores_per_1000rps"].idxmax()]
        out["proxy_cpu"] = styled(
            fig, "Sidecar CPU per 1000 requests/s",
            f"most: {top['mode']} at {top['connections']} connections, {top['cpu_mcores_per_1000rps']:.0f} "
            "millicores per 1000 rps (all sidecars together)",
            "concurrent connections", "sidecar CPU (millicores per 1000 rps)",
        )  # fmt: skip
    return out


def _overhead_figure(overhead: pd.DataFrame, base: str, reading: str) -> go.Figure:
    fig = go.Figure()
    shown = overhead[overhead["metric"].isin(["p50", "p99"])]
    for i, (mode, g) in enumerate(shown.groupby("mode", sort=False)):
        for metric, symbol in (("p50", "circle"), ("p99", "diamond")):
            m = g[g["metric"] == metric]
            has_ci = bool(np.isfinite(m["ci_low"]).any())
            colour = PALETTE[i % len(PALETTE)]
            fig.add_trace(go.Scatter(
                x=[_conns(c) for c in m["connections"]], y=m["estimate"], mode="markers",
                name=f"{mode} Δ{metric}", marker={"symbol": symbol, "size": 10, "color": colour},
                error_y={"type": "data", "symmetric": False, "visible": has_ci,
                         "array": (m["ci_high"] - m["estimate"]).clip(lower=0),
                         "arrayminus": (m["estimate"] - m["ci_low"]).clip(lower=0)},
            ))  # fmt: skip
    fig.add_hline(y=0, line={"color": COLOURS["grey"], "dash": "dot"})
    fig.update_layout(scattermode="group")
    return styled(fig, f"Latency added against {base}, per mode and connection count", reading,
                  "concurrent connections", f"added latency vs {base} (ms; bars = interval)")  # fmt: skip
