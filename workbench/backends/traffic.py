"""Traffic value types: what the workbench sets on calls to a service, on any data plane.

A split, a header/cookie route, a fault, retries, a timeout, a circuit breaker and an
authorization policy are validated once here (pydantic, the same models experiments.yaml uses),
so what a user writes is exactly what a backend receives. ``TrafficState`` is everything set for
one service; each backend renders it (Envoy routes locally, mesh objects on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from workbench.errors import BackendError
from workbench.units import Percent, PositiveDuration, Strict, Weight

__all__ = [
    "CircuitBreaker",
    "Fault",
    "HttpMethod",
    "Policy",
    "PolicyRule",
    "Retries",
    "Route",
    "Split",
    "TrafficState",
    "cookie_regex",
    "full_split",
    "re_escape",
]

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _split(weights: dict[str, int]) -> dict[str, int]:
    if not weights:
        raise ValueError("must name at least one version with its weight, e.g. {v1: 90, v2: 10}")
    total = sum(weights.values())
    if total != 100:
        shown = " + ".join(str(w) for w in weights.values())
        raise ValueError(f"weights must sum to 100 (got {shown} = {total})")
    return weights


# version -> weight in percent, summing to 100
Split = Annotated[dict[str, Weight], AfterValidator(_split)]


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
    """Retry policy for calls to a service (attempts, per-try timeout, what to retry on)."""

    attempts: Annotated[int, Field(ge=1, le=20)] = 2
    per_try_timeout: PositiveDuration | None = None
    retry_on: list[str] = ["5xx", "reset", "connect-failure"]


class CircuitBreaker(Strict):
    """Connection-pool limits and outlier ejection for calls to a service."""

    max_connections: Annotated[int, Field(ge=1)] | None = None
    max_pending_requests: Annotated[int, Field(ge=1)] | None = None
    max_requests: Annotated[int, Field(ge=1)] | None = None
    consecutive_5xx: Annotated[int, Field(ge=1)] | None = 5
    interval: PositiveDuration = 1.0
    base_ejection_time: PositiveDuration = 30.0
    max_ejection_percent: Percent = 100.0


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


@dataclass
class TrafficState:
    """Everything the workbench sets for calls to one service (rendered per data plane)."""

    split: dict[str, int]
    route: Route | None = None
    route_version: str | None = None
    fault: Fault | None = None
    retries: Retries | None = None
    timeout_s: float | None = None
    breaker: CircuitBreaker | None = None


def full_split(service: str, versions: list[str] | tuple[str, ...], split: dict[str, int]) -> dict[str, int]:
    """``split`` over every version of ``service`` (missing ones get 0), checked: weights 0-100 summing
    to 100, only known versions. BackendError says what is wrong."""
    unknown = [v for v in split if v not in versions]
    if unknown:
        raise BackendError(f"{service} has no version {', '.join(unknown)} (versions: {', '.join(versions)})")
    full = {v: int(split.get(v, 0)) for v in versions}
    if any(w < 0 or w > 100 for w in full.values()) or sum(full.values()) != 100:
        raise BackendError(f"split for {service} must be weights 0-100 summing to 100 (got {split})")
    return full


_REGEX_SPECIAL = ".^$*+?()[]{}|\\"


def re_escape(text: str) -> str:
    """Escape RE2 metacharacters (RE2 and Python agree on these)."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def cookie_regex(cookie: str, value: str) -> str:
    """A regex on the ``cookie`` header matching ``cookie=value`` among the request's cookies.

    Works both as a full match (Envoy's safe_regex, Istio) and as a search (other implementations).
    """
    if not cookie or any(c in cookie for c in "=; \t"):
        raise BackendError(f"route.cookie must be a cookie name without '=', ';' or spaces (got {cookie!r})")
    return rf"(^|.*;\s*){re_escape(cookie)}={re_escape(value)}(;.*|$)"
