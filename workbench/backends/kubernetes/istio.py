"""Istio: VirtualService + DestinationRule per service, AuthorizationPolicy, PeerAuthentication.

Per service the workbench owns one VirtualService and one DestinationRule, both named like the
service (Istio merges several VirtualServices for one host unpredictably for sidecars, so one
carries the whole state). The VirtualService has up to two HTTP routes, in order:

1. ``ab-match`` — the header (``headers: {name: {exact: value}}``) or cookie (a regex on the
   ``cookie`` header) route of an A/B test, to subset ``<route_version>``;
2. ``default`` — weighted destinations, one per version subset (weight 0 kept, Flagger-style).

Fault injection, retries and the timeout apply to both routes, as in the local mesh's Envoy
config. The DestinationRule defines one subset per version (labels ``{version: <v>}``) and, from
the circuit breaker, ``trafficPolicy.connectionPool`` and ``outlierDetection``.

Authorization: an AuthorizationPolicy ``<service>-workbench`` selecting the pods labelled
``app: <service>``; callers are mTLS principals ``<trust domain>/ns/<namespace>/sa/<caller>`` —
the workbench assumes each service runs under a ServiceAccount named like the service (the
convention of Istio's samples), in the adapter's namespace. ``Route.percent`` (the share of the
load generator's requests that carry the header) does not affect routing and is not rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench.backends.base import BackendError, Split, cookie_regex
from workbench.backends.capabilities import NEEDS_WAYPOINT, Capability, Offer
from workbench.backends.kubernetes.adapter import Manifest, MeshAdapter, TrafficState
from workbench.backends.kubernetes.apply import Resource
from workbench.backends.kubernetes.values import dns_label, go_duration, percent_split
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, Retries, Route

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
VIRTUAL_SERVICE = Resource(NETWORKING, "v1", "virtualservices", "VirtualService", "Istio")
DESTINATION_RULE = Resource(NETWORKING, "v1", "destinationrules", "DestinationRule", "Istio")
AUTHORIZATION_POLICY = Resource(SECURITY, "v1", "authorizationpolicies", "AuthorizationPolicy", "Istio")
PEER_AUTHENTICATION = Resource(SECURITY, "v1", "peerauthentications", "PeerAuthentication", "Istio")

MATCH_ROUTE = "ab-match"
DEFAULT_ROUTE = "default"
MTLS_MODES = ("STRICT", "PERMISSIVE")

# Istio's retryOn: Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on policies, or HTTP status codes.
RETRY_ON = frozenset(
    [
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    ]
)
_WAYPOINT = (
    "in Istio's ambient mode L7 features need a waypoint proxy, and namespace {namespace} uses none: deploy "
    "one ('istioctl waypoint apply -n {namespace} --enroll-namespace') or label the namespace for sidecars"
)
AMBIENT_L7 = NEEDS_WAYPOINT


def ambient_offer(namespace: str) -> Offer:
    """Istio ambient without a waypoint: ztunnel's L4 only (mTLS, caller identity, allow/deny). Its
    telemetry is L4 too (``istio_tcp_*``, read by ``dialects.l4_windows``): no requests or latency."""
    hint = _WAYPOINT.format(namespace=namespace)
    missing = dict.fromkeys(AMBIENT_L7, hint)
    missing[Capability.TELEMETRY] = (
        f"ztunnel reports connections and bytes only (istio_tcp_*), no requests or latency: {hint}"
    )
    return Offer.lacking(f"mesh istio (ambient, no waypoint in {namespace})", missing)


# Header names Istio ignores in a match (they are the uri/scheme/method/authority matchers).
_PSEUDO_HEADERS = frozenset({"uri", "scheme", "method", "authority"})


@dataclass
class IstioAdapter(MeshAdapter):
    """Istio networking/security v1 objects; see the module docstring for the layout."""

    trust_domain: str = "cluster.local"

    mesh: ClassVar[str] = "istio"
    CAPABILITIES: ClassVar[Offer] = Offer.lacking("mesh istio", {})  # sidecars or a waypoint: everything

    # -----------------------------------------------------------------------------------------
    # Traffic

    def render_traffic(self, service: str, state: TrafficState) -> list[Manifest]:
        """The VirtualService and DestinationRule that make ``state`` true for calls to ``service``."""
        versions = self._versions(service)
        for v in versions:
            dns_label(v, f"version of {service} (an Istio subset name)")
        return [
            (VIRTUAL_SERVICE, self.virtual_service(service, state, versions)),
            (DESTINATION_RULE, self.destination_rule(service, state, versions)),
        ]

    def virtual_service(self, service: str, state: TrafficState, versions: list[str]) -> dict[str, Any]:
        """The VirtualService manifest for ``service``."""
        common: dict[str, Any] = {}
        if state.fault is not None:
            common["fault"] = istio_fault(state.fault)
        if state.retries is not None:
            common["retries"] = istio_retries(state.retries)
        if state.timeout_s is not None:
            common["timeout"] = go_duration(state.timeout_s, "timeout")
        http: list[dict[str, Any]] = []
        if state.route is not None and state.route_version is not None:
            http.append(
                {
                    "name": MATCH_ROUTE,
                    "match": [{"headers": istio_header_match(state.route)}],
                    "route": [{"destination": {"host": service, "subset": state.route_version}}],
                    **common,
                }
            )
        weights = {v: int(state.split.get(v, 0)) for v in versions}
        http.append(
            {
                "name": DEFAULT_ROUTE,
                "route": [
                    {"destination": {"host": service, "subset": v}, "weight": w} for v, w in weights.items()
                ],
                **common,
            }
        )
        return {
            "apiVersion": VIRTUAL_SERVICE.api_version,
            "kind": VIRTUAL_SERVICE.kind,
            "metadata": self.metadata(service),
            "spec": {"hosts": [service], "http": http},
        }

    def destination_rule(self, service: str, state: TrafficState, versions: list[str]) -> dict[str, Any]:
        """The DestinationRule manifest for ``service``: subsets per version, breaker settings."""
        spec: dict[str, Any] = {
            "host": service,
            "subsets": [{"name": v, "labels": {"version": v}} for v in versions],
        }
        if state.breaker is not None:
            policy = istio_traffic_policy(state.breaker)
            if policy:
                spec["trafficPolicy"] = policy
        return {
            "apiVersion": DESTINATION_RULE.api_version,
            "kind": DESTINATION_RULE.kind,
            "metadata": self.metadata(service),
            "spec": spec,
        }

    def read_split(self, service: str) -> Split:
        """Weights of the live VirtualService's default route per subset (no VirtualService: stable 100 %)."""
        versions = self._versions(service)
        vs = self.writer.get(VIRTUAL_SERVICE, self.namespace, service)
        if vs is None:
            return {v: (100 if i == 0 else 0) for i, v in enumerate(versions)}
        return split_from_virtual_service(vs, service, versions)

    # -----------------------------------------------------------------------------------------
    # Security

    def render_policy(self, policy: Policy) -> list[Manifest]:
        """The AuthorizationPolicy enforcing ``policy`` on the pods of ``policy.service``."""
        rules = []
        for i, rule in enumerate(policy.rules):
            out: dict[str, Any] = {}
            if rule.sources:
                principals = [self.principal(s, f"rules[{i}].sources") for s in rule.sources]
                out["from"] = [{"source": {"principals": principals}}]
            operation: dict[str, Any] = {}
            if rule.paths:
                operation["paths"] = list(rule.paths)
            if rule.methods:
                operation["methods"] = list(rule.methods)
            if operation:
                out["to"] = [{"operation": operation}]
            rules.append(out)
        manifest = {
            "apiVersion": AUTHORIZATION_POLICY.api_version,
            "kind": AUTHORIZATION_POLICY.kind,
            "metadata": self.metadata(policy_name(policy.service)),
            "spec": {
                "selector": {"matchLabels": {"app": policy.service}},
                "action": policy.action.upper(),
                "rules": rules,
            },
        }
        return [(AUTHORIZATION_POLICY, manifest)]

    def policy_objects(self, service: str) -> list[tuple[Resource, str]]:
        """The AuthorizationPolicy the workbench creates for ``service``."""
        return [(AUTHORIZATION_POLICY, policy_name(service))]

    def principal(self, caller: str, field: str = "sources") -> str:
        """The mTLS principal of a caller service: ``cluster.local/ns/<namespace>/sa/<caller>``."""
        dns_label(caller, f"policy {field} entry")
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{caller}"

    def peer_authentication(self, mode: str) -> Manifest:
        """A namespace-wide PeerAuthentication ``default`` setting mTLS to STRICT or PERMISSIVE."""
        upper = str(mode).upper()
        if upper not in MTLS_MODES:
            raise BackendError(f"mtls mode must be one of {', '.join(MTLS_MODES)} (got {mode!r})")
        manifest = {
            "apiVersion": PEER_AUTHENTICATION.api_version,
            "kind": PEER_AUTHENTICATION.kind,
            "metadata": self.metadata("default"),
            "spec": {"mtls": {"mode": upper}},
        }
        return (PEER_AUTHENTICATION, manifest)

    def set_mtls(self, mode: str) -> list[dict[str, Any]]:
        """Apply the namespace-wide PeerAuthentication (see ``peer_authentication``)."""
        res, manifest = self.peer_authentication(mode)
        return [self.writer.apply(res, manifest)]


