"""The Backend seam: every experiment talks to this, never to Envoy files or CRDs directly.

One small interface, one adapter per data plane (the Flagger ``pkg/router`` idea). The shared
value types come from the experiments schema, so what a user writes in experiments.yaml is
exactly what a backend receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from workbench.config import CircuitBreaker, Fault, Policy, Retries, Route
from workbench.load.results import LoadProfile, LoadResult

__all__ = [
    "Backend",
    "BackendError",
    "CircuitBreaker",
    "Fault",
    "LoadTarget",
    "Policy",
    "Retries",
    "Route",
    "Service",
    "Split",
]

Split = dict[str, int]  # version -> weight in percent, summing to 100


class BackendError(RuntimeError):
    """A backend operation that cannot be done; the message says what and why."""


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
