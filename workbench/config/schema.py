"""The experiments.yaml schema (pydantic v2), ``load()`` and ``loads()``.

One file describes the backend, suite-wide statistical defaults and a list of experiments,
each of a ``kind``. ``load()`` turns every problem into a ``ConfigError`` whose lines name the
file, the YAML line, the field path and what was expected (``problems.py``), e.g.::

    experiments.yaml:14 experiments[2].steps[1].weight: must be between 0 and 100 (got 140)

The traffic value types (split, route, fault, retries, circuit breaker, policy) are the backends'
own (``workbench.backends.traffic``), durations and percentages ``workbench.units``': the schema
sits above the layers it feeds and only composes their types.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, ValidationInfo, model_validator

from workbench.backends.traffic import (
    CircuitBreaker,
    Fault,
    HttpMethod,
    Policy,
    Retries,
    Route,
    Split,
)
from workbench.config.problems import ConfigError, Problem, format_path, parse_model
from workbench.units import (
    AutoRps,
    Connections,
    Duration,
    HttpUrl,
    Name,
    Percent,
    PositiveDuration,
    Rps,
    Strict,
    Weight,
)

Mode = Literal["none", "serveronly", "both", "both-mtls", "ambient", "ambient-waypoint"]
Metric = Literal["p50", "p75", "p90", "p95", "p99", "p999", "mean", "error_rate"]
NoData = Literal["fail", "pass", "inconclusive"]
LoadModel = Literal["open", "closed"]


# ---------------------------------------------------------------------------------------------
# Backend


class Tracing(Strict):
    """Envoy's own tracer on every sidecar (and the demo apps' spans), received on loopback."""

    sampling: Percent = 100.0  # percent of requests traced
    tracer: Literal["opentelemetry", "zipkin"] = "opentelemetry"


class LocalSettings(Strict):
    """The embedded mesh on 127.0.0.1: real Envoy sidecars, demo app, Prometheus, k6."""

    type: Literal["local"]
    mode: Mode = "both"
    topology: str | None = Field(default=None, description="YAML file replacing the demo topology")
    tracing: Tracing | None = Tracing()  # null: no tracer, no receiver (apps still propagate context)
    # mode ambient-waypoint: a waypoint per service, or one for the namespace (all services)
    waypoint: Literal["service", "namespace"] = "service"

    def mesh_options(self) -> dict[str, Any]:
        """Keyword arguments of ``LocalMesh`` for these settings (mode, topology, tracing, waypoint)."""
        t = self.tracing
        return {"mode": self.mode, "topology": self.topology, "tracing": t.sampling if t else None,
                "tracer": t.tracer if t else "opentelemetry", "waypoint": self.waypoint}  # fmt: skip


class TraceStore(Strict):
    """Where a cluster's traces are read: exactly one of Jaeger's query API or Tempo's HTTP API."""

    jaeger: HttpUrl | None = None
    tempo: HttpUrl | None = None

    @model_validator(mode="after")
    def _one(self) -> TraceStore:
        if (self.jaeger is None) == (self.tempo is None):
            raise ValueError("give exactly one of 'jaeger' (query API URL) or 'tempo' (HTTP API URL)")
        return self

    def kind(self) -> str:
        return "jaeger" if self.jaeger is not None else "tempo"

    def client(self) -> Any:
        """A ``traces.jaeger.JaegerClient`` or ``traces.tempo.TempoClient`` for the URL."""
        if self.jaeger is not None:
            from workbench.traces.jaeger import JaegerClient

            return JaegerClient(str(self.jaeger))
        from workbench.traces.tempo import TempoClient

        return TempoClient(str(self.tempo))


class KubernetesSettings(Strict):
    """A cluster reached through kubeconfig (or in-cluster config) and its Prometheus."""

    type: Literal["kubernetes"]
    context: str | None = None
    namespace: str | None = None
    prometheus_url: HttpUrl | None = None
    mesh: Literal["auto", "istio", "linkerd", "consul", "gateway-api"] = "auto"
    # Telemetry dialect of prometheus_url; default: the mesh's own (needed with mesh: gateway-api).
    dialect: Literal["istio", "istio-ambient", "linkerd", "consul", "envoy"] | None = None
    traces: TraceStore | None = None  # the cluster's Jaeger or Tempo, for traces experiments


BackendSettings = Annotated[Union[LocalSettings, KubernetesSettings], Field(discriminator="type")]  # noqa: UP007


# ---------------------------------------------------------------------------------------------
# Defaults and shared pieces


