"""The Backend seam: every experiment talks to this, never to Envoy files or CRDs directly.

One small interface, one adapter per data plane (the Flagger ``pkg/router`` idea). The shared
value types come from the experiments schema, so what a user writes in experiments.yaml is
exactly what a backend receives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import pandas as pd

from workbench.config import CircuitBreaker, Fault, Policy, Retries, Route
from workbench.load.results import LoadProfile, LoadResult

__all__ = [
    "Backend",
    "BackendError",
    "CircuitBreaker",
    "Fault",
    "LoadTarget",
    "Observer",
    "Policy",
    "Retries",
    "Route",
    "Service",
    "Split",
    "cookie_regex",
    "re_escape",
]

Split = dict[str, int]  # version -> weight in percent, summing to 100


class BackendError(RuntimeError):
    """A backend operation that cannot be done; the message says what and why."""


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


def full_split(service: str, versions: list[str] | tuple[str, ...], split: Split) -> Split:
    """``split`` over every version of ``service`` (missing ones get 0), checked: weights 0-100 summing
    to 100, only known versions. BackendError says what is wrong."""
    unknown = [v for v in split if v not in versions]
    if unknown:
        raise BackendError(f"{service} has no version {', '.join(unknown)} (versions: {', '.join(versions)})")
    full = {v: int(split.get(v, 0)) for v in versions}
    if any(w < 0 or w > 100 for w in full.values()) or sum(full.values()) != 100:
        raise BackendError(f"split for {service} must be weights 0-100 summing to 100 (got {split})")
    return full


@dataclass(frozen=True)
class Service:
    """A service of the mesh: its name, its versions (stable first) and what it calls."""

    name: str
    versions: tuple[str, ...]
    calls: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadTarget:
    """Where a load generator aims: URLs picked uniformly per request, plus headers to send."""

    urls: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    service: str = ""


@runtime_checkable
class Backend(Protocol):
    """What every backend offers experiments."""

    def services(self) -> list[Service]: ...
    def get_split(self, service: str) -> Split: ...
    def set_split(self, service: str, split: Split) -> None: ...
    def set_route(self, service: str, route: Route | None, version: str | None = None) -> None: ...
    def set_fault(self, service: str, fault: Fault | None) -> None: ...
    def set_policy(self, policy: Policy | None, service: str | None = None) -> None: ...
    def set_resilience(
        self,
        service: str,
        retries: Retries | None = None,
        timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None: ...
    def prometheus_url(self) -> str: ...
    def load_target(self, service: str) -> LoadTarget: ...
    def run_load(self, service: str, profile: LoadProfile) -> LoadResult: ...


@runtime_checkable
class Observer(Protocol):
    """A backend whose traffic is observed in its telemetry, not generated here (a cluster).

    Experiments that measure versions side by side (canary) use ``observe`` instead of
    ``run_load`` when the backend offers it: the per-window data of each version's real traffic
    between ``start`` and ``end`` — a frame with ``time`` (window start), ``requests``, ``errors``
    and ``histogram`` (latency, ms) per version, the per-window input ``workbench.stats`` takes.
    The local mesh does not offer it: there k6 runs on this machine and its samples are the data.
    """

    def observe(
        self,
        service: str,
        versions: Sequence[str],
        start: float | datetime,
        end: float | datetime,
        window_s: float,
    ) -> dict[str, pd.DataFrame]: ...


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
