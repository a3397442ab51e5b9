"""Resilience under failure: inject a fault on a dependency, compare protections one after another.

The question is the classic "service mesh vs framework (Hystrix, resilience4j)" one: the mesh's
sidecars can retry, time out and break circuits on calls to a dependency without any change to the
app's code. What does each buy when the dependency fails?

``run``: inject ``spec.fault`` (delay or abort on ``percent`` % of requests) on ``spec.dependency``,
then, for each protection in order, apply it to calls to the dependency (``set_resilience``), run
the load against ``spec.service`` (which calls the dependency and answers 503 when that call fails,
see ``backends/local/app.py``) and store the LoadResult at once. Afterwards the fault and the
protections are put back exactly as they were, also when the run fails.

The fault is injected on the server side (the dependency's own sidecars) where the backend can:
a fault injected by the caller's sidecar (Istio's place) is produced before that sidecar's retries
and timeouts, which then never act on it, so every protection would look like "none".

``analyse``: per protection the success rate (status 1-499, as ``stats.compare`` counts errors)
with a Wilson interval, p50/p90/p99, and each protection against "none" (else the first) with
``compare()``, unpaired (they ran at different times), over windows of the spec's ``window``
shortened to a quarter of a short run (a comparison needs >= 3 windows). Verdict: the best
protection, i.e. the highest success rate; protections whose rates are within the leader's Wilson
interval count as a tie and the lower p99 wins. Severity: ok when the best keeps the success
rate at or above ``SUCCESS_TARGET`` (99 %); inconclusive below it — the experiment ran and ranks
the protections, but none of them masks the fault well enough, which needs a person to look
(stronger protection, or accepting the loss); it is not ``worse``, which is reserved for a
regression against a baseline.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from statsmodels.stats.proportion import proportion_confint

from workbench.experiments.session import ExperimentResult, Session, metric_checks
from workbench.load import storage
from workbench.load.results import LoadProfile, LoadResult
from workbench.report.plots import COLOURS, PALETTE, latency_cdf, styled
from workbench.stats.compare import Comparison, compare

SUCCESS_TARGET = 0.99
SETUP_FILE = "setup.json"
METRICS = ("error_rate", "p50", "p99")


def load_name(protection: str) -> str:
    """File stem of one protection's stored LoadResult."""
    return f"protection-{protection}"


def profile(spec: Any) -> LoadProfile:
    """The load of each protection's phase."""
    return LoadProfile(
        rps=spec.rps if spec.model == "open" else None,
        connections=spec.connections,
        duration_s=spec.duration,
        warmup_s=spec.warmup or 0.0,
        model=spec.model,
        path=spec.path,
    )


def validate(spec: Any, services: dict[str, tuple[str, ...] | None]) -> None:
    """Raise ValueError naming the field when the service or dependency is unknown or, where the
    backend knows who calls whom (the local mesh's topology), not called by the service."""
    known = ", ".join(services)
    for field in ("service", "dependency"):
        if getattr(spec, field) not in services:
            value = getattr(spec, field)
            raise ValueError(
                f"{spec.name}: {field}: {value!r} is not a service of the mesh (services: {known})"
            )
    calls = services[spec.service]
    if calls is not None and spec.dependency not in calls:
        raise ValueError(
            f"{spec.name}: dependency: {spec.service} does not call {spec.dependency!r}, so a fault on it "
            f"cannot show in {spec.service}'s answers ({spec.service} calls: {', '.join(calls) or 'nothing'})"
        )


@dataclass
class _Previous:
    """What the dependency's traffic policy held before the experiment, to put back."""

    fault: Any = None
    fault_at: str = "client"
    retries: Any = None
    timeout_s: float | None = None
    breaker: Any = None


def _previous(mesh: Any, dependency: str) -> _Previous:
    policy = getattr(mesh, "traffic", {}).get(dependency)
    if policy is None:
        return _Previous()
    return _Previous(
        policy.fault, getattr(policy, "fault_at", "client"), policy.retries, policy.timeout_s, policy.breaker
    )


def _set_fault(mesh: Any, service: str, fault: Any, at: str) -> str:
    """Inject ``fault`` at ``at`` when the backend can choose; return where it went."""
    if "at" in inspect.signature(mesh.set_fault).parameters:
        mesh.set_fault(service, fault, at=at)
        return at
    mesh.set_fault(service, fault)
    return "client"


