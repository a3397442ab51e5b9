"""Canary roll-out: raise the canary's traffic weight step by step, deciding as the data comes in.

What Flagger and Argo Rollouts users expect, with the statistics of ../shared/DESIGN.md: at each
step (e.g. 5, 10, 25, 50 % canary weight) the split is set, load runs for the step's duration and
its samples are stored at once; the stable and canary arms are compared over all steps so far.
``sequential`` (experiments.yaml) says how looking again stays honest:

- ``anytime`` (default): a confidence sequence (``stats.sequential.AnytimeTest``) looks after
  **every window** of the step, any number of times, with the chance of a false rollback over all
  looks of the whole roll-out <= ``alpha``; the first look that finds a metric worse rolls back.
  The sequence is tightest after the first step's duration. The step's decision is its last look.
- ``alpha-spending``: one look per step (``stats.sequential.SequentialTest``), spending a share of
  ``alpha`` that follows the steps' durations.

``rollback`` sends all traffic back to stable at once and stops; ``continue`` goes on; after the
last look ``promote`` gives the canary 100 % (a weight-100 step is the promotion itself: nothing is
left to compare it against), ``inconclusive`` ends on stable 100 % (``on_fail: rollback``) or also
on stable but "paused" for a human (``on_fail: pause``).

Traffic always ends on a safe split: stable 100 % after a rollback, an error, Ctrl-C or SIGTERM
(a ``finally`` restores it, with those signals blocked meanwhile), canary 100 % only after a
promotion. Every split change, step start/end and decision is written to ``timeline.json`` as it
happens; ``analyse`` re-derives the decisions from the stored steps (deterministically) and takes
what actually happened from the timeline, so a run interrupted after 2 of 5 steps still analyses.

Where the data comes from depends on the backend. The local mesh runs k6 here: each step's
per-request samples (``step-<i>.json``); k6 runs the step as one process, so its window looks are
made when the step's samples are in, and a rollback found at a window of the step is acted on at
the step's end (the decision records the window and the seconds of data it was found at). A backend
that offers ``observe`` (the ``Observer`` seam: a Kubernetes cluster) is observed window by window:
each version's per-window requests, errors and latency histogram read from the cluster's Prometheus
(``step-<i>.telemetry.json``; windows aligned to multiples of ``window``, whole seconds, at least the
scrape interval), and with ``anytime`` a rollback stops the step at once. The traffic there is

- **generated** when the spec sets ``rps``: one k6 load (``start_load``: a Job, or the k6 operator's
  TestRun) drives the service through the mesh for the whole roll-out, at ``rps`` with
  ``connections``, started before the first step and deleted after the last (also on failure);
- **real** otherwise: the versions serve their own traffic, which must reach the per-window minimum
  a look needs (``MIN_PER_WINDOW`` requests a window for the step's latency metrics — a p99 needs
  100; one for error rate alone — in each of the step's whole windows, up to ``MIN_WINDOWS`` of them,
  for each version). A step short of it waits, window by window, up to ``MAX_WAIT_FACTOR`` times its
  duration more, says so (progress and ``waiting for traffic``/``traffic short``/``traffic enough``
  events), then looks at what it has: a too thin arm is then judged by the statistics' own
  ``no_data`` policy rather than by a guess.

``rps: auto`` (local mesh, or a cluster canary that generates load) first probes the capacity of
the mesh and runs at half of it (``experiments.autorate``).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.backends.base import Observer
from workbench.experiments import autorate
from workbench.experiments.session import ExperimentResult, Session, Severity, metric_checks
from workbench.load import storage
from workbench.load.results import LoadProfile, LoadResult, empty_samples
from workbench.metrics.histogram import Histogram, merge
from workbench.report.plots import COLOURS, add_markers, interval_chart, styled
from workbench.stats.compare import MIN_PER_WINDOW, MIN_WINDOWS, Margin, window_tables
from workbench.stats.sequential import AnytimeTest, Decision, SequentialTest
from workbench.stats.windows import start_of, window_table

TIMELINE_FILE = "timeline.json"
TELEMETRY_SUFFIX = ".telemetry.json"  # step-<i>.telemetry.json: a step observed in Prometheus
TELEMETRY_COLUMNS = ["version", "time", "requests", "errors", "histogram"]
KIND = "canary"
# Outcomes written to the timeline's "end" event, and the verdict/severity each one gives.
OUTCOMES: dict[str, tuple[str, Severity]] = {
    "promoted": ("promoted", "ok"),
    "rolled back": ("rolled back", "worse"),
    "inconclusive": ("inconclusive, rolled back", "inconclusive"),
    "paused": ("paused: needs a human decision", "inconclusive"),
    "interrupted": ("interrupted, rolled back", "error"),
    "terminated": ("terminated, rolled back", "error"),
    "failed": ("failed, rolled back", "error"),
}
ACTION_STYLE = {  # decision markers: colour and symbol per action
    "promote": (COLOURS["ok"], "triangle-up"),
    "continue": (COLOURS["grey"], "circle"),
    "rollback": (COLOURS["bad"], "x"),
    "inconclusive": ("#ff7f0e", "diamond"),
}
VERDICT_CODE = {"better": 0, "equivalent": 1, "inconclusive": 2, "worse": 3}
MAX_WAIT_FACTOR = 2.0  # a step short of traffic waits at most this many times its duration more
LOAD_MARGIN_S = 120.0  # the background load outlasts the planned roll-out (and its waits) by this


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Plan:
    """The roll-out as declared: steps, which of them are looks, and the statistics settings."""

    service: str
    stable: str
    canary: str
    steps: list[dict[str, float]]  # [{"weight": 5, "duration_s": 20.0}, ...]
    metrics: list[str]
    alpha: float
    window_s: float
    margin: dict[str, float]
    no_data: str
    on_fail: str
    sequential: str = "alpha-spending"  # timelines written before the anytime test was the default

    @property
    def looks(self) -> int:
        """Steps that compare the two arms: those below 100 % (a 100 % step is the promotion)."""
        return sum(1 for st in self.steps if st["weight"] < 100)

    @property
    def anytime(self) -> bool:
        return self.sequential == "anytime"

    @property
    def look_weights(self) -> list[float]:
        """The alpha-spending weights: each look's planned duration."""
        return [st["duration_s"] for st in self.steps if st["weight"] < 100]

    def test(self) -> AnytimeTest | SequentialTest:
        """A fresh sequential test for this plan: a confidence sequence tightest after the first step
        (``anytime``), or the alpha-spending plan over the steps below 100 %."""
        if self.anytime:
            return AnytimeTest(
                metrics=self.metrics, margin=Margin(**self.margin), alpha=self.alpha, window=self.window_s,
                no_data=self.no_data, optimise_at=max(self.steps[0]["duration_s"], self.window_s),  # type: ignore[arg-type]
            )  # fmt: skip
        return SequentialTest(
            looks=self.looks, metrics=self.metrics, margin=Margin(**self.margin), alpha=self.alpha,
            window=self.window_s, no_data=self.no_data, weights=self.look_weights,  # type: ignore[arg-type]
        )  # fmt: skip

    def split(self, weight: float) -> dict[str, int]:
        """The traffic split of a step with canary weight ``weight``."""
        w = int(weight)
        return {self.stable: 100 - w, self.canary: w} if w < 100 else {self.canary: 100}

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "looks": self.looks, "alpha_shares": self._shares()}

    def _shares(self) -> list[float]:
        weights = self.look_weights
        if self.anytime or not weights:  # a confidence sequence spends all of alpha on every look at once
            return []
        return [self.alpha * w / sum(weights) for w in weights]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in fields})


