"""Consul service mesh: ServiceResolver, ServiceSplitter, ServiceRouter and ServiceIntentions CRDs.

Traffic for a service is three config entries, applied together (resolver first: the splitter and
router name its subsets):

- ServiceResolver ``<service>``: one subset per version, ``filter: Service.Meta.version == <v>``
  (pods carry ``consul.hashicorp.com/service-meta-version: <v>``), ``defaultSubset`` = the stable
  version, optionally ``connectTimeout``;
- ServiceSplitter ``<service>``: ``splits: [{weight, serviceSubset}]``, every version listed, weights
  as floats summing to 100 (Consul's form);
- ServiceRouter ``<service>``: the header/cookie route (``match.http.header`` → ``serviceSubset``) and,
  when retries or a timeout are set, a catch-all ``pathPrefix: /`` route carrying them
  (``numRetries``, ``retryOn``, ``retryOnStatusCodes``, ``requestTimeout``); unmatched requests fall
  through to the splitter. Splitters and routers need the service's protocol to be http
  (ServiceDefaults or ProxyDefaults).

Authorization is one ServiceIntentions ``<service>`` with Istio's semantics made explicit: sources
named in an allow policy are allowed (for given paths/methods: L7 ``permissions``, ending in a
catch-all of the opposite action), every other caller (``*``) gets the opposite action; a deny policy
mirrors it. Not expressible with these CRDs, so ``Unsupported``: fault injection (Consul has none),
circuit breaking (ServiceDefaults ``upstreamConfig`` — not managed here) and per-try timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench.backends.base import BackendError, Split, cookie_regex, re_escape
from workbench.backends.capabilities import Capability, Offer
from workbench.backends.kubernetes.adapter import Manifest, MeshAdapter, TrafficState, Unsupported
from workbench.backends.kubernetes.apply import Resource
from workbench.backends.kubernetes.values import go_duration, percent_split
from workbench.backends.traffic import Policy, PolicyRule, Retries

GROUP = "consul.hashicorp.com"
SERVICE_RESOLVER = Resource(GROUP, "v1alpha1", "serviceresolvers", "ServiceResolver", product="Consul")
SERVICE_SPLITTER = Resource(GROUP, "v1alpha1", "servicesplitters", "ServiceSplitter", product="Consul")
SERVICE_ROUTER = Resource(GROUP, "v1alpha1", "servicerouters", "ServiceRouter", product="Consul")
SERVICE_INTENTIONS = Resource(GROUP, "v1alpha1", "serviceintentions", "ServiceIntentions", product="Consul")

# ServiceRouter destination.retryOn values Consul accepts (Envoy's retry conditions)
RETRY_ON = {
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
    "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}  # fmt: skip


@dataclass
class ConsulAdapter(MeshAdapter):
    """Consul adapter; see the module docstring. ``connect_timeout_s`` sets the resolver's connectTimeout."""

    connect_timeout_s: float | None = None

    mesh: ClassVar[str] = "consul"
    CAPABILITIES: ClassVar[Offer] = Offer.lacking("mesh consul", {
        Capability.FAULT: "Consul has no fault injection in its config entries: shift traffic to a "
        "fault-injecting version with a split instead, or use mesh istio",
        Capability.CIRCUIT_BREAKER: "Consul's circuit breaking lives in ServiceDefaults upstreamConfig, "
        "which this workbench does not manage: drop circuit_breaker, or use mesh istio",
        Capability.PER_TRY_TIMEOUT: "Consul's ServiceRouter has no per-try timeout: drop "
        "retries.per_try_timeout (keep attempts and the request timeout)",
    })  # fmt: skip

    # -----------------------------------------------------------------------------------------
    # Traffic

    def render_traffic(self, service: str, state: TrafficState) -> list[Manifest]:
        """ServiceResolver, ServiceSplitter and ServiceRouter carrying the whole state of ``service``."""
        if state.fault is not None:
            raise Unsupported(
                f"Consul has no fault injection (fault requested on {service}): none of its config entries "
                "(ServiceRouter, ServiceSplitter, ServiceResolver) can delay or abort requests; use a "
                "fault-injecting backend version and shift traffic to it with the split"
            )
        if state.breaker is not None:
            raise Unsupported(
                "Consul expresses circuit breaking (connection limits, outlier detection) in "
                "ServiceDefaults upstreamConfig.limits / passiveHealthCheck, which this adapter does not "
                "manage; ServiceResolver and ServiceRouter have no such fields (circuit_breaker requested "
                f"on {service})"
            )
        versions = self._versions(service)
        destination = self._destination(service, state)
        return [
            (SERVICE_RESOLVER, self.service_resolver(service, versions)),
            (SERVICE_SPLITTER, self.service_splitter(service, state, versions)),
            (SERVICE_ROUTER, self.service_router(service, state, destination)),
        ]

    def service_resolver(self, service: str, versions: list[str]) -> dict[str, Any]:
        """Subsets per version by ``Service.Meta.version``; the stable (first) version is the default."""
        spec: dict[str, Any] = {
            "defaultSubset": versions[0],
            "subsets": {v: {"filter": f"Service.Meta.version == {v}"} for v in versions},
        }
        if self.connect_timeout_s is not None:
            spec["connectTimeout"] = go_duration(self.connect_timeout_s, "connect_timeout_s")
        return self._manifest(SERVICE_RESOLVER, service, spec)

    def service_splitter(self, service: str, state: TrafficState, versions: list[str]) -> dict[str, Any]:
        """Every version with its weight (a float, summing to 100)."""
        splits = [{"weight": float(state.split.get(v, 0)), "serviceSubset": v} for v in versions]
        return self._manifest(SERVICE_SPLITTER, service, {"splits": splits})

    def service_router(
        self, service: str, state: TrafficState, destination: dict[str, Any]
    ) -> dict[str, Any]:
        """The header/cookie route, then (with retries/timeout) a catch-all route carrying them."""
        routes: list[dict[str, Any]] = []
        if state.route is not None and state.route_version is not None:
            route = state.route
            if route.header is not None:
                header = {"name": route.header, "exact": route.value}
            else:
                header = {"name": "cookie", "regex": cookie_regex(route.cookie or "", route.value)}
            routes.append(
                {
                    "match": {"http": {"header": [header]}},
                    "destination": {**destination, "serviceSubset": state.route_version},
                }
            )
        if destination:
            routes.append({"match": {"http": {"pathPrefix": "/"}}, "destination": dict(destination)})
        return self._manifest(SERVICE_ROUTER, service, {"routes": routes})

    def read_split(self, service: str) -> Split:
        """The live ServiceSplitter's weights in percent (no splitter: stable 100 %)."""
        versions = self._versions(service)
        obj = self.writer.get(SERVICE_SPLITTER, self.namespace, service)
        if obj is None:
            return {v: (100 if i == 0 else 0) for i, v in enumerate(versions)}
        where = f"ServiceSplitter {self.namespace}/{service}"
        basis_points = dict.fromkeys(versions, 0)
        for split in (obj.get("spec") or {}).get("splits") or []:
            weight = round(float(split.get("weight") or 0) * 100)
            subset = split.get("serviceSubset") or versions[0]  # no subset: our resolver's defaultSubset
            other = split.get("service") not in (None, "", service)
            if other or subset not in basis_points:
                if weight == 0:
                    continue
                target = f"service {split.get('service')}" if other else f"subset {subset!r}"
                raise BackendError(
                    f"{where} sends {weight / 100:g} % to {target}, which is not a version of {service} "
                    f"({', '.join(versions)})"
                )
            basis_points[subset] += weight
        return percent_split(basis_points, where)

    def _destination(self, service: str, state: TrafficState) -> dict[str, Any]:
        """Retry and timeout fields of a ServiceRouter destination."""
        out: dict[str, Any] = {}
        if state.retries is not None:
            out.update(_retries(state.retries, service))
        if state.timeout_s is not None:
            out["requestTimeout"] = go_duration(state.timeout_s, "timeout")
        return out

    # -----------------------------------------------------------------------------------------
    # Authorization

    def render_policy(self, policy: Policy) -> list[Manifest]:
        """One ServiceIntentions for the policy's service."""
        action = policy.action
        opposite = "deny" if action == "allow" else "allow"
        by_source: dict[str, list[dict[str, Any]] | None] = {}  # None: the whole service (L4)
        for rule in policy.rules:
            permissions = _permissions(rule, action) if rule.paths or rule.methods else None
            for caller in rule.sources or ["*"]:
                if caller in by_source and by_source[caller] is None:
                    continue
                if permissions is None:
                    by_source[caller] = None
                else:
                    by_source.setdefault(caller, [])
                    by_source[caller].extend(permissions)  # type: ignore[union-attr]
        sources: list[dict[str, Any]] = []
        for caller, permissions in by_source.items():
            if permissions is None:
                sources.append({"name": caller, "action": action})
            else:
                fallback = {"action": opposite, "http": {"pathPrefix": "/"}}
                sources.append({"name": caller, "permissions": [*permissions, fallback]})
        if "*" not in by_source:
            sources.append({"name": "*", "action": opposite})
        spec = {"destination": {"name": policy.service}, "sources": sources}
        return [(SERVICE_INTENTIONS, self._manifest(SERVICE_INTENTIONS, policy.service, spec))]

    def policy_objects(self, service: str) -> list[tuple[Resource, str]]:
        """The service's ServiceIntentions."""
        return [(SERVICE_INTENTIONS, service)]

    def _manifest(self, res: Resource, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": res.api_version,
            "kind": res.kind,
            "metadata": self.metadata(name),
            "spec": spec,
        }


