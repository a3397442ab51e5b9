"""Mesh comparison: what each sidecar mode costs — per proxy traversal, directly, and end to end.

Local ``modes`` run as interleaved repeated trials: every trial visits every mode (A B, B A, ...)
at one rate and each of the spec's connection counts, on a fresh mesh per mode and trial started
without the workbench's own telemetry (no Prometheus, no exporters: Envoy keeps its stats and
access logs, as a real mesh does) and with only the target's call tree (``Topology.serving``: the
services it never calls would only share this machine's CPU), while the other local meshes
running on the machine pause their scraping (``Session.quiet_others``). The rate is the spec's,
or with ``rps: auto`` (the default) half of the capacity a short probe of the slowest mode finds
(``experiments.autorate``).

A report reads, in this order:

1. **Direct**: each sidecar's own time per traversal — its access log's duration minus its
   upstream round trip (``analysis.proxycost``) — per role (client outbound, server inbound) and
   mode: p50/p90/p99, the request and response paths, new connections, CPU per 1000 rps and
   traversals per request. The headline "each sidecar traversal adds N µs p50 [interval]" takes
   one p50 per trial and a t interval over the trials.
2. **End to end** (the cross-check): Δp50/Δp90/Δp99 of each mode against the baseline per
   connection count. The trial is the unit of replication: each trial's percentile over all its
   requests, paired with the baseline's trial that ran next to it, and a t interval with
   n_trials - 1 degrees of freedom (``stats.trials.paired_trials``); windows pooled across trials
   would hide the run-to-run variation that differs between runs. One trial per mode (``--quick``)
   gives "no interval (one trial per mode)".
3. **Agreement**: the sidecars' own time on a request's critical path against the end-to-end Δp50;
   what the difference adds beyond it is outside any proxy's own accounting (loopback hops, the
   kernel, scheduling).
4. **Components** (with the ambient modes): per mode and component — sidecar, node proxy (Istio's
   ztunnel), waypoint — vCPU per 1000 rps through one proxy and memory per proxy, beside Istio's
   published figures for the same component (``mesh_features.yaml``: ``components``, with its
   source) and the ratio of the two, and each component's traversals per request. Node proxies log
   tunnels, not requests: their traversals per request follow from the call structure.

Every point records the host's CPU over all cores, the load generator's own CPU, achieved vs
requested rate and dropped iterations. A comparison with a saturated point (host CPU >= 85 %,
achieved < 99 %, > 1 % dropped) is not reported as proxy overhead: its verdict says
``saturated`` and why. The CPU share of every process during the points (the workbench's own,
k6, the sidecars, the idle services, the rest of the host) is in the ``observer`` table.

``fortio_results`` ingest fortio JSON files instead of running load (Istio's published benchmark
runs, for example). The arm is the mode at the end of fortio's ``Labels`` (``..._c_16_1024_both``
-> ``both``), else the file name; fortio keeps one histogram per run and no time series, so the
differences come from the files' own percentiles and have no interval.

The decision matrix for "Istio, Linkerd or Consul?" shows what this run measured once, as "Envoy
sidecar (the data plane of Istio and Consul), measured here", beside what each mesh *publishes*
about its data plane (``mesh_features.yaml``: figures quoted with their source) and the features
each documents. Nothing measured here is labelled as a mesh it was not.

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

from workbench.analysis import proxycost
from workbench.backends.local.layout import MODES
from workbench.experiments import autorate
from workbench.experiments.session import ExperimentResult, Session
from workbench.load import storage
from workbench.load.formats import read_any
from workbench.load.results import LoadResult
from workbench.load.sweep import Point, SweepSpec, iter_results, run_sweep
from workbench.metrics.histogram import merge
from workbench.report.plots import COLOURS, PALETTE, styled
from workbench.stats.compare import Margin
from workbench.stats.trials import NO_INTERVAL, paired_trials

POINTS, FORTIO, TRAVERSALS = "points", "fortio", "traversals"
PERCENTILES = ("p50", "p90", "p99")
SIDECAR_ARMS = ("both-mtls", "both", "serveronly")  # the local arm that stands for a full mesh, in order
MEASURED = "Envoy sidecar (the data plane of Istio and Consul), measured here"
INGESTED = "ingested fortio results"
_LABEL = re.compile(r"_c_(?P<conns>\d+)_(?P<size>\d+)_(?P<arm>[^/]+)$")

Arms = dict[tuple[str, int], list[LoadResult]]


# ----------------------------------------------------------------------------------------------
# Running


def run(s: Session) -> None:
    """Run the interleaved trials on fresh local meshes, or ingest ``fortio_results``."""
    spec = s.spec
    if spec.fortio_results is not None:
        ingest(s)
        return
    if spec.meshes is not None:
        from workbench.experiments import mesh_compare_clusters

        mesh_compare_clusters.run(s)
        return
    with s.quiet_others():
        rps = _rate(s)
        sweep = SweepSpec(
            service=spec.service, rps=(rps,), connections=tuple(spec.connections), modes=tuple(spec.modes),
            repetitions=spec.trials, duration_s=spec.duration, warmup_s=spec.warmup or 0.0, model=spec.model,
            path=spec.path, seed=s.seed,
        )  # fmt: skip
        total = len(sweep.points())
        s.progress(f"{len(spec.modes)} modes x {spec.trials} trials x {len(spec.connections)} connection "
                   f"counts at {rps:g} rps, {spec.duration:g} s each; a fresh mesh (no workbench telemetry) "
                   "per mode and trial")  # fmt: skip
        store = s.store / POINTS
        seen = {
            "n": len(list(store.glob("*.json"))) if store.exists() else 0
        }  # a resumed run keeps its points

        def on_point(point: Point, result: LoadResult) -> None:
            seen["n"] += 1
            p50, sat = result.summary()["p50"], result.saturation()
            host = result.meta.get("host") or {}
            s.progress(f"trial {point.repetition + 1}/{spec.trials} {point.mode} x {point.connections} conns "
                       f"({seen['n']}/{total}): p50 {p50:.2f} ms; host CPU {sat.host_cpu_pct:.0f} %, k6 "
                       f"{100 * float(host.get('loadgen_cpu_cores') or 0):.0f} % of a core; "
                       f"{proxycost.observer_note(result)}"
                       + ("; SATURATED: " + "; ".join(sat.reasons) if sat.saturated else ""))  # fmt: skip

        recorder = proxycost.TraversalRecorder(s.store / TRAVERSALS)
        fresh = lambda mode: s.mesh(mode, fresh=True, serving=spec.service)  # noqa: E731
        run_sweep(sweep, fresh, store, progress=False, on_point=on_point, on_measured=recorder,
                  before_point=recorder.before)  # fmt: skip


def slowest(modes: list[str]) -> str:
    """The heaviest of ``modes`` (both-mtls > both > serveronly > none)."""
    return max(modes, key=lambda m: MODES.index(m) if m in MODES else -1)


def _rate(s: Session) -> float:
    """The rate of every point: the spec's, or ``rps: auto``'s choice (0 for the closed model)."""
    spec = s.spec
    if spec.model != "open":
        return 0.0
    mode = slowest(spec.modes)
    fresh = lambda: s.mesh(mode, fresh=True, serving=spec.service)  # noqa: E731
    return autorate.choose(s, fresh, what=f"{mode}, the slowest mode", connections=min(spec.connections)).rps


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


def trial_points(arms: Arms) -> pd.DataFrame:
    """One row per stored trial point: mode, connections, trial, its p50/p90/p99 over all its
    requests, and whether it was saturated (with why, host CPU, k6's CPU, achieved, dropped)."""
    rows = []
    for (mode, conns), runs in arms.items():
        for r in runs:
            sat = r.saturation()
            rows.append({"mode": mode, "connections": conns, "trial": int(r.meta.get("repetition", 0)) + 1,
                         "point": r.meta.get("point", ""), **_percentiles_of([r]),
                         "saturated": sat.saturated, "saturation": sat.explain(),
                         "host_cpu_pct": sat.host_cpu_pct, "loadgen_cpu_cores": sat.loadgen_cpu_cores,
                         "achieved_pct": sat.achieved_pct, "dropped_pct": sat.dropped_pct})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["mode", "connections", "trial"], ignore_index=True)


