"""Istio and plain Gateway API adapters: rendering, CRD-schema validity, and API contract.

(a) Rendering with real numbers for every feature, each manifest validated against its CRD's
    ``openAPIV3Schema`` from ../shared/crds (tests/kube_crds.py; skipped when ../shared is absent).
(b) Contract tests: a real ``kubernetes.client.ApiClient`` talks to pytest-httpserver; every write
    and read is checked for exact path, verb, query, content type, bearer token and body, and the
    403/404/409/422 answers of a real API server become clear errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kube import TOKEN
from kube import expect_apply as _expect_apply
from pytest_httpserver import HTTPServer
from werkzeug import Response

from conftest import SHARED
from workbench.backends.base import BackendError
from workbench.backends.kubernetes.adapter import TrafficState, Unsupported
from workbench.backends.kubernetes.apply import CRDMissing, KubernetesError, Writer
from workbench.backends.kubernetes.gateway_api import GatewayAPIAdapter, render_httproute
from workbench.backends.kubernetes.istio import IstioAdapter
from workbench.backends.kubernetes.values import go_duration, percent_split
from workbench.config import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route

VERSIONS = {"reviews": ["v1", "v2"], "productpage": ["v1"]}
NS = "shop"
APPLY_QUERY = "fieldManager=mesh-workbench&force=false"
VS_PATH = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/reviews"
DR_PATH = "/apis/networking.istio.io/v1/namespaces/shop/destinationrules/reviews"
AP_PATH = "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies/reviews-workbench"
PA_PATH = "/apis/security.istio.io/v1/namespaces/shop/peerauthentications/default"
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/reviews"


def istio(writer: Writer | None = None) -> IstioAdapter:
    return IstioAdapter(writer or Writer(None, context="test", dry_run=True), NS, VERSIONS)


def gateway(writer: Writer | None = None, **kw: Any) -> GatewayAPIAdapter:
    return GatewayAPIAdapter(writer or Writer(None, context="test", dry_run=True), NS, VERSIONS, **kw)


def full_state() -> TrafficState:
    return TrafficState(
        split={"v1": 90, "v2": 10},
        route=Route(header="X-Canary", value="yes"),
        route_version="v2",
        fault=Fault(delay=0.2, percent=10),
        retries=Retries(attempts=3, per_try_timeout=0.5, retry_on=["5xx", "reset", "connect-failure"]),
        timeout_s=2.5,
        breaker=CircuitBreaker(
            max_connections=100,
            max_pending_requests=10,
            max_requests=50,
            consecutive_5xx=7,
            interval=0.5,
            base_ejection_time=30,
            max_ejection_percent=50,
        ),
    )


POLICY = Policy(
    service="reviews",
    action="deny",
    rules=[
        PolicyRule(
            sources=["productpage", "ratings"], paths=["/admin/*", "/health"], methods=["POST", "DELETE"]
        ),
        PolicyRule(),
    ],
)


def _kinds(manifests: list[tuple[Any, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for _, m in manifests}


# =============================================================================================
# (a) Rendering


def test_durations_are_whole_go_units() -> None:
    assert [go_duration(s, "t") for s in (0.2, 2, 2.5, 90, 3600.001)] == [
        "200ms",
        "2s",
        "2s500ms",
        "1m30s",
        "1h1ms",
    ]
    with pytest.raises(BackendError, match=r"retries.per_try_timeout must be at least 1ms \(got 0.0004s\)"):
        go_duration(0.0004, "retries.per_try_timeout")


def test_percent_split_sums_to_100_by_largest_remainder() -> None:
    assert percent_split({"v1": 3, "v2": 1}, "x") == {"v1": 75, "v2": 25}
    assert percent_split({"v1": 1, "v2": 2}, "x") == {"v1": 33, "v2": 67}
    assert percent_split({"a": 1, "b": 1, "c": 1}, "x") == {"a": 34, "b": 33, "c": 33}
    with pytest.raises(BackendError, match="HTTPRoute shop/reviews sends no traffic"):
        percent_split({"v1": 0}, "HTTPRoute shop/reviews")


def test_istio_split_90_10_is_the_default_route() -> None:
    state = TrafficState(split={"v1": 90, "v2": 10})
    vs = _kinds(istio().render_traffic("reviews", state))["VirtualService"]
    assert vs["apiVersion"] == "networking.istio.io/v1"
    assert vs["metadata"] == {
        "name": "reviews",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "mesh-workbench"},
    }
    assert vs["spec"]["hosts"] == ["reviews"]
    assert vs["spec"]["http"] == [
        {
            "name": "default",
            "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10},
            ],
        }
    ]


def test_istio_header_route_first_then_weighted_default() -> None:
    http = _kinds(istio().render_traffic("reviews", full_state()))["VirtualService"]["spec"]["http"]
    assert [r["name"] for r in http] == ["ab-match", "default"]
    assert http[0]["match"] == [{"headers": {"x-canary": {"exact": "yes"}}}]  # Istio wants lowercase keys
    assert http[0]["route"] == [{"destination": {"host": "reviews", "subset": "v2"}}]
    assert [d["weight"] for d in http[1]["route"]] == [90, 10]


def test_istio_cookie_route_is_a_regex_on_the_cookie_header() -> None:
    state = TrafficState(
        split={"v1": 100, "v2": 0}, route=Route(cookie="canary", value="a.b"), route_version="v2"
    )
    http = _kinds(istio().render_traffic("reviews", state))["VirtualService"]["spec"]["http"]
    regex = http[0]["match"][0]["headers"]["cookie"]["regex"]
    for cookie in ("canary=a.b", "x=1; canary=a.b", "x=1;canary=a.b; y=2"):
        assert re.fullmatch(regex, cookie), cookie
    for cookie in ("canary=axb", "canary=a.bc", "xcanary=a.b", "x=canary=a.b"):
        assert not re.fullmatch(regex, cookie), cookie


def test_istio_fault_percentages() -> None:
    delay = TrafficState(split={"v1": 100, "v2": 0}, fault=Fault(delay=0.2, percent=10))
    http = _kinds(istio().render_traffic("reviews", delay))["VirtualService"]["spec"]["http"]
    assert http[-1]["fault"] == {"delay": {"fixedDelay": "200ms", "percentage": {"value": 10.0}}}
    abort = TrafficState(split={"v1": 100, "v2": 0}, fault=Fault(abort=503, percent=2.5))
    http = _kinds(istio().render_traffic("reviews", abort))["VirtualService"]["spec"]["http"]
    assert http[-1]["fault"] == {"abort": {"httpStatus": 503, "percentage": {"value": 2.5}}}


def test_istio_retries_and_timeout_formats_on_every_route() -> None:
    http = _kinds(istio().render_traffic("reviews", full_state()))["VirtualService"]["spec"]["http"]
    for route in http:
        assert route["retries"] == {
            "attempts": 3,
            "perTryTimeout": "500ms",
            "retryOn": "5xx,reset,connect-failure",
        }
        assert route["timeout"] == "2s500ms"
        assert route["fault"]["delay"]["fixedDelay"] == "200ms"


def test_istio_destination_rule_subsets_and_breaker() -> None:
    dr = _kinds(istio().render_traffic("reviews", full_state()))["DestinationRule"]
    assert dr["spec"]["host"] == "reviews"
    assert dr["spec"]["subsets"] == [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}},
    ]
    assert dr["spec"]["trafficPolicy"] == {
        "connectionPool": {
            "tcp": {"maxConnections": 100},
            "http": {"http1MaxPendingRequests": 10, "http2MaxRequests": 50},
        },
        "outlierDetection": {
            "consecutive5xxErrors": 7,
            "interval": "500ms",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": 50,
        },
    }
    plain = _kinds(istio().render_traffic("reviews", TrafficState(split={"v1": 100, "v2": 0})))
    assert "trafficPolicy" not in plain["DestinationRule"]["spec"]


def test_istio_authorization_policy() -> None:
    ((res, ap),) = istio().render_policy(POLICY)
    assert res.plural == "authorizationpolicies" and ap["apiVersion"] == "security.istio.io/v1"
    assert ap["metadata"]["name"] == "reviews-workbench"
    assert ap["spec"] == {
        "selector": {"matchLabels": {"app": "reviews"}},
        "action": "DENY",
        "rules": [
            {
                "from": [
                    {
                        "source": {
                            "principals": [
                                "cluster.local/ns/shop/sa/productpage",
                                "cluster.local/ns/shop/sa/ratings",
                            ]
                        }
                    }
                ],
                "to": [{"operation": {"paths": ["/admin/*", "/health"], "methods": ["POST", "DELETE"]}}],
            },
            {},  # an empty rule matches every request, as in the local mesh's RBAC
        ],
    }
    allow = POLICY.model_copy(update={"action": "allow"})
    assert istio().render_policy(allow)[0][1]["spec"]["action"] == "ALLOW"


def test_istio_peer_authentication() -> None:
    res, pa = istio().peer_authentication("strict")
    assert res.kind == "PeerAuthentication" and pa["metadata"]["name"] == "default"
    assert pa["spec"] == {"mtls": {"mode": "STRICT"}} and "selector" not in pa["spec"]
    assert istio().peer_authentication("PERMISSIVE")[1]["spec"]["mtls"]["mode"] == "PERMISSIVE"
    with pytest.raises(BackendError, match="mtls mode must be one of STRICT, PERMISSIVE"):
        istio().peer_authentication("maybe")


def test_istio_bad_input_names_the_field() -> None:
    split = {"v1": 100, "v2": 0}
    bad = [
        (
            TrafficState(split, retries=Retries(retry_on=["5xx", "sometimes"])),
            r"retries.retry_on .*sometimes",
        ),
        (TrafficState(split, timeout_s=0.0002), r"timeout must be at least 1ms"),
        (
            TrafficState(split, breaker=CircuitBreaker(max_ejection_percent=33.5)),
            r"circuit_breaker.max_ejection_percent must be a whole percent",
        ),
        (
            TrafficState(split, route=Route(header="authority", value="x"), route_version="v2"),
            r"route.header",
        ),
    ]
    for state, message in bad:
        with pytest.raises(BackendError, match=message):
            istio().render_traffic("reviews", state)
    adapter = IstioAdapter(Writer(None, dry_run=True), NS, {"reviews": ["v1.2"]})
    with pytest.raises(BackendError, match=r"version of reviews \(an Istio subset name\) 'v1.2'"):
        adapter.render_traffic("reviews", TrafficState({"v1.2": 100}))
    with pytest.raises(BackendError, match=r"rules\[0\].sources entry 'Product_Page'"):
        istio().render_policy(Policy(service="reviews", rules=[PolicyRule(sources=["Product_Page"])]))
    with pytest.raises(BackendError, match="no service 'nope' in namespace shop"):
        istio().set_split("nope", {"v1": 100})


def test_gateway_split_90_10_parent_and_backends() -> None:
    ((res, route),) = gateway(ports={"reviews": 9080}).render_traffic(
        "reviews", TrafficState({"v1": 90, "v2": 10})
    )
    assert res.path(NS, "reviews") == ROUTE_PATH
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "reviews-v1", "port": 9080, "weight": 90},
        {"group": "", "kind": "Service", "name": "reviews-v2", "port": 9080, "weight": 10},
    ]
    default = gateway().render_traffic("reviews", TrafficState({"v1": 100, "v2": 0}))[0][1]
    assert default["spec"]["parentRefs"][0]["port"] == 80


def test_gateway_header_and_cookie_routes_and_timeout() -> None:
    state = TrafficState(
        {"v1": 90, "v2": 10}, route=Route(header="X-Canary", value="yes"), route_version="v2", timeout_s=0.75
    )
    rules = gateway().render_traffic("reviews", state)[0][1]["spec"]["rules"]
    assert rules[0]["matches"] == [
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": "X-Canary", "value": "yes"}],
        }
    ]
    assert rules[0]["backendRefs"] == [{"group": "", "kind": "Service", "name": "reviews-v2", "port": 80}]
    assert rules[1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert [r["timeouts"] for r in rules] == [{"request": "750ms"}] * 2
    cookie = TrafficState({"v1": 100, "v2": 0}, route=Route(cookie="canary", value="on"), route_version="v2")
    (header,) = gateway().render_traffic("reviews", cookie)[0][1]["spec"]["rules"][0]["matches"][0]["headers"]
    assert header["type"] == "RegularExpression" and header["name"] == "cookie"
    assert re.fullmatch(header["value"], "session=1; canary=on") and not re.fullmatch(
        header["value"], "canary=off"
    )


def test_gateway_unsupported_features_name_mesh_and_feature() -> None:
    split = {"v1": 100, "v2": 0}
    cases = [
        (
            TrafficState(split, fault=Fault(abort=503, percent=5)),
            "gateway-api cannot express fault injection",
        ),
        (TrafficState(split, breaker=CircuitBreaker()), "gateway-api cannot express circuit breaking"),
        (
            TrafficState(split, retries=Retries()),
            "gateway-api cannot express retries .*experimental-channel only",
        ),
    ]
    for state, message in cases:
        with pytest.raises(Unsupported, match=message):
            gateway().render_traffic("reviews", state)
    with pytest.raises(Unsupported, match="gateway-api cannot express authorization policies"):
        gateway().set_policy(POLICY)
    with pytest.raises(
        BackendError, match=r"per-version Service of reviews V2 'reviews-V2' is not a valid DNS-1035"
    ):
        GatewayAPIAdapter(Writer(None, dry_run=True), NS, {"reviews": ["v1", "V2"]}).render_traffic(
            "reviews", TrafficState({"v1": 100, "V2": 0})
        )


def test_httproute_renderer_is_reusable_for_linkerd() -> None:
    state = TrafficState({"v1": 80, "v2": 20}, retries=Retries(), timeout_s=1)
    route = render_httproute(
        "reviews",
        state,
        NS,
        group="policy.linkerd.io",
        version="v1beta3",
        port=9080,
        mesh="linkerd",
        parent_group="core",
        handled=("retries",),
    )
    assert route["apiVersion"] == "policy.linkerd.io/v1beta3"
    assert route["spec"]["parentRefs"][0]["group"] == "core"
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "1s"}
    no_timeouts = render_httproute(
        "reviews", state, NS, group="policy.linkerd.io", version="v1beta2", handled=("retries", "timeout")
    )
    assert "timeouts" not in no_timeouts["spec"]["rules"][0]
    with pytest.raises(Unsupported, match="linkerd cannot express retries"):
        render_httproute("reviews", state, NS, mesh="linkerd")


# ---------------------------------------------------------------------------------------------
# CRD schema validity


def _every_manifest() -> list[dict[str, Any]]:
    out = [m for _, m in istio().render_traffic("reviews", full_state())]
    out += [m for _, m in istio().render_traffic("reviews", TrafficState({"v1": 100, "v2": 0}))]
    cookie = TrafficState(
        {"v1": 50, "v2": 50},
        route=Route(cookie="canary", value="1"),
        route_version="v2",
        fault=Fault(abort=503, percent=2.5),
        retries=Retries(attempts=1, retry_on=[]),
        timeout_s=90.5,
        breaker=CircuitBreaker(consecutive_5xx=None, max_connections=1),
    )
    out += [m for _, m in istio().render_traffic("reviews", cookie)]
    out += [m for _, m in istio().render_policy(POLICY)]
    out += [istio().peer_authentication(mode)[1] for mode in ("STRICT", "PERMISSIVE")]
    gw = TrafficState(
        {"v1": 90, "v2": 10}, route=Route(header="X-Canary", value="yes"), route_version="v2", timeout_s=2.5
    )
    out += [m for _, m in gateway(ports={"reviews": 9080}).render_traffic("reviews", gw)]
    gw_cookie = TrafficState(
        {"v1": 0, "v2": 100}, route=Route(cookie="canary", value="x"), route_version="v1"
    )
    out += [m for _, m in gateway().render_traffic("reviews", gw_cookie)]
    return out


def test_every_rendered_manifest_is_valid_against_its_crd(shared: Path) -> None:
    from kube_crds import storage_version, validate

    manifests = _every_manifest()
    assert {m["kind"] for m in manifests} == {
        "VirtualService",
        "DestinationRule",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "HTTPRoute",
    }
    for m in manifests:
        validate(m)
    # We write the storage version of every CRD.
    for crd, version in [
        ("virtualservices.networking.istio.io", "v1"),
        ("destinationrules.networking.istio.io", "v1"),
        ("authorizationpolicies.security.istio.io", "v1"),
        ("peerauthentications.security.istio.io", "v1"),
        ("httproutes.gateway.networking.k8s.io", "v1"),
    ]:
        assert storage_version(crd) == version


def test_linkerd_httproute_from_the_shared_renderer_is_valid(shared: Path) -> None:
    from kube_crds import validate

    state = TrafficState(
        {"v1": 80, "v2": 20}, route=Route(header="x-canary", value="1"), route_version="v2", timeout_s=1
    )
    validate(
        render_httproute(
            "reviews", state, NS, group="policy.linkerd.io", version="v1beta3", port=9080, parent_group="core"
        )
    )


def test_gateway_api_standard_crd_has_no_httproute_retry(shared: Path) -> None:
    """Why retries are Unsupported: the standard-channel v1 HTTPRoute has no rules[].retry."""
    from kube_crds import crd_schema

    rule = crd_schema("httproutes.gateway.networking.k8s.io", "v1")["properties"]["spec"]["properties"][
        "rules"
    ]
    assert "retry" not in rule["items"]["properties"]
    assert "timeouts" in rule["items"]["properties"]


def test_the_validator_catches_invalid_manifests(shared: Path) -> None:
    from kube_crds import crd_validator, validate

    vs = _kinds(istio().render_traffic("reviews", full_state()))["VirtualService"]
    route = gateway().render_traffic("reviews", TrafficState({"v1": 90, "v2": 10}, timeout_s=1))[0][1]

    def broken(manifest: dict[str, Any], edit: Any) -> dict[str, Any]:
        copy = json.loads(json.dumps(manifest))
        edit(copy)
        return copy

    def typo(m: dict[str, Any]) -> None:
        m["spec"]["http"][0]["retries"]["perTryTimout"] = m["spec"]["http"][0]["retries"].pop("perTryTimeout")

    cases = [
        (broken(vs, typo), "perTryTimout"),  # the API server would silently prune it
        (
            broken(vs, lambda m: m["spec"]["http"][1]["route"][0].update(weight="90")),
            "'90' is not of type 'integer'",
        ),
        (broken(vs, lambda m: m["spec"]["http"][0].update(timeout="0.5")), "must be a valid duration"),
        (broken(vs, lambda m: m["metadata"].update(name="Reviews")), "does not match"),
        (broken(route, lambda m: m["spec"]["rules"][0]["backendRefs"][0].pop("port")), "Must have port"),
        (broken(route, lambda m: m["spec"]["rules"][0]["timeouts"].update(request="1.5s")), "does not match"),
        (
            broken(route, lambda m: m["spec"]["rules"][0]["timeouts"].update(backendRequest="2s")),
            "cannot be longer",
        ),
    ]
    for manifest, message in cases:
        with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
            validate(manifest)
    # An older served version is not the one we write: checked against v1, it is rejected.
    old = broken(vs, lambda m: m.update(apiVersion="networking.istio.io/v1alpha3"))
    with pytest.raises(jsonschema.ValidationError, match=re.escape("'networking.istio.io/v1' was expected")):
        crd_validator("virtualservices.networking.istio.io", "v1")(old)


# =============================================================================================
# (b) Contract tests against pytest-httpserver


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def test_istio_set_split_applies_virtualservice_then_destinationrule(
    httpserver: HTTPServer, api: Any
) -> None:
    records: list[Any] = []
    adapter = istio(Writer(api, context="test", on_write=records.append))
    expected = _kinds(istio().render_traffic("reviews", TrafficState({"v1": 90, "v2": 10})))
    _expect_apply(httpserver, VS_PATH, expected["VirtualService"])
    _expect_apply(httpserver, DR_PATH, expected["DestinationRule"])
    stored = adapter.set_split("reviews", {"v1": 90, "v2": 10})
    httpserver.check_assertions()
    assert [s["metadata"]["resourceVersion"] for s in stored] == ["7", "7"]
    assert [(r.verb, r.kind, r.namespace, r.name, r.dry_run) for r in records] == [
        ("apply", "VirtualService", "shop", "reviews", False),
        ("apply", "DestinationRule", "shop", "reviews", False),
    ]
    assert records[0].body == expected["VirtualService"] and TOKEN not in json.dumps(
        [r.to_json() for r in records]
    )


def test_istio_every_traffic_write_sends_the_rendered_manifest(httpserver: HTTPServer, api: Any) -> None:
    adapter = istio(Writer(api, context="test"))
    state = full_state()
    steps = [
        lambda: adapter.set_split("reviews", state.split),
        lambda: adapter.set_route("reviews", state.route, "v2"),
        lambda: adapter.set_fault("reviews", state.fault),
        lambda: adapter.set_resilience("reviews", state.retries, state.timeout_s, state.breaker),
    ]
    shadow = TrafficState({"v1": 100, "v2": 0})
    updates = [
        {"split": state.split},
        {"route": state.route, "route_version": "v2"},
        {"fault": state.fault},
        {"retries": state.retries, "timeout_s": state.timeout_s, "breaker": state.breaker},
    ]
    for step, update in zip(steps, updates, strict=True):
        for key, value in update.items():
            setattr(shadow, key, value)
        expected = _kinds(istio().render_traffic("reviews", shadow))
        _expect_apply(httpserver, VS_PATH, expected["VirtualService"])
        _expect_apply(httpserver, DR_PATH, expected["DestinationRule"])
        step()
        httpserver.check_assertions()
    final = json.loads(httpserver.log[-2][0].get_data())
    assert final == _kinds(istio().render_traffic("reviews", state))["VirtualService"]


def test_istio_policy_apply_and_delete(httpserver: HTTPServer, api: Any) -> None:
    adapter = istio(Writer(api, context="test"))
    _expect_apply(httpserver, AP_PATH, istio().render_policy(POLICY)[0][1])
    httpserver.expect_ordered_request(
        AP_PATH,
        method="DELETE",
        query_string="",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"propagationPolicy": "Background"},
    ).respond_with_json(_status(200, "", "", {"name": "reviews-workbench"}) | {"status": "Success"})
    httpserver.expect_ordered_request(AP_PATH, method="DELETE").respond_with_json(
        _status(
            404,
            "NotFound",
            'authorizationpolicies.security.istio.io "reviews-workbench" not found',
            {"name": "reviews-workbench", "group": "security.istio.io", "kind": "authorizationpolicies"},
        ),
        status=404,
    )
    adapter.set_policy(POLICY)
    assert adapter.set_policy(None, service="reviews") == []
    assert adapter.set_policy(None, service="reviews") == []  # already gone: fine
    httpserver.check_assertions()
    assert [(r.method, r.path) for r, _ in httpserver.log] == [
        ("PATCH", AP_PATH),
        ("DELETE", AP_PATH),
        ("DELETE", AP_PATH),
    ]


def test_istio_set_mtls_applies_peer_authentication(httpserver: HTTPServer, api: Any) -> None:
    adapter = istio(Writer(api, context="test"))
    _expect_apply(httpserver, PA_PATH, istio().peer_authentication("STRICT")[1])
    assert adapter.set_mtls("STRICT")[0]["spec"] == {"mtls": {"mode": "STRICT"}}
    httpserver.check_assertions()


def validate_stored(obj: dict[str, Any]) -> None:
    """Check a canned API-server answer against its CRD (when ../shared is present)."""
    if SHARED.is_dir():
        from kube_crds import validate

        validate(obj, stored=True)


def _stored_vs(weights: dict[str, int]) -> dict[str, Any]:
    """A VirtualService as the API server returns it (server metadata, a user's route order)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "reviews",
            "namespace": "shop",
            "resourceVersion": "4711",
            "generation": 3,
            "uid": "0d9a3f4e-5c1b-4c1e-9d57-0b3b1f0e7a11",
            "creationTimestamp": "2025-01-02T03:04:05Z",
            "managedFields": [{"manager": "mesh-workbench", "operation": "Apply"}],
        },
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "name": "ab-match",
                    "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                    "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                },
                {
                    "name": "default",
                    "route": [
                        {"destination": {"host": "reviews.shop.svc.cluster.local", "subset": v}, "weight": w}
                        for v, w in weights.items()
                    ],
                },
            ],
        },
    }


