"""One experiment's session: its spec, its data directory, its backend and its result file.

A notebook (run by ``workbench run`` or by hand in JupyterLab) opens a session with its
parameters, runs the experiment kind's module through it and shows the result::

    s = open_session("../experiments.yaml", "catalog-v2-ab")
    result = s.execute(ab)          # runs load, or re-analyses stored data when replaying

The backend is, in this order: the mesh state passed by the runner (``mesh_state``), a mesh
started by ``workbench local up`` with the right sidecar mode, or a mesh the session starts itself
and stops in ``close()`` (also at interpreter exit). Data lands under
``<config dir>/data/runs/<run-id>/<experiment>/`` as soon as it is measured, so a failure keeps it.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pandas as pd

from workbench import config as cfgmod
from workbench.backends import open_backend
from workbench.backends.base import Backend
from workbench.errors import BackendError, WorkbenchError
from workbench.load.k6 import SEED_ENV  # the runner's --seed, for every random choice
from workbench.stats.compare import Margin

Severity = Literal["ok", "inconclusive", "worse", "error"]
RESULT_FILE = "result.json"
PROGRESS_ENV = "WORKBENCH_PROGRESS_FILE"  # the runner tails this file to show progress

# Kinds that read the spans their load makes (topology localizes from traces when present).
TRACE_KINDS = frozenset({"traces", "topology"})
QUICK_MIN_DURATION_S = 2.0
# enough windows of enough requests to judge (a canary's: per step)
QUICK_MIN_BY_KIND = {"ab": 30.0, "mesh_compare": 4.0, "canary": 5.0, "traces": 8.0, "topology": 12.0}
# Windows per phase in quick mode: an A/B's interval is a t-interval over paired windows, widened by
# their lag-1 autocorrelation. With 4 windows the t-quantile (3.18) made a 2 ms effect against a
# 1 ms margin a coin toss on 2 cores; with 8, a drift of the host across the run inflated the
# interval through an autocorrelation estimated from 7 differences (CI: +2.37 [+0.26, +4.49] ms,
# the same data in 16 windows +2.26 [+1.07, +3.45]). 15 windows of 2 s, ~100 requests per arm.
QUICK_WINDOWS_BY_KIND = {"ab": 15}
QUICK_WINDOWS = 4
VERDICT_SEVERITY: dict[str, Severity] = {"worse": "worse", "inconclusive": "inconclusive", "better": "ok",
                                         "equivalent": "ok"}  # fmt: skip


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique-enough run id: UTC time to the second plus the process id."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{os.getpid() % 10000:04d}"


@dataclass
class ExperimentResult:
    """What an experiment concluded: the verdict, how serious it is, and its key figures.

    ``verdict`` is the kind's own word (worse, equivalent, promoted, rolled back, pass, fail,
    measured ...); ``severity`` maps it onto the scale a CI gate uses: ok < inconclusive < worse,
    plus error when the experiment could not run. ``figures`` are the key numbers the index shows.
    """

    name: str
    kind: str
    verdict: str
    severity: Severity
    headline: str
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    # Per-check verdicts (a metric, a canary look, an expectation) for CI gates: name, verdict,
    # severity, explanation, optionally estimate and ci. See ``metric_checks``.
    checks: list[dict[str, Any]] = field(default_factory=list)

    def verdict_table(self) -> pd.DataFrame:
        """One-row table for the top of a report."""
        row = {"experiment": self.name, "kind": self.kind, "verdict": self.verdict, "reading": self.headline}
        return pd.DataFrame([row]).set_index("experiment")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "verdict": self.verdict,
            "severity": self.severity,
            "headline": self.headline,
            "figures": {k: _jsonable(v) for k, v in self.figures.items()},
            "checks": _jsonable(self.checks),
        }


def metric_checks(comparison: Any, prefix: str = "", informational: bool = False) -> list[dict[str, Any]]:
    """One check per metric of a ``stats.compare`` Comparison, with its explain() sentence.

    ``informational``: the difference is the measurement itself (a sidecar's overhead, what a
    protection costs), not a regression, so it never fails a CI gate (severity ok).
    """
    return [
        {
            "name": f"{prefix}{r.metric}",
            "verdict": r.verdict,
            "severity": "ok" if informational else VERDICT_SEVERITY.get(r.verdict, "inconclusive"),
            "explanation": r.explain(),
            "estimate": r.estimate,
            "ci": list(r.ci),
        }
        for r in comparison
    ]


@dataclass
class Session:
    """See the module docstring. Build with ``open_session``."""

    config: cfgmod.Config
    spec: Any
    config_file: Path
    run_dir: Path
    quick: bool = False
    replay: bool = False
    mesh_state: Path | None = None
    _backend: Any = None
    _own_mesh: Any = None
    _started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def store(self) -> Path:
        """This experiment's data directory (created on first use)."""
        path = self.run_dir / self.spec.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def margin(self) -> Margin:
        m = self.spec.margins
        return Margin(latency_ms=m.latency_ms, latency_pct=m.latency_pct, error_rate_pct=m.error_rate_pct)

    @property
    def seed(self) -> int | None:
        """The run's seed (``workbench run --seed``, via the environment), else the config's."""
        given = os.environ.get(SEED_ENV)
        return int(given) if given else self.config.defaults.seed

    # ------------------------------------------------------------------------------------------
    # Backend

    def backend(self) -> Backend:
        """The backend the experiment acts on (opened, attached or started on first use)."""
        if self._backend is None:
            opened = open_backend(self.config.backend, mesh_state=self.mesh_state, progress=self.progress)
            self._backend = opened.backend
            if opened.owned:
                self._own_mesh = opened.backend
                atexit.register(self.close)
        return self._backend

    def mesh(self, mode: str, fresh: bool = False, serving: str | None = None) -> AbstractContextManager[Any]:
        """A local mesh in sidecar ``mode``: the session's own when the mode matches, else a new one
        (without the workbench's telemetry). On a cluster the one mode there is, ``cluster`` (its
        own data plane), is the backend itself.

        ``fresh``: always a new mesh, without the workbench's own telemetry (Prometheus and the
        exporters; Envoy's stats and access logs stay), as comparisons between modes need: every
        arm starts alike, and the workbench does not eat the capacity it measures.

        ``serving``: a new mesh runs only what a request entering that service uses (its call tree,
        on the same nodes: ``Topology.serving``); the services it never calls would only share this
        machine's CPU with the ones measured (an attached or shared mesh stays as it is)."""
        backend = self.config.backend
        if backend.type != "local":
            if mode == "cluster":
                return nullcontext(self.backend())
            raise BackendError(f"sidecar modes are a local-mesh setting; the backend is {backend.type!r}")
        if fresh:
            return self._new_mesh(mode, serving)
        current = self._backend
        if current is None and self.mesh_state is not None:  # the runner's shared mesh
            current = self.backend()
        if current is not None and getattr(current, "mode", None) == mode:
            return nullcontext(current)
        from workbench.backends.local.mesh import running_mesh

        attached = running_mesh(mode) if self.mesh_state is None else None
        if attached is not None:
            return nullcontext(attached)
        return self._new_mesh(mode, serving)

    def _new_mesh(self, mode: str, serving: str | None) -> AbstractContextManager[Any]:
        """A new local mesh without the workbench's telemetry (the sidecars' cost is measured from
        their processes, the rest from k6 and the access logs) and without tracing (its cost would be
        in the figures); with ``serving``, only that service's part of the topology."""
        from workbench.backends.local.mesh import LocalMesh
        from workbench.backends.local.topology import load_topology

        backend = self.config.backend
        topology: Any = backend.topology
        if serving is not None:
            try:
                topology = load_topology(backend.topology).serving(serving)
            except ValueError as exc:
                raise BackendError(str(exc)) from None
        return LocalMesh(mode=mode, topology=topology, telemetry=False,  # type: ignore[arg-type]
                         waypoint=backend.waypoint)  # fmt: skip

    @contextmanager
    def quiet_others(self) -> Iterator[None]:
        """Pause the scraping of the local meshes already running (the runner's, ``workbench local
        up``'s, this session's) while the block measures; see ``LocalMesh.quiet``."""
        with ExitStack() as stack:
            if self.config.backend.type == "local":
                from workbench.backends.local.mesh import running_mesh

                seen: set[Path] = set()
                shared = running_mesh(state_dir=self.mesh_state) if self.mesh_state else None
                for mesh in (self._backend, shared, running_mesh()):
                    if mesh is not None and hasattr(mesh, "quiet") and Path(mesh.run_dir) not in seen:
                        seen.add(Path(mesh.run_dir))
                        stack.enter_context(mesh.quiet())
            yield

    def close(self) -> None:
        """Stop the mesh this session started (an attached mesh keeps running)."""
        if self._own_mesh is not None:
            self._own_mesh.stop()
            self._own_mesh = None
            self._backend = None
            atexit.unregister(self.close)

    # ------------------------------------------------------------------------------------------
    # Running and results

    def execute(self, kind_module: ModuleType) -> ExperimentResult:
        """Run the experiment (or, when replaying, re-analyse its stored data) and save the result."""
        try:
            if self.replay:
                result = kind_module.analyse(self)
            else:
                self.progress(f"{self.spec.kind} started: {self.spec.plan()}")
                with self._untraced():
                    kind_module.run(self)
                result = kind_module.analyse(self)
        except BaseException as exc:
            self._write_failure(exc)
            raise
        self.save_result(result)
        return result

    @contextmanager
    def _untraced(self) -> Iterator[None]:
        """Tracing is an observer: on a local mesh that is already running (the runner's, or this
        session's), sampling drops to 0 while a kind that does not read spans measures, and returns
        after, also on error. At 100 % on 2 cores the tracer and the span receiver doubled the
        catalog's p50 at 200 rps and hid the default A/B's +2 ms known effect."""
        mesh = None
        if self.config.backend.type == "local" and self.spec.kind not in TRACE_KINDS:
            mesh = self._backend
            if mesh is None and self.mesh_state is not None:  # the runner's shared mesh
                mesh = self.backend()
        with mesh.untraced() if hasattr(mesh, "untraced") else nullcontext():
            yield

    def save_result(self, result: ExperimentResult) -> Path:
        finished = datetime.now(UTC)
        payload = {
            **result.to_json(),
            "status": "ok",
            "run_id": self.run_id,
            "quick": self.quick,
            "replay": self.replay,
            "started": self._started.isoformat(),
            "finished": finished.isoformat(),
            "duration_s": round((finished - self._started).total_seconds(), 1),
            "description": self.spec.description,
        }
        if self.replay:  # keep when and how long the measurement ran; note when it was re-analysed
            original = read_result(self.store) or {}
            for key in ("started", "finished", "duration_s"):
                payload[key] = original.get(key, payload[key])
            payload["replayed"] = finished.isoformat()
        return _write_json(self.store / RESULT_FILE, payload)

    def _write_failure(self, exc: BaseException) -> None:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else _reason(exc)
        payload = {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "verdict": "failed",
            "severity": "error",
            "headline": reason,
            "figures": {},
            "status": "failed",
            "error": reason,
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
            "run_id": self.run_id,
            "quick": self.quick,
            "started": self._started.isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "description": self.spec.description,
        }
        _write_json(self.store / RESULT_FILE, payload)

    def progress(self, text: str) -> None:
        """Tell the runner (or the analyst) where the experiment is: sweep point, canary step."""
        path = os.environ.get(PROGRESS_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{self.spec.name}: {text}\n")
        else:
            print(text, flush=True)

    def load_json(self, name: str) -> Any:
        path = self.store / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no stored data for experiment {self.spec.name!r} in run {self.run_id} "
                "(was it run to completion?)"
            )
        return json.loads(path.read_text())

    def save_json(self, name: str, payload: Any) -> Path:
        return _write_json(self.store / name, payload)