class Margins(Strict):
    """Practical-significance margins: a difference inside them counts as equivalent."""

    latency_ms: Annotated[float, Field(ge=0)] | None = None
    latency_pct: Annotated[float, Field(ge=0)] | None = None
    error_rate_pct: Percent | None = None


class Defaults(Strict):
    """Suite-wide settings every experiment inherits unless it sets its own."""

    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    window: PositiveDuration = 5.0
    margins: Margins = Margins(latency_ms=1.0, latency_pct=5.0, error_rate_pct=0.5)
    warmup: Duration = 5.0
    duration: PositiveDuration = 60.0
    no_data: NoData = "inconclusive"
    slo_p99_ms: Annotated[float, Field(gt=0)] = 100.0
    seed: int | None = None

    @model_validator(mode="after")
    def _complete_margins(self) -> Defaults:
        base = Margins(latency_ms=1.0, latency_pct=5.0, error_rate_pct=0.5)
        self.margins = base.model_copy(update=self.margins.model_dump(exclude_none=True))
        return self


class Step(Strict):
    """One canary step: the canary's weight and how long it is held."""

    weight: Weight
    duration: PositiveDuration | None = None


class Protection(Strict):
    """One resilience setting to compare (none, retries, a timeout, a circuit breaker)."""

    name: Name
    retries: Retries | None = None
    timeout: PositiveDuration | None = None
    circuit_breaker: CircuitBreaker | None = None


class Expectation(Strict):
    caller: str
    path: str = "/"
    method: HttpMethod = "GET"
    allowed: bool


# ---------------------------------------------------------------------------------------------
# Experiments


class _Experiment(Strict):
    name: Name
    description: str = ""
    # true: left out of a run unless named with --only (a long study kept out of the default suite)
    optional: bool = False
    alpha: Annotated[float, Field(gt=0, lt=0.5)] | None = None
    window: PositiveDuration | None = None
    warmup: Duration | None = None
    no_data: NoData | None = None
    margins: Margins | None = None

    def target(self) -> str:
        """What the experiment acts on, for summary tables."""
        return getattr(self, "service", "")

    def plan(self) -> str:
        """One line saying what the experiment will do."""
        return self.description

    def planned_seconds(self) -> float:
        """Seconds of load (warm-up included) the experiment plans to generate."""
        return 0.0


class _Loaded(_Experiment):
    """Experiments that generate load against a service."""

    service: str = "frontend"
    path: str = "/"
    duration: PositiveDuration | None = None
    model: LoadModel = "open"


class LoadTest(_Loaded):
    """Sweep requests per second and concurrent connections (and optionally sidecar modes)."""

    kind: Literal["loadtest"]
    rps: Annotated[list[Rps], Field(min_length=1)]
    connections: Annotated[list[Connections], Field(min_length=1)] = [16]
    modes: list[Mode] | None = None
    repetitions: Annotated[int, Field(ge=1, le=100)] = 1
    slo_p99_ms: Annotated[float, Field(gt=0)] | None = None

    def plan(self) -> str:
        modes = f" x modes {', '.join(self.modes)}" if self.modes else ""
        return (
            f"rps {_nums(self.rps)} x connections {_nums(self.connections)}{modes}, "
            f"{self.repetitions} rep, {self.model} model"
        )

    def planned_seconds(self) -> float:
        points = len(self.rps) * len(self.connections) * len(self.modes or [None]) * self.repetitions
        return points * ((self.duration or 0) + (self.warmup or 0))


MeshName = Literal["auto", "istio", "linkerd", "consul", "gateway-api"]


class MeshArm(Strict):
    """One arm of a mesh comparison across clusters: a kube context (and namespace) running one mesh.

    Written as a mapping, or as just the context's name. ``name`` labels the arm (default: the
    context); ``mesh`` is what runs there (``auto``: detected); ``service`` the target there
    (default: the experiment's)."""

    context: str
    name: Name | None = None
    namespace: str | None = None
    mesh: MeshName = "auto"
    service: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _context_only(cls, data: Any) -> Any:
        return {"context": data} if isinstance(data, str) else data

    @property
    def label(self) -> str:
        """The arm's name in tables and files."""
        return self.name or self.context