# ---------------------------------------------------------------------------------------------
# Pieces


def policy_name(service: str) -> str:
    """Name of the workbench's AuthorizationPolicy for ``service``."""
    return f"{service}-workbench"


def istio_header_match(route: Route) -> dict[str, dict[str, str]]:
    """``match[].headers`` for a header (exact, lowercased name) or cookie (regex) route."""
    if route.header is not None:
        name = route.header.lower()
        if not name or name in _PSEUDO_HEADERS:
            raise BackendError(f"route.header {route.header!r} cannot be matched as a header by Istio")
        return {name: {"exact": route.value}}
    return {"cookie": {"regex": cookie_regex(route.cookie or "", route.value)}}


def istio_fault(fault: Fault) -> dict[str, Any]:
    """``http[].fault``: a fixed delay or an HTTP abort for ``fault.percent`` % of requests."""
    percentage = {"value": float(fault.percent)}
    if fault.delay is not None:
        return {"delay": {"fixedDelay": go_duration(fault.delay, "fault.delay"), "percentage": percentage}}
    return {"abort": {"httpStatus": int(fault.abort or 0), "percentage": percentage}}


def istio_retries(retries: Retries) -> dict[str, Any]:
    """``http[].retries``: attempts, perTryTimeout and retryOn (comma-separated)."""
    out: dict[str, Any] = {"attempts": int(retries.attempts)}
    if retries.per_try_timeout is not None:
        out["perTryTimeout"] = go_duration(retries.per_try_timeout, "retries.per_try_timeout")
    unknown = [c for c in retries.retry_on if c not in RETRY_ON and not (c.isdigit() and len(c) == 3)]
    if unknown:
        raise BackendError(
            f"retries.retry_on has conditions Istio does not know: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(RETRY_ON))}, or an HTTP status code)"
        )
    if retries.retry_on:
        out["retryOn"] = ",".join(retries.retry_on)
    return out


