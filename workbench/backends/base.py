"""The Backend seam: every experiment talks to this, never to Envoy files or CRDs directly.

One small interface, one adapter per data plane (the Flagger ``pkg/router`` idea), chosen by
``workbench.backends.open_backend``. The traffic value types come from ``backends.traffic`` (the
same models experiments.yaml validates), so what a user writes is exactly what a backend receives.

Optional capabilities are small protocols next to ``Backend``, checked with ``isinstance``:
``Observer`` (reads real traffic from telemetry: a cluster), ``DirectMeasure`` (reaches the apps
without their proxies: ground truth, local mesh), ``Behaviours`` (changes what a version does:
latency, errors — the local demo apps), ``RequestAs`` (requests as given callers, with their
identity: the local sidecars, or a probe Job per caller on a cluster). What each backend can do is
also declared as data (``backends.capabilities``), so validation knows it before anything runs.
Every ``set_*`` returns what it wrote (``Writes``): the manifests applied on a cluster, the Envoy
xDS documents swapped in locally — a record of the change, empty when nothing was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pandas as pd

from workbench.backends.traffic import (
    CircuitBreaker,
    Fault,
    Policy,
    Retries,
    Route,
    Split,
    TrafficState,
    cookie_regex,
    full_split,
    re_escape,
)
from workbench.errors import BackendError
from workbench.load.results import LoadProfile, LoadResult

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "Answer",
    "Backend",
    "BackendError",
    "Behaviours",
    "CircuitBreaker",
    "DirectMeasure",
    "Fault",
    "LoadTarget",
    "Observer",
    "Policy",
    "Probe",
    "RequestAs",
    "Retries",
    "Route",
    "Service",
    "Split",
    "TrafficState",
    "Writes",
    "cookie_regex",
    "full_split",
    "re_escape",
]

Writes = list[dict[str, Any]]  # what a change wrote: manifests (cluster) or xDS documents (local)


@dataclass(frozen=True)
class Service:
    """A service of the mesh: its name, its versions (stable first) and what it calls (None: not known
    — a cluster's objects do not say; its telemetry does)."""

    name: str
    versions: tuple[str, ...]
    calls: tuple[str, ...] | None = None


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
    def set_split(self, service: str, split: Split) -> Writes: ...
    def set_route(self, service: str, route: Route | None, version: str | None = None) -> Writes: ...
    def set_fault(self, service: str, fault: Fault | None) -> Writes: ...
    def set_policy(self, policy: Policy | None, service: str | None = None) -> Writes: ...
    def set_resilience(
        self,
        service: str,
        retries: Retries | None = None,
        timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> Writes: ...
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


@runtime_checkable
class DirectMeasure(Protocol):
    """A backend that can aim load at a service's apps themselves, bypassing every proxy.

    The difference between the meshed and the direct measurement is ground truth for a method
    check (an A/B's interval should cover the apps' own difference).
    """

    def direct_target(self, service: str, versions: list[str] | None = None) -> LoadTarget: ...


@runtime_checkable
class Behaviours(Protocol):
    """A backend whose apps' behaviour (service time, error rate, payload) can be changed live:
    known effects for topology localization and method checks. ``run_dir`` holds its proxies'
    access logs; ``layout`` names its proxies."""

    run_dir: Path
    layout: Any

    def set_behaviour(self, service: str, version: str, **changes: Any) -> Any: ...


@dataclass(frozen=True)
class Probe:
    """One request to send as a caller: who calls (a service of the mesh), with which method and path."""

    caller: str
    method: str = "GET"
    path: str = "/"


@dataclass(frozen=True)
class Answer:
    """What one request as a caller got: the HTTP status (0: no answer), whether the mesh's proxy
    itself refused it (``denied``: Envoy's "RBAC: access denied", Linkerd's ``l5d-proxy-error``, a
    connection reset by an L4 policy) and, without an answer, what went wrong."""

    status: int
    denied: bool = False
    error: str = ""


@runtime_checkable
class RequestAs(Protocol):
    """A backend that can send requests to a service as given callers, with their identity.

    ``requests_as`` returns, per probe, its ``attempts`` answers. ``policy_settle_s`` is how long a
    new authorization policy takes to reach the proxies (0 locally: the sidecars load it before
    ``set_policy`` returns; a cluster's control plane pushes it within seconds).
    """

    policy_settle_s: float

    def requests_as(
        self, service: str, probes: Sequence[Probe], attempts: int = 3, timeout_s: float = 5.0
    ) -> list[list[Answer]]: ...
