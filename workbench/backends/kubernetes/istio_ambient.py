"""Istio's ambient data plane: ztunnel (L4) on every node, waypoints (L7) where enrolled.

A namespace is in ambient mode when labelled ``istio.io/dataplane-mode=ambient``; its pods then
have no sidecar, and ztunnel carries their traffic in mutual-TLS HBONE tunnels with each workload's
identity. L7 policy needs a **waypoint**: a Gateway API ``Gateway`` of class ``istio-waypoint``
(listener ``mesh``, port 15008, protocol ``HBONE``; ``waypoint_gateway`` renders the one
``istioctl waypoint apply`` would), used by a namespace or a Service labelled
``istio.io/use-waypoint: <waypoint>``.

How the workbench drives a namespace with a waypoint (``IstioAmbientAdapter``), following Istio's
migration guide ("Migrate policies", istio.io/latest/docs/ambient/migrate/migrate-policies/):

- **Routing is Gateway API HTTPRoutes attached to the Service** (the GAMMA pattern; the renderer
  is ``gateway_api.render_httproute``): splits and header/cookie routes with per-version Services
  ``<service>-<version>`` as backendRefs, the request timeout as ``timeouts.request``. VirtualService
  on waypoints is alpha, and mixing VirtualService and HTTPRoute for one workload is undefined, so
  the workbench never writes a VirtualService there. The standard-channel HTTPRoute has no fault
  injection and no retries: both are refused at validation (``CAPABILITIES``), never half applied.
- **Circuit breaking is a DestinationRule per version Service** (waypoints apply DestinationRule
  traffic policy; the backends an HTTPRoute names are the per-version Services, so that is the
  host the policy must name). One DestinationRule ``<service>-<version>`` per version, always
  written, with ``trafficPolicy`` only while a breaker is set.
- **Authorization attaches to the Service** (``targetRefs``), so the waypoint enforces it with the
  caller's identity: with a waypoint in the path, a ``selector`` policy is enforced by the
  destination's ztunnel, which sees the waypoint's identity, not the caller's.

Without a waypoint (``ambient``), the plain ``IstioAdapter`` with ``istio.ambient_offer`` applies:
ztunnel's L4 only — allow/deny by identity — and every L7 feature refused, naming the missing
waypoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from workbench.backends.capabilities import Capability, Offer
from workbench.backends.kubernetes import cluster
from workbench.backends.kubernetes.adapter import Manifest, TrafficState
from workbench.backends.kubernetes.gateway_api import (
    DEFAULT_PORT,
    HTTPROUTE,
    render_httproute,
    split_from_httproute,
    version_service,
)
from workbench.backends.kubernetes.istio import (
    AUTHORIZATION_POLICY,
    DESTINATION_RULE,
    IstioAdapter,
    istio_traffic_policy,
)
from workbench.backends.kubernetes.values import dns_label
from workbench.backends.traffic import Policy

WAYPOINT_FOR = "istio.io/waypoint-for"  # service (default), workload, all or none
HBONE_PORT = 15008

_HTTPROUTE_ONLY = (
    "in Istio's ambient mode the workbench routes through the waypoint with Gateway API HTTPRoutes, as "
    "Istio recommends (VirtualService on waypoints is alpha, and mixing both for one workload is "
    "undefined); the standard-channel HTTPRoute has no {feature}: drop it from this experiment, or run it "
    "in a namespace with sidecars"
)


def waypoint_gateway(namespace: str, name: str = "waypoint", waypoint_for: str = "service") -> dict[str, Any]:
    """The waypoint ``Gateway`` for ``namespace`` (what ``istioctl waypoint apply`` creates)."""
    dns_label(name, "waypoint name")
    if waypoint_for not in ("service", "workload", "all", "none"):
        raise ValueError(f"waypoint_for must be service, workload, all or none (got {waypoint_for!r})")
    return {
        "apiVersion": cluster.GATEWAYS.api_version,
        "kind": cluster.GATEWAYS.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {WAYPOINT_FOR: waypoint_for}},
        "spec": {
            "gatewayClassName": cluster.WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}],
        },
    }


@dataclass
class IstioAmbientAdapter(IstioAdapter):
    """Istio ambient with a waypoint: HTTPRoutes, per-version DestinationRules, targetRef policies.

    ``ports`` maps a service to its port (the HTTPRoute's parentRef and backendRefs; default 80).
    """

    ports: dict[str, int] = field(default_factory=dict)

    CAPABILITIES: ClassVar[Offer] = Offer.lacking("mesh istio (ambient, waypoint)", {
        Capability.FAULT: _HTTPROUTE_ONLY.format(feature="fault injection"),
        **dict.fromkeys(
            (Capability.RETRIES, Capability.RETRY_ON_RESET, Capability.PER_TRY_TIMEOUT),
            _HTTPROUTE_ONLY.format(feature="retries (GEP-1731 is experimental-channel only)"),
        ),
    })  # fmt: skip

    def render_traffic(self, service: str, state: TrafficState) -> list[Manifest]:
        """The service's HTTPRoute, then one DestinationRule per version Service."""
        versions = self._versions(service)
        route = render_httproute(
            service, state, self.namespace, port=self.ports.get(service, DEFAULT_PORT), versions=versions,
            mesh="istio (ambient, waypoint)", handled=("breaker",),  # the DestinationRules below
        )  # fmt: skip
        out: list[Manifest] = [(HTTPROUTE, route)]
        policy = istio_traffic_policy(state.breaker) if state.breaker is not None else {}
        for v in versions:
            host = version_service(service, v)
            spec: dict[str, Any] = {"host": host}
            if policy:
                spec["trafficPolicy"] = policy
            manifest = {"apiVersion": DESTINATION_RULE.api_version, "kind": DESTINATION_RULE.kind,
                        "metadata": self.metadata(host), "spec": spec}  # fmt: skip
            out.append((DESTINATION_RULE, manifest))
        return out

    def read_split(self, service: str) -> dict[str, int]:
        """The live HTTPRoute's default-rule weights (no HTTPRoute: stable 100 %)."""
        versions = self._versions(service)
        route = self.writer.get(HTTPROUTE, self.namespace, service)
        if route is None:
            return {v: (100 if i == 0 else 0) for i, v in enumerate(versions)}
        return split_from_httproute(route, service, versions)

    def render_policy(self, policy: Policy) -> list[Manifest]:
        """The AuthorizationPolicy, attached to the Service (``targetRefs``) for its waypoint."""
        ((res, manifest),) = super().render_policy(policy)
        spec = manifest["spec"]
        del spec["selector"]
        spec["targetRefs"] = [{"group": "", "kind": "Service", "name": policy.service}]
        return [(res, manifest)]


__all__ = ["AUTHORIZATION_POLICY", "WAYPOINT_FOR", "IstioAmbientAdapter", "waypoint_gateway"]
