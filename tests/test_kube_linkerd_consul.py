"""Linkerd and Consul adapters: rendering (CRD-schema valid) and API contract (exact requests).

Rendering tests use a dry-run Writer (nothing sent) and validate every manifest against the meshes'
published CRD schemas in ../shared/crds (skipped when ../shared is absent). Contract tests run the
adapters against pytest-httpserver as the API server (``kube_api``): exact path, verb, query,
content type, bearer token and JSON body of every write and read, and the 403/404/409/422 answers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from kube import TOKEN, status_obj
from kubernetes import client

from workbench.backends.base import BackendError
from workbench.backends.kubernetes.adapter import Unsupported
from workbench.backends.kubernetes.apply import APPLY_PATCH, CRDMissing, KubernetesError, Writer
from workbench.backends.kubernetes.consul import ConsulAdapter
from workbench.backends.kubernetes.linkerd import LinkerdAdapter
from workbench.config import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route

NS = "shop"
VERSIONS = {"reviews": ["v1", "v2", "v3"], "ratings": ["v1", "v2"]}
PORTS = {"reviews": 9080, "ratings": 9080}
APPLY_QUERY = {"fieldManager": "mesh-workbench", "force": "false"}
SELECTOR = "app.kubernetes.io/managed-by=mesh-workbench,mesh-workbench/policy-for=reviews"
LINKERD = "/apis/policy.linkerd.io"
CONSUL = "/apis/consul.hashicorp.com/v1alpha1/namespaces/shop"
IDENTITY = "{}.shop.serviceaccount.identity.linkerd.cluster.local"

Validate = Callable[..., None]


@pytest.fixture
def valid(shared: Any) -> Validate:
    """kube_crds.validate (strict CRD-schema check); skips cleanly without ../shared."""
    from kube_crds import validate

    return validate


def dry_writer() -> Writer:
    return Writer(api_client=None, context="test", dry_run=True)


def linkerd(**options: Any) -> LinkerdAdapter:
    return LinkerdAdapter(dry_writer(), NS, VERSIONS, ports=PORTS, **options)


def consul(**options: Any) -> ConsulAdapter:
    return ConsulAdapter(dry_writer(), NS, VERSIONS, **options)


def by_kind(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


# ---------------------------------------------------------------------------------------------
# Linkerd rendering


def test_linkerd_split_renders_weighted_httproute(valid: Validate) -> None:
    [route] = linkerd().set_split("reviews", {"v1": 90, "v2": 10})
    valid(route)
    assert route["apiVersion"] == "policy.linkerd.io/v1beta3" and route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == "reviews" and route["metadata"]["namespace"] == NS
    assert route["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "mesh-workbench"}
    spec = route["spec"]
    assert spec["parentRefs"] == [{"group": "core", "kind": "Service", "name": "reviews", "port": 9080}]
    [rule] = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]] == [
        ("reviews-v1", 9080, 90), ("reviews-v2", 9080, 10), ("reviews-v3", 9080, 0),
    ]  # fmt: skip
    assert "timeouts" not in rule and "annotations" not in route["metadata"]


def test_linkerd_header_and_cookie_routes(valid: Validate) -> None:
    adapter = linkerd()
    adapter.set_split("reviews", {"v1": 80, "v3": 20})
    [route] = adapter.set_route("reviews", Route(header="x-user", value="tester"), "v2")
    valid(route)
    first, default = route["spec"]["rules"]
    assert first["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/"},
         "headers": [{"type": "Exact", "name": "x-user", "value": "tester"}]}
    ]  # fmt: skip
    assert [(b["name"], b.get("weight", 1)) for b in first["backendRefs"]] == [("reviews-v2", 1)]
    assert [b["weight"] for b in default["backendRefs"]] == [80, 0, 20]

    [route] = adapter.set_route("reviews", Route(cookie="user", value="beta.1"), "v3")
    valid(route)
    [header] = route["spec"]["rules"][0]["matches"][0]["headers"]
    assert header["type"] == "RegularExpression" and header["name"] == "cookie"
    assert re.fullmatch(header["value"], "a=1; user=beta.1; b=2")
    assert re.fullmatch(header["value"], "user=beta.1")
    assert not re.fullmatch(header["value"], "user=betax1")
    assert not re.fullmatch(header["value"], "xuser=beta.1")
    [route] = adapter.set_route("reviews", None)
    assert len(route["spec"]["rules"]) == 1


def test_linkerd_timeout_and_retries(valid: Validate) -> None:
    retries = Retries(attempts=3, retry_on=["5xx", "503", "500-504"], per_try_timeout=0.3)
    adapter = linkerd()
    adapter.set_route("reviews", Route(header="x-user", value="tester"), "v2")
    [route] = adapter.set_resilience("reviews", retries=retries, timeout_s=2.5)
    valid(route)
    assert route["metadata"]["annotations"] == {
        "retry.linkerd.io/http": "5xx,503,500-504",
        "retry.linkerd.io/limit": "3",
        "retry.linkerd.io/timeout": "300ms",
    }
    assert [r["timeouts"] for r in route["spec"]["rules"]] == [{"request": "2s500ms"}] * 2
    [route] = adapter.set_resilience("reviews")
    assert "annotations" not in route["metadata"] and "timeouts" not in route["spec"]["rules"][1]


def test_linkerd_gateway_api_group(valid: Validate) -> None:
    adapter = linkerd(api="gateway")
    adapter.set_split("reviews", {"v1": 50, "v2": 50})
    [route] = adapter.set_resilience("reviews", timeout_s=1)
    valid(route)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "1s"}
    assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [50, 50, 0]


def test_linkerd_older_httproute_version_has_no_timeouts(valid: Validate) -> None:
    adapter = linkerd(route_version="v1beta2")
    [route] = adapter.set_split("reviews", {"v1": 70, "v2": 30})
    valid(route)
    assert route["apiVersion"] == "policy.linkerd.io/v1beta2"
    with pytest.raises(Unsupported, match=r"Linkerd HTTPRoute policy.linkerd.io/v1beta2 has no timeouts"):
        adapter.set_resilience("reviews", timeout_s=2)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda a: a.set_fault("reviews", Fault(delay=0.1, percent=10)),
         ["Linkerd", "fault injection", "fault-injector backend"]),
        (lambda a: a.set_fault("reviews", Fault(abort=503)), ["Linkerd", "fault injection"]),
        (lambda a: a.set_resilience("reviews", breaker=CircuitBreaker(consecutive_5xx=3)),
         ["Linkerd", "circuit breaker", "failure accrual"]),
        (lambda a: a.set_resilience("reviews", retries=Retries()),
         ["Linkerd", "retries.retry_on", "'reset'", "'connect-failure'", "retry_on: [5xx]"]),
        (lambda a: a.set_policy(Policy(service="reviews", action="deny", rules=[PolicyRule(sources=["x"])])),
         ["Linkerd", "allow-list", "deny policy on reviews"]),
    ],
)  # fmt: skip
def test_linkerd_unsupported_names_mesh_and_feature(call: Callable[[Any], Any], words: list[str]) -> None:
    with pytest.raises(Unsupported) as err:
        call(linkerd())
    for word in words:
        assert word in str(err.value)


def test_linkerd_smi_trafficsplit() -> None:
    adapter = linkerd(smi=True)
    [split] = adapter.set_split("reviews", {"v1": 95, "v2": 5})
    # No CRD schema in ../shared for SMI: check the split.smi-spec.io/v1alpha2 shape field by field.
    assert split == {
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {
            "name": "reviews",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "mesh-workbench"},
        },
        "spec": {
            "service": "reviews",
            "backends": [
                {"service": "reviews-v1", "weight": 95},
                {"service": "reviews-v2", "weight": 5},
                {"service": "reviews-v3", "weight": 0},
            ],
        },
    }
    assert all(isinstance(b["weight"], int) for b in split["spec"]["backends"])  # v1alpha2: integers
    with pytest.raises(Unsupported, match=r"SMI TrafficSplit .* weights only: route on reviews"):
        adapter.set_route("reviews", Route(header="x-user", value="t"), "v2")


def test_linkerd_policy_objects(valid: Validate) -> None:
    policy = Policy(
        service="reviews",
        rules=[
            PolicyRule(sources=["productpage", "other/gateway"]),
            PolicyRule(sources=["admin"], paths=["/admin*", "/health"], methods=["POST", "DELETE"]),
            PolicyRule(),
        ],
    )
    adapter = linkerd(container_ports={"reviews": "http"})
    out = adapter.set_policy(policy)
    for m in out:
        valid(m)
        assert m["metadata"]["labels"]["mesh-workbench/policy-for"] == "reviews"
    objs = by_kind(out)
    assert list(objs) == [
        ("Server", "reviews-http"),
        ("MeshTLSAuthentication", "reviews-authz-0"), ("AuthorizationPolicy", "reviews-authz-0"),
        ("MeshTLSAuthentication", "reviews-authz-1"), ("HTTPRoute", "reviews-authz-1"),
        ("AuthorizationPolicy", "reviews-authz-1"),
        ("MeshTLSAuthentication", "reviews-authz-2"), ("AuthorizationPolicy", "reviews-authz-2"),
        ("HTTPRoute", "reviews-authz-default"),
    ]  # fmt: skip
    assert objs["Server", "reviews-http"]["spec"] == {
        "podSelector": {"matchLabels": {"app": "reviews"}}, "port": "http",
        "proxyProtocol": "HTTP/1", "accessPolicy": "deny",
    }  # fmt: skip
    assert objs["MeshTLSAuthentication", "reviews-authz-0"]["spec"]["identities"] == [
        IDENTITY.format("productpage"), "gateway.other.serviceaccount.identity.linkerd.cluster.local",
    ]  # fmt: skip
    assert objs["MeshTLSAuthentication", "reviews-authz-2"]["spec"]["identities"] == ["*"]
    server_ref = {"group": "policy.linkerd.io", "kind": "Server", "name": "reviews-http"}
    assert objs["AuthorizationPolicy", "reviews-authz-0"]["spec"] == {
        "targetRef": server_ref,
        "requiredAuthenticationRefs": [
            {"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "reviews-authz-0"}
        ],
    }
    assert objs["AuthorizationPolicy", "reviews-authz-1"]["spec"]["targetRef"] == {
        "group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "reviews-authz-1"
    }  # fmt: skip
    route = objs["HTTPRoute", "reviews-authz-1"]
    assert route["apiVersion"] == "policy.linkerd.io/v1beta3"
    assert route["spec"]["parentRefs"] == [server_ref]
    assert route["spec"]["rules"] == [
        {"matches": [
            {"path": {"type": "RegularExpression", "value": "^/admin.*$"}, "method": "POST"},
            {"path": {"type": "RegularExpression", "value": "^/admin.*$"}, "method": "DELETE"},
            {"path": {"type": "Exact", "value": "/health"}, "method": "POST"},
            {"path": {"type": "Exact", "value": "/health"}, "method": "DELETE"},
        ]}
    ]  # fmt: skip
    assert objs["HTTPRoute", "reviews-authz-default"]["spec"]["rules"] == [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
    ]


def test_linkerd_policy_many_matches_split_into_rules(valid: Validate) -> None:
    paths = [f"/p{i}" for i in range(5)]
    rule = PolicyRule(sources=["a"], paths=paths, methods=["GET", "POST", "PUT"])
    out = by_kind(linkerd().set_policy(Policy(service="reviews", rules=[rule])))
    route = out["HTTPRoute", "reviews-authz-0"]
    valid(route)
    assert [len(r["matches"]) for r in route["spec"]["rules"]] == [8, 7]


def test_schema_validation_catches_broken_manifests(valid: Validate) -> None:
    [route] = linkerd().set_split("reviews", {"v1": 90, "v2": 10})
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = "ninety"
    with pytest.raises(jsonschema.ValidationError, match="ninety"):
        valid(route)
    _, splitter, _ = consul().set_split("reviews", {"v1": 90, "v2": 10})
    splitter["spec"]["splits"][0]["subset"] = "v1"  # the field is serviceSubset
    with pytest.raises(jsonschema.ValidationError, match="subset"):
        valid(splitter)


# ---------------------------------------------------------------------------------------------
# Consul rendering


def test_consul_split_renders_resolver_splitter_router(valid: Validate) -> None:
    resolver, splitter, router = consul().set_split("reviews", {"v1": 90, "v2": 10})
    for m in (resolver, splitter, router):
        valid(m)
    assert [m["kind"] for m in (resolver, splitter, router)] == [
        "ServiceResolver",
        "ServiceSplitter",
        "ServiceRouter",
    ]
    assert resolver["spec"] == {
        "defaultSubset": "v1",
        "subsets": {v: {"filter": f"Service.Meta.version == {v}"} for v in ("v1", "v2", "v3")},
    }
    assert splitter["spec"]["splits"] == [
        {"weight": 90.0, "serviceSubset": "v1"},
        {"weight": 10.0, "serviceSubset": "v2"},
        {"weight": 0.0, "serviceSubset": "v3"},
    ]
    assert all(isinstance(s["weight"], float) for s in splitter["spec"]["splits"])
    assert sum(s["weight"] for s in splitter["spec"]["splits"]) == 100.0
    assert router["spec"] == {"routes": []}


def test_consul_routes_retries_timeouts(valid: Validate) -> None:
    adapter = consul(connect_timeout_s=0.25)
    adapter.set_route("reviews", Route(header="x-user", value="tester"), "v2")
    retries = Retries(attempts=3, retry_on=["5xx", "connect-failure", "503"])
    resolver, splitter, router = adapter.set_resilience("reviews", retries=retries, timeout_s=2)
    for m in (resolver, splitter, router):
        valid(m)
    assert resolver["spec"]["connectTimeout"] == "250ms"
    dest = {"numRetries": 3, "retryOn": ["5xx", "connect-failure"], "retryOnStatusCodes": [503],
            "requestTimeout": "2s"}  # fmt: skip
    assert router["spec"]["routes"] == [
        {"match": {"http": {"header": [{"name": "x-user", "exact": "tester"}]}},
         "destination": {**dest, "serviceSubset": "v2"}},
        {"match": {"http": {"pathPrefix": "/"}}, "destination": dest},
    ]  # fmt: skip
    _, _, router = adapter.set_route("reviews", Route(cookie="user", value="beta"), "v3")
    valid(router)
    header = router["spec"]["routes"][0]["match"]["http"]["header"][0]
    assert header["name"] == "cookie" and re.fullmatch(header["regex"], "x=1; user=beta")
    assert router["spec"]["routes"][0]["destination"]["serviceSubset"] == "v3"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda a: a.set_fault("reviews", Fault(delay=0.5)), ["Consul", "fault injection"]),
        (lambda a: a.set_resilience("reviews", breaker=CircuitBreaker()),
         ["Consul", "circuit breaking", "ServiceDefaults"]),
        (lambda a: a.set_resilience("reviews", retries=Retries(retry_on=["5xx"], per_try_timeout=0.2)),
         ["Consul", "per-try timeout", "retries.per_try_timeout"]),
        (lambda a: a.set_resilience("reviews", retries=Retries(retry_on=["5xx", "bogus"])),
         ["Consul", "'bogus'", "retries.retry_on"]),
    ],
)  # fmt: skip
def test_consul_unsupported_names_mesh_and_feature(call: Callable[[Any], Any], words: list[str]) -> None:
    with pytest.raises(Unsupported) as err:
        call(consul())
    for word in words:
        assert word in str(err.value)


def test_consul_intentions_allow_and_deny(valid: Validate) -> None:
    rules = [
        PolicyRule(sources=["productpage"]),
        PolicyRule(sources=["admin"], paths=["/admin*", "/health", "*.json"], methods=["GET"]),
        PolicyRule(sources=["admin"], methods=["POST"]),
    ]
    [intentions] = consul().set_policy(Policy(service="reviews", rules=rules))
    valid(intentions)
    assert intentions["metadata"]["name"] == "reviews"
    assert intentions["spec"] == {
        "destination": {"name": "reviews"},
        "sources": [
            {"name": "productpage", "action": "allow"},
            {"name": "admin", "permissions": [
                {"action": "allow", "http": {"pathPrefix": "/admin", "methods": ["GET"]}},
                {"action": "allow", "http": {"pathExact": "/health", "methods": ["GET"]}},
                {"action": "allow", "http": {"pathRegex": r".*\.json", "methods": ["GET"]}},
                {"action": "allow", "http": {"methods": ["POST"]}},
                {"action": "deny", "http": {"pathPrefix": "/"}},
            ]},
            {"name": "*", "action": "deny"},
        ],
    }  # fmt: skip
    [denied] = consul().set_policy(
        Policy(service="reviews", action="deny", rules=[PolicyRule(sources=["bot"])])
    )
    valid(denied)
    assert denied["spec"]["sources"] == [{"name": "bot", "action": "deny"}, {"name": "*", "action": "allow"}]
    [anyone] = consul().set_policy(Policy(service="reviews", rules=[PolicyRule(paths=["/public*"])]))
    valid(anyone)
    assert anyone["spec"]["sources"] == [
        {"name": "*", "permissions": [{"action": "allow", "http": {"pathPrefix": "/public"}},
                                      {"action": "deny", "http": {"pathPrefix": "/"}}]}
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Contract tests: every write and read against pytest-httpserver


def api_writer(kube_api: Any, **options: Any) -> Writer:
    """A Writer on a kubernetes ApiClient aimed at the httpserver, with a fake bearer token."""
    cfg = client.Configuration(host=kube_api.server)
    cfg.api_key = {"BearerToken": f"Bearer {TOKEN}"}
    return Writer(client.ApiClient(cfg), context="test", **options)


def live(manifest: dict[str, Any], **status: Any) -> dict[str, Any]:
    """``manifest`` as the API server returns it (uid, resourceVersion, managedFields, status)."""
    meta = {**manifest["metadata"], "uid": "0b5b6c1e-1111-4a4a-9c9c-123456789abc", "resourceVersion": "4711",
            "generation": 2, "creationTimestamp": "2024-05-01T10:00:00Z",
            "managedFields": [{"manager": "mesh-workbench", "operation": "Apply",
                               "apiVersion": manifest["apiVersion"], "fieldsType": "FieldsV1"}]}  # fmt: skip
    return copy.deepcopy({**manifest, "metadata": meta, **({"status": status} if status else {})})


def expect_apply(kube_api: Any, path: str, manifest: dict[str, Any]) -> None:
    kube_api.expect("PATCH", path, query=APPLY_QUERY, content_type=APPLY_PATCH, body=manifest,
                    response=live(manifest))  # fmt: skip


def not_found(plural: str, group: str, name: str) -> dict[str, Any]:
    return status_obj(404, "NotFound", f'{plural}.{group} "{name}" not found',
                      {"name": name, "group": group, "kind": plural})  # fmt: skip


CRD_404 = status_obj(404, "NotFound", "the server could not find the requested resource")
DELETE_BODY = {"propagationPolicy": "Background"}


def test_linkerd_contract_split_route_and_read(kube_api: Any, shared: Any) -> None:
    from kube_crds import validate

    adapter = LinkerdAdapter(api_writer(kube_api), NS, VERSIONS, ports=PORTS)
    path = f"{LINKERD}/v1beta3/namespaces/shop/httproutes/reviews"
    expected = linkerd().set_split("reviews", {"v1": 75, "v2": 25})[0]
    expect_apply(kube_api, path, expected)
    routed = linkerd()
    routed.set_split("reviews", {"v1": 75, "v2": 25})
    expected_route = routed.set_route("reviews", Route(header="x-canary", value="1"), "v3")[0]
    expect_apply(kube_api, path, expected_route)
    stored = live(expected_route, parents=[])
    validate(stored, stored=True)
    kube_api.expect("GET", path, response=stored)
    kube_api.expect("GET", f"{LINKERD}/v1beta3/namespaces/shop/httproutes/ratings", status=404,
                    response=not_found("httproutes", "policy.linkerd.io", "ratings"))  # fmt: skip

    assert adapter.set_split("reviews", {"v1": 75, "v2": 25}) == [live(expected)]
    adapter.set_route("reviews", Route(header="x-canary", value="1"), "v3")
    assert adapter.get_split("reviews") == {"v1": 75, "v2": 25, "v3": 0}
    assert adapter.get_split("ratings") == {"v1": 100, "v2": 0}
    assert [(r.verb, r.kind, r.name, r.dry_run) for r in adapter.writer.records] == [
        ("apply", "HTTPRoute", "reviews", False)
    ] * 2
    assert len(kube_api.httpserver.log) == 4


def test_linkerd_contract_gateway_api_and_smi(kube_api: Any) -> None:
    gateway = LinkerdAdapter(api_writer(kube_api), NS, VERSIONS, ports=PORTS, api="gateway")
    smi = LinkerdAdapter(api_writer(kube_api), NS, VERSIONS, smi=True)
    route = linkerd(api="gateway").set_split("reviews", {"v1": 60, "v2": 40})[0]
    split = linkerd(smi=True).set_split("reviews", {"v1": 60, "v2": 40})[0]
    gw_path = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/reviews"
    smi_path = "/apis/split.smi-spec.io/v1alpha2/namespaces/shop/trafficsplits/reviews"
    expect_apply(kube_api, gw_path, route)
    expect_apply(kube_api, smi_path, split)
    kube_api.expect("GET", gw_path, response=live(route))
    live_split = live(split)
    live_split["spec"]["backends"] = [
        {"service": "reviews-v1", "weight": 1},
        {"service": "reviews-v2", "weight": 3},
    ]
    kube_api.expect("GET", smi_path, response=live_split)

    gateway.set_split("reviews", {"v1": 60, "v2": 40})
    smi.set_split("reviews", {"v1": 60, "v2": 40})
    assert gateway.get_split("reviews") == {"v1": 60, "v2": 40, "v3": 0}
    assert smi.get_split("reviews") == {"v1": 25, "v2": 75, "v3": 0}  # relative weights, in percent


def test_linkerd_contract_policy_apply_prune_and_remove(kube_api: Any) -> None:
    adapter = LinkerdAdapter(api_writer(kube_api), NS, VERSIONS, ports=PORTS)
    policy = Policy(service="reviews", rules=[PolicyRule(sources=["productpage"])])
    rendered = linkerd().set_policy(policy)
    paths = {
        "Server": f"{LINKERD}/v1beta3/namespaces/shop/servers",
        "MeshTLSAuthentication": f"{LINKERD}/v1alpha1/namespaces/shop/meshtlsauthentications",
        "AuthorizationPolicy": f"{LINKERD}/v1alpha1/namespaces/shop/authorizationpolicies",
        "HTTPRoute": f"{LINKERD}/v1beta3/namespaces/shop/httproutes",
    }

    def listing(kind: str, names: list[str]) -> None:
        items = [{"metadata": {"name": n, "namespace": NS}} for n in names]
        kube_api.expect("GET", paths[kind], query={"labelSelector": SELECTOR},
                        response={"kind": f"{kind}List", "apiVersion": "v1", "items": items})  # fmt: skip

    def delete(kind: str, name: str) -> None:
        kube_api.expect("DELETE", f"{paths[kind]}/{name}", content_type="application/json",
                        body=DELETE_BODY, response=status_obj(200, "", ""))  # fmt: skip

    # a new policy: read what an earlier, larger one left, apply, then prune the rest
    listing("AuthorizationPolicy", ["reviews-authz-0", "reviews-authz-1"])
    listing("HTTPRoute", ["reviews-authz-1", "reviews-authz-default"])
    listing("MeshTLSAuthentication", ["reviews-authz-0", "reviews-authz-1"])
    listing("Server", ["reviews-http"])
    for m in rendered:
        expect_apply(kube_api, f"{paths[m['kind']]}/{m['metadata']['name']}", m)
    delete("AuthorizationPolicy", "reviews-authz-1")
    delete("HTTPRoute", "reviews-authz-1")
    delete("HTTPRoute", "reviews-authz-default")
    delete("MeshTLSAuthentication", "reviews-authz-1")
    # set_policy(None): everything labelled for reviews is deleted
    listing("AuthorizationPolicy", ["reviews-authz-0"])
    listing("HTTPRoute", [])
    listing("MeshTLSAuthentication", ["reviews-authz-0"])
    listing("Server", ["reviews-http"])
    delete("AuthorizationPolicy", "reviews-authz-0")
    delete("MeshTLSAuthentication", "reviews-authz-0")
    delete("Server", "reviews-http")

    adapter.set_policy(policy)
    assert adapter.set_policy(None, service="reviews") == []
    verbs = [(r.verb, r.kind, r.name) for r in adapter.writer.records]
    assert verbs[:3] == [
        ("apply", "Server", "reviews-http"), ("apply", "MeshTLSAuthentication", "reviews-authz-0"),
        ("apply", "AuthorizationPolicy", "reviews-authz-0"),
    ]  # fmt: skip
    assert verbs[-1] == ("delete", "Server", "reviews-http") and len(verbs) == 10


def test_consul_contract_writes_and_reads(kube_api: Any, shared: Any) -> None:
    from kube_crds import validate

    adapter = ConsulAdapter(api_writer(kube_api), NS, VERSIONS)
    expected = consul().set_split("reviews", {"v1": 90, "v2": 10})
    for m, plural in zip(expected, ("serviceresolvers", "servicesplitters", "servicerouters"), strict=True):
        expect_apply(kube_api, f"{CONSUL}/{plural}/reviews", m)
    stored = live(expected[1], synced=None)
    stored["spec"]["splits"] = [
        {"weight": 66.67, "serviceSubset": "v1"}, {"weight": 33.33, "serviceSubset": "v2"},
        {"weight": 0, "serviceSubset": "v3"},
    ]  # fmt: skip
    stored["status"] = {"conditions": [{"type": "Synced", "status": "True"}]}
    validate(stored, stored=True)
    kube_api.expect("GET", f"{CONSUL}/servicesplitters/reviews", response=stored)
    kube_api.expect("GET", f"{CONSUL}/servicesplitters/ratings", status=404,
                    response=not_found("servicesplitters", "consul.hashicorp.com", "ratings"))  # fmt: skip
    policy = Policy(service="reviews", rules=[PolicyRule(sources=["productpage"])])
    [intentions] = consul().set_policy(policy)
    expect_apply(kube_api, f"{CONSUL}/serviceintentions/reviews", intentions)
    kube_api.expect("DELETE", f"{CONSUL}/serviceintentions/reviews", content_type="application/json",
                    body=DELETE_BODY, response=status_obj(200, "", ""))  # fmt: skip

    adapter.set_split("reviews", {"v1": 90, "v2": 10})
    assert adapter.get_split("reviews") == {"v1": 67, "v2": 33, "v3": 0}
    assert adapter.get_split("ratings") == {"v1": 100, "v2": 0}
    adapter.set_policy(policy)
    assert adapter.set_policy(None, service="reviews") == []
    assert [(r.verb, r.kind) for r in adapter.writer.records] == [
        ("apply", "ServiceResolver"), ("apply", "ServiceSplitter"), ("apply", "ServiceRouter"),
        ("apply", "ServiceIntentions"), ("delete", "ServiceIntentions"),
    ]  # fmt: skip


@pytest.mark.parametrize("mesh", ["linkerd", "consul"])
@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (403, status_obj(403, "Forbidden", 'user "wb" cannot patch resource'), KubernetesError,
         r"forbidden: the workbench's identity may not write {crd} in namespace shop \(context test; RBAC"),
        (404, CRD_404, CRDMissing,
         r"{product} is not installed in context test: {kind} CRD not found \({crd}"),
        (409, status_obj(409, "Conflict", "Apply failed with 1 conflict: conflict with \"flagger\""),
         KubernetesError,
         r"conflict writing {kind} shop/reviews \(context test\): Apply failed .*flagger.*force=True"),
        (422, status_obj(422, "Invalid", "invalid", {"causes": [{"field": "spec.x", "message": "bad"}]}),
         KubernetesError, r"{kind} shop/reviews is invalid \(context test\): spec.x: bad"),
    ],
)  # fmt: skip
def test_contract_error_paths(
    kube_api: Any, mesh: str, status: int, body: dict[str, Any], error: type, message: str
) -> None:
    if mesh == "linkerd":
        adapter: Any = LinkerdAdapter(api_writer(kube_api), NS, VERSIONS, ports=PORTS)
        path, kind, crd, product = f"{LINKERD}/v1beta3/namespaces/shop/httproutes/reviews", "HTTPRoute", \
            "httproutes.policy.linkerd.io", "Linkerd"  # fmt: skip
    else:
        adapter = ConsulAdapter(api_writer(kube_api), NS, VERSIONS)
        path, kind, crd, product = f"{CONSUL}/serviceresolvers/reviews", "ServiceResolver", \
            "serviceresolvers.consul.hashicorp.com", "Consul"  # fmt: skip
    kube_api.expect("PATCH", path, query=APPLY_QUERY, content_type=APPLY_PATCH, status=status, response=body)
    with pytest.raises(error, match=message.format(kind=kind, crd=re.escape(crd), product=product)) as err:
        adapter.set_split("reviews", {"v1": 50, "v2": 50})
    assert err.value.status == status
    assert TOKEN not in str(err.value)


def test_contract_read_of_missing_crd(kube_api: Any) -> None:
    kube_api.expect(
        "GET", f"{LINKERD}/v1beta3/namespaces/shop/httproutes/reviews", status=404, response=CRD_404
    )
    kube_api.expect("GET", f"{CONSUL}/servicesplitters/reviews", status=404, response=CRD_404)
    with pytest.raises(
        CRDMissing, match=r"^Linkerd is not installed in context test: HTTPRoute CRD not found"
    ):
        LinkerdAdapter(api_writer(kube_api), NS, VERSIONS).get_split("reviews")
    with pytest.raises(
        CRDMissing, match=r"^Consul is not installed in context test: ServiceSplitter CRD not found"
    ):
        ConsulAdapter(api_writer(kube_api), NS, VERSIONS).get_split("reviews")


def test_dry_run_sends_nothing(kube_api: Any) -> None:
    writer = api_writer(kube_api, dry_run=True)
    lk = LinkerdAdapter(writer, NS, VERSIONS, ports=PORTS)
    cs = ConsulAdapter(writer, NS, VERSIONS)
    routes = lk.set_split("reviews", {"v1": 90, "v2": 10})
    entries = cs.set_split("reviews", {"v1": 90, "v2": 10})
    policy = Policy(service="reviews", rules=[PolicyRule(sources=["productpage"], paths=["/api*"])])
    intentions = cs.set_policy(policy)
    cs.set_policy(None, service="reviews")
    assert routes == linkerd().set_split("reviews", {"v1": 90, "v2": 10})
    assert [m["kind"] for m in entries] == ["ServiceResolver", "ServiceSplitter", "ServiceRouter"]
    assert intentions[0]["kind"] == "ServiceIntentions"
    assert kube_api.httpserver.log == []
    assert all(r.dry_run for r in writer.records) and len(writer.records) == 6


def test_unsupported_policy_sends_nothing(kube_api: Any) -> None:
    adapter = LinkerdAdapter(api_writer(kube_api), NS, VERSIONS, ports=PORTS)
    with pytest.raises(Unsupported, match="Linkerd authorizes by allow-list only"):
        adapter.set_policy(Policy(service="reviews", action="deny", rules=[PolicyRule(sources=["bot"])]))
    with pytest.raises(Unsupported, match="Consul has no fault injection"):
        ConsulAdapter(api_writer(kube_api), NS, VERSIONS).set_fault("reviews", Fault(abort=500, percent=5))
    assert kube_api.httpserver.log == []


def test_unknown_version_and_service_are_clear_errors() -> None:
    with pytest.raises(BackendError, match="reviews has no version v9"):
        linkerd().set_split("reviews", {"v9": 100})
    with pytest.raises(BackendError, match="no service 'nope' in namespace shop"):
        consul().set_split("nope", {"v1": 100})