class MeshCompare(_Loaded):
    """Overhead of sidecar modes or meshes against a baseline, by interleaved repeated trials."""

    kind: Literal["mesh_compare"]
    modes: list[Mode] | None = None
    meshes: list[MeshArm] | None = None
    fortio_results: list[str] | None = None
    baseline: str | None = None
    rps: AutoRps = "auto"
    connections: Annotated[list[Connections], Field(min_length=1)] = [1, 4, 16, 64]
    trials: Annotated[int, Field(ge=2, le=100)] = 3

    @model_validator(mode="after")
    def _source(self) -> MeshCompare:
        given = [k for k in ("modes", "meshes", "fortio_results") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'modes' (local sidecar modes), 'meshes' (cluster meshes) or "
                f"'fortio_results' (result files to ingest) (got {', '.join(given) or 'none'})"
            )
        options = getattr(self, given[0])
        if len(options) == 0:
            raise ValueError(f"'{given[0]}' must list at least one entry")
        if given[0] == "meshes":
            options = [arm.label for arm in options]
            repeated = sorted({n for n in options if options.count(n) > 1})
            if repeated:
                raise ValueError(f"meshes: arm names must differ (give each a name:): {', '.join(repeated)}")
        if given[0] != "fortio_results" and self.baseline is not None and self.baseline not in options:
            raise ValueError(f"baseline '{self.baseline}' is not one of {given[0]}: {options}")
        return self

    def target(self) -> str:
        return self.service if self.fortio_results is None else "fortio results"

    def plan(self) -> str:
        if self.fortio_results is not None:
            return f"ingest {len(self.fortio_results)} path(s), baseline {self.baseline or 'first'}"
        arms = ", ".join(self.modes or [arm.label for arm in self.meshes or []])
        return f"{arms} at {_rate(self.rps)} x connections {_nums(self.connections)}, {self.trials} trials"

    def planned_seconds(self) -> float:
        if self.fortio_results is not None:
            return 0.0
        arms = len(self.modes or self.meshes or [])
        return arms * len(self.connections) * self.trials * ((self.duration or 0) + (self.warmup or 0))


class Variants(Strict):
    baseline: str
    candidate: str


class AB(_Loaded):
    """Two versions live at the same time, split by weight or by header/cookie route."""

    kind: Literal["ab"]
    variants: Variants
    split: Split | None = None
    route: Route | None = None
    rps: AutoRps = 200.0
    connections: Connections = 16
    metrics: Annotated[list[Metric], Field(min_length=1)] = ["p50", "p90", "p99", "error_rate"]
    # local mesh: then measure both versions' apps without sidecars, as long as the A/B — the
    # difference its interval should cover (a check of the method on a known effect)
    ground_truth: bool = True

    @model_validator(mode="after")
    def _how(self) -> AB:
        if (self.split is None) == (self.route is None):
            raise ValueError("give exactly one of 'split' (weights) or 'route' (header/cookie match)")
        return self

    def plan(self) -> str:
        v = self.variants
        if self.split is not None:
            how = "split " + "/".join(f"{k}:{w}" for k, w in self.split.items())
        else:
            r = self.route
            assert r is not None
            field = "header" if r.header else "cookie"
            how = f"{field} {r.header or r.cookie}={r.value} on {_nums([r.percent])}%"
        return f"{v.baseline} vs {v.candidate}, {how}, {_rate(self.rps)}, {', '.join(self.metrics)}"

    def planned_seconds(self) -> float:  # ground truth: half the duration before, half after, each warmed up
        return (self.duration or 0) * (2 if self.ground_truth else 1) + (self.warmup or 0) * (
            3 if self.ground_truth else 1
        )


class Canary(_Loaded):
    """Staged roll-out: raise the canary's weight step by step, deciding at every step."""

    kind: Literal["canary"]
    stable: str
    canary: str
    steps: Annotated[list[Step], Field(min_length=1)]
    rps: AutoRps = 200.0
    connections: Connections = 16
    metrics: Annotated[list[Metric], Field(min_length=1)] = ["p50", "p99", "error_rate"]
    on_fail: Literal["rollback", "pause"] = "rollback"
    # anytime: a confidence sequence, a look after every window; alpha-spending: one look per step
    sequential: Literal["anytime", "alpha-spending"] = "anytime"

    def plan(self) -> str:
        weights = " > ".join(f"{s.weight}%" for s in self.steps)
        looks = "a look after every window" if self.sequential == "anytime" else "alpha spent over the steps"
        return f"{self.stable} -> {self.canary}: {weights}, {looks}, on fail {self.on_fail}"

    def planned_seconds(self) -> float:
        return (self.warmup or 0) + sum(s.duration or 0 for s in self.steps)


