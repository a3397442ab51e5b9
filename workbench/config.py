"""The experiments.yaml schema (pydantic v2) and ``load()``.

One file describes the backend, suite-wide statistical defaults and a list of experiments,
each of a ``kind``. ``load()`` turns every problem into a ``ConfigError`` whose lines name the
file, the YAML line, the field path and what was expected, e.g.::

    experiments.yaml:14 experiments[2].steps[1].weight: must be between 0 and 100 (got 140)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from workbench.yamlload import Located, YamlProblem, load_yaml

# ---------------------------------------------------------------------------------------------
# Value types


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"1m30s"``, ``"2h"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like '30s' or '2m' (got {_show(value)})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"must be a positive duration (got {_show(value)})")
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"must be a duration like '30s', '500ms' or '2m' (got {_show(value)})")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"must be a duration like '30s' or '2m' (got {_show(value)})")
    if seconds < 0:
        raise ValueError(f"must be a positive duration (got {_show(value)})")
    return seconds


def _positive_duration(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _percent(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError(f"must be between 0 and 100 (got {_show(value)})")
    return value


def _split(weights: dict[str, int]) -> dict[str, int]:
    if not weights:
        raise ValueError("must name at least one version with its weight, e.g. {v1: 90, v2: 10}")
    total = sum(weights.values())
    if total != 100:
        shown = " + ".join(str(w) for w in weights.values())
        raise ValueError(f"weights must sum to 100 (got {shown} = {total})")
    return weights


_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must be lowercase letters, digits, '-' or '_' (at most 63, used in file names and "
            f"Kubernetes labels), e.g. 'checkout-ab' (got {_show(value)})"
        )
    return value


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"must be an http(s) URL like http://127.0.0.1:9090 (got {_show(value)})")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive_duration)]
Percent = Annotated[float, AfterValidator(_percent)]
Weight = Annotated[int, AfterValidator(_percent)]
Split = Annotated[dict[str, Weight], AfterValidator(_split)]
Name = Annotated[str, AfterValidator(_name)]
Rps = Annotated[float, Field(gt=0)]
Connections = Annotated[int, Field(ge=1, le=100_000)]
Mode = Literal["none", "serveronly", "both", "both-mtls"]
Metric = Literal["p50", "p75", "p90", "p95", "p99", "p999", "mean", "error_rate"]
NoData = Literal["fail", "pass", "inconclusive"]
LoadModel = Literal["open", "closed"]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, types are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# Backend


class LocalBackend(Strict):
    """The embedded mesh on 127.0.0.1: real Envoy sidecars, demo app, Prometheus, k6."""

    type: Literal["local"]
    mode: Mode = "both"
    topology: str | None = Field(default=None, description="YAML file replacing the demo topology")


class KubernetesBackend(Strict):
    """A cluster reached through kubeconfig (or in-cluster config) and its Prometheus."""

    type: Literal["kubernetes"]
    context: str | None = None
    namespace: str | None = None
    prometheus_url: HttpUrl | None = None
    mesh: Literal["auto", "istio", "linkerd", "consul", "gateway-api"] = "auto"
    # Telemetry dialect of prometheus_url; default: the mesh's own (needed with mesh: gateway-api).
    dialect: Literal["istio", "linkerd", "consul", "envoy"] | None = None


Backend = Annotated[Union[LocalBackend, KubernetesBackend], Field(discriminator="type")]  # noqa: UP007


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


class Route(Strict):
    """Route requests carrying a header (or cookie) value to the candidate version."""

    header: str | None = None
    cookie: str | None = None
    value: str
    percent: Percent = 50.0

    @model_validator(mode="after")
    def _one_of(self) -> Route:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of 'header' or 'cookie'")
        return self


class Step(Strict):
    """One canary step: the canary's weight and how long it is held."""

    weight: Weight
    duration: PositiveDuration | None = None


class Fault(Strict):
    """Injected failure on a service: a delay or an HTTP abort for a percentage of requests."""

    delay: PositiveDuration | None = None
    abort: Annotated[int, Field(ge=200, le=599)] | None = None
    percent: Percent = 100.0

    @model_validator(mode="after")
    def _one_of(self) -> Fault:
        if (self.delay is None) == (self.abort is None):
            raise ValueError("give exactly one of 'delay' (e.g. 100ms) or 'abort' (an HTTP status)")
        return self


class Retries(Strict):
    attempts: Annotated[int, Field(ge=1, le=20)] = 2
    per_try_timeout: PositiveDuration | None = None
    retry_on: list[str] = ["5xx", "reset", "connect-failure"]


class CircuitBreaker(Strict):
    max_connections: Annotated[int, Field(ge=1)] | None = None
    max_pending_requests: Annotated[int, Field(ge=1)] | None = None
    max_requests: Annotated[int, Field(ge=1)] | None = None
    consecutive_5xx: Annotated[int, Field(ge=1)] | None = 5
    interval: PositiveDuration = 1.0
    base_ejection_time: PositiveDuration = 30.0
    max_ejection_percent: Percent = 100.0