def _saturation_note(points: pd.DataFrame, most: int = 2) -> str:
    """Which points were saturated and why: the first ``most`` of them, then how many more."""
    bad = points[points["saturated"]]
    text = "; ".join(f"{r['mode']} trial {r['trial']} at {_conns(r['connections'])}: "
                     f"{r['saturation'].removeprefix('saturated: ')}"
                     for _, r in bad.head(most).iterrows())  # fmt: skip
    return text + (f"; and {len(bad) - most} more" if len(bad) > most else "")


def trial_rows(
    points: pd.DataFrame, base: str, names: list[str], margin: Margin, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Δp50/Δp90/Δp99 of each arm against ``base`` per connection count, trials as the replicates
    (paired by trial: ``stats.trials.paired_trials``); ``points``: ``trial_points``. A comparison
    with a saturated point has the verdict ``saturated``, naming the points and why."""
    rows: list[dict[str, Any]] = []
    confidence = 1 - 2 * alpha / len(PERCENTILES)  # each one-sided claim at alpha / k, as stats.compare
    for conns in sorted(points["connections"].unique()):
        a = points[(points["mode"] == base) & (points["connections"] == conns)].set_index("trial")
        if not len(a):
            continue
        for name in [n for n in names if n != base]:
            b = points[(points["mode"] == name) & (points["connections"] == conns)].set_index("trial")
            if not len(b):
                continue
            paired = a.index.intersection(b.index)
            xa, xb = (a.loc[paired], b.loc[paired]) if len(paired) == max(len(a), len(b)) else (a, b)
            saturated = _saturation_note(pd.concat([a, b]).reset_index())
            for p in PERCENTILES:
                m = margin.latency(float(xa[p].mean()))
                res = paired_trials(
                    xa[p].to_numpy(float), xb[p].to_numpy(float), margin=m, confidence=confidence
                )
                verdict = "saturated" if saturated else res.verdict
                text = res.explain("ms", p)
                if saturated:
                    text = f"{p}: saturated ({saturated}); not reported as proxy overhead"
                rows.append({"connections": int(conns), "mode": name, "metric": p, "baseline": res.baseline,
                             "candidate": res.candidate, "estimate": res.estimate, "ci_low": res.ci.low,
                             "ci_high": res.ci.high, "verdict": verdict, "trials": res.n_trials,
                             "method": res.method, "margin": res.margin, "note": res.note,
                             "saturated": bool(saturated), "explanation": text})  # fmt: skip
    return rows


def _fortio_rows(arms: Arms, base: str, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for conns in sorted({c for _, c in arms}):
        if (base, conns) not in arms:
            continue
        pa = _percentiles_of(arms[(base, conns)])
        for name in [n for n in names if n != base and (n, conns) in arms]:
            pb = _percentiles_of(arms[(name, conns)])
            for p in PERCENTILES:
                rows.append({"connections": conns, "mode": name, "metric": p, "baseline": pa[p],
                             "candidate": pb[p], "estimate": pb[p] - pa[p], "ci_low": math.nan,
                             "ci_high": math.nan, "verdict": NO_INTERVAL, "trials": len(arms[(name, conns)]),
                             "method": "difference of the files' own percentiles; one run per point and "
                                       "no time windows, so no interval", "saturated": False})  # fmt: skip
    return rows


def observer_table(arms: Arms, store: Path) -> pd.DataFrame:
    """Per mode: the mean share of the host's CPU (% of all cores) each kind of process used
    during the points (``proxycost.cpu_shares``): is the workbench eating what it measures?"""
    rows = []
    for (mode, conns), runs in arms.items():
        for r in runs:
            t = proxycost.load_traversals(store / TRAVERSALS, str(r.meta.get("point", "")))
            on_path = set(t["sidecar"]) if t is not None and len(t) else set()
            processes = r.meta.get("processes") or {}  # node proxies log tunnels: each one carries some
            nodes = [n for n, labels in processes.items() if (labels or {}).get("direction") == "node"]
            on_path |= {n.removeprefix("envoy ") for n in nodes}
            rows.append({"mode": mode, "connections": conns, **proxycost.cpu_shares(r, on_path)})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).drop(columns="connections")
    return frame.groupby("mode", sort=False).mean().reset_index()


def analyse(s: Session) -> ExperimentResult:
    """Proxy cost per traversal, overhead per mode and connection count, from the stored runs alone."""
    spec = s.spec
    if spec.meshes is not None:
        from workbench.experiments import mesh_compare_clusters

        return mesh_compare_clusters.analyse(s)
    arms, fortio = _stored(s)
    base, names = order(s, arms)
    percentiles = pd.DataFrame([{"mode": a, "connections": c, "trials": len(runs), **_percentiles_of(runs)}
                                for (a, c), runs in arms.items()])  # fmt: skip
    percentiles["order"] = percentiles["mode"].map(names.index)
    percentiles = (
        percentiles.sort_values(["order", "connections"]).drop(columns="order").reset_index(drop=True)
    )
    details: dict[str, Any] = {"baseline": base, "arms": names, "source": "fortio" if fortio else "local"}
    tables: dict[str, pd.DataFrame] = {"percentiles": percentiles}
    chosen = None if fortio else autorate.stored(s)
    if fortio:
        overhead, proxy, points = (
            pd.DataFrame(_fortio_rows(arms, base, names)),
            pd.DataFrame(),
            pd.DataFrame(),
        )
    else:
        points = trial_points(arms)
        overhead = pd.DataFrame(trial_rows(points, base, names, s.margin, spec.alpha))
        costs = proxycost.sweep_costs(s.store / POINTS, s.store / TRAVERSALS)
        proxy = proxycost.over_trials(costs, alpha=spec.alpha)
        tables.update(points=points, proxy_cost=proxy, traversal_points=costs,
                      observer=observer_table(arms, s.store), components=components(proxy))  # fmt: skip
        if chosen is not None:
            details["rate"] = chosen.reason
    tables["overhead"] = overhead
    if overhead.empty:
        headline = f"no connection count has both the baseline {base!r} and another arm; nothing to compare"
        return ExperimentResult(spec.name, "mesh_compare", "inconclusive", "inconclusive", headline, {},
                                tables, details)  # fmt: skip
    rep = _representative(overhead, fortio)
    conns = int(overhead[overhead["mode"] == rep]["connections"].max())
    figures: dict[str, Any] = {}  # the headline's figures first: the index shows the first few
    for mode in sorted(names, key=lambda m: m != rep):
        top = proxycost.overall(_group(proxy, mode, conns))
        if top is not None:
            figures[f"own_p50_us_{mode}"] = top["own_p50_us"]
            figures[f"own_p50_us_{mode}_ci"] = [top["own_p50_ci_low"], top["own_p50_ci_high"]]
    first = (overhead["mode"] == rep) & (overhead["connections"] == conns)
    rows = overhead.assign(first=first).sort_values("first", ascending=False, kind="stable")
    for (_, c, mode), g in rows.groupby(["first", "connections", "mode"], sort=False):
        for p in ("p50", "p99"):
            row = g[g["metric"] == p].iloc[0]
            figures[f"delta_{p}_{mode}_c{c}"] = row["estimate"]
            if not fortio:
                figures[f"delta_{p}_{mode}_c{c}_ci"] = [row["ci_low"], row["ci_high"]]
    if chosen is not None:
        figures["rps"] = chosen.rps
        if chosen.auto:
            figures["capacity_rps"] = chosen.capacity_rps
    figures["baseline"] = base
    decision, sources = decision_matrix(s, overhead, proxy, base, fortio, arms, rep)
    tables["decision"], tables["decision_sources"] = decision, sources
    if len(points) and points["saturated"].any():
        verdict, severity = "saturated", "inconclusive"
    elif overhead["estimate"].isna().all():
        verdict, severity = "inconclusive", "inconclusive"
    else:
        verdict, severity = "measured", "ok"
    checks = [
        {
            "name": f"{r['mode']} vs {base} at {r['connections']} connections {r['metric']}",
            "verdict": r["verdict"],
            # overhead is what is measured here, not a regression; a saturated point measured queueing
            "severity": "inconclusive" if r["verdict"] == "saturated" else "ok",
            "explanation": r.get("explanation") or r["method"],
            "estimate": r["estimate"],
            "ci": [r["ci_low"], r["ci_high"]],
        }
        for _, r in overhead.iterrows()
    ]
    headline = _headline(overhead, proxy, points, base, rep, conns, fortio, chosen)
    return ExperimentResult(spec.name, "mesh_compare", verdict, severity, headline, figures, tables, details,
                            checks)  # fmt: skip


def _group(proxy: pd.DataFrame, mode: str, conns: int) -> pd.DataFrame:
    """The ``proxycost.over_trials`` rows of one mode and connection count."""
    if not len(proxy):
        return proxy
    return proxy[(proxy["mode"] == mode) & (proxy["connections"] == conns)]


def _fmt(row: pd.Series, with_ci: bool = True) -> str:
    if not np.isfinite(row["estimate"]):
        return f"no {row['metric']} estimate ({row.get('note') or 'no data'})"
    text = f"{row['estimate']:+.2f} ms {row['metric']}"
    if with_ci and np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    elif with_ci and row.get("note"):
        text += f" ({row['note']})"
    return text


def _headline(
    overhead: pd.DataFrame, proxy: pd.DataFrame, points: pd.DataFrame, base: str, rep: str, conns: int,
    fortio: bool, chosen: autorate.Rate | None,
) -> str:  # fmt: skip
    g = overhead[(overhead["mode"] == rep) & (overhead["connections"] == conns)]
    p50, p99 = (g[g["metric"] == p].iloc[0] for p in ("p50", "p99"))
    e2e = f"{rep} adds {_fmt(p50)} and {_fmt(p99)} at {_conns(conns)} vs {base}"
    if fortio:
        return e2e + " (fortio's own percentiles; one run per point, so no interval)"
    rate = f" ({chosen.reason})" if chosen is not None and chosen.auto else ""
    if len(points) and points["saturated"].any():
        bad = points[points["saturated"]]
        return (f"saturated: {len(bad)} of {len(points)} points ({_saturation_note(bad)}); the comparison is "
                f"not reported as proxy overhead: rerun at a lower rate{rate}")  # fmt: skip
    mine, theirs = _group(proxy, rep, conns), _group(proxy, base, conns)
    parts = [proxycost.sentence(mine, rep),
             f"end to end, {e2e} (trials as replicates, {int(p50['trials'])} per mode)",
             proxycost.agreement(mine, theirs, p50, base), component_sentence(components(proxy))]  # fmt: skip
    text = "; ".join(x for x in parts if x)
    return text[0].upper() + text[1:] + rate


# ----------------------------------------------------------------------------------------------
# Components: measured per 1000 rps beside Istio's published figures

COMPONENT = {"client outbound": "sidecar", "server inbound": "sidecar", proxycost.NODE_PROXY: "ztunnel",
             "waypoint": "waypoint"}  # fmt: skip
AMBIENT_MODES = ("ambient", "ambient-waypoint")


def components(proxy: pd.DataFrame) -> pd.DataFrame:
    """Per mode, connection count and component (sidecar roles, node proxy, waypoint): traversals per
    request, vCPU per 1000 rps through one proxy and MiB per proxy, Istio's published figures for
    that component (``mesh_features.yaml``) and measured / published. Empty without such rows."""
    if proxy.empty:
        return pd.DataFrame()
    published = features()["components"]
    rows = []
    for _, r in proxy[proxy["role"].isin(list(COMPONENT))].iterrows():
        ref = published[COMPONENT[r["role"]]]
        cpu, mem = float(r["vcpu_per_1000_traversals"]), float(r["rss_mib_per_proxy"])
        rows.append({"mode": r["mode"], "connections": int(r["connections"]), "role": r["role"],
                     "istio_component": COMPONENT[r["role"]], "per_request": float(r["per_request"]),
                     "vcpu_per_1000_rps": cpu, "istio_vcpu_per_1000_rps": ref["vcpu_per_1000_rps"],
                     "cpu_ratio": cpu / ref["vcpu_per_1000_rps"], "rss_mib": mem,
                     "istio_memory_mb": ref["memory_mb"], "memory_ratio": mem / ref["memory_mb"],
                     "trials": int(r["trials"]), "source": published["source"]})  # fmt: skip
    return pd.DataFrame(rows)


def component_sentence(table: pd.DataFrame) -> str:
    """ "in ambient-waypoint, per 1000 rps through one proxy: node proxy 0.08 vCPU (Istio's ztunnel:
    0.06) ..." for the ambient modes; empty without them."""
    if table.empty:
        return ""
    parts = []
    for mode in [m for m in AMBIENT_MODES if m in set(table["mode"])]:
        g = table[table["mode"] == mode]
        g = g[g["connections"] == g["connections"].max()]
        cells = [f"{r['role']} {r['vcpu_per_1000_rps']:.2f} vCPU, {r['rss_mib']:.0f} MiB (Istio's "
                 f"{r['istio_component']}: {r['istio_vcpu_per_1000_rps']:.2f} vCPU, "
                 f"{r['istio_memory_mb']:.0f} MB)"
                 for _, r in g.iterrows() if np.isfinite(r["vcpu_per_1000_rps"])]  # fmt: skip
        if cells:
            parts.append(f"in {mode}, per 1000 rps through one proxy: " + ", ".join(cells))
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Decision matrix