# ---------------------------------------------------------------------------------------------
# Helpers


def _retries(retries: Retries, service: str) -> dict[str, Any]:
    """numRetries, retryOn and retryOnStatusCodes for a ServiceRouter destination."""
    if retries.per_try_timeout is not None:
        raise Unsupported(
            f"Consul's ServiceRouter has no per-try timeout (retries.per_try_timeout on {service}); its "
            "destination has numRetries, retryOn, retryOnStatusCodes and requestTimeout only"
        )
    codes = [int(c) for c in retries.retry_on if c.isdigit()]
    words = [c for c in retries.retry_on if not c.isdigit()]
    bad = [c for c in words if c not in RETRY_ON] + [str(c) for c in codes if not 100 <= c <= 599]
    if bad:
        raise Unsupported(
            f"Consul cannot retry on {', '.join(map(repr, bad))} (retries.retry_on on {service}); "
            f"retryOn takes {', '.join(sorted(RETRY_ON))}, or HTTP status codes like 503"
        )
    out: dict[str, Any] = {"numRetries": retries.attempts}
    if words:
        out["retryOn"] = words
    if codes:
        out["retryOnStatusCodes"] = codes
    return out


def _permissions(rule: PolicyRule, action: str) -> list[dict[str, Any]]:
    """L7 permissions for a rule's paths (Istio semantics: exact, ``prefix*``, ``*suffix``, ``*``)."""
    methods = {"methods": list(rule.methods)} if rule.methods else {}
    if not rule.paths:
        return [{"action": action, "http": methods}]
    out = []
    for path in rule.paths:
        if path == "*":
            match = {"pathPrefix": "/"}
        elif path.endswith("*"):
            match = {"pathPrefix": path[:-1]}
        elif path.startswith("*"):
            match = {"pathRegex": f".*{re_escape(path[1:])}"}
        else:
            match = {"pathExact": path}
        out.append({"action": action, "http": {**match, **methods}})
    return out
