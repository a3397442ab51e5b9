"""A/B test: two versions live at the same time, split by weight or by a header/cookie route.

Both arms share every window of time, so the statistics pair them (``stats.compare``). On the local
mesh the experiment also measures the two versions' apps directly, without any sidecar, at the same
rate, half just before and half just after the A/B (``joined``): that is the ground truth the A/B
should agree with (a known effect, e.g. the demo's catalog v2 with +2 ms service time, must come out
``worse``, and the interval of the A/B's difference minus the direct one must hold 0).
Traffic always ends on the baseline (stable) version, also when the run fails or is interrupted.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import nullcontext
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from workbench.backends.base import DirectMeasure
from workbench.experiments import autorate
from workbench.experiments.session import VERDICT_SEVERITY, ExperimentResult, Session, metric_checks
from workbench.load import storage
from workbench.load.results import LoadProfile, LoadResult
from workbench.report.plots import COLOURS, add_markers, interval_chart, latency_cdf, styled
from workbench.stats.compare import Comparison, compare
from workbench.stats.interval import ConfidenceInterval, difference

SEVERITY = VERDICT_SEVERITY


def profile(spec: Any, seed: int | None = None, rps: float | None = None) -> LoadProfile:
    """The load of an A/B (at ``rps``, default the spec's): the route's share of requests carries
    the header or cookie."""
    tagged: dict[str, str] = {}
    percent = 0.0
    if spec.route is not None:
        r = spec.route
        tagged = {r.header: r.value} if r.header else {"Cookie": f"{r.cookie}={r.value}"}
        percent = r.percent
    return LoadProfile(
        rps=(rps or spec.rps) if spec.model == "open" else None,
        connections=spec.connections,
        duration_s=spec.duration,
        warmup_s=spec.warmup,
        model=spec.model,
        path=spec.path,
        tagged_percent=percent,
        tagged_headers=tagged,
        seed=seed,
    )


def run(s: Session) -> None:
    """Measure the apps directly (half), apply the split or route, run the load, restore the
    baseline, measure the apps directly again (the other half)."""
    spec, mesh = s.spec, s.backend()
    base, cand = spec.variants.baseline, spec.variants.candidate
    rps = _rate(s, mesh)
    truth = spec.ground_truth and isinstance(mesh, DirectMeasure)
    halves: list[LoadResult] = []
    if truth:
        s.progress(
            f"measuring {base} and {cand} directly, without sidecars (ground truth): the half before the A/B"
        )
        halves.append(_direct(mesh, spec, s.seed, spec.duration / 2, rps))
        storage.save(halves[0], s.store, "direct")
    try:
        if spec.split is not None:
            mesh.set_split(spec.service, spec.split)
        else:
            mesh.set_split(spec.service, {base: 100})
            mesh.set_route(spec.service, spec.route, version=cand)
        s.progress(f"A/B {base} vs {cand}: {rps:g} rps for {spec.duration:g} s")
        storage.save(mesh.run_load(spec.service, profile(spec, s.seed, rps)), s.store, "ab")
    finally:
        if spec.route is not None:
            mesh.set_route(spec.service, None)
        mesh.set_split(spec.service, {base: 100})
    if truth:
        s.progress(f"measuring {base} and {cand} directly: the half after the A/B")
        seed = None if s.seed is None else s.seed + 1
        halves.append(_direct(mesh, spec, seed, spec.duration / 2, rps))
        storage.save(joined(halves), s.store, "direct")


def joined(parts: list[LoadResult]) -> LoadResult:
    """Load points of one target run at different times, as one result: their samples together,
    ``duration_s``, ``dropped_iterations`` and ``requests_total`` summed, each part's ``start`` and
    ``end`` in ``meta["parts"]``. Windows (``stats.compare``) fall inside one part or the other.

    The A/B's ground truth is measured half before and half after the A/B: the A/B is judged
    against it, and each run's interval holds only its own windows' noise. All after the A/B, a
    change in what else the machine did between the two (a CI run's other test lanes) moved the
    direct +2 ms of catalog v2 by 0.4 ms against the A/B's and their intervals apart (A/B [2.29,
    2.67] ms, direct [1.90, 2.27]). Straddling the A/B, the direct run's mean time is the A/B's,
    so a drift that is steady over the run cancels. (Measured at the same time instead, the two
    k6 runs doubled the apps' load: catalog's p50 rose from 10 to 12-16 ms and the windows'
    spread two- to fourfold, widening the A/B's own interval.)
    """
    if not parts:
        raise ValueError("joined() needs at least one load result")
    meta = dict(parts[0].meta)
    meta["duration_s"] = sum(float(p.meta.get("duration_s") or 0.0) for p in parts)
    meta["dropped_iterations"] = sum(int(p.meta.get("dropped_iterations") or 0) for p in parts)
    meta["requests_total"] = sum(int(p.meta.get("requests_total") or len(p.samples)) for p in parts)
    meta["end"] = parts[-1].meta.get("end", meta.get("end"))
    meta["parts"] = [{"start": p.meta.get("start"), "end": p.meta.get("end"),
                      "duration_s": p.meta.get("duration_s")} for p in parts]  # fmt: skip
    samples = pd.concat([p.samples for p in parts], ignore_index=True).sort_values(
        "timestamp", ignore_index=True
    )
    return LoadResult(meta, samples)


def _rate(s: Session, mesh: Any) -> float:
    """The spec's rate, or with ``rps: auto`` half the capacity probed on this mesh (stored)."""
    if s.spec.model != "open":
        return float("nan")
    chosen = autorate.choose(s, lambda: nullcontext(mesh), what="the mesh the A/B runs on",
                             connections=s.spec.connections)  # fmt: skip
    return chosen.rps


def _direct(mesh: Any, spec: Any, seed: int | None, duration_s: float, rps: float) -> LoadResult:
    from workbench.load.k6 import run_k6

    target = mesh.direct_target(spec.service, [spec.variants.baseline, spec.variants.candidate])
    plain = LoadProfile(rps=rps, connections=spec.connections, duration_s=duration_s,
                        warmup_s=spec.warmup, path=spec.path, seed=seed)  # fmt: skip
    work = tempfile.mkdtemp(prefix="k6-direct-")
    try:
        return run_k6(plain, target, work, labels={"service": spec.service, "backend": "direct"},
                      on_poll=mesh.check)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compare(s: Session, res: LoadResult) -> tuple[Comparison | None, dict[str, LoadResult]]:
    spec = s.spec
    arms = res.by_variant()
    base, cand = spec.variants.baseline, spec.variants.candidate
    if base not in arms or cand not in arms:
        return None, arms
    comp = compare(arms[base], arms[cand], metrics=spec.metrics, window=spec.window, margin=s.margin,
                   alpha=spec.alpha, no_data=spec.no_data)  # fmt: skip
    return comp, arms


def analyse(s: Session) -> ExperimentResult:
    """Judge the stored run; re-runnable from the data alone."""
    spec = s.spec
    base, cand = spec.variants.baseline, spec.variants.candidate
    res = storage.load(s.store / "ab.json")
    comp, arms = _compare(s, res)
    if comp is None:
        seen = ", ".join(f"{v or '(no answer)'}: {len(r.samples)}" for v, r in arms.items()) or "none"
        verdict = {"fail": "worse", "pass": "equivalent"}.get(spec.no_data, "inconclusive")
        return ExperimentResult(
            spec.name, "ab", verdict, SEVERITY[verdict],  # type: ignore[arg-type]
            f"no requests reached both {base} and {cand} (answers per version: {seen}); "
            f"no_data={spec.no_data} gives {verdict}",
        )  # fmt: skip
    frame = comp.to_frame()
    truth = _truth(s, frame)
    decisive = next((r for r in comp if r.verdict == comp.verdict), next(iter(comp)))
    headline = f"{spec.service} {cand} vs {base}: {comp.verdict}. {decisive.explain()}"
    chosen = autorate.stored(s)
    if chosen is not None and chosen.auto:
        headline += f" ({chosen.reason})"
    figures: dict[str, Any] = {
        "requests_" + base: len(arms[base].samples),
        "requests_" + cand: len(arms[cand].samples),
    }
    for r in comp:
        figures[f"delta_{r.metric}"] = r.estimate
        figures[f"delta_{r.metric}_ci"] = list(r.ci)
        figures[f"verdict_{r.metric}"] = r.verdict
    if truth is not None:
        for metric, row in truth.iterrows():
            figures[f"direct_delta_{metric}"] = row["direct_estimate"]
            figures[f"direct_delta_{metric}_ci"] = [row["direct_ci_low"], row["direct_ci_high"]]
            figures[f"direct_covered_{metric}"] = bool(row["covered"])
            figures[f"direct_agrees_{metric}"] = bool(row["agrees"])
    tables = {"comparison": frame, "percentiles": _percentiles(arms, (base, cand))}
    if truth is not None:
        tables["truth"] = truth
    details = {"comparison": comp, "arms": {base: arms[base], cand: arms[cand]}, "audit": _audit(s, res)}
    return ExperimentResult(
        spec.name, "ab", comp.verdict, SEVERITY[comp.verdict], headline, figures, tables,  # type: ignore[arg-type]
        details, metric_checks(comp),
    )  # fmt: skip


def _audit(s: Session, res: LoadResult) -> dict[str, Any]:
    """The audit events of this run around the load (its split or route change first), for markers."""
    from workbench.audit import markers_for_run

    t = res.samples["timestamp"]
    start, end = t.min() - pd.Timedelta(seconds=30), t.max() + pd.Timedelta(seconds=1)
    events = markers_for_run(s.run_id, start.to_pydatetime(), end.to_pydatetime(), [s.spec.service])
    return {"origin": t.min(), "events": events}


def _truth(s: Session, frame: pd.DataFrame) -> pd.DataFrame | None:
    """The direct (sidecar-free) difference per metric, and whether the A/B agrees with it.

    The direct run is a measurement too, with its own noise: ``agrees`` asks whether the interval of
    (A/B estimate - direct estimate) holds 0 (``interval.difference``, both at the comparison's
    level); ``covered`` (the direct point inside the A/B interval) is kept as information only.
    """
    path = s.store / "direct.json"
    if not path.exists():
        return None
    direct = storage.load(path)
    comp, _ = _compare(s, direct)
    if comp is None:
        return None
    rows = []
    for r in comp:
        ab = ConfidenceInterval(frame.loc[r.metric, "ci_low"], frame.loc[r.metric, "ci_high"])
        gap, gap_ci = difference(frame.loc[r.metric, "estimate"], ab, r.estimate, r.ci)
        rows.append({"metric": r.metric, "direct_estimate": r.estimate, "direct_ci_low": r.ci.low,
                     "direct_ci_high": r.ci.high, "ab_ci_low": ab.low, "ab_ci_high": ab.high,
                     "ab_minus_direct": gap, "gap_ci_low": gap_ci.low, "gap_ci_high": gap_ci.high,
                     "agrees": gap_ci.contains(0.0), "covered": ab.contains(r.estimate)})  # fmt: skip
    return pd.DataFrame(rows).set_index("metric")


def _percentiles(arms: dict[str, LoadResult], order: tuple[str, str]) -> pd.DataFrame:
    cols = ["count", "actual_rps", "p50", "p90", "p99", "max", "error_pct"]
    rows = {v: {k: arms[v].summary()[k] for k in cols} for v in order}
    return pd.DataFrame(rows).T.rename_axis("version")


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """CDFs per version, the differences with intervals, and p50 per window over time."""
    if "comparison" not in result.details:
        return {}
    comp: Comparison = result.details["comparison"]
    arms: dict[str, LoadResult] = result.details["arms"]
    (base, a), (cand, b) = arms.items()
    lat = {f"{base} (baseline)": a.samples["latency_ms"], f"{cand} (candidate)": b.samples["latency_ms"]}
    p50 = comp["p50"] if "p50" in comp.results else next(iter(comp))
    cdf = latency_cdf(
        lat, f"Latency distribution: {cand} vs {base}",
        f"{p50.metric} {p50.baseline:.2f} → {p50.candidate:.2f} ms; verdict {result.verdict}",
        colours=[COLOURS["baseline"], COLOURS["candidate"]],
    )  # fmt: skip
    frame = result.tables["comparison"]
    latency = frame[frame["unit"] == "ms"]
    reading = "; ".join(f"{m} {r['verdict']}" for m, r in frame.iterrows())
    out = {"cdf": cdf}
    if len(latency):
        out["intervals"] = interval_chart(
            latency, f"Latency difference {cand} − {base}, with intervals", reading
        )
    wa, wb = comp.windows["a"], comp.windows["b"]
    fig = go.Figure()
    for name, w, colour in ((base, wa, COLOURS["baseline"]), (cand, wb, COLOURS["candidate"])):
        t = w.index.to_numpy() * comp.window_s
        fig.add_trace(
            go.Scatter(x=t, y=w["p50"], mode="lines+markers", name=f"{name} p50", line={"color": colour})
        )
        fig.add_trace(go.Scatter(x=t, y=w["p99"], mode="lines", name=f"{name} p99",
                                 line={"color": colour, "dash": "dot"}))  # fmt: skip
    audit = result.details.get("audit") or {}
    if audit.get("events"):  # what changed traffic, on the same clock (window 0 starts with the load)
        add_markers(fig, audit["events"], origin=pd.Timestamp(audit["origin"]))
    gap = float((wb["p50"] - wa["p50"]).median()) if len(wa) and len(wb) else float("nan")
    out["windows"] = styled(
        fig, f"p50 and p99 per {comp.window_s:g} s window",
        f"the candidate's p50 sits {gap:+.2f} ms from the baseline's in the median window",
        "time since start (s)", "latency (ms)",
    )  # fmt: skip
    return out
