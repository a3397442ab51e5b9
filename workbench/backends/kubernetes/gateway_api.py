"""Plain Gateway API: one HTTPRoute per service, attached to the Service itself (GAMMA mesh mode).

The HTTPRoute (``gateway.networking.k8s.io/v1``, named like the service) has ``parentRefs``
``[{group: "", kind: Service, name: <service>, port: <port>}]`` — so it governs calls *to* the
service inside the mesh — and up to two rules: the header/cookie match of an A/B test to one
version (header ``Exact`` match; a cookie as a ``RegularExpression`` match on the ``cookie``
header), then the default rule with weighted ``backendRefs``.

Versions are addressed through **per-version Services** named ``<service>-<version>`` (selecting
``app: <service>, version: <version>``, same port as the service) — the convention Flagger and
Linkerd use, because a Gateway API backend is a Service, not a label subset. The workbench does
not create these Services; they must exist.

What Gateway API cannot express raises ``Unsupported``: fault injection, circuit breaking and
authorization have no Gateway API object, and HTTPRoute retries (GEP-1731, ``rules[].retry``) exist
only in the experimental channel — the standard-channel v1 CRD has no ``retry`` field. The request
timeout is ``rules[].timeouts.request``. ``render_httproute`` is shared with ``linkerd.py`` (which
renders ``policy.linkerd.io`` HTTPRoutes the same way).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workbench.backends.base import BackendError, Split, cookie_regex
from workbench.backends.capabilities import AUTHORIZATION, Capability, Offer
from workbench.backends.kubernetes.adapter import LABELS, Manifest, MeshAdapter, TrafficState, Unsupported
from workbench.backends.kubernetes.apply import Resource
from workbench.backends.kubernetes.values import dns_label, go_duration, percent_split
from workbench.backends.traffic import Policy

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE = Resource(GATEWAY_GROUP, "v1", "httproutes", "HTTPRoute", "Gateway API")
DEFAULT_PORT = 80
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_UNSUPPORTED = {
    "fault": ("fault injection", "Gateway API has no fault injection"),
    "breaker": ("circuit breaking", "Gateway API has no circuit breaking or outlier detection"),
    "retries": (
        "retries",
        "HTTPRoute retry (GEP-1731) is experimental-channel only; the standard v1 CRD has no rules[].retry",
    ),
}


def version_service(service: str, version: str) -> str:
    """The per-version Service a backendRef names: ``<service>-<version>``."""
    return dns_label(
        f"{service}-{version}", f"per-version Service of {service} {version}", start_with_letter=True
    )


def render_httproute(
    service: str,
    state: TrafficState,
    namespace: str,
    group: str = GATEWAY_GROUP,
    version: str = "v1",
    port: int = DEFAULT_PORT,
    *,
    versions: Collection[str] | None = None,
    mesh: str = "gateway-api",
    parent_group: str = "",
    handled: Collection[str] = (),
) -> dict[str, Any]:
    """An HTTPRoute (``<group>/<version>``) making ``state`` true for calls to ``service``.

    ``versions`` (default: the keys of ``state.split``) get a backendRef each, weight 0 included.
    ``parent_group`` is the parentRef's group for the Service ("" in Gateway API; Linkerd's own
    HTTPRoute documents "core"). Features HTTPRoute cannot express — fault, breaker, retries —
    raise ``Unsupported`` naming ``mesh``, unless listed in ``handled`` (the caller renders them
    elsewhere, e.g. Linkerd's retry annotations); "timeout" in ``handled`` leaves out ``timeouts``.
    """
    for key, value in (("fault", state.fault), ("breaker", state.breaker), ("retries", state.retries)):
        if value is not None and key not in handled:
            feature, why = _UNSUPPORTED[key]
            raise Unsupported(f"{mesh} cannot express {feature} for {service} on an HTTPRoute ({why})")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BackendError(f"port of {service} must be an integer 1-65535 (got {port!r})")
    names = list(versions) if versions is not None else list(state.split)
    timeouts: dict[str, Any] = {}
    if state.timeout_s is not None and "timeout" not in handled:
        timeouts = {"timeouts": {"request": go_duration(state.timeout_s, "timeout")}}
    rules: list[dict[str, Any]] = []
    if state.route is not None and state.route_version is not None:
        route = state.route
        if not route.value:
            raise BackendError("route.value must not be empty (an HTTPRoute header match needs a value)")
        if route.header is not None:
            if not _HEADER_NAME.match(route.header):
                raise BackendError(f"route.header {route.header!r} is not a valid HTTP header name")
            header = {"type": "Exact", "name": route.header, "value": route.value}
        else:
            header = {"type": "RegularExpression", "name": "cookie",
                      "value": cookie_regex(route.cookie or "", route.value)}  # fmt: skip
        rules.append(
            {
                "matches": [{**_prefix(), "headers": [header]}],
                "backendRefs": [_backend(service, state.route_version, port, None)],
                **timeouts,
            }
        )
    rules.append(
        {
            "matches": [_prefix()],
            "backendRefs": [_backend(service, v, port, int(state.split.get(v, 0))) for v in names],
            **timeouts,
        }
    )
    return {
        "apiVersion": f"{group}/{version}",
        "kind": "HTTPRoute",
        "metadata": {"name": service, "namespace": namespace, "labels": dict(LABELS)},
        "spec": {
            "parentRefs": [{"group": parent_group, "kind": "Service", "name": service, "port": port}],
            "rules": rules,
        },
    }


def _prefix() -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": "/"}}


def _backend(service: str, version: str, port: int, weight: int | None) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "group": "",
        "kind": "Service",
        "name": version_service(service, version),
        "port": port,
    }
    if weight is not None:
        ref["weight"] = weight
    return ref


def split_from_httproute(route: dict[str, Any], service: str, versions: list[str]) -> Split:
    """The default rule's backendRef weights per version of a live HTTPRoute, in percent.

    The default rule is the one whose matches carry no header (or query) condition; backendRefs
    name per-version Services ``<service>-<version>``; a missing weight counts as 1 (the API default).
    """
    meta = route.get("metadata") or {}
    where = f"HTTPRoute {meta.get('namespace', '?')}/{meta.get('name', service)}"
    rules = (route.get("spec") or {}).get("rules") or []

    def conditional(rule: dict[str, Any]) -> bool:
        return any(
            m.get("headers") or m.get("queryParams") or m.get("method") for m in rule.get("matches") or []
        )

    defaults = [r for r in rules if not conditional(r)]
    if not defaults:
        raise BackendError(f"{where} has no default rule (one without header matches)")
    refs = defaults[0].get("backendRefs") or []
    if not refs:
        raise BackendError(f"{where}: its default rule has no backendRefs")
    by_name = {f"{service}-{v}": v for v in versions}
    weights = dict.fromkeys(versions, 0)
    for ref in refs:
        name, weight = ref.get("name", ""), int(ref.get("weight", 1))
        if ref.get("kind", "Service") != "Service" or name not in by_name:
            if weight == 0:
                continue
            raise BackendError(
                f"{where} sends weight {weight} to {ref.get('kind', 'Service')} {name!r}, which is not a "
                f"per-version Service of {service} (expected one of {', '.join(by_name)})"
            )
        weights[by_name[name]] += weight
    return percent_split(weights, where)


@dataclass
class GatewayAPIAdapter(MeshAdapter):
    """Plain Gateway API HTTPRoutes (GAMMA); ``ports`` maps a service to its port (default 80)."""

    ports: Mapping[str, int] = field(default_factory=dict)

    mesh: ClassVar[str] = "gateway-api"
    CAPABILITIES: ClassVar[Offer] = Offer.lacking("mesh gateway-api", {
        Capability.FAULT: "Gateway API has no fault injection: use the mesh's own API (e.g. mesh istio)",
        Capability.CIRCUIT_BREAKER: "Gateway API has no circuit breaking: use the mesh's own API (e.g. mesh "
        "istio)",
        **dict.fromkeys(
            (Capability.RETRIES, Capability.RETRY_ON_RESET, Capability.PER_TRY_TIMEOUT),
            "HTTPRoute retries (GEP-1731) are experimental-channel only: drop retries, or use the mesh's "
            "own API (e.g. mesh istio or linkerd)",
        ),
        **dict.fromkeys(AUTHORIZATION, "Gateway API has no authorization object: set backend.mesh to the "
                        "mesh you run (istio, linkerd or consul) to use its policies"),
    })  # fmt: skip

    def render_traffic(self, service: str, state: TrafficState) -> list[Manifest]:
        """The service's HTTPRoute."""
        manifest = render_httproute(
            service, state, self.namespace, port=self.ports.get(service, DEFAULT_PORT),
            versions=self._versions(service), mesh=self.mesh,
        )  # fmt: skip
        return [(HTTPROUTE, manifest)]

    def render_policy(self, policy: Policy) -> list[Manifest]:
        """Gateway API has no authorization object: always ``Unsupported``."""
        raise Unsupported(
            f"{self.mesh} cannot express authorization policies (Gateway API has no authorization "
            f"object; use the mesh's own, e.g. Istio AuthorizationPolicy) — policy on {policy.service}"
        )

    def policy_objects(self, service: str) -> list[tuple[Resource, str]]:
        """None: the workbench never creates authorization objects with plain Gateway API."""
        return []

    def read_split(self, service: str) -> Split:
        """The live HTTPRoute's default-rule weights (no HTTPRoute: stable 100 %)."""
        versions = self._versions(service)
        route = self.writer.get(HTTPROUTE, self.namespace, service)
        if route is None:
            return {v: (100 if i == 0 else 0) for i, v in enumerate(versions)}
        return split_from_httproute(route, service, versions)