def istio_traffic_policy(breaker: CircuitBreaker) -> dict[str, Any]:
    """DestinationRule ``trafficPolicy``: connectionPool limits and outlierDetection."""
    policy: dict[str, Any] = {}
    pool: dict[str, Any] = {}
    if breaker.max_connections is not None:
        pool["tcp"] = {"maxConnections": breaker.max_connections}
    http: dict[str, Any] = {}
    if breaker.max_pending_requests is not None:
        http["http1MaxPendingRequests"] = breaker.max_pending_requests
    if breaker.max_requests is not None:
        http["http2MaxRequests"] = breaker.max_requests
    if http:
        pool["http"] = http
    if pool:
        policy["connectionPool"] = pool
    if breaker.consecutive_5xx is not None:
        percent = float(breaker.max_ejection_percent)
        if not percent.is_integer():
            raise BackendError(
                f"circuit_breaker.max_ejection_percent must be a whole percent for Istio (got {percent:g})"
            )
        policy["outlierDetection"] = {
            "consecutive5xxErrors": breaker.consecutive_5xx,
            "interval": go_duration(breaker.interval, "circuit_breaker.interval"),
            "baseEjectionTime": go_duration(breaker.base_ejection_time, "circuit_breaker.base_ejection_time"),
            "maxEjectionPercent": int(percent),
        }
    return policy


def split_from_virtual_service(vs: dict[str, Any], service: str, versions: list[str]) -> Split:
    """The default route's weights per version subset of a live VirtualService, in percent."""
    where = f"VirtualService {vs.get('metadata', {}).get('namespace', '?')}/{service}"
    http = (vs.get("spec") or {}).get("http") or []
    named = [r for r in http if r.get("name") == DEFAULT_ROUTE]
    unmatched = [r for r in http if not r.get("match")]
    candidates = named or unmatched
    if not candidates:
        raise BackendError(f"{where} has no default HTTP route (one without a match)")
    destinations = candidates[0].get("route") or []
    if not destinations:
        raise BackendError(f"{where}: its default route has no destinations")
    weights = dict.fromkeys(versions, 0)
    for d in destinations:
        dest = d.get("destination") or {}
        host, subset = dest.get("host", ""), dest.get("subset")
        weight = int(d.get("weight", 100 if len(destinations) == 1 else 0))
        if host.split(".")[0] != service:
            raise BackendError(f"{where} routes {weight} % to another host, {host!r}")
        if subset is None:
            raise BackendError(f"{where} routes {weight} % to {host} without a subset (no version)")
        if subset not in weights:
            if weight == 0:
                continue
            raise BackendError(
                f"{where} routes {weight} % to subset {subset!r}, which is not a version of {service} "
                f"(versions: {', '.join(versions)})"
            )
        weights[subset] += weight
    return percent_split(weights, where)