def open_session(
    config_file: str | Path,
    experiment: str,
    run_dir: str | Path = "",
    quick: bool = False,
    replay: bool = False,
    mesh_state: str | Path = "",
) -> Session:
    """A session for ``experiment`` of ``config_file``; see the module docstring."""
    config_file = Path(config_file).resolve()
    cfg = cfgmod.load(config_file)
    spec = cfg.get(experiment)
    if quick:
        spec = quick_spec(spec)
    if not run_dir:
        if replay:
            raise ValueError("replay needs run_dir: the run whose stored data to re-analyse")
        run_dir = config_file.parent / "data" / "runs" / new_run_id()
    return Session(
        config=cfg,
        spec=spec,
        config_file=config_file,
        run_dir=Path(run_dir).resolve(),
        quick=quick,
        replay=replay,
        mesh_state=Path(mesh_state) if mesh_state else None,
    )


def quick_spec(spec: Any) -> Any:
    """The same experiment, shortened for a smoke run (``--quick``).

    A fifth of each duration (at least 2 s; an A/B 30 s, a topology 12 s, a canary step 5 s, traces
    8 s), warm-up at most 1 s, windows short enough for >= 4 per phase (an A/B: 15; whole seconds, as
    a cluster's Prometheus windows are), sweeps cut to their first and last values, one repetition;
    a mesh comparison keeps its baseline and its last mode at its first connection count, one trial
    of 8 s (at least) per mode — across clusters (``meshes``) two trials, the least an interval over
    trials needs. Interleaved trials are what full runs are for.
    """
    spec = spec.model_copy(deep=True)
    if getattr(spec, "duration", None):
        spec.duration = _quick_s(spec.duration, QUICK_MIN_BY_KIND.get(spec.kind, QUICK_MIN_DURATION_S))
    if getattr(spec, "warmup", None):
        spec.warmup = min(spec.warmup, 1.0)  # k6 phases last 0 or >= 1 s
    for step in getattr(spec, "steps", None) or []:
        step.duration = _quick_s(step.duration, QUICK_MIN_BY_KIND.get(spec.kind, QUICK_MIN_DURATION_S))
    for name in ("rps", "connections"):
        values = getattr(spec, name, None)
        if isinstance(values, list) and len(values) > 2:
            setattr(spec, name, [values[0], values[-1]])
    if getattr(spec, "kind", "") == "mesh_compare" and spec.meshes is not None:
        spec.trials = 2  # across clusters the interval is over trials: two is the least that gives one
        spec.connections = spec.connections[:1]
    elif getattr(spec, "kind", "") == "mesh_compare":
        # one trial per mode, as long as two: the same windows, two fresh meshes (~7 s each) fewer
        spec.trials = 1
        if spec.duration:
            spec.duration *= 2
        spec.connections = spec.connections[:1]
        if spec.modes and len(spec.modes) > 2:  # the baseline and the heaviest mode
            base = spec.baseline or spec.modes[0]
            spec.modes = [base, next(m for m in reversed(spec.modes) if m != base)]
    if getattr(spec, "repetitions", None):
        spec.repetitions = 1
    durations = [getattr(spec, "duration", None) or math.inf]
    shortest = min([*durations, *[s.duration for s in getattr(spec, "steps", None) or []]])
    if getattr(spec, "window", None) and math.isfinite(shortest):  # whole seconds: Prometheus' windows too
        per_phase = QUICK_WINDOWS_BY_KIND.get(spec.kind, QUICK_WINDOWS)
        spec.window = max(1.0, float(math.floor(min(spec.window, shortest / per_phase))))
    return spec


def _quick_s(seconds: float | None, minimum: float = QUICK_MIN_DURATION_S) -> float | None:
    return None if seconds is None else max(minimum, round(seconds / 5))


def read_result(store: Path) -> dict[str, Any] | None:
    """The result file of one experiment directory, or None when it has none."""
    path = store / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def progress_file(path: Path) -> Iterator[Path]:
    """Point sessions in child processes (papermill kernels) at ``path`` for progress lines."""
    with env_var(PROGRESS_ENV, str(path)):
        yield path


@contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (child processes such as kernels inherit it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, WorkbenchError | ValueError) else f"{type(exc).__name__}: {text}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _write_json(path: Path, payload: Any) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=1, default=str))
    tmp.replace(path)
    return path