def run(s: Session) -> None:
    """Inject the fault, run the load once per protection, store each result, restore everything."""
    spec, mesh = s.spec, s.backend()
    validate(spec, {svc.name: svc.calls for svc in mesh.services()})
    prev = _previous(mesh, spec.dependency)
    setup: dict[str, Any] = {
        "service": spec.service,
        "dependency": spec.dependency,
        "fault": spec.fault.model_dump(),
        "protections": [p.model_dump() for p in spec.protections],
        "profile": vars(profile(spec)),
        "done": [],
    }
    try:
        setup["fault_at"] = _set_fault(mesh, spec.dependency, spec.fault, "server")
        s.save_json(SETUP_FILE, setup)
        for i, p in enumerate(spec.protections, 1):
            mesh.set_resilience(spec.dependency, p.retries, p.timeout, p.circuit_breaker)
            s.progress(
                f"protection {i}/{len(spec.protections)} '{p.name}': {spec.rps:g} rps on {spec.service} "
                f"for {spec.duration:g} s"
            )
            storage.save(mesh.run_load(spec.service, profile(spec)), s.store, load_name(p.name))
            setup["done"].append(p.name)
            s.save_json(SETUP_FILE, setup)
    finally:
        mesh.set_resilience(spec.dependency, prev.retries, prev.timeout_s, prev.breaker)
        _set_fault(mesh, spec.dependency, prev.fault, prev.fault_at)


# ---------------------------------------------------------------------------------------------
# Analysis


def success_row(name: str, res: LoadResult, alpha: float) -> dict[str, Any]:
    """Success count, rate and Wilson interval, and latency percentiles of one protection's run."""
    status = res.samples["status"].to_numpy()
    n = len(status)
    ok = int(((status > 0) & (status < 500)).sum())
    lo, hi = proportion_confint(ok, n, alpha=alpha, method="wilson") if n else (np.nan, np.nan)
    lat = res.samples["latency_ms"].to_numpy(dtype=float)
    q = np.quantile(lat, [0.5, 0.9, 0.99]) if n else [np.nan] * 3
    return {
        "protection": name, "requests": n, "successes": ok, "success_pct": 100.0 * ok / n if n else np.nan,
        "ci_low_pct": 100.0 * lo, "ci_high_pct": 100.0 * hi, "p50": float(q[0]), "p90": float(q[1]),
        "p99": float(q[2]), "actual_rps": res.summary()["actual_rps"] if n else np.nan,
    }  # fmt: skip


def best_protection(frame: pd.DataFrame) -> str:
    """Highest success rate; those within the leader's interval tie, and the lower p99 wins."""
    ranked = frame.dropna(subset=["success_pct"]).sort_values(["success_pct", "p99"], ascending=[False, True])
    leader = ranked.iloc[0]
    ties = ranked[ranked["success_pct"] >= leader["ci_low_pct"]]
    return str(ties.sort_values("p99").index[0])


def _reading(base: str, b: pd.Series, name: str, r: pd.Series, comp: Comparison | None) -> str:
    verb = "kept"
    if r["success_pct"] > b["ci_high_pct"]:
        verb = "raised"
    elif r["success_pct"] < b["ci_low_pct"]:
        verb = "lowered"
    dp50, dp99 = (_delta(comp, q, r[q] - b[q]) for q in ("p50", "p99"))
    cost = f"{dp50:+.1f} ms p50, {dp99:+.1f} ms p99"
    return f"{name} {verb} success from {_pct(b)} ({base}) to {_pct(r)} at {cost}"


def _delta(comp: Comparison | None, metric: str, pooled: float) -> float:
    """The comparison's estimate (window means), else the pooled difference (too few windows)."""
    if comp is not None and metric in comp.results and np.isfinite(comp[metric].estimate):
        return float(comp[metric].estimate)
    return float(pooled)


def window_s(spec: Any) -> float:
    """The comparison window: the spec's, shortened so each run has at least 4 windows (min 1 s)."""
    window = float(spec.window or 5.0)
    return min(window, max(1.0, float(spec.duration or window) / 4)) if spec.duration else window


def _pct(r: pd.Series) -> str:
    return f"{r['success_pct']:.1f} % [{r['ci_low_pct']:.1f}, {r['ci_high_pct']:.1f}]"


