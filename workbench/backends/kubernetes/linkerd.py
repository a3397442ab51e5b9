"""Linkerd: traffic through HTTPRoute (or SMI TrafficSplit), authorization through Server policy.

Traffic (Linkerd ≥ 2.14): one HTTPRoute ``<service>`` whose parentRef is the Service and whose
backendRefs are the per-version Services ``<service>-<version>`` with weights (the Flagger way), a
header/cookie rule in front of the weighted default rule, ``timeouts.request`` where the served
version has it (policy.linkerd.io/v1beta3, gateway.networking.k8s.io/v1), and retries through the
``retry.linkerd.io/*`` annotations Linkerd ≥ 2.16 reads on HTTPRoutes. The API group is a choice:
``api="policy"`` (policy.linkerd.io, always installed with Linkerd) or ``api="gateway"``
(gateway.networking.k8s.io). ``smi=True`` renders SMI TrafficSplit (split.smi-spec.io/v1alpha2) for
Linkerd ≤ 2.11 instead: weights only. Fault injection and circuit breaking have no Linkerd object;
they raise ``Unsupported`` naming the alternative.

Authorization: a Server (pods ``app: <service>``, the port, HTTP/1, ``accessPolicy: deny``) and, per
rule, a MeshTLSAuthentication of the callers' identities with an AuthorizationPolicy — on the Server
for rules without paths/methods, on a per-rule HTTPRoute (parentRef the Server) for rules with them,
plus a catch-all route so other paths answer 403, not 404. Linkerd authorizes by allow-list only:
``action: deny`` is ``Unsupported``. Callers are identified by service account (= service name):
``<caller>.<namespace>.serviceaccount.identity.linkerd.<trust domain>``. Every policy object carries
the label ``mesh-workbench/policy-for: <service>``, so a new policy prunes the previous one's objects.
Note: once a Server has HTTPRoutes, Linkerd no longer authorizes kubelet probes by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from workbench.backends.base import BackendError, Split, re_escape
from workbench.backends.capabilities import Capability, Offer
from workbench.backends.kubernetes.adapter import LABELS, Manifest, MeshAdapter, TrafficState, Unsupported
from workbench.backends.kubernetes.apply import Resource
from workbench.backends.kubernetes.gateway_api import (
    DEFAULT_PORT,
    render_httproute,
    split_from_httproute,
    version_service,
)
from workbench.backends.kubernetes.values import go_duration, percent_split
from workbench.backends.traffic import Policy, PolicyRule, Retries

POLICY_GROUP = "policy.linkerd.io"
GATEWAY_GROUP = "gateway.networking.k8s.io"
DEFAULT_VERSIONS = {"policy": "v1beta3", "gateway": "v1"}
# HTTPRoute versions whose rules have a ``timeouts`` field
TIMEOUT_VERSIONS = {(POLICY_GROUP, "v1beta3"), (GATEWAY_GROUP, "v1"), (GATEWAY_GROUP, "v1beta1")}

SERVER = Resource(POLICY_GROUP, "v1beta3", "servers", "Server", product="Linkerd")
AUTHORIZATION_POLICY = Resource(POLICY_GROUP, "v1alpha1", "authorizationpolicies", "AuthorizationPolicy",
                                product="Linkerd")  # fmt: skip
MESH_TLS_AUTHENTICATION = Resource(POLICY_GROUP, "v1alpha1", "meshtlsauthentications",
                                   "MeshTLSAuthentication", product="Linkerd")  # fmt: skip
TRAFFIC_SPLIT = Resource("split.smi-spec.io", "v1alpha2", "trafficsplits", "TrafficSplit",
                         product="Linkerd SMI extension")  # fmt: skip
POLICY_LABEL = "mesh-workbench/policy-for"

# Linkerd's retry.linkerd.io/http takes HTTP status conditions only
_HTTP_RETRY_WORDS = {"5xx", "gateway-error"}
_MAX_MATCHES, _MAX_RULES = 8, 16


def httproute_resource(api: Literal["policy", "gateway"] = "policy", version: str | None = None) -> Resource:
    """The HTTPRoute type for ``api`` (policy.linkerd.io or gateway.networking.k8s.io)."""
    if api not in DEFAULT_VERSIONS:
        raise BackendError(f"Linkerd api must be 'policy' or 'gateway' (got {api!r})")
    group = POLICY_GROUP if api == "policy" else GATEWAY_GROUP
    product = "Linkerd" if api == "policy" else "Gateway API"
    return Resource(group, version or DEFAULT_VERSIONS[api], "httproutes", "HTTPRoute", product=product)


@dataclass
class LinkerdAdapter(MeshAdapter):
    """Linkerd adapter; see the module docstring.

    ``api``: "policy" (policy.linkerd.io HTTPRoute) or "gateway" (gateway.networking.k8s.io);
    ``route_version`` overrides the HTTPRoute version; ``smi=True`` uses SMI TrafficSplit (Linkerd ≤ 2.11);
    ``ports``: each service's port (backendRefs, Server; default 80); ``container_ports``: the pod
    port for the Server when it differs; ``trust_domain``: Linkerd's identity trust domain.
    """

    api: Literal["policy", "gateway"] = "policy"
    route_version: str | None = None
    smi: bool = False
    ports: Mapping[str, int] = field(default_factory=dict)
    container_ports: Mapping[str, int | str] = field(default_factory=dict)
    trust_domain: str = "cluster.local"

    mesh: ClassVar[str] = "linkerd"
    CAPABILITIES: ClassVar[Offer] = Offer.lacking("mesh linkerd", {
        Capability.FAULT: "Linkerd has no fault injection: shift a share of the traffic to a fault-injecting "
        "backend version with a split instead (Linkerd's 'Injecting Faults' guide), or use mesh istio",
        Capability.CIRCUIT_BREAKER: "Linkerd has no circuit breaker with limits or ejection settings (its "
        "failure accrual is a Service annotation this workbench does not manage): drop circuit_breaker",
        Capability.AUTHZ_DENY: "Linkerd authorizes by allow-list only: write the policy as action: allow "
        "listing the callers (and paths) that may call",
        Capability.RETRY_ON_RESET: "Linkerd retries on HTTP response statuses only: use retry_on: [5xx] "
        "(or status codes like 503)",
    })  # fmt: skip

    def capabilities(self) -> Offer:
        """SMI TrafficSplit (``smi=True``) carries weights only: no routes, retries or timeouts."""
        if not self.smi:
            return self.CAPABILITIES
        hint = "Linkerd's SMI TrafficSplit carries weights only: use HTTPRoute (Linkerd >= 2.14; smi=False)"
        smi_only = (Capability.HEADER_ROUTE, Capability.COOKIE_ROUTE, Capability.RETRIES,
                    Capability.RETRY_ON_RESET, Capability.PER_TRY_TIMEOUT, Capability.TIMEOUT)  # fmt: skip
        return self.CAPABILITIES & Offer.lacking("SMI TrafficSplit", dict.fromkeys(smi_only, hint))

    def __post_init__(self) -> None:
        self.route = httproute_resource(self.api, self.route_version)
        self._applied: dict[str, list[tuple[Resource, str]]] = {}  # policy objects applied, per service

    # -----------------------------------------------------------------------------------------
    # Traffic

    def render_traffic(self, service: str, state: TrafficState) -> list[Manifest]:
        """The HTTPRoute (or TrafficSplit) carrying the whole traffic state of ``service``."""
        if state.fault is not None:
            raise Unsupported(
                f"Linkerd has no fault injection (fault requested on {service}): deploy a fault-injector "
                "backend (e.g. an nginx answering HTTP 500, or one that delays) as another backend of the "
                "route and shift a share of the traffic to it by weight, as Linkerd's 'Injecting Faults' "
                "guide describes"
            )
        if state.breaker is not None:
            raise Unsupported(
                f"Linkerd has no circuit breaker with connection/request limits or ejection settings in "
                f"its CRDs (circuit_breaker requested on {service}); its nearest feature is failure "
                "accrual, set by balancer.linkerd.io/failure-accrual annotations on the Service, which "
                "this adapter does not manage"
            )
        if self.smi:
            return [(TRAFFIC_SPLIT, self._traffic_split(service, state))]
        if state.timeout_s is not None and (self.route.group, self.route.version) not in TIMEOUT_VERSIONS:
            raise Unsupported(
                f"Linkerd HTTPRoute {self.route.api_version} has no timeouts field (timeout requested on "
                f"{service}); use {POLICY_GROUP}/v1beta3 (Linkerd ≥ 2.14) or {GATEWAY_GROUP}/v1"
            )
        manifest = render_httproute(
            service, state, self.namespace, self.route.group, self.route.version, self._port(service),
            versions=self._versions(service), mesh="Linkerd", parent_group="core", handled=("retries",),
        )  # fmt: skip
        if state.retries is not None:
            manifest["metadata"]["annotations"] = _retry_annotations(state.retries, service)
        return [(self.route, manifest)]

    def read_split(self, service: str) -> Split:
        """Weights of the live route's default rule (or TrafficSplit), in percent; stable 100 if absent."""
        versions = self._versions(service)
        res = TRAFFIC_SPLIT if self.smi else self.route
        obj = self.writer.get(res, self.namespace, service)
        if obj is None:
            return {v: (100 if i == 0 else 0) for i, v in enumerate(versions)}
        if not self.smi:
            return split_from_httproute(obj, service, versions)
        where = f"TrafficSplit {self.namespace}/{service}"
        weights = dict.fromkeys(versions, 0)
        for backend in (obj.get("spec") or {}).get("backends") or []:
            name, weight = str(backend.get("service", "")), int(backend.get("weight", 0))
            version = name.removeprefix(f"{service}-")
            if version not in weights or name == version:
                if weight == 0:
                    continue
                raise BackendError(
                    f"{where} sends weight {weight} to {name!r}, which is not a per-version Service of "
                    f"{service} (expected one of {', '.join(f'{service}-{v}' for v in versions)})"
                )
            weights[version] += weight
        return percent_split(weights, where)

    def _traffic_split(self, service: str, state: TrafficState) -> dict[str, Any]:
        missing = [
            name
            for name, given in (
                ("route", state.route),
                ("retries", state.retries),
                ("timeout", state.timeout_s),
            )
            if given is not None
        ]
        if missing:
            raise Unsupported(
                f"Linkerd SMI TrafficSplit (split.smi-spec.io/v1alpha2) carries weights only: "
                f"{', '.join(missing)} on {service} needs HTTPRoute (Linkerd ≥ 2.14; smi=False) or a "
                "ServiceProfile, which this adapter does not manage"
            )
        return {
            "apiVersion": TRAFFIC_SPLIT.api_version,
            "kind": TRAFFIC_SPLIT.kind,
            "metadata": self.metadata(service),
            "spec": {
                "service": service,
                "backends": [
                    {"service": version_service(service, v), "weight": w} for v, w in state.split.items()
                ],
            },
        }

    # -----------------------------------------------------------------------------------------
    # Authorization

    def render_policy(self, policy: Policy) -> list[Manifest]:
        """Server, MeshTLSAuthentications, AuthorizationPolicies (and per-rule HTTPRoutes) for ``policy``."""
        service = policy.service
        if policy.action != "allow":
            raise Unsupported(
                f"Linkerd authorizes by allow-list only (deny policy on {service}): a Server denies all "
                "traffic no AuthorizationPolicy allows, and there is no deny rule; write the policy as "
                "action: allow listing the callers (and paths) that may call"
            )
        server = f"{service}-http"
        port = self.container_ports.get(service) or self._port(service)
        out: list[Manifest] = [
            (
                SERVER,
                {
                    "apiVersion": SERVER.api_version,
                    "kind": SERVER.kind,
                    "metadata": self._policy_meta(server, service),
                    "spec": {
                        "podSelector": {"matchLabels": {"app": service}},
                        "port": port,
                        "proxyProtocol": "HTTP/1",
                        "accessPolicy": "deny",
                    },
                },
            )
        ]
        route_res = self._policy_route()
        has_paths = any(r.paths or r.methods for r in policy.rules)
        for i, rule in enumerate(policy.rules):
            name = f"{service}-authz-{i}"
            out.append((MESH_TLS_AUTHENTICATION, self._authentication(name, service, rule)))
            target = {"group": POLICY_GROUP, "kind": "Server", "name": server}
            if rule.paths or rule.methods:
                out.append((route_res, self._rule_route(name, service, server, rule, route_res)))
                target = {"group": POLICY_GROUP, "kind": "HTTPRoute", "name": name}
            out.append((AUTHORIZATION_POLICY, self._authorization(name, service, target)))
        if has_paths:  # other paths must still reach the server (403 for the unauthorized, not 404)
            catch_all = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
            default = self._server_route(f"{service}-authz-default", service, server, [catch_all], route_res)
            out.append((route_res, default))
        return out

    def policy_objects(self, service: str) -> list[tuple[Resource, str]]:
        """The live policy objects for ``service`` (by their ``mesh-workbench/policy-for`` label).

        A dry run reads nothing: it names the objects this adapter applied for ``service`` instead.
        """
        if self.writer.dry_run:
            return list(self._applied.get(service, []))
        selector = ",".join(f"{k}={v}" for k, v in {**LABELS, POLICY_LABEL: service}.items())
        found: list[tuple[Resource, str]] = []
        for res in (AUTHORIZATION_POLICY, self._policy_route(), MESH_TLS_AUTHENTICATION, SERVER):
            for obj in self.writer.list(res, self.namespace, label_selector=selector):
                found.append((res, obj["metadata"]["name"]))
        return found

    def set_policy(self, policy: Policy | None, service: str | None = None) -> list[dict[str, Any]]:
        """Apply ``policy``, then delete an earlier policy's objects it no longer has (None: remove all)."""
        if policy is None:
            applied = super().set_policy(None, service)
            if not self.writer.dry_run:
                self._applied.pop(str(service), None)
            return applied
        self._versions(policy.service)
        manifests = self.render_policy(policy)  # Unsupported/BackendError before any request
        previous = self.policy_objects(policy.service)
        applied = [self.writer.apply(res, m) for res, m in manifests]
        rendered = [(res, m["metadata"]["name"]) for res, m in manifests]
        keep = {(res.kind, name) for res, name in rendered}
        for res, name in previous:
            if (res.kind, name) not in keep:
                self.writer.delete(res, self.namespace, name)
        if not self.writer.dry_run:
            self._applied[policy.service] = rendered
        return applied

    def _authentication(self, name: str, service: str, rule: PolicyRule) -> dict[str, Any]:
        identities = [self.identity(caller) for caller in rule.sources] or ["*"]
        return {
            "apiVersion": MESH_TLS_AUTHENTICATION.api_version,
            "kind": MESH_TLS_AUTHENTICATION.kind,
            "metadata": self._policy_meta(name, service),
            "spec": {"identities": identities},
        }

    def _authorization(self, name: str, service: str, target: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": AUTHORIZATION_POLICY.api_version,
            "kind": AUTHORIZATION_POLICY.kind,
            "metadata": self._policy_meta(name, service),
            "spec": {
                "targetRef": target,
                "requiredAuthenticationRefs": [
                    {"group": POLICY_GROUP, "kind": "MeshTLSAuthentication", "name": name}
                ],
            },
        }

    def _rule_route(
        self, name: str, service: str, server: str, rule: PolicyRule, res: Resource
    ) -> dict[str, Any]:
        paths = [_path_match(p) for p in rule.paths] or [{"type": "PathPrefix", "value": "/"}]
        matches = [
            {"path": p, **({"method": m} if m else {})} for p in paths for m in (rule.methods or [None])
        ]
        if len(matches) > _MAX_MATCHES * _MAX_RULES:
            raise BackendError(
                f"policy on {service}: a rule's paths x methods make {len(matches)} matches; a Linkerd "
                f"HTTPRoute holds at most {_MAX_MATCHES * _MAX_RULES} — split the rule"
            )
        chunks = [matches[i : i + _MAX_MATCHES] for i in range(0, len(matches), _MAX_MATCHES)]
        return self._server_route(name, service, server, [{"matches": c} for c in chunks], res)

    def _server_route(
        self, name: str, service: str, server: str, rules: list[dict[str, Any]], res: Resource
    ) -> dict[str, Any]:
        return {
            "apiVersion": res.api_version,
            "kind": "HTTPRoute",
            "metadata": self._policy_meta(name, service),
            "spec": {
                "parentRefs": [{"group": POLICY_GROUP, "kind": "Server", "name": server}],
                "rules": rules,
            },
        }

    def identity(self, caller: str) -> str:
        """The mTLS identity of ``caller`` (its service account, named like the service)."""
        namespace = self.namespace
        if "/" in caller:  # "namespace/serviceaccount"
            namespace, caller = caller.split("/", 1)
        if caller == "*":
            return "*"
        return f"{caller}.{namespace}.serviceaccount.identity.linkerd.{self.trust_domain}"

    def _policy_route(self) -> Resource:
        """Routes attached to a Server are policy.linkerd.io (what Linkerd's per-route policy uses)."""
        return self.route if self.api == "policy" else httproute_resource("policy")

    def _policy_meta(self, name: str, service: str) -> dict[str, Any]:
        meta = self.metadata(name)
        meta["labels"][POLICY_LABEL] = service
        return meta

    def _port(self, service: str) -> int:
        return int(self.ports.get(service, DEFAULT_PORT))