def features() -> dict[str, Any]:
    """Istio's, Linkerd's and Consul's published data-plane figures and documented features, each
    cell with its source URL (``mesh_features.yaml``)."""
    text = resources.files("workbench.experiments").joinpath("mesh_features.yaml").read_text()
    return yaml.safe_load(text)


def decision_matrix(
    s: Session, overhead: pd.DataFrame, proxy: pd.DataFrame, base: str, fortio: bool, arms: Arms, rep: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, sources): one column for what this run measured — "Envoy sidecar (the data plane of
    Istio and Consul), measured here", or the ingested fortio results — then one per mesh with the
    figures it publishes and the features it documents."""
    doc = features()
    meshes = list(doc["meshes"])
    first = INGESTED if fortio else MEASURED
    columns = [first, *meshes]
    where = f"measured here: run {s.run_id}, experiment {s.spec.name}"
    if fortio:
        files = [Path(str(r.meta.get("source_file", ""))) for runs in arms.values() for r in runs]
        named = sorted(_named_meshes(doc, arms))
        where = (f"ingested fortio files in {', '.join(sorted({str(f.parent) for f in files}))}"
                 + (f" (the files name {', '.join(named)})" if named else ""))  # fmt: skip
    ours = _measured_cells(overhead, proxy, base, rep, fortio)
    cells: dict[str, dict[str, str]] = {}
    sources: dict[str, dict[str, str]] = {}
    for row, published in doc["published"].items():
        cells[row] = {
            first: ours.get(row, "not measured here"),
            **{m: published[m]["summary"] for m in meshes},
        }
        sources[row] = {first: where if row in ours else "", **{m: published[m]["source"] for m in meshes}}
    for feature, per_mesh in doc["features"].items():
        cells[feature] = {first: "", **{m: per_mesh[m]["summary"] for m in meshes}}
        sources[feature] = {first: "", **{m: per_mesh[m]["source"] for m in meshes}}
    frame = pd.DataFrame.from_dict(cells, orient="index")[columns].rename_axis("row")
    return frame, pd.DataFrame.from_dict(sources, orient="index")[columns].rename_axis("row")


def _measured_cells(
    overhead: pd.DataFrame, proxy: pd.DataFrame, base: str, rep: str, fortio: bool
) -> dict[str, str]:
    """This run's figures for the matrix rows it measured (the representative mode vs the baseline)."""
    out: dict[str, str] = {}
    rows = overhead[(overhead["mode"] == rep) & overhead["metric"].isin(["p50", "p99"])]
    if len(rows):
        text = "; ".join(f"{_fmt(r)} at {_conns(r['connections'])}" for _, r in rows.iterrows())
        out["added latency"] = f"{text} ({'fortio runs' if fortio else 'end to end'}, {rep} vs {base})"
    if len(proxy):
        own = proxy[proxy["mode"] == rep]
        conns = int(own["connections"].max()) if len(own) else 0
        own = own[own["connections"] == conns]
        roles = own[own["role"] != proxycost.ALL]
        if len(roles) and np.isfinite(roles["own_p50_us"]).any():
            cells = {
                "own time per proxy": ("own_p50_us", lambda r: f"{proxycost.us_text(r)} p50, "
                                       f"{r['own_p99_us']:.0f} µs p99 per traversal"),
                "proxy CPU": ("vcpu_per_1000_traversals", lambda r: f"{r['vcpu_per_1000_traversals']:.2f} "
                              "vCPU per 1000 rps through one proxy"),
                "proxy memory": ("rss_mib_per_proxy",
                                 lambda r: f"{r['rss_mib_per_proxy']:.0f} MiB RSS per proxy"),
            }  # fmt: skip
            for row, (column, text) in cells.items():
                parts = [f"{r['role']}: {text(r)}" for _, r in roles.iterrows() if np.isfinite(r[column])]
                if parts:
                    out[row] = "; ".join(parts) + f" ({rep}, {_conns(conns)})"
    return out