class Protection(Strict):
    """One resilience setting to compare (none, retries, a timeout, a circuit breaker)."""

    name: Name
    retries: Retries | None = None
    timeout: PositiveDuration | None = None
    circuit_breaker: CircuitBreaker | None = None


class PolicyRule(Strict):
    """Who may call which paths with which methods (empty list = any)."""

    sources: list[str] = []
    paths: list[str] = []
    methods: list[HttpMethod] = []


class Policy(Strict):
    """Authorization policy on one service, as Istio's AuthorizationPolicy models it."""

    service: str
    action: Literal["allow", "deny"] = "allow"
    rules: Annotated[list[PolicyRule], Field(min_length=1)]


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


class MeshCompare(_Loaded):
    """Overhead of sidecar modes or meshes against a baseline, by interleaved repeated trials."""

    kind: Literal["mesh_compare"]
    modes: list[Mode] | None = None
    meshes: list[str] | None = None
    fortio_results: list[str] | None = None
    baseline: str | None = None
    rps: Rps = 1000.0
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
        if given[0] != "fortio_results" and self.baseline is not None and self.baseline not in options:
            raise ValueError(f"baseline '{self.baseline}' is not one of {given[0]}: {options}")
        return self

    def target(self) -> str:
        return self.service if self.fortio_results is None else "fortio results"

    def plan(self) -> str:
        if self.fortio_results is not None:
            return f"ingest {len(self.fortio_results)} path(s), baseline {self.baseline or 'first'}"
        arms = ", ".join(self.modes or self.meshes or [])
        return (
            f"{arms} at {_nums([self.rps])} rps x connections {_nums(self.connections)}, {self.trials} trials"
        )

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
    rps: Rps = 200.0
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
        return f"{v.baseline} vs {v.candidate}, {how}, {_nums([self.rps])} rps, {', '.join(self.metrics)}"

    def planned_seconds(self) -> float:
        return (self.duration or 0) * (2 if self.ground_truth else 1) + (self.warmup or 0)


class Canary(_Loaded):
    """Staged roll-out: raise the canary's weight step by step, deciding at every step."""

    kind: Literal["canary"]
    stable: str
    canary: str
    steps: Annotated[list[Step], Field(min_length=1)]
    rps: Rps = 200.0
    connections: Connections = 16
    metrics: Annotated[list[Metric], Field(min_length=1)] = ["p50", "p99", "error_rate"]
    on_fail: Literal["rollback", "pause"] = "rollback"

    def plan(self) -> str:
        weights = " > ".join(f"{s.weight}%" for s in self.steps)
        return f"{self.stable} -> {self.canary}: {weights}, on fail {self.on_fail}"

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
    Union[LoadTest, MeshCompare, AB, Canary, Authz, Resilience, Topology, Audit],  # noqa: UP007
    Field(discriminator="kind"),
]
KINDS: tuple[str, ...] = tuple(
    get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Experiment)[0])
)


class Config(Strict):
    """A whole experiments.yaml, with defaults filled into each experiment."""

    backend: Backend = LocalBackend(type="local")
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
        if isinstance(exp, Resilience):
            names = [p.name for p in exp.protections]
            for j, n in enumerate(names):
                if n in names[:j]:
                    problems.append((("experiments", i, "protections", j, "name"), f"duplicate name '{n}'"))
    return problems


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