def test_istio_get_split_reads_the_live_virtualservice(httpserver: HTTPServer, api: Any) -> None:
    stored = _stored_vs({"v1": 80, "v2": 20})
    validate_stored(stored)
    httpserver.expect_ordered_request(
        VS_PATH, method="GET", query_string="", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json(stored)
    httpserver.expect_ordered_request(VS_PATH, method="GET").respond_with_json(
        _status(
            404,
            "NotFound",
            'virtualservices.networking.istio.io "reviews" not found',
            {"name": "reviews", "group": "networking.istio.io", "kind": "virtualservices"},
        ),
        status=404,
    )
    adapter = istio(Writer(api, context="test"))
    assert adapter.get_split("reviews") == {"v1": 80, "v2": 20}
    assert adapter.get_split("reviews") == {"v1": 100, "v2": 0}  # no VirtualService: all to stable
    httpserver.check_assertions()


def test_istio_get_split_rejects_routes_it_cannot_explain(httpserver: HTTPServer, api: Any) -> None:
    stored = _stored_vs({"v1": 70, "v3": 30})
    httpserver.expect_request(VS_PATH, method="GET").respond_with_json(stored)
    with pytest.raises(BackendError, match=r"routes 30 % to subset 'v3', which is not a version of reviews"):
        istio(Writer(api, context="test")).get_split("reviews")


def test_gateway_set_split_and_get_split(httpserver: HTTPServer, api: Any) -> None:
    adapter = gateway(Writer(api, context="test"), ports={"reviews": 9080})
    expected = gateway(ports={"reviews": 9080}).render_traffic("reviews", TrafficState({"v1": 75, "v2": 25}))[
        0
    ][1]
    _expect_apply(httpserver, ROUTE_PATH, expected)
    stored = json.loads(json.dumps(expected))
    stored["metadata"].update(resourceVersion="12", generation=2)
    refs = stored["spec"]["rules"][0]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = 3, 1  # weights are relative: 3:1 is 75 %/25 %
    validate_stored(stored)
    httpserver.expect_ordered_request(ROUTE_PATH, method="GET", query_string="").respond_with_json(stored)
    unweighted = json.loads(json.dumps(stored))
    for ref in unweighted["spec"]["rules"][0]["backendRefs"]:
        del ref["weight"]  # the API default is 1 each
    httpserver.expect_ordered_request(ROUTE_PATH, method="GET").respond_with_json(unweighted)
    adapter.set_split("reviews", {"v1": 75, "v2": 25})
    assert adapter.get_split("reviews") == {"v1": 75, "v2": 25}
    assert adapter.get_split("reviews") == {"v1": 50, "v2": 50}
    httpserver.check_assertions()


def test_gateway_set_policy_none_sends_nothing(httpserver: HTTPServer, api: Any) -> None:
    assert gateway(Writer(api, context="test")).set_policy(None, service="reviews") == []
    assert httpserver.log == []


ERRORS = [
    (
        403,
        _status(
            403,
            "Forbidden",
            'virtualservices.networking.istio.io "reviews" is forbidden: User '
            '"system:serviceaccount:shop:workbench" cannot patch resource "virtualservices" in API group '
            '"networking.istio.io" in the namespace "shop"',
            {"name": "reviews", "kind": "virtualservices"},
        ),
        KubernetesError,
        "forbidden: the workbench's identity may not write virtualservices.networking.istio.io in "
        "namespace shop (context test; RBAC",
    ),
    (
        404,
        _status(404, "NotFound", "the server could not find the requested resource"),
        CRDMissing,
        "Istio is not installed in context test: VirtualService CRD not found",
    ),
    (
        404,
        "404 page not found\n",
        CRDMissing,
        "Istio is not installed in context test: VirtualService CRD not found",
    ),
    (
        409,
        _status(
            409,
            "Conflict",
            'Apply failed with 1 conflict: conflict with "flagger" using networking.istio.io/v1: .spec.http',
            {
                "causes": [
                    {
                        "reason": "FieldManagerConflict",
                        "message": 'conflict with "flagger" using networking.istio.io/v1',
                        "field": ".spec.http",
                    }
                ]
            },
        ),
        KubernetesError,
        "conflict writing VirtualService shop/reviews (context test): Apply failed with 1 conflict: "
        'conflict with "flagger"',
    ),
    (
        422,
        _status(
            422,
            "Invalid",
            'VirtualService.networking.istio.io "reviews" is invalid: spec.http[0].timeout: '
            'Invalid value: "string": must be a valid duration greater than 1ms',
            {
                "name": "reviews",
                "kind": "VirtualService",
                "causes": [
                    {
                        "reason": "FieldValueInvalid",
                        "message": 'Invalid value: "string": must be a valid duration greater than 1ms',
                        "field": "spec.http[0].timeout",
                    }
                ],
            },
        ),
        KubernetesError,
        "VirtualService shop/reviews is invalid (context test): spec.http[0].timeout: Invalid value",
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    ERRORS,
    ids=["403-rbac", "404-crd-status", "404-crd-plain", "409-conflict", "422-invalid"],
)
def test_istio_api_errors_become_clear_errors(
    httpserver: HTTPServer, api: Any, status: int, body: Any, error: type, message: str
) -> None:
    if isinstance(body, dict):
        response = Response(json.dumps(body), status=status, content_type="application/json")
    else:
        response = Response(body, status=status, content_type="text/plain; charset=utf-8")
    httpserver.expect_request(VS_PATH, method="PATCH", query_string=APPLY_QUERY).respond_with_response(
        response
    )
    with pytest.raises(error) as info:
        istio(Writer(api, context="test")).set_split("reviews", {"v1": 90, "v2": 10})
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.status == status and TOKEN not in str(info.value)
    assert len(httpserver.log) == 1  # nothing applied after the failing VirtualService


def test_istio_read_of_missing_crd_is_clear(httpserver: HTTPServer, api: Any) -> None:
    httpserver.expect_request(VS_PATH, method="GET").respond_with_json(
        _status(404, "NotFound", "the server could not find the requested resource"), status=404
    )
    with pytest.raises(
        CRDMissing, match=r"^Istio is not installed in context test: VirtualService CRD not found"
    ):
        istio(Writer(api, context="test")).get_split("reviews")


def test_gateway_missing_crd_names_gateway_api(httpserver: HTTPServer, api: Any) -> None:
    httpserver.expect_request(ROUTE_PATH, method="PATCH").respond_with_data(
        "404 page not found\n", status=404
    )
    with pytest.raises(
        CRDMissing, match=r"^Gateway API is not installed in context test: HTTPRoute CRD not found"
    ):
        gateway(Writer(api, context="test")).set_split("reviews", {"v1": 50, "v2": 50})


def test_dry_run_sends_nothing_and_returns_the_manifests(httpserver: HTTPServer, api: Any) -> None:
    writer = Writer(api, context="test", dry_run=True)
    adapter = istio(writer)
    state = full_state()
    adapter.set_split("reviews", state.split)
    adapter.set_route("reviews", state.route, "v2")
    adapter.set_fault("reviews", state.fault)
    returned = adapter.set_resilience("reviews", state.retries, state.timeout_s, state.breaker)
    assert returned == [m for _, m in istio().render_traffic("reviews", state)]
    assert adapter.set_policy(POLICY) == [istio().render_policy(POLICY)[0][1]]
    assert adapter.set_policy(None, service="reviews") == []
    assert adapter.set_mtls("PERMISSIVE") == [istio().peer_authentication("PERMISSIVE")[1]]
    gw = gateway(writer)
    assert gw.set_split("reviews", {"v1": 90, "v2": 10}) == [
        gateway().render_traffic("reviews", TrafficState({"v1": 90, "v2": 10}))[0][1]
    ]
    assert httpserver.log == []
    assert all(r.dry_run for r in writer.records)
    assert [r.verb for r in writer.records] == ["apply"] * 8 + ["apply", "delete", "apply", "apply"]