class Authz(_Experiment):
    """Apply an authorization policy and check it with real requests."""

    kind: Literal["authz"]
    policy: Policy
    expect: Annotated[list[Expectation], Field(min_length=1)]

    def target(self) -> str:
        return self.policy.service

    def plan(self) -> str:
        return f"{self.policy.action} policy, {len(self.policy.rules)} rule(s), {len(self.expect)} checks"


class Resilience(_Loaded):
    """Inject a fault on a dependency and compare protection settings under it."""

    kind: Literal["resilience"]
    dependency: str
    fault: Fault
    protections: Annotated[list[Protection], Field(min_length=1)] = [Protection(name="none")]
    rps: Rps = 200.0
    connections: Connections = 16

    def plan(self) -> str:
        f = self.fault
        fault = f"delay {_nums([f.delay or 0])}s" if f.delay is not None else f"abort {f.abort}"
        return (
            f"{fault} on {_nums([f.percent])}% of {self.dependency}; compare "
            f"{', '.join(p.name for p in self.protections)}"
        )

    def planned_seconds(self) -> float:
        return len(self.protections) * ((self.duration or 0) + (self.warmup or 0))


class Change(Strict):
    """A known change for the second half of a topology run (local mesh): a version's behaviour."""

    service: str
    version: str | None = None  # default: the service's stable (first) version
    service_time_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None  # added to the current
    error_rate: Annotated[float, Field(ge=0, le=1)] | None = None


class Topology(_Loaded):
    """Service graph from telemetry and cluster objects, with bottleneck localization."""

    kind: Literal["topology"]
    rps: Rps = 200.0
    connections: Connections = 16
    localize: bool = True  # compare the run's second half with its first, rank the services
    change: Change | None = None  # a known change applied for the second half (tests, demos)

    def plan(self) -> str:
        return f"graph from telemetry at {_nums([self.rps])} rps"

    def planned_seconds(self) -> float:
        return (self.duration or 0) + (self.warmup or 0)


class Traces(_Loaded):
    """Request flows from traces: waterfalls, critical paths, shares at p50/p99, what changed."""

    kind: Literal["traces"]
    rps: Rps = 150.0
    connections: Connections = 16
    compare: bool = True  # two halves: which service's critical-path self time changed
    change: Change | None = None  # a known change applied for the second half (local mesh)
    slowest: Annotated[int, Field(ge=1, le=50)] = 5  # waterfalls of the slowest requests
    request_id: str | None = None  # also draw the waterfall of this x-request-id
    sampling: Percent | None = None  # local mesh: sample this percent during the run
    limit: Annotated[int, Field(ge=1, le=100_000)] = 1000  # cluster: traces read from Jaeger/Tempo

    def plan(self) -> str:
        halves = ", two halves compared" if self.compare else ""
        return f"traced load at {_nums([self.rps])} rps{halves}, slowest {self.slowest} drawn"

    def planned_seconds(self) -> float:
        return (self.duration or 0) + (self.warmup or 0)


class Audit(_Experiment):
    """Release audit log: verify the hash chain and summarize changes."""

    kind: Literal["audit"]
    file: str | None = None
    since: str | None = None

    def target(self) -> str:
        return self.file or "audit log"

    def plan(self) -> str:
        return "verify the hash chain, list changes" + (f" since {self.since}" if self.since else "")


Experiment = Annotated[
    Union[LoadTest, MeshCompare, AB, Canary, Authz, Resilience, Topology, Traces, Audit],  # noqa: UP007
    Field(discriminator="kind"),
]
KINDS: tuple[str, ...] = tuple(
    get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Experiment)[0])
)


class Config(Strict):
    """A whole experiments.yaml, with defaults filled into each experiment."""

    backend: BackendSettings = LocalSettings(type="local")
    defaults: Defaults = Defaults()
    experiments: Annotated[list[Experiment], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _backend_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("backend"), str):
            data = {**data, "backend": {"type": data["backend"]}}
        return data

    @model_validator(mode="after")
    def _inherit_and_check(self, info: ValidationInfo) -> Config:
        d = self.defaults
        for exp in self.experiments:
            for key in ("alpha", "window", "warmup", "no_data", "duration"):
                if key in type(exp).model_fields and getattr(exp, key) is None:
                    setattr(exp, key, getattr(d, key))
            if isinstance(exp, Canary):
                for step in exp.steps:
                    step.duration = step.duration or exp.duration
            if isinstance(exp, LoadTest) and exp.slo_p99_ms is None:
                exp.slo_p99_ms = d.slo_p99_ms
            own = exp.margins.model_dump(exclude_none=True) if exp.margins else {}
            exp.margins = d.margins.model_copy(update=own)
        if not (info.context or {}).get("deferred_checks"):
            problems = semantic_problems(self)
            if problems:
                raise ValueError("; ".join(f"{format_path(p)}: {m}" for p, m in problems))
        return self

    def select(self, only: Iterable[str] = ()) -> list[Any]:
        """The experiments named in ``only`` (when empty: all but the ``optional`` ones), in file
        order; ValueError names the unknown ones and the names there are (``workbench run --only``)."""
        only = list(only)
        names = [e.name for e in self.experiments]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(
                f"--only: no experiment named {', '.join(unknown)}; there are: {', '.join(names)}"
            )
        return [e for e in self.experiments if e.name in only or (not only and not e.optional)]

    def get(self, name: str) -> Any:
        """The experiment called ``name``; KeyError lists the names there are."""
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(
            f"no experiment named {name!r}; there are: {', '.join(e.name for e in self.experiments)}"
        )


