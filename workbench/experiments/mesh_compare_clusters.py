"""Mesh comparison across clusters: the same k6 profile in each arm's kube context, trials as replicates.

``mesh_compare`` with ``meshes:`` lands here. Each arm is a kube context (and namespace) with its
mesh — Istio in one, Linkerd in another, or two Istio releases — and the same service. Per trial,
every arm runs the same load (``rps``, each of ``connections``, ``duration`` after ``warmup``) as a
k6 load in its own cluster (``KubernetesBackend.run_load``), the arms in alternating order (A B, B A,
...: drift over time is shared, not pinned on one arm), each point stored when measured (a re-run
resumes).

The trial is the unit of replication (``stats.trials``): each trial of each arm gives one estimate
per percentile — the mean of its windows' values, windows nested in the trial — and the difference
from the baseline arm gets a t interval over trials, paired by trial, judged against the margin.
Windows pooled across trials would hide run-to-run variation; here it is the error bar.

The decision matrix fills each mesh's column from its own arm: its measured p50/p99 with intervals
over trials, and its difference from the baseline. Arms in different clusters differ in more than
the mesh (nodes, their neighbours): the report says so; namespaces of one cluster make the fairest
arms.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from contextlib import nullcontext
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import yaml

from workbench.config import KubernetesSettings
from workbench.experiments import autorate
from workbench.experiments.session import ExperimentResult, Session
from workbench.load import storage
from workbench.load.results import LoadProfile, LoadResult
from workbench.load.sweep import iter_results
from workbench.stats.trials import NO_INTERVAL, paired_trials, per_trial, trial_window

POINTS = "points"
PERCENTILES = ("p50", "p90", "p99")
CAVEAT = (
    "each arm ran in its own context: the difference includes whatever else differs between them "
    "(nodes, neighbours, versions); trials interleaved so drift over time is shared"
)
# mesh_features.yaml's column per mesh setting
COLUMN = {"istio": "Istio", "linkerd": "Linkerd", "consul": "Consul"}


def _conns(n: int) -> str:
    return f"{n} connection" + ("" if n == 1 else "s")


def _pooled(runs: list[LoadResult]) -> dict[str, float]:
    """p50/p90/p99 (ms) of every request of ``runs`` together (for the percentiles table)."""
    lat = np.concatenate([r.samples["latency_ms"].to_numpy(float) for r in runs]) if runs else np.array([])
    return {p: float(np.quantile(lat, int(p[1:]) / 100)) if len(lat) else math.nan for p in PERCENTILES}


def features() -> dict[str, Any]:
    """The documented features of Istio, Linkerd and Consul (``mesh_features.yaml``, as mesh_compare)."""
    return yaml.safe_load(resources.files("workbench.experiments").joinpath("mesh_features.yaml").read_text())


def _file(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "-", label)


def _settings(arm: Any) -> KubernetesSettings:
    return KubernetesSettings(type="kubernetes", context=arm.context, namespace=arm.namespace, mesh=arm.mesh)


def order(labels: list[str], trial: int) -> list[str]:
    """The arms of one trial: as listed in even trials, reversed in odd ones (A B, B A, ...)."""
    return list(reversed(labels)) if trial % 2 else list(labels)


def run(s: Session) -> None:
    """Every trial × arm × connection count not stored yet, interleaved; each point stored at once."""
    from workbench.backends import open_backend

    spec = s.spec
    arms = {arm.label: arm for arm in spec.meshes}
    backends = {label: open_backend(_settings(arm)).backend for label, arm in arms.items()}
    meshes = {label: backends[label].mesh for label in arms}  # detected (auto) or as set, before any load
    store = s.store / POINTS
    store.mkdir(parents=True, exist_ok=True)
    done = {p.stem for p in store.glob("*.json")}
    total = spec.trials * len(arms) * len(spec.connections)
    rps = _rate(s, backends)
    s.progress(f"{len(arms)} clusters ({', '.join(f'{k}: {v}' for k, v in meshes.items())}) x {spec.trials} "
               f"trials x {len(spec.connections)} connection counts at {rps:g} rps, {spec.duration:g} s "
               "each, interleaved")  # fmt: skip
    n = len(done)
    for trial in range(spec.trials):
        for label in order(list(arms), trial):
            arm = arms[label]
            for conns in spec.connections:
                name = f"{_file(label)}_c{conns}_t{trial}"
                if name in done:
                    continue
                profile = LoadProfile(rps=rps if spec.model == "open" else None, connections=conns,
                                      duration_s=spec.duration, warmup_s=spec.warmup or 0.0, model=spec.model,
                                      path=spec.path, seed=s.seed)  # fmt: skip
                result = backends[label].run_load(arm.service or spec.service, profile)
                result.meta.update({"arm": label, "mesh": meshes[label], "context": arm.context,
                                    "namespace": backends[label].namespace, "trial": trial,
                                    "connections": conns})  # fmt: skip
                storage.save(result, store, name)
                n += 1
                s.progress(f"trial {trial + 1}/{spec.trials} {label} ({meshes[label]}) x {conns} conns "
                           f"({n}/{total}): p50 {result.summary()['p50']:.2f} ms")  # fmt: skip


def _rate(s: Session, backends: dict[str, Any]) -> float:
    """The spec's rate, or for ``rps: auto`` half the capacity a short probe finds on the first arm
    that is not the baseline (the mesh under test; ``experiments.autorate``); 0 for the closed model."""
    spec = s.spec
    if spec.model != "open":
        return 0.0
    base = spec.baseline or spec.meshes[0].label
    label = next((k for k in backends if k != base), base)
    return autorate.choose(s, lambda: nullcontext(backends[label]), what=f"{label}, the mesh under test",
                           connections=min(spec.connections)).rps  # fmt: skip


def _stored(s: Session) -> dict[tuple[str, int], dict[int, LoadResult]]:
    store = s.store / POINTS
    arms: dict[tuple[str, int], dict[int, LoadResult]] = defaultdict(dict)
    for result in iter_results(store) if store.exists() else []:
        arms[(str(result.meta["arm"]), int(result.meta["connections"]))][int(result.meta["trial"])] = result
    if not arms:
        raise FileNotFoundError(f"{store}: no stored runs for experiment {s.spec.name!r}")
    return dict(arms)


def analyse(s: Session) -> ExperimentResult:
    """Each arm against the baseline per connection count: per-trial percentiles, t intervals over trials."""
    spec = s.spec
    arms = _stored(s)
    labels = [a.label for a in spec.meshes if any(k[0] == a.label for k in arms)]
    base = spec.baseline or spec.meshes[0].label
    meshes = {k[0]: str(next(iter(v.values())).meta.get("mesh", "")) for k, v in arms.items()}
    rows, trial_rows = [], []
    for conns in sorted({c for _, c in arms}):
        runs = [r for (label, c), by_trial in arms.items() if c == conns for r in by_trial.values()]
        duration = min(float(r.meta.get("duration_s") or spec.duration) for r in runs)
        w = trial_window(duration, min(r.summary()["actual_rps"] or 1.0 for r in runs))
        estimates = {label: per_trial({t: r.samples for t, r in arms[(label, conns)].items()}, PERCENTILES, w)
                     for label in labels if (label, conns) in arms}  # fmt: skip
        for label, table in estimates.items():
            trial_rows += [{"arm": label, "mesh": meshes[label], "connections": conns, "trial": t, **row}
                           for t, row in table.to_dict("index").items()]  # fmt: skip
        if base not in estimates:
            continue
        for label in (x for x in labels if x != base and x in estimates):
            for metric in PERCENTILES:
                a = {t: v for t, v in estimates[base][metric].items() if math.isfinite(v)}
                b = {t: v for t, v in estimates[label][metric].items() if math.isfinite(v)}
                if not a or not b:
                    empty = base if not a else label
                    note = f"no trial of {empty} has enough requests per window for {metric}"
                    rows.append(
                        {
                            "connections": conns,
                            "mode": label,
                            "metric": metric,
                            "trials": 0,
                            "verdict": NO_INTERVAL,
                            "note": note,
                            "explanation": f"{label} vs {base} at {_conns(conns)}: {metric}: {note}",
                        }
                    )
                    continue
                r = paired_trials(a, b, margin=s.margin.latency(float(np.mean(list(a.values())))),
                                  confidence=1 - 2 * spec.alpha / len(PERCENTILES))  # fmt: skip
                rows.append({"connections": conns, "mode": label, "metric": metric, "baseline": r.baseline,
                             "candidate": r.candidate, "estimate": r.estimate, "ci_low": r.ci.low,
                             "ci_high": r.ci.high, "verdict": r.verdict, "n_windows": 0, "trials": r.n_trials,
                             "method": f"trials as replicates: {r.method}, {w:.2f} s windows in trials",
                             "margin": r.margin,
                             "note": r.note, "explanation": f"{label} vs {base} at {_conns(conns)}: "
                                                            f"{r.explain('ms', metric)}"})  # fmt: skip
    overhead = pd.DataFrame(rows)
    percentiles = pd.DataFrame([{"mode": label, "connections": c, "trials": len(by_trial),
                                 **_pooled(list(by_trial.values()))}
                                for (label, c), by_trial in arms.items()])  # fmt: skip
    percentiles = percentiles.sort_values(["mode", "connections"], key=lambda col: col.map(
        lambda v: labels.index(v) if v in labels else v)).reset_index(drop=True)  # fmt: skip
    trials = pd.DataFrame(trial_rows)
    tables = {"overhead": overhead, "percentiles": percentiles, "trials": trials}
    details = {"baseline": base, "arms": labels, "source": "clusters", "meshes": meshes, "caveat": CAVEAT}
    if overhead.empty:
        headline = f"no connection count has both the baseline {base!r} and another arm; nothing to compare"
        return ExperimentResult(spec.name, "mesh_compare", "inconclusive", "inconclusive", headline, {},
                                tables, details)  # fmt: skip
    decision, sources = decision_matrix(s, trials, overhead, base, meshes)
    tables["decision"], tables["decision_sources"] = decision, sources
    figures: dict[str, Any] = {"baseline": base}
    for (conns, mode), g in overhead.groupby(["connections", "mode"]):
        for p in ("p50", "p99"):
            row = g[g["metric"] == p].iloc[0]
            figures[f"delta_{p}_{mode}_c{conns}"] = row["estimate"]
            figures[f"delta_{p}_{mode}_c{conns}_ci"] = [row["ci_low"], row["ci_high"]]
    checks = [
        {"name": f"{r['mode']} vs {base} at {r['connections']} connections {r['metric']}",
         "verdict": r["verdict"], "severity": "ok", "explanation": r["explanation"],
         "estimate": r["estimate"], "ci": [r["ci_low"], r["ci_high"]]}
        for _, r in overhead.iterrows()
    ]  # fmt: skip
    last = overhead[overhead["connections"] == overhead["connections"].max()]
    p50 = last[last["metric"] == "p50"].iloc[-1]
    p99 = last[last["metric"] == "p99"].iloc[-1]
    headline = (f"{p50['mode']} ({meshes.get(p50['mode'], '?')}) vs {base} ({meshes.get(base, '?')}) at "
                f"{_conns(int(p50['connections']))}: {_delta(p50)}, {_delta(p99)} (intervals over "
                f"{int(p50['trials'])} interleaved trials; {CAVEAT})")  # fmt: skip
    verdict = "inconclusive" if overhead["estimate"].isna().all() else "measured"
    severity = "inconclusive" if verdict == "inconclusive" else "ok"
    return ExperimentResult(spec.name, "mesh_compare", verdict, severity, headline, figures, tables, details,
                            checks)  # type: ignore[arg-type]  # fmt: skip


def _delta(row: pd.Series) -> str:
    if not math.isfinite(row["estimate"]):
        return f"no {row['metric']} estimate ({row.get('note') or 'no data'})"
    text = f"{row['estimate']:+.2f} ms {row['metric']}"
    return text + (f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if math.isfinite(row["ci_low"]) else "")


def _level(values: pd.Series) -> str:
    """Mean over trials with a t interval (the trial is the replicate): '12.3 ms [11.9, 12.8]'."""
    from scipy import stats as sps

    x = values.dropna().to_numpy(float)
    if len(x) == 0:
        return "no estimate"
    mean = float(x.mean())
    if len(x) < 2:
        return f"{mean:.2f} ms (1 trial)"
    half = float(sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return f"{mean:.2f} ms [{mean - half:.2f}, {mean + half:.2f}]"


def decision_matrix(
    s: Session, trials: pd.DataFrame, overhead: pd.DataFrame, base: str, meshes: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, sources): each mesh's column from its own arms' measurement, then the documented features."""
    doc = features()
    columns = list(doc["meshes"])
    cells: dict[str, dict[str, str]] = {}
    sources: dict[str, dict[str, str]] = {}
    where = f"measured here: run {s.run_id}, experiment {s.spec.name} ({CAVEAT})"
    by_column: dict[str, list[str]] = defaultdict(list)
    for arm, mesh in meshes.items():
        if mesh in COLUMN:
            by_column[COLUMN[mesh]].append(arm)
    for metric in ("p50", "p99"):
        label = f"measured {metric} latency (mean over trials, 95 % interval)"
        cells[label], sources[label] = {}, {}
        for column in columns:
            arms = by_column.get(column, [])
            parts = []
            for arm in arms:
                rows = trials[trials["arm"] == arm]
                levels = "; ".join(
                    f"{_level(g[metric])} at {_conns(int(c))}" for c, g in rows.groupby("connections")
                )
                parts.append(f"{arm}: {levels}")
            cells[label][column] = " | ".join(parts) or f"not measured here (no arm runs {column})"
            sources[label][column] = where if arms else ""
        label = f"{metric} difference from {base} (interval over trials)"
        cells[label], sources[label] = {}, {}
        for column in columns:
            arms = [a for a in by_column.get(column, []) if a != base]
            parts = []
            for arm in arms:
                rows = overhead[(overhead["mode"] == arm) & (overhead["metric"] == metric)]
                parts += [f"{arm}: {_delta(r)} at {_conns(int(r['connections']))}: {r['verdict']}"
                          for _, r in rows.iterrows()]  # fmt: skip
            baseline_here = base in by_column.get(column, [])
            empty = "the baseline" if baseline_here else f"not measured here (no arm runs {column})"
            cells[label][column] = " | ".join(parts) or empty
            sources[label][column] = where if parts else ""
    for feature, per_mesh in doc["features"].items():
        cells[feature] = {m: per_mesh[m]["summary"] for m in columns}
        sources[feature] = {m: per_mesh[m]["source"] for m in columns}
    frame = pd.DataFrame.from_dict(cells, orient="index")[columns].rename_axis("row")
    return frame, pd.DataFrame.from_dict(sources, orient="index")[columns].rename_axis("row")
