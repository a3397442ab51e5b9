"""What a backend, a mesh and a local sidecar mode can do — declared as data, known before anything runs.

An experiment needs features (a split, a header route, a fault, L7 authorization, requests as a
caller, load ...); a data plane offers some of them. Each owner declares its own ``Offer``:

- the backends: ``LOCAL`` (the local mesh) and ``KUBERNETES`` (a cluster) here;
- each local sidecar mode: ``workbench.backends.local.layout.MODE_CAPABILITIES`` (``none`` has no
  proxy at all, ``serveronly`` no client-side sidecar, ``both``/``both-mtls`` everything);
- each mesh adapter: its class's ``capabilities`` (istio.py, linkerd.py, consul.py, gateway_api.py;
  Istio's ambient mode without a waypoint is a second declaration there).

An ``Offer`` is a set of ``Capability`` plus, for each one it lacks, the reason and what to change
(``hint``). Offers combine with ``&`` (a backend's offer & its mesh's or mode's): a feature is
offered when both offer it. ``workbench.backends.declared()`` builds the offer from settings alone
(no cluster, no mesh started) so ``workbench validate`` can refuse an experiment before anything is
written; the
backends' ``capabilities()`` give the same from a live backend (after mesh detection), and the local
mesh refuses a call with the same hint (``Offer.require``). A new mode or mesh is one more
declaration: nothing else changes. What each experiment needs is ``workbench.config.capabilities``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from workbench.backends.traffic import CircuitBreaker, Policy, Retries, Route
from workbench.errors import BackendError

__all__ = [
    "KUBERNETES",
    "LOCAL",
    "Capability",
    "Offer",
    "Unavailable",
    "kubernetes_offer",
    "policy_needs",
    "resilience_needs",
    "route_needs",
]


class Capability(StrEnum):
    """One feature an experiment may need; the value is how messages name it."""

    SPLIT = "traffic split"
    HEADER_ROUTE = "header route"
    COOKIE_ROUTE = "cookie route"
    FAULT = "fault injection"
    RETRIES = "retries"
    RETRY_ON_RESET = "retries on resets and other non-status conditions"
    PER_TRY_TIMEOUT = "per-try timeout"
    TIMEOUT = "request timeout"
    CIRCUIT_BREAKER = "circuit breaking"
    AUTHZ_L4 = "authorization by caller (L4)"
    AUTHZ_L7 = "authorization by path and method (L7)"
    AUTHZ_DENY = "deny policies"
    REQUEST_AS = "requests as a caller"
    LOAD = "load generation"
    TELEMETRY = "telemetry from Prometheus"
    DIRECT_MEASURE = "direct measurement of the apps"
    BEHAVIOURS = "changing an app's behaviour"
    SIDECAR_MODES = "sidecar modes"
    CONTEXTS = "load in other kube contexts"
    TRACES = "traces"


ALL: frozenset[Capability] = frozenset(Capability)
# Traffic features a proxy on the caller's side applies (as in Istio: the client sidecar routes).
CLIENT_SIDE: frozenset[Capability] = frozenset(
    {Capability.SPLIT, Capability.HEADER_ROUTE, Capability.COOKIE_ROUTE, Capability.FAULT,
     Capability.RETRIES, Capability.RETRY_ON_RESET, Capability.PER_TRY_TIMEOUT, Capability.TIMEOUT,
     Capability.CIRCUIT_BREAKER}
)  # fmt: skip
AUTHORIZATION: frozenset[Capability] = frozenset(
    {Capability.AUTHZ_L4, Capability.AUTHZ_L7, Capability.AUTHZ_DENY}
)
# What Istio's ambient mode applies only in a waypoint (its node proxy, ztunnel, is L4: mTLS, caller
# identity, allow/deny by identity): traffic policy and authorization by path or method.
NEEDS_WAYPOINT: frozenset[Capability] = frozenset({*CLIENT_SIDE, Capability.AUTHZ_L7})


class Unavailable(BackendError):
    """A backend was asked for a feature its declaration says it lacks (names it and what to change)."""


@dataclass(frozen=True)
class Offer:
    """What ``name`` (e.g. "mesh linkerd", "local mode serveronly") can do; see the module docstring.

    ``features``: the capabilities offered. ``hints``: for a missing one, why and what to change
    (a default sentence is used for one without a hint).
    """

    name: str
    features: frozenset[Capability]
    hints: Mapping[Capability, str] = field(default_factory=dict)

    @classmethod
    def lacking(cls, name: str, missing: Mapping[Capability, str], base: Iterable[Capability] = ALL) -> Offer:
        """Everything of ``base`` except the keys of ``missing``, each with its hint."""
        return cls(name, frozenset(base) - frozenset(missing), dict(missing))

    def has(self, capability: Capability) -> bool:
        return capability in self.features

    def hint(self, capability: Capability) -> str:
        """Why ``capability`` is missing and what to change ("" when it is offered)."""
        if self.has(capability):
            return ""
        return self.hints.get(capability) or f"{self.name} does not offer {capability.value}"

    def missing(self, needed: Iterable[Capability]) -> list[Capability]:
        """The capabilities of ``needed`` this offer lacks, in the order given, once each."""
        return [c for c in dict.fromkeys(needed) if not self.has(c)]

    def require(self, capability: Capability, what: str = "") -> None:
        """Raise ``Unavailable`` naming ``what`` (default: the capability) when it is not offered."""
        if not self.has(capability):
            raise Unavailable(f"{what or capability.value}: {self.hint(capability)}")

    def __and__(self, other: Offer) -> Offer:
        """Offered by both; a missing feature keeps the hint of the side that lacks it."""
        hints = {**{c: h for c, h in other.hints.items() if c not in other.features},
                 **{c: h for c, h in self.hints.items() if c not in self.features}}  # fmt: skip
        return Offer(f"{self.name} with {other.name}", self.features & other.features, hints)


LOCAL = Offer.lacking(
    "the local mesh",
    {Capability.CONTEXTS: "comparing meshes across kube contexts needs backend: kubernetes (the local mesh "
     "is one mesh on this machine; compare its sidecar modes with modes: instead)"},
)  # fmt: skip
KUBERNETES_MISSING = {
    Capability.DIRECT_MEASURE: "measuring the apps without their proxies needs the local mesh (on a "
    "cluster the ground truth is skipped)",
    Capability.BEHAVIOURS: "a known behaviour change (change:) needs the local mesh's demo apps; remove "
    "change: to run it on a cluster, or use backend: local",
    Capability.SIDECAR_MODES: "sidecar modes are a local mesh setting; on a cluster compare meshes with "
    "meshes: (a kube context and namespace each), or run it with backend: local",
}
KUBERNETES = Offer.lacking("backend kubernetes", KUBERNETES_MISSING)
NO_PROMETHEUS = (
    "set backend.prometheus_url to the cluster's Prometheus (e.g. a port-forward: http://127.0.0.1:9090)"
)
NO_TRACE_STORE = (
    "set backend.traces to the cluster's trace store: {jaeger: URL} (Jaeger's query API) or {tempo: URL}"
)
NO_TRACING = "turn the local mesh's tracer on: remove backend.tracing: null (or set {sampling: 100})"
NO_DIALECT = (
    "mesh gateway-api has no telemetry of its own: set backend.dialect to the metrics your data plane "
    "exports (istio, linkerd, consul or envoy)"
)
# mesh setting -> its adapter class (capabilities and rendering); imported on first use
ADAPTERS = {
    "istio": "workbench.backends.kubernetes.istio.IstioAdapter",
    "linkerd": "workbench.backends.kubernetes.linkerd.LinkerdAdapter",
    "consul": "workbench.backends.kubernetes.consul.ConsulAdapter",
    "gateway-api": "workbench.backends.kubernetes.gateway_api.GatewayAPIAdapter",
}
MESHES_WITH_TELEMETRY = ("istio", "linkerd", "consul")


def load_class(path: str) -> type:
    """Import ``package.module.Class``; a clear BackendError when it is not there."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(
            f"{path} is not available in this workbench ({type(exc).__name__}: {exc})"
        ) from None