@dataclass(frozen=True)
class Problem:
    """One invalid input: where it is and what was expected."""

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """experiments.yaml is invalid; ``problems`` has one entry per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


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


M = TypeVar("M", bound=BaseModel)


def parse_model(
    text: str, model: type[M], source: str, context: dict[str, Any] | None = None
) -> tuple[M, Located]:
    """Parse YAML text into ``model``; every problem becomes a located ConfigError line."""
    try:
        located = load_yaml(text)
    except YamlProblem as exc:
        raise ConfigError([Problem(source, exc.line, "", exc.message)]) from None
    data = located.data
    keys = ", ".join(model.model_fields)
    if data is None:
        raise ConfigError([Problem(source, None, "", f"file is empty; expected a mapping with keys {keys}")])
    if not isinstance(data, dict):
        message = f"top level must be a mapping with keys {keys} (got {_kind_of(data)})"
        raise ConfigError([Problem(source, 1, "", message)])
    try:
        return model.model_validate(data, context=context), located
    except ValidationError as exc:
        problems = [_problem(err, located, source, model) for err in exc.errors()]
        raise ConfigError(_dedupe(problems)) from None


def format_path(loc: Iterable[Any]) -> str:
    """``("experiments", 2, "steps")`` -> ``experiments[2].steps``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err: dict[str, Any], located: Located, source: str, root: type[BaseModel]) -> Problem:
    loc = _clean_loc(err["loc"], located.data)
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    message: str
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type, e.g. a version written as 1
        loc = loc[:-2]
        key = err["input"]
        message = f"key {_show(key)} must be a string" + (
            " — quote it in YAML" if not isinstance(key, str) else ""
        )
    elif kind == "invalid_key":
        key = err["input"]
        loc = loc[:-1]
        message = f"key {_show(key)} must be a string" + (" — quote it in YAML" if key is not None else "")
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        message = (
            f"unknown key '{loc[-1]}'{_did_you_mean(str(loc[-1]), _allowed_keys(loc, located.data, root))}"
        )
    elif kind == "union_tag_not_found":
        field = ctx.get("discriminator", "").strip("'")
        loc = (*loc, field)
        message = f"required field is missing; one of: {', '.join(_tags(loc))}"
    elif kind == "union_tag_invalid":
        field = ctx.get("discriminator", "").strip("'")
        loc = (*loc, field)
        tag = str(ctx.get("tag"))
        options = _tags(loc)
        close = difflib.get_close_matches(tag, options, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        shown = _show(_value_at(loc, located.data))
        if loc == ("backend", "type") and isinstance(located.data.get("backend"), str):
            loc, field, shown = ("backend",), "backend", _show(located.data["backend"])  # `backend: name`
        message = f"unknown {field} {shown}{hint}; one of: {', '.join(options)}"
    elif kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        close = (
            difflib.get_close_matches(str(value), options, n=1, cutoff=0.6) if isinstance(value, str) else []
        )
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"must be one of {', '.join(options)} (got {_show(value)}){hint}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        bound = next(iter(ctx.values()))
        message = f"must be {op} {_show(bound)} (got {_show(value)})"
    elif kind == "too_short":
        need = ctx.get("min_length", 1)
        message = (
            f"must have at least {need} item{'s' if need != 1 else ''} (got {ctx.get('actual_length', 0)})"
        )
    elif kind == "too_long":
        message = f"must have at most {ctx.get('max_length')} items (got {ctx.get('actual_length')})"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"must be a whole number (got {_show(value)}{_unquote(value)})"
    elif kind == "finite_number":
        message = f"must be a finite number (got {_show(value)})"
    elif kind in ("float_type", "float_parsing"):
        message = f"must be a number (got {_show(value)}{_unquote(value)})"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"must be true or false (got {_show(value)})"
    elif kind == "string_type":
        quote = " — quote it in YAML" if isinstance(value, int | float | bool) else ""
        message = f"must be a string (got {_show(value)}{quote})"
    elif kind in ("list_type", "tuple_type"):
        message = f"must be a list (got {_show(value)})"
    elif kind in ("dict_type", "model_type", "model_attributes_type", "model_class_type"):
        message = f"must be a mapping of key: value (got {_show(value)})"
    elif kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
    else:
        message = err["msg"][:1].lower() + err["msg"][1:]
    return Problem(source, located.line_of(loc), format_path(loc), message)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop the tag pydantic inserts after a tagged union (``experiments.2.canary.steps``)."""
    out: list[Any] = []
    node = data
    skip_tag = False
    for part in loc:
        if skip_tag and isinstance(node, dict) and part in (node.get("kind"), node.get("type"), "str"):
            skip_tag = False
            continue
        skip_tag = False
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        skip_tag = tuple(out) == ("backend",) or (
            len(out) == 2 and out[0] == "experiments" and isinstance(out[1], int)
        )
    return tuple(out)


def _value_at(loc: tuple[Any, ...], data: Any) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip Annotated/Optional and pick the union member that ``node`` selects by tag."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin is Union or str(origin) == "types.UnionType":
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            for member in members:
                if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(node, dict):
                    for tag_field in ("kind", "type"):
                        f = member.model_fields.get(tag_field)
                        if f is not None and node.get(tag_field) in get_args(f.annotation):
                            return member
            return None
        return tp


def _allowed_keys(loc: tuple[Any, ...], data: Any, root: type[BaseModel]) -> list[str]:
    tp: Any = root
    node = data
    if isinstance(node, dict) and isinstance(node.get("backend"), str):
        node = {**node, "backend": {"type": node["backend"]}}
    for part in loc[:-1]:
        tp = _unwrap(tp, node)
        if tp is None:
            return []
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return []
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
            )
        )
    tp = _unwrap(tp, node)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _tags(loc: tuple[Any, ...]) -> list[str]:
    if loc and loc[0] == "backend":
        return ["local", "kubernetes"]
    return list(KINDS)


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if options:
        return f"; expected one of: {', '.join(options)}"
    return ""


def _unquote(value: Any) -> str:
    return " — write numbers without quotes" if isinstance(value, str) and _is_number(value) else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _nums(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {_show(value)}"
    return f"the value {_show(value)}"


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, shortened."""
    if value is None:
        text = "nothing (null)"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value)) if abs(value) < 1e15 else repr(value)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