def plan_of(spec: Any) -> Plan:
    """The plan of a canary spec; ValueError naming the field when it cannot run."""
    if not spec.steps:
        raise ValueError(f"{spec.name}: steps: a canary needs at least one step")
    steps = []
    for i, st in enumerate(spec.steps):
        duration = st.duration or spec.duration
        if not duration or duration <= 0:
            raise ValueError(f"{spec.name}: steps[{i}].duration: needs a duration (or set the experiment's)")
        steps.append({"weight": int(st.weight), "duration_s": float(duration)})
    if not any(st["weight"] < 100 for st in steps):
        raise ValueError(
            f"{spec.name}: steps: needs at least one step below weight 100 to compare {spec.canary} "
            f"against {spec.stable} (a weight-100 step is the promotion itself)"
        )
    m = spec.margins
    return Plan(
        service=spec.service, stable=spec.stable, canary=spec.canary, steps=steps, metrics=list(spec.metrics),
        alpha=float(spec.alpha), window_s=float(spec.window),
        margin={"latency_ms": m.latency_ms, "latency_pct": m.latency_pct, "error_rate_pct": m.error_rate_pct},
        no_data=spec.no_data, on_fail=spec.on_fail, sequential=spec.sequential,
    )  # fmt: skip


def _check_versions(mesh: Any, plan: Plan, name: str) -> None:
    """ValueError naming the field when the service or a version does not exist on the backend."""
    services = {svc.name: svc for svc in mesh.services()}
    if plan.service not in services:
        raise ValueError(f"{name}: service: no service {plan.service!r} (services: {', '.join(services)})")
    versions = services[plan.service].versions
    for field_name, version in (("stable", plan.stable), ("canary", plan.canary)):
        if version not in versions:
            raise ValueError(
                f"{name}: {field_name}: {plan.service} has no version {version!r} "
                f"(versions: {', '.join(versions)})"
            )