def _conns(n: int) -> str:
    return f"{n} connection" + ("" if n == 1 else "s")


def _representative(overhead: pd.DataFrame, fortio: bool) -> str:
    modes = list(dict.fromkeys(overhead["mode"]))
    preferred = [m for m in SIDECAR_ARMS if m in modes] if not fortio else []
    fortio_full = [m for m in modes if m.endswith("both")] if fortio else []
    return (preferred or fortio_full or modes)[0]


def _named_meshes(doc: dict[str, Any], arms: Arms) -> set[str]:
    """The meshes the ingested files name in their paths or labels."""
    text = " ".join(f"{r.meta.get('source_file', '')} {r.meta.get('labels', '')}"
                    for runs in arms.values() for r in runs).lower()  # fmt: skip
    return {m for m in doc["meshes"] if m.lower() in text}


def decision_markdown(result: ExperimentResult) -> str:
    """The decision matrix as a Markdown table, each published figure linked to its source and each
    documented feature to its docs page."""
    cells, sources = result.tables.get("decision"), result.tables.get("decision_sources")
    if cells is None or sources is None:
        return "_no decision matrix: nothing was compared_"
    columns = list(cells.columns)
    published = set(features()["published"])
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in cells.index:
        out = []
        link = "source" if row in published else "docs"
        for m in columns:
            text, src = str(cells.loc[row, m]).replace("|", "/"), str(sources.loc[row, m])
            out.append(f"{text} ([{link}]({src}))" if src.startswith("http") else text)
        lines.append(f"| **{row}** | " + " | ".join(out) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Figures


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """Overhead with intervals, latency percentiles per mode, the proxies' own time per traversal
    and their CPU per 1000 rps through one sidecar."""
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
    proxy = result.tables.get("proxy_cost")
    if proxy is not None and len(proxy):
        roles = proxy[proxy["role"] != proxycost.ALL] if (proxy["role"] != proxycost.ALL).any() else proxy
        out["own_time"] = _own_time_figure(roles)
        cpu = roles[np.isfinite(roles["vcpu_per_1000_traversals"])]
        if len(cpu):
            fig = go.Figure()
            for i, (role, g) in enumerate(cpu.groupby("role", sort=False)):
                fig.add_trace(go.Bar(x=_labels(g), y=g["vcpu_per_1000_traversals"], name=role,
                                     marker={"color": PALETTE[i % len(PALETTE)]}))  # fmt: skip
            top = cpu.loc[cpu["vcpu_per_1000_traversals"].idxmax()]
            out["proxy_cpu"] = styled(
                fig, "Sidecar CPU per 1000 requests/s through one sidecar",
                f"most: {top['role']} in {top['mode']}, {top['vcpu_per_1000_traversals']:.2f} vCPU per "
                "1000 rps (Istio 1.24 publishes ~0.20 for its sidecar)",
                "mode, concurrent connections", "CPU (vCPU per 1000 rps through the sidecar)",
            )  # fmt: skip
    return out


def _own_time_figure(proxy: pd.DataFrame) -> go.Figure:
    """The proxy's own time per traversal (p50 with its interval over trials) per mode and role."""
    fig = go.Figure()
    for i, (role, g) in enumerate(proxy.groupby("role", sort=False)):
        has_ci = bool(np.isfinite(g["own_p50_ci_low"]).any())
        fig.add_trace(go.Bar(
            x=_labels(g), y=g["own_p50_us"],
            name=f"{role} p50", marker={"color": PALETTE[i % len(PALETTE)]},
            error_y={"type": "data", "symmetric": False, "visible": has_ci,
                     "array": (g["own_p50_ci_high"] - g["own_p50_us"]).clip(lower=0),
                     "arrayminus": (g["own_p50_us"] - g["own_p50_ci_low"]).clip(lower=0)},
        ))  # fmt: skip
    top = proxy.loc[proxy["own_p50_us"].idxmax()] if np.isfinite(proxy["own_p50_us"]).any() else None
    reading = (f"most: {top['role']} in {top['mode']}, {top['own_p50_us']:.0f} µs p50 per traversal"
               if top is not None else "no traversal recorded")  # fmt: skip
    return styled(fig, "The proxy's own time per traversal (duration - upstream, from its access log)",
                  reading, "mode, concurrent connections",
                  "own time per traversal (µs; bars = interval over trials)")  # fmt: skip


def _labels(rows: pd.DataFrame) -> list[str]:
    return [f"{m}, {_conns(c)}" for m, c in zip(rows["mode"], rows["connections"], strict=True)]


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