def analyse(s: Session) -> ExperimentResult:
    """Judge the stored runs; re-runnable from the data alone."""
    spec = s.spec
    setup = s.load_json(SETUP_FILE)
    runs: dict[str, LoadResult] = {}
    for p in setup["protections"]:
        path = s.store / f"{load_name(p['name'])}.json"
        if path.exists():
            runs[p["name"]] = storage.load(path)
    fault = _fault_text(setup)
    if not runs or all(len(r.samples) == 0 for r in runs.values()):
        return ExperimentResult(spec.name, "resilience", "no data", "error",
                                f"{fault}: no protection's load run was stored")  # fmt: skip
    alpha = spec.alpha or 0.05
    frame = pd.DataFrame([success_row(n, r, alpha) for n, r in runs.items()]).set_index("protection")
    base = "none" if "none" in runs else next(iter(runs))
    comparisons: dict[str, Comparison] = {}
    rows = []
    for name, res in runs.items():
        if name == base or len(res.samples) == 0 or len(runs[base].samples) == 0:
            continue
        comp = compare(runs[base], res, metrics=METRICS, window=window_s(spec), margin=s.margin,
                       alpha=alpha, paired=False, no_data=spec.no_data or "inconclusive")  # fmt: skip
        comparisons[name] = comp
        for r in comp:
            rows.append({"protection": name, "metric": r.metric, "baseline": r.baseline, "value": r.candidate,
                         "estimate": r.estimate, "ci_low": r.ci.low, "ci_high": r.ci.high, "unit": r.unit,
                         "verdict": r.verdict, "explanation": r.explain()})  # fmt: skip
    readings = {n: _reading(base, frame.loc[base], n, frame.loc[n], comparisons.get(n)) for n in comparisons}
    frame["reading"] = [readings.get(n, "baseline") for n in frame.index]
    best = best_protection(frame)
    top = frame.loc[best]
    target = 100 * SUCCESS_TARGET
    lead = f"no protection beat '{base}'" if best == base else readings[best]
    if top["success_pct"] >= target:
        severity = "ok"
        tail = f"best: {best} ({top['success_pct']:.2f} % success, p99 {top['p99']:.1f} ms)"
    else:
        severity = "inconclusive"
        tail = f"best: {best}, but even it leaves success at {_pct(top)}, below {target:g} %"
    headline = f"{fault}: {lead}; {tail}"
    figures: dict[str, Any] = {"best": best, "fault_at": setup.get("fault_at", "client")}
    for n, r in frame.iterrows():
        figures[f"success_pct_{n}"] = r["success_pct"]
        figures[f"success_ci_{n}"] = [r["ci_low_pct"], r["ci_high_pct"]]
        figures[f"p99_{n}"] = r["p99"]
    tables = {"protections": frame, "comparison": pd.DataFrame(rows)}
    details = {"runs": runs, "comparisons": comparisons, "baseline": base, "best": best, "setup": setup}
    checks = [c for n, comp in comparisons.items() for c in metric_checks(comp, f"{n} vs {base} ", True)]
    return ExperimentResult(spec.name, "resilience", f"best: {best}", severity, headline, figures, tables,
                            details, checks)  # fmt: skip


def _fault_text(setup: dict[str, Any]) -> str:
    f = setup["fault"]
    what = f"delay {f['delay'] * 1000:g} ms" if f.get("delay") is not None else f"abort {f['abort']}"
    return f"{what} on {f['percent']:g} % of {setup['dependency']} calls (seen at {setup['service']})"


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """Success rate with Wilson intervals per protection; latency CDF and percentiles per protection."""
    if "protections" not in result.tables:
        return {}
    frame: pd.DataFrame = result.tables["protections"]
    names = [str(n) for n in frame.index]
    best = result.details.get("best")
    colours = [COLOURS["ok"] if n == best else COLOURS["grey"] for n in names]
    fig = go.Figure(
        go.Scatter(
            x=names, y=frame["success_pct"], mode="markers", marker={"size": 12, "color": colours},
            error_y={"type": "data", "symmetric": False,
                     "array": (frame["ci_high_pct"] - frame["success_pct"]).clip(lower=0),
                     "arrayminus": (frame["success_pct"] - frame["ci_low_pct"]).clip(lower=0)},
            text=[f"{r['successes']:,} of {r['requests']:,}" for _, r in frame.iterrows()],
            name="success rate (Wilson interval)",
        )
    )  # fmt: skip
    fig.add_hline(y=100 * SUCCESS_TARGET, line={"color": COLOURS["grey"], "dash": "dot"},
                  annotation_text=f"{100 * SUCCESS_TARGET:g} % target")  # fmt: skip
    reading = "; ".join(f"{n} {r['success_pct']:.1f} %" for n, r in frame.iterrows())
    out = {
        "success": styled(fig, "Success rate at the service under the fault, per protection", reading,
                          "protection (applied by the sidecars calling the dependency)",
                          "successful requests (%, with interval)"),
    }  # fmt: skip
    runs: dict[str, LoadResult] = result.details.get("runs", {})
    if runs:
        lat = {n: r.samples["latency_ms"] for n, r in runs.items() if len(r.samples)}
        p99 = "; ".join(f"{n} p99 {frame.loc[n, 'p99']:.1f} ms" for n in lat)
        out["cdf"] = latency_cdf(lat, "Latency distribution per protection (all answers, failed included)",
                                 p99, colours=PALETTE)  # fmt: skip
    pct = go.Figure()
    for i, q in enumerate(("p50", "p90", "p99")):
        pct.add_trace(go.Bar(x=names, y=frame[q], name=q, marker={"color": PALETTE[i]}))
    slowest = frame["p99"].idxmax()
    out["percentiles"] = styled(
        pct.update_layout(barmode="group"), "Latency percentiles per protection",
        f"{slowest} has the highest p99 ({frame.loc[slowest, 'p99']:.1f} ms)",
        "protection", "latency (ms)",
    )  # fmt: skip
    return out