# ---------------------------------------------------------------------------------------------
# The timeline


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Timeline:
    """The run's events (``timeline.json`` in the store), rewritten after every event."""

    def __init__(self, s: Session, plan: Plan):
        self.s = s
        self.doc: dict[str, Any] = {"plan": plan.to_json(), "started": _now(), "events": []}
        self._write()

    def add(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event now (time, event name, fields) and write the file."""
        entry = {"time": _now(), "event": event, **fields}
        self.doc["events"].append(entry)
        self._write()
        return entry

    def _write(self) -> None:
        self.s.save_json(TIMELINE_FILE, self.doc)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """In the main thread: SIGTERM raises SystemExit (so ``finally`` blocks run) while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (delivered on exit) so a second Ctrl-C cannot cut a restore short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------------------------
# Running


def profile(spec: Any, duration_s: float, warmup_s: float, rps: float | None = None) -> LoadProfile:
    """The load of one step (warm-up only before the first), at ``rps`` (default the spec's)."""
    return LoadProfile(
        rps=(rps or spec.rps) if spec.model == "open" else None, connections=spec.connections,
        duration_s=duration_s, warmup_s=warmup_s, model=spec.model, path=spec.path,
    )  # fmt: skip


def _arms(frames: list[pd.DataFrame], plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cumulative (stable, canary) data of the steps so far: samples, or observed per-window rows."""
    samples = pd.concat(frames, ignore_index=True) if frames else empty_samples()
    variant = samples["version" if "histogram" in samples.columns else "variant"].astype(str)
    return (
        samples[variant == plan.stable].reset_index(drop=True),
        samples[variant == plan.canary].reset_index(drop=True),
    )


def _decision_record(
    d: Decision, step: int, made: list[Decision] | None = None, window_s: float = 0.0
) -> dict[str, Any]:
    """A step's decision for the timeline: its last look ``d`` out of the step's looks ``made``."""
    made = made or [d]
    return {
        "look": step, "step": step, "action": d.action, "alpha_spent": sum(x.alpha_spent for x in made),
        "reasons": d.reasons, "window_looks": len(made), "window": d.window,
        "at_s": (d.window + 1) * window_s if d.window is not None and window_s else None,
        "metrics": {r.metric: {"estimate": r.estimate, "ci": list(r.ci), "verdict": r.verdict}
                    for r in d.comparison},
    }  # fmt: skip


class Looker:
    """The looks of one roll-out as its data comes in: after every new window (``anytime``, each look
    on all data up to that window) or once per step (alpha-spending)."""

    def __init__(self, plan: Plan):
        self.plan, self.test = plan, plan.test()
        self.after: int | None = None  # the last window looked at

    def look(self, frames: list[pd.DataFrame], final: bool, force: bool = True) -> list[Decision]:
        """The looks the data in ``frames`` (all steps so far) calls for, stopping at the first one
        that does not say continue. ``final``: the last step's end. ``force``: look at least once
        (on all the data) even when no window is new."""
        stable, canary = _arms(frames, self.plan)
        if isinstance(self.test, SequentialTest):
            return [self.test.look(stable, canary)]
        wa, wb = window_tables(stable, canary, self.plan.window_s, exceed=self.test.margin)
        made = self.test.look_each_window(wa, wb, after=self.after, final=final)
        if not made and force:
            made = [self.test.look_tables(wa, wb, final=final)]
        if made and made[-1].window is not None:
            self.after = made[-1].window
        return made


def run(s: Session) -> None:
    """Walk the steps on the backend, storing each step and decision; always end on a safe split."""
    spec = s.spec
    plan = plan_of(spec)
    mesh = s.backend()
    _check_versions(mesh, plan, spec.name)
    timeline = Timeline(s, plan)
    timeline.add("initial split", split=mesh.get_split(plan.service))
    looker = Looker(plan)
    rps = None  # the rate k6 runs at: the spec's, or rps auto's choice; None: the observed traffic only
    if spec.model == "open" and (not isinstance(mesh, Observer) or "rps" in spec.model_fields_set):
        rps = autorate.choose(s, lambda: nullcontext(mesh), what="the mesh the canary runs on",
                              connections=spec.connections).rps  # fmt: skip
    frames: list[pd.DataFrame] = []
    outcome, reason = "failed", "the run ended before its first decision"
    with _sigterm_raises():
        try:
            with _background_load(s, mesh, plan, timeline, rps) as load:
                outcome, reason = _walk(s, mesh, plan, timeline, looker, frames, load, rps)
        except KeyboardInterrupt:
            outcome, reason = "interrupted", "interrupted (Ctrl-C / SIGINT)"
            raise
        except SystemExit as exc:
            outcome, reason = "terminated", f"terminated (SIGTERM or exit, status {exc.code})"
            raise
        except BaseException as exc:
            outcome, reason = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            _finish(s, mesh, plan, timeline, outcome, reason)


def _walk(
    s: Session, mesh: Any, plan: Plan, timeline: Timeline, looker: Looker, frames: list[pd.DataFrame],
    load: Any, rps: float | None,
) -> tuple[str, str]:  # fmt: skip
    """The steps and their looks; (outcome, reason) of the last look (``failed`` if none decided)."""
    spec, n = s.spec, len(plan.steps)
    outcome, reason = "failed", "the run ended before its first decision"
    for i, st in enumerate(plan.steps, start=1):
        weight, duration = st["weight"], st["duration_s"]
        if weight >= 100:  # the promotion step: only reached when every look passed
            break
        split = plan.split(weight)
        mesh.set_split(plan.service, split)
        timeline.add("split", split=split, reason=f"step {i}/{n}")
        timeline.add("step start", step=i, weight=weight, duration_s=duration)
        s.progress(f"canary step {i}/{n}: {weight}% to {plan.canary} for {duration:g} s")
        warmup = float(spec.warmup or 0) if i == 1 else 0.0
        made: list[Decision] = []

        def on_window(partial: pd.DataFrame, made: list[Decision] = made) -> bool:
            made += looker.look([*frames, partial], final=False, force=False)
            return bool(made) and made[-1].action == "rollback"

        watch = on_window if plan.anytime else None
        data, file = _measure(s, mesh, plan, i, profile(spec, duration, warmup, rps), timeline, load, watch)
        timeline.add("step end", step=i, weight=weight, requests=_requests(data), file=file)
        frames.append(data)
        if not (made and made[-1].action == "rollback"):
            made += looker.look(frames, final=i == plan.looks)
        decision = made[-1]
        timeline.add("decision", **_decision_record(decision, i, made, plan.window_s))
        how = (
            f"{len(made)} window look(s), confidence sequence at alpha {plan.alpha:g}"
            if plan.anytime
            else f"look {i}/{plan.looks}, alpha spent {decision.alpha_spent:.4g}"
        )
        s.progress(f"canary step {i}/{n}: {weight}% {how}: {decision.action}")
        if decision.action == "continue":
            continue
        outcome = {"promote": "promoted", "rollback": "rolled back"}.get(decision.action, "")
        outcome = outcome or ("paused" if plan.on_fail == "pause" else "inconclusive")
        reason = "; ".join(decision.reasons)
        break
    return outcome, reason


def _background_load(
    s: Session, mesh: Any, plan: Plan, timeline: Timeline, rps: float | None
) -> AbstractContextManager[Any]:
    """On an ``Observer`` backend with the spec's ``rps`` given: one load for the whole roll-out
    (deleted when the block ends, whatever happens); else nothing to generate."""
    spec = s.spec
    if not isinstance(mesh, Observer) or "rps" not in spec.model_fields_set:
        return nullcontext()
    planned = float(spec.warmup or 0) + sum(st["duration_s"] for st in plan.steps) * (1 + MAX_WAIT_FACTOR)
    load = profile(spec, planned + LOAD_MARGIN_S, 0.0, rps)
    what = f"{rps:g} rps" if rps is not None else "closed-model load"
    s.progress(f"canary: generating {what} on {plan.service} with {spec.connections} connections "
               "for the whole roll-out")  # fmt: skip
    timeline.add("load start", rps=rps, connections=spec.connections, planned_s=load.duration_s)
    return mesh.start_load(plan.service, load)


def traffic_minimum(metrics: list[str]) -> int:
    """Requests per window a look needs in each arm: the most the step's latency metrics need
    (``MIN_PER_WINDOW``: a p99 needs 100), 1 for error rate alone."""
    return max([MIN_PER_WINDOW.get(m, 5) for m in metrics if m != "error_rate"] or [1])


def short_of_traffic(frame: pd.DataFrame, plan: Plan, start: float, end: float) -> str:
    """What is short ("" when nothing): each version needs the minimum requests in as many windows as
    lie wholly in ``[start, end]`` (windows aligned to multiples of ``window``; at most ``MIN_WINDOWS``,
    at least one)."""
    need = traffic_minimum(plan.metrics)
    whole = math.floor(end / plan.window_s) - math.ceil(start / plan.window_s)
    wanted = max(1, min(MIN_WINDOWS, whole))
    short = []
    for version in (plan.stable, plan.canary):
        rows = frame[frame["version"].astype(str) == version]
        enough = int((rows["requests"] >= need).sum())
        if enough < wanted:
            short.append(f"{version} {enough} of {wanted} windows with >= {need} requests")
    return "; ".join(short)


def _measure(
    s: Session,
    mesh: Any,
    plan: Plan,
    step: int,
    load: LoadProfile,
    timeline: Timeline,
    background: Any = None,
    on_window: Any = None,
) -> tuple[pd.DataFrame, str]:
    """One step's data, stored at once: k6 samples (local mesh), or the versions' traffic observed in
    telemetry over the step (an ``Observer`` backend: a cluster), waiting for traffic that falls short
    of the per-window minimum (bounded, see the module docstring). Returns (data, file name).

    ``on_window`` (Observer only): called with the step's data so far after every window; when it
    returns True the step ends there (a rollback need not wait for the step's end)."""
    if not isinstance(mesh, Observer):
        result = mesh.run_load(plan.service, load)
        storage.save(result, s.store, f"step-{step}")
        return result.samples, f"step-{step}.json"
    _wait(load.warmup_s, background)
    start = time.time()
    end = start + load.duration_s
    while True:
        wait = end - time.time() if on_window is None else min(plan.window_s, end - time.time())
        if wait > 0:
            _wait(wait, background)
        now = min(time.time(), end)
        frame = _observed(mesh, plan, start, now)
        if now >= end:
            break
        if on_window is not None and on_window(frame):  # rolled back mid-step: no waiting for more
            name = f"step-{step}{TELEMETRY_SUFFIX}"
            save_telemetry(frame, s.store / name)
            return frame, name
    waited, bound = 0.0, MAX_WAIT_FACTOR * load.duration_s
    while (short := short_of_traffic(frame, plan, start, end)) and waited < bound:
        if waited == 0:
            timeline.add("waiting for traffic", step=step, short=short, max_wait_s=bound)
            s.progress(f"canary step {step}: traffic below the per-window minimum ({short}); waiting up to "
                       f"{bound:g} s more")  # fmt: skip
        pause = min(plan.window_s, bound - waited)
        _wait(pause, background)
        waited += pause
        end = time.time()
        frame = _observed(mesh, plan, start, end)
    if waited:
        if short:
            timeline.add("traffic short", step=step, short=short, waited_s=waited)
            s.progress(f"canary step {step}: still short of traffic after {waited:g} s ({short}); looking "
                       "at what there is")  # fmt: skip
        else:
            timeline.add("traffic enough", step=step, waited_s=waited)
    name = f"step-{step}{TELEMETRY_SUFFIX}"
    save_telemetry(frame, s.store / name)
    return frame, name


def _observed(mesh: Any, plan: Plan, start: float, end: float) -> pd.DataFrame:
    observed = mesh.observe(plan.service, [plan.stable, plan.canary], start, end, plan.window_s)
    return pd.concat(
        [f.assign(version=v) for v, f in observed.items()] or [pd.DataFrame(columns=TELEMETRY_COLUMNS)],
        ignore_index=True,
    )[TELEMETRY_COLUMNS]


def _wait(seconds: float, background: Any) -> None:
    """Sleep ``seconds``; with a background load, look at it every few seconds (a failed load stops
    the roll-out with its error instead of leaving the steps without traffic)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 2.0))
        if background is not None:
            background.poll()


def save_telemetry(frame: pd.DataFrame, path: Any) -> None:
    """Write observed per-window rows (version, time, requests, errors, histogram) as JSON."""
    rows = [
        {"version": str(r.version), "time": pd.Timestamp(r.time).isoformat(), "requests": float(r.requests),
         "errors": float(r.errors), "histogram": r.histogram.to_dict()}
        for r in frame.itertuples(index=False)
    ]  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"columns": TELEMETRY_COLUMNS, "rows": rows}))  # Infinity: open buckets
    tmp.replace(path)


def load_telemetry(path: Any) -> pd.DataFrame:
    """The rows ``save_telemetry`` wrote."""
    rows = json.loads(path.read_text())["rows"]
    frame = pd.DataFrame(rows, columns=TELEMETRY_COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    frame["histogram"] = [Histogram.from_dict(h) for h in frame["histogram"]]
    return frame


def _requests(data: pd.DataFrame) -> dict[str, int]:
    """Requests per version in one step's data."""
    if "histogram" in data.columns:
        return {str(v): int(n) for v, n in data.groupby("version", sort=False)["requests"].sum().items()}
    return data["variant"].astype(str).value_counts().to_dict()


def _step_data(step: LoadResult | pd.DataFrame) -> pd.DataFrame:
    return step.samples if isinstance(step, LoadResult) else step


def _finish(s: Session, mesh: Any, plan: Plan, timeline: Timeline, outcome: str, reason: str) -> None:
    """Set the safe final split (canary 100 % only after a promotion) and record how the run ended."""
    final = {plan.canary: 100} if outcome == "promoted" else {plan.stable: 100}
    why = "promote" if outcome == "promoted" else f"restore stable ({outcome})"
    with _signals_blocked():
        try:
            mesh.set_split(plan.service, final)
        except Exception as exc:  # the mesh itself is gone: say so, keep the original error
            timeline.add("restore failed", split=final, error=f"{type(exc).__name__}: {exc}")
            timeline.add("end", outcome=outcome, reason=reason)
            if outcome in ("promoted", "rolled back", "inconclusive", "paused"):
                raise
            return
        timeline.add("split", split=final, reason=why)
        _audit_outcome(s, mesh, plan, timeline, outcome, final, reason)
        timeline.add("end", outcome=outcome, reason=reason)
    s.progress(f"canary {plan.canary}: {OUTCOMES[outcome][0]}; traffic now {final}")


def _audit_outcome(
    s: Session, mesh: Any, plan: Plan, timeline: Timeline, outcome: str, final: dict[str, int], reason: str
) -> None:
    """Audit ``promote``, or ``rollback`` when the canary had traffic; a broken log goes to the timeline."""
    from workbench.audit import AuditError, AuditLog

    splits = [e["split"] for e in timeline.doc["events"] if e["event"] in ("initial split", "split")]
    before = splits[-2] if len(splits) >= 2 else None
    if outcome != "promoted" and outcome != "rolled back" and not (before or {}).get(plan.canary):
        return  # the canary never had traffic: nothing was rolled back
    action = "promote" if outcome == "promoted" else "rollback"
    try:
        log = getattr(mesh, "audit", None) or AuditLog()
        log.record(action, plan.service, before, final, run_id=s.run_id, canary=plan.canary,
                   stable=plan.stable, outcome=outcome, reason=reason)  # fmt: skip
    except (AuditError, OSError) as exc:
        timeline.add("audit failed", action=action, error=str(exc))


# ---------------------------------------------------------------------------------------------
# Analysis


@dataclass
class Look:
    """One step's re-derived decision: its step (= its number among the looks), weight, the last of
    its looks (``decision``), how many looks it made and the alpha they spent together."""

    step: int
    weight: float
    decision: Decision
    window_looks: int = 1
    alpha_spent: float = 0.0


def _stored_steps(s: Session, plan: Plan) -> dict[int, LoadResult | pd.DataFrame]:
    """The steps whose data was stored (a partial run has fewer): LoadResults, or observed rows."""
    out: dict[int, LoadResult | pd.DataFrame] = {}
    for i in range(1, len(plan.steps) + 1):
        observed, path = s.store / f"step-{i}{TELEMETRY_SUFFIX}", s.store / f"step-{i}.json"
        if observed.exists():
            out[i] = load_telemetry(observed)
        elif path.exists():
            out[i] = storage.load(path)
    return out


def rederive(plan: Plan, steps: dict[int, LoadResult | pd.DataFrame]) -> list[Look]:
    """The decisions the stored steps give, in order, stopping at the first final action."""
    looker, frames, looks = Looker(plan), [], []
    for i, st in enumerate(plan.steps, start=1):
        if st["weight"] >= 100 or i not in steps:
            break
        frames.append(_step_data(steps[i]))
        made = looker.look(frames, final=i == plan.looks)
        looks.append(Look(i, st["weight"], made[-1], len(made), sum(d.alpha_spent for d in made)))
        if made[-1].action != "continue":
            break
    return looks


def analyse(s: Session) -> ExperimentResult:
    """Judge the stored run (re-runnable from stored data alone, also for an interrupted run)."""
    doc = s.load_json(TIMELINE_FILE)
    plan = Plan.from_json(doc["plan"])
    events: list[dict[str, Any]] = doc["events"]
    steps = _stored_steps(s, plan)
    looks = rederive(plan, steps)
    stored = [e for e in events if e["event"] == "decision"]
    consistent = [e["action"] for e in stored] == [lk.decision.action for lk in looks[: len(stored)]]
    end = next((e for e in reversed(events) if e["event"] == "end"), None)
    splits = [e for e in events if e["event"] in ("split", "initial split")]
    final_split = splits[-1]["split"] if splits else {}
    n = len(plan.steps)
    last = looks[-1] if looks else None
    if end is None:
        verdict, severity = "incomplete", "error"
        headline = (f"{plan.service} {plan.canary}: the run stopped without finishing (no end event; "
                    f"the last split recorded was {final_split})")  # fmt: skip
    else:
        verdict, severity = OUTCOMES.get(end["outcome"], (end["outcome"], "error"))
        headline = _headline(plan, events, looks, final_split)
        chosen = autorate.stored(s)
        if chosen is not None and chosen.auto:
            headline += f" ({chosen.reason})"
    figures: dict[str, Any] = {
        "final_split": final_split,
        "steps_completed": sum(1 for e in events if e["event"] == "step end"),
        "steps_planned": n,
        "looks": len(looks),
        "last_decision": last.decision.action if last else None,
        "alpha_spent": sum(lk.alpha_spent for lk in looks),
        "sequential": plan.sequential,
        "decisions_consistent": consistent,
    }
    if last is not None:
        for r in last.decision.comparison:
            figures[f"{r.metric}_estimate"] = r.estimate
            figures[f"{r.metric}_ci"] = list(r.ci)
            figures[f"{r.metric}_verdict"] = r.verdict
    tables = {"looks": _looks_table(looks), "steps": _steps_table(plan, steps)}
    tables["timeline"] = _events_table(events)
    details = {"plan": plan, "events": events, "looks": looks, "steps": steps, "consistent": consistent}
    if events:  # audit events of this run (and unattributed ones on its service meanwhile), as markers
        from workbench.audit import markers_for_run

        end = pd.Timestamp(events[-1]["time"]) + pd.Timedelta(seconds=1)
        start = doc.get("started") or events[0]["time"]
        details["audit"] = markers_for_run(s.run_id, start, end.to_pydatetime(), [plan.service])
    checks = metric_checks(last.decision.comparison, prefix=f"look {last.step} ") if last else []
    return ExperimentResult(s.spec.name, KIND, verdict, severity, headline, figures, tables, details, checks)


def _headline(
    plan: Plan, events: list[dict[str, Any]], looks: list[Look], final_split: dict[str, int]
) -> str:
    """One sentence: what happened to the canary, where, and why (the deciding metrics' explain())."""
    who, n = f"{plan.service} {plan.canary}", len(plan.steps)
    end = next(e for e in reversed(events) if e["event"] == "end")
    outcome = end["outcome"]
    last = looks[-1] if looks else None
    at = f"step {last.step}/{n} at {last.weight:g} %" if last else "before any look"
    reasons = "; ".join(last.decision.reasons) if last else ""
    if outcome == "promoted":
        return f"{who} promoted to 100 % after {len(looks)} look(s): {reasons}"
    if outcome == "rolled back" and last is not None:
        worse = [r.explain() for r in last.decision.comparison if r.verdict == "worse"]
        return f"{who} rolled back to {plan.stable} at {at}: " + "; ".join(worse)
    if outcome in ("inconclusive", "paused"):
        what = "paused on" if outcome == "paused" else "rolled back to"
        return f"{who}: the last look ({at}) could not decide; {what} {plan.stable} 100 %: {reasons}"
    started = [e for e in events if e["event"] == "step start"]
    where = (
        f"during step {started[-1]['step']}/{n} at {started[-1]['weight']:g} %"
        if started
        else "before step 1"
    )
    so_far = f"{len(looks)} look(s), the last: {last.decision.action}" if last else "no look yet"
    split = ", ".join(f"{v} {w} %" for v, w in final_split.items() if w)
    return f"{who}: {end.get('reason') or outcome} {where} ({so_far}); traffic ended on {split}"


def _looks_table(looks: list[Look]) -> pd.DataFrame:
    rows = []
    for lk in looks:
        for r in lk.decision.comparison:
            rows.append({
                "look": lk.step, "step": lk.step, "weight_pct": lk.weight, "window_looks": lk.window_looks,
                "action": lk.decision.action, "alpha_spent": lk.alpha_spent, "metric": r.metric,
                "unit": r.unit,
                "baseline": r.baseline, "candidate": r.candidate, "estimate": r.estimate, "ci_low": r.ci.low,
                "ci_high": r.ci.high, "margin": r.margin, "verdict": r.verdict, "n_windows": r.n_windows,
                "explanation": r.explain(),
            })  # fmt: skip
    cols = ["look", "step", "weight_pct", "window_looks", "action", "alpha_spent", "metric", "unit",
            "baseline", "candidate", "estimate", "ci_low", "ci_high", "margin", "verdict", "n_windows",
            "explanation"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _telemetry_summary(rows: pd.DataFrame) -> dict[str, float]:
    """count, p50, p99 and error_pct of one version's observed windows (histograms merged)."""
    requests = float(rows["requests"].sum())
    if not len(rows) or requests <= 0:
        return {}
    h = merge(*rows["histogram"]) if len(rows) > 1 else rows["histogram"].iloc[0]
    return {"count": requests, "p50": h.quantile(0.5) if h.count else np.nan,
            "p99": h.quantile(0.99) if h.count else np.nan,
            "error_pct": 100 * float(rows["errors"].sum()) / requests}  # fmt: skip


def _steps_table(plan: Plan, steps: dict[int, LoadResult | pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for i, res in steps.items():
        if isinstance(res, LoadResult):
            arms = {v: a.summary() for v, a in res.by_variant().items()}
        else:
            arms = {str(v): _telemetry_summary(g) for v, g in res.groupby("version", sort=False)}
        row: dict[str, Any] = {"step": i, "weight_pct": plan.steps[i - 1]["weight"],
                               "duration_s": plan.steps[i - 1]["duration_s"]}  # fmt: skip
        for name, version in (("stable", plan.stable), ("canary", plan.canary)):
            summ = arms.get(version, {})
            row[f"{name}_requests"] = int(summ.get("count", 0))
            row[f"{name}_p50_ms"] = summ.get("p50", np.nan)
            row[f"{name}_p99_ms"] = summ.get("p99", np.nan)
            row[f"{name}_error_pct"] = summ.get("error_pct", np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("step") if rows else pd.DataFrame()


def _events_table(events: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for e in events:
        what = {k: v for k, v in e.items() if k not in ("time", "event", "metrics")}
        text = ", ".join(f"{k}={v}" for k, v in what.items())
        rows.append({"time": e["time"], "event": e["event"], "what": text})
    return pd.DataFrame(rows, columns=["time", "event", "what"])


# ---------------------------------------------------------------------------------------------
# Figures


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """The roll-out timeline (weight, latency, errors, decisions), each look's verdicts, last intervals."""
    if "plan" not in result.details:
        return {}
    out = {"timeline": _timeline_figure(result)}
    looks: list[Look] = result.details["looks"]
    if looks:
        out["looks"] = _looks_figure(result)
        frame = looks[-1].decision.comparison.to_frame()
        latency = frame[frame["unit"] == "ms"]
        if len(latency):
            reading = "; ".join(f"{m} {r['verdict']}" for m, r in latency.iterrows())
            title = f"Latency difference canary − stable at the last look ({looks[-1].weight:g} %)"
            out["intervals"] = interval_chart(latency, title, reading)
    return out


def _seconds(times: Any, t0: pd.Timestamp) -> np.ndarray:
    return np.asarray((pd.to_datetime(pd.Series(times), utc=True) - t0).dt.total_seconds(), dtype=float)


def _timeline_figure(result: ExperimentResult) -> go.Figure:
    plan: Plan = result.details["plan"]
    events: list[dict[str, Any]] = result.details["events"]
    steps: dict[int, LoadResult | pd.DataFrame] = result.details["steps"]
    t0 = pd.Timestamp(events[0]["time"]) if events else pd.Timestamp(datetime.now(UTC))
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.25, 0.45, 0.30],
    )  # fmt: skip
    # Row 1: canary weight as a step line, from every split change.
    splits = [e for e in events if e["event"] in ("initial split", "split")]
    if splits:
        xs = list(_seconds([e["time"] for e in splits], t0))
        ys = [float(e["split"].get(plan.canary, 0)) for e in splits]
        xs.append(float(_seconds([events[-1]["time"]], t0)[0]))
        ys.append(ys[-1])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": COLOURS["canary"]},
                                 name=f"{plan.canary} weight"), row=1, col=1)  # fmt: skip
    # Rows 2 and 3: per-arm p50/p99 and error rate per window.
    frames = [_step_data(steps[i]) for i in sorted(steps)]
    stable, canary = _arms(frames, plan)
    starts = [start_of(x) for x in (stable, canary) if len(x)]
    if starts:
        origin = pd.Timestamp(min(starts))
        arms = ((plan.stable, stable, COLOURS["stable"]), (plan.canary, canary, COLOURS["canary"]))
        for name, arm, colour in arms:
            w = window_table(arm, plan.window_s, origin) if len(arm) else None
            if w is None or not len(w):
                continue
            x = (origin - t0).total_seconds() + (w.index.to_numpy(float) + 0.5) * plan.window_s
            p50 = go.Scatter(x=x, y=w["p50"], mode="markers+lines", name=f"{name} p50",
                             line={"color": colour})  # fmt: skip
            p99 = go.Scatter(x=x, y=w["p99"], mode="markers", name=f"{name} p99",
                             marker={"color": colour, "symbol": "triangle-up-open"})  # fmt: skip
            err = go.Scatter(x=x, y=100 * w["errors"] / w["count"], mode="markers+lines",
                             name=f"{name} errors", line={"color": colour, "dash": "dot"})  # fmt: skip
            fig.add_trace(p50, row=2, col=1)
            fig.add_trace(p99, row=2, col=1)
            fig.add_trace(err, row=3, col=1)
    # Decision markers on the weight row, with a line through all rows.
    decisions = [e for e in events if e["event"] == "decision"]
    for e in decisions:
        x = float(_seconds([e["time"]], t0)[0])
        colour, symbol = ACTION_STYLE.get(e["action"], (COLOURS["grey"], "circle"))
        fig.add_vline(x=x, line={"color": colour, "dash": "dash", "width": 1}, row="all", col=1)
        weight = float(plan.steps[e["step"] - 1]["weight"])
        marker = go.Scatter(x=[x], y=[weight], mode="markers+text", text=[e["action"]], showlegend=False,
                            textposition="top center", marker={"color": colour, "symbol": symbol, "size": 11},
                            name=f"look {e['look']}: {e['action']}")  # fmt: skip
        fig.add_trace(marker, row=1, col=1)
    add_markers(fig, result.details.get("audit", []), origin=t0, row="all", col=1)
    fig.update_yaxes(title_text="canary weight (%)", range=[-5, 115], row=1, col=1)
    fig.update_yaxes(title_text="latency per window (ms)", row=2, col=1)
    fig.update_yaxes(title_text="errors per window (%)", row=3, col=1)
    said = [f"look {e['look']} at {plan.steps[e['step'] - 1]['weight']} % {e['action']}" for e in decisions]
    reading = f"{result.verdict}: " + (", ".join(said) or "no look was reached")
    styled(fig, f"Canary roll-out of {plan.service} {plan.canary} (stable {plan.stable})", reading,
           "", "canary weight (%)", height=640)  # fmt: skip
    fig.update_xaxes(title_text="time since start (s)", row=3, col=1)
    return fig


def _looks_figure(result: ExperimentResult) -> go.Figure:
    looks: list[Look] = result.details["looks"]
    metrics = [r.metric for r in looks[0].decision.comparison]
    columns = [f"look {lk.step} ({lk.weight:g} %)" for lk in looks]
    z, text = [], []
    for m in metrics:
        z.append([VERDICT_CODE[lk.decision.comparison[m].verdict] for lk in looks])
        text.append([_cell(lk.decision.comparison[m]) for lk in looks])
    scale = [[0.0, COLOURS["ok"]], [0.25, COLOURS["ok"]], [0.25, "#98df8a"], [0.5, "#98df8a"],
             [0.5, "#c7c7c7"], [0.75, "#c7c7c7"], [0.75, COLOURS["bad"]], [1.0, COLOURS["bad"]]]  # fmt: skip
    heat = go.Heatmap(z=z, x=columns, y=metrics, text=text, texttemplate="%{text}", zmin=-0.5, zmax=3.5,
                      colorscale=scale, showscale=False, hoverinfo="text")  # fmt: skip
    fig = go.Figure(heat)
    actions = ", ".join(f"look {lk.step}: {lk.decision.action}" for lk in looks)
    return styled(fig, "Each look's verdict per metric (canary − stable, with interval)", actions,
                  "look (canary weight, %)", "metric (latency in ms, error rate in points)",
                  height=200 + 60 * len(metrics))  # fmt: skip


def _cell(r: Any) -> str:
    unit = " pts" if r.unit == "pts" else " ms"
    if not np.isfinite(r.estimate):
        return f"{r.verdict}<br>(no data)"
    return f"{r.verdict}<br>{r.estimate:+.2f}{unit} [{r.ci.low:+.2f}, {r.ci.high:+.2f}]"