def summary_rows(cfg: Config) -> list[dict[str, Any]]:
    """One row per experiment (name, kind, target, plan, planned load in s) for tables."""
    return [
        {
            "name": e.name,
            "kind": e.kind,
            "target": e.target(),
            "plan": e.plan(),
            "load_s": e.planned_seconds(),
        }
        for e in cfg.experiments
    ]


def semantic_problems(cfg: Config) -> list[tuple[tuple[Any, ...], str]]:
    """Checks across fields: unique names, increasing canary steps, distinct variants."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen: dict[str, int] = {}
    for i, exp in enumerate(cfg.experiments):
        if exp.name in seen:
            problems.append(
                (
                    ("experiments", i, "name"),
                    f"duplicate name '{exp.name}' (also experiments[{seen[exp.name]}])",
                )
            )
        seen.setdefault(exp.name, i)
        if isinstance(exp, Canary):
            if exp.stable == exp.canary:
                problems.append((("experiments", i, "canary"), f"must differ from stable ('{exp.stable}')"))
            for j in range(1, len(exp.steps)):
                prev, cur = exp.steps[j - 1].weight, exp.steps[j].weight
                if cur <= prev:
                    problems.append(
                        (
                            ("experiments", i, "steps", j, "weight"),
                            f"must be greater than the previous step's weight {prev} (got {cur})",
                        )
                    )
        if isinstance(exp, AB):
            v = exp.variants
            if v.baseline == v.candidate:
                problems.append(
                    (
                        ("experiments", i, "variants", "candidate"),
                        f"must differ from baseline ('{v.baseline}')",
                    )
                )
            if exp.split is not None and set(exp.split) != {v.baseline, v.candidate}:
                problems.append(
                    (
                        ("experiments", i, "split"),
                        f"must give weights for exactly the variants '{v.baseline}' and '{v.candidate}' "
                        f"(got {', '.join(map(str, exp.split))})",
                    )
                )
        if isinstance(exp, AB | Canary | MeshCompare) and _auto_closed(exp):
            why = ("'auto' chooses an open-model rate; the closed model has none (each connection sends as "
                   "fast as answers come): give model: open")  # fmt: skip
            problems.append((("experiments", i, "rps"), why))
        if isinstance(exp, Resilience):
            names = [p.name for p in exp.protections]
            for j, n in enumerate(names):
                if n in names[:j]:
                    problems.append((("experiments", i, "protections", j, "name"), f"duplicate name '{n}'"))
    return problems


# ---------------------------------------------------------------------------------------------
# Loading


def load(path: str | Path) -> Config:
    """Read and validate an experiments file; raise ConfigError naming every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(str(path), None, "", "is a directory, expected a YAML file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), None, "", f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot be read: {exc.strerror}")]) from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "experiments.yaml") -> Config:
    """Validate experiments YAML given as text; ``source`` names it in messages."""
    cfg, located = parse_model(text, Config, source, context={"deferred_checks": True})
    semantic = semantic_problems(cfg)
    if semantic:
        raise ConfigError(
            [Problem(source, located.line_of(loc), format_path(loc), msg) for loc, msg in semantic]
        )
    return cfg


def _auto_closed(exp: AB | Canary | MeshCompare) -> bool:
    """``rps: auto`` written with the closed model (a mesh comparison ingesting files runs no load)."""
    ingests = isinstance(exp, MeshCompare) and exp.fortio_results is not None
    return exp.rps == "auto" and exp.model == "closed" and "rps" in exp.model_fields_set and not ingests


def _nums(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _rate(rps: float | str) -> str:
    return "rps auto (<= 50 % of the probed capacity)" if rps == "auto" else f"{rps:g} rps"