# ---------------------------------------------------------------------------------------------
# Helpers


def _retry_annotations(retries: Retries, service: str) -> dict[str, str]:
    """The retry.linkerd.io annotations (Linkerd ≥ 2.16) for ``retries``."""
    bad = [c for c in retries.retry_on if not (c in _HTTP_RETRY_WORDS or _is_status_condition(c))]
    if bad:
        raise Unsupported(
            f"Linkerd retries only on HTTP response statuses (retry.linkerd.io/http: 5xx, gateway-error, "
            f"a code like 503 or a range like 500-504); retries.retry_on {', '.join(map(repr, bad))} on "
            f"{service} cannot be expressed — use e.g. retry_on: [5xx]"
        )
    out = {
        "retry.linkerd.io/http": ",".join(retries.retry_on),
        "retry.linkerd.io/limit": str(retries.attempts),
    }
    if retries.per_try_timeout:
        out["retry.linkerd.io/timeout"] = go_duration(retries.per_try_timeout, "retries.per_try_timeout")
    return out


def _is_status_condition(text: str) -> bool:
    codes = text.split("-")
    return len(codes) in (1, 2) and all(len(c) == 3 and c.isdigit() and "100" <= c <= "599" for c in codes)


def _path_match(pattern: str) -> dict[str, str]:
    """Istio path semantics (exact, ``prefix*``, ``*suffix``, ``*``) as an HTTPRoute path match."""
    if pattern == "*":
        return {"type": "PathPrefix", "value": "/"}
    if pattern.endswith("*"):
        return {"type": "RegularExpression", "value": f"^{re_escape(pattern[:-1])}.*$"}
    if pattern.startswith("*"):
        return {"type": "RegularExpression", "value": f"^.*{re_escape(pattern[1:])}$"}
    return {"type": "Exact", "value": pattern}