def kubernetes_offer(
    prometheus_url: str | None, mesh: str | None, dialect: str | None, trace_store: bool = False
) -> Offer:
    """The cluster backend's own offer: telemetry only with a Prometheus URL and a dialect, traces
    only with a trace store (``backend.traces``)."""
    missing = dict(KUBERNETES_MISSING)
    if not trace_store:
        missing[Capability.TRACES] = NO_TRACE_STORE
    if not prometheus_url:
        missing[Capability.TELEMETRY] = NO_PROMETHEUS
    elif mesh is not None and mesh not in MESHES_WITH_TELEMETRY and not dialect:
        missing[Capability.TELEMETRY] = NO_DIALECT
    return Offer.lacking("backend kubernetes", missing)


# ---------------------------------------------------------------------------------------------
# What a traffic value needs (one place: validation and the backends' own refusals read these)

STATUS_RETRY_WORDS = frozenset({"5xx", "gateway-error"})


def route_needs(route: Route | None) -> list[Capability]:
    """A header route, or a cookie route (removing a route needs what setting one did: a header's)."""
    return [
        Capability.COOKIE_ROUTE if route is not None and route.cookie is not None else Capability.HEADER_ROUTE
    ]


def resilience_needs(
    retries: Retries | None, timeout_s: float | None, breaker: CircuitBreaker | None
) -> list[Capability]:
    """Retries (on non-status conditions, with a per-try timeout), a timeout, a circuit breaker."""
    out: list[Capability] = []
    if retries is not None:
        out.append(Capability.RETRIES)
        if any(not _is_status_condition(c) for c in retries.retry_on):
            out.append(Capability.RETRY_ON_RESET)
        if retries.per_try_timeout is not None:
            out.append(Capability.PER_TRY_TIMEOUT)
    if timeout_s is not None:
        out.append(Capability.TIMEOUT)
    if breaker is not None:
        out.append(Capability.CIRCUIT_BREAKER)
    return out


def policy_needs(policy: Policy | None) -> list[Capability]:
    """Caller identity (L4), paths/methods (L7), a deny action; removing a policy needs L4."""
    if policy is None:
        return [Capability.AUTHZ_L4]
    out = [Capability.AUTHZ_L4]
    if any(rule.paths or rule.methods for rule in policy.rules):
        out.append(Capability.AUTHZ_L7)
    if policy.action == "deny":
        out.append(Capability.AUTHZ_DENY)
    return out


def _is_status_condition(text: str) -> bool:
    """5xx, gateway-error, an HTTP status (503) or a range (500-504): conditions on the response."""
    if text in STATUS_RETRY_WORDS:
        return True
    codes = text.split("-")
    return len(codes) in (1, 2) and all(len(c) == 3 and c.isdigit() for c in codes)
