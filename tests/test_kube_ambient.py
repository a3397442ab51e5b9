"""Istio's ambient data plane on a cluster: discovery, doctor, routing through the waypoint.

(a) Rendering: with a waypoint, traffic is a Gateway API HTTPRoute attached to the Service (GAMMA)
    plus a DestinationRule per version Service, authorization attaches to the Service (targetRefs),
    and what the standard HTTPRoute cannot express is refused; every manifest validated against
    its CRD in ../shared/crds, the waypoint Gateway against gateway-api-gateways.yaml.
(b) Contract: the exact writes and reads against pytest-httpserver.
(c) Scenario on kmock's emulator: an ambient namespace with ztunnel and a programmed waypoint is
    found (discovery frames, doctor), the backend picks the waypoint adapter and its dialect, splits,
    reads back and rolls back; without a waypoint, L7 experiments are refused before any write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kube import TOKEN, ambient_objects, expect_apply, write_kubeconfig
from kube_crds import validate
from pytest_httpserver import HTTPServer
from test_capabilities import REQUESTS

from workbench.backends.capabilities import Capability
from workbench.backends.kubernetes.adapter import TrafficState, Unsupported
from workbench.backends.kubernetes.apply import Writer
from workbench.backends.kubernetes.istio_ambient import IstioAmbientAdapter, waypoint_gateway
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route

NS = "shop"
VERSIONS = {"reviews": ["v1", "v2"], "catalog": ["v1"]}
PORTS = {"reviews": 9080, "catalog": 8080}
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/reviews"
DR_PATH = "/apis/networking.istio.io/v1/namespaces/shop/destinationrules/{}"


def ambient(writer: Writer | None = None) -> IstioAmbientAdapter:
    return IstioAmbientAdapter(
        writer or Writer(None, context="test", dry_run=True), NS, VERSIONS, ports=PORTS
    )


def _by_name(manifests: list[tuple[Any, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {f"{m['kind']}/{m['metadata']['name']}": m for _, m in manifests}


# =============================================================================================
# (a) Rendering


def test_a_split_with_a_route_is_an_httproute_on_the_service_and_a_rule_per_version(shared: Path) -> None:
    state = TrafficState(
        split={"v1": 90, "v2": 10}, route=Route(header="X-Canary", value="yes"), route_version="v2",
        timeout_s=2.5, breaker=CircuitBreaker(max_connections=100, consecutive_5xx=5),
    )  # fmt: skip
    out = _by_name(ambient().render_traffic("reviews", state))
    assert set(out) == {"HTTPRoute/reviews", "DestinationRule/reviews-v1", "DestinationRule/reviews-v2"}
    route = out["HTTPRoute/reviews"]["spec"]
    assert route["parentRefs"] == [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]
    match, default = route["rules"]
    assert match["matches"][0]["headers"] == [{"type": "Exact", "name": "X-Canary", "value": "yes"}]
    assert match["backendRefs"] == [{"group": "", "kind": "Service", "name": "reviews-v2", "port": 9080}]
    assert [(b["name"], b["weight"]) for b in default["backendRefs"]] == [
        ("reviews-v1", 90),
        ("reviews-v2", 10),
    ]
    assert default["timeouts"] == {"request": "2s500ms"} == match["timeouts"]  # Gateway API durations
    for v in ("v1", "v2"):  # the breaker on the hosts the route sends to: the per-version Services
        rule = out[f"DestinationRule/reviews-{v}"]["spec"]
        assert rule["host"] == f"reviews-{v}" and "subsets" not in rule
        assert rule["trafficPolicy"]["connectionPool"] == {"tcp": {"maxConnections": 100}}
        assert rule["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5
    for manifest in out.values():
        validate(manifest)


def test_without_a_breaker_the_destination_rules_carry_no_policy_and_no_virtualservice_is_written() -> None:
    out = _by_name(ambient().render_traffic("reviews", TrafficState({"v1": 100, "v2": 0})))
    assert {m["spec"].get("trafficPolicy") for k, m in out.items() if k.startswith("Destination")} == {None}
    assert not any(k.startswith("VirtualService") for k in out)


@pytest.mark.parametrize("capability", list(REQUESTS), ids=lambda c: c.name.lower())
def test_declared_capabilities_are_what_the_waypoint_adapter_renders(
    capability: Capability, shared: Path
) -> None:
    offer, adapter = IstioAmbientAdapter.CAPABILITIES, ambient()
    if offer.has(capability):
        manifests = REQUESTS[capability](adapter)
        assert manifests
        for manifest in manifests:
            validate(manifest)
    else:
        assert "waypoint" in offer.name and "HTTPRoute" in offer.hint(capability)
        with pytest.raises(Unsupported, match=r"istio \(ambient, waypoint\) cannot express"):
            REQUESTS[capability](adapter)
    # what the standard HTTPRoute cannot say, and only that
    lacking = {c for c in REQUESTS if not offer.has(c)}
    assert lacking == {
        Capability.FAULT,
        Capability.RETRIES,
        Capability.RETRY_ON_RESET,
        Capability.PER_TRY_TIMEOUT,
    }


def test_a_fault_is_refused_naming_the_feature_and_why() -> None:
    with pytest.raises(Unsupported, match="fault injection for reviews on an HTTPRoute"):
        ambient().set_fault("reviews", Fault(delay=0.2, percent=50))
    with pytest.raises(Unsupported, match="retries"):
        ambient().set_resilience("reviews", retries=Retries(attempts=2, retry_on=["5xx"]))
    hint = IstioAmbientAdapter.CAPABILITIES.hint(Capability.FAULT)
    assert "VirtualService on waypoints is alpha" in hint and "sidecars" in hint


def test_authorization_attaches_to_the_service_for_its_waypoint(shared: Path) -> None:
    policy = Policy(service="reviews", action="allow",
                    rules=[PolicyRule(sources=["catalog"], paths=["/r/*"], methods=["GET"])])  # fmt: skip
    ((_, manifest),) = ambient().render_policy(policy)
    spec = manifest["spec"]
    assert "selector" not in spec  # a selector is enforced by ztunnel, which sees the waypoint's identity
    assert spec["targetRefs"] == [{"group": "", "kind": "Service", "name": "reviews"}]
    assert spec["rules"] == [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/catalog"]}}],
                              "to": [{"operation": {"paths": ["/r/*"], "methods": ["GET"]}}]}]  # fmt: skip
    assert spec["action"] == "ALLOW"
    validate(manifest)


def test_the_waypoint_gateway_is_what_istioctl_applies(shared: Path) -> None:
    gateway = waypoint_gateway("shop")
    assert gateway["spec"] == {
        "gatewayClassName": "istio-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    }
    assert gateway["metadata"]["labels"] == {"istio.io/waypoint-for": "service"}
    validate(gateway)  # gateway-api-gateways.yaml
    assert waypoint_gateway("shop", "ns-waypoint", "all")["metadata"]["name"] == "ns-waypoint"
    with pytest.raises(ValueError, match="waypoint_for must be service, workload, all or none"):
        waypoint_gateway("shop", waypoint_for="pods")
    with pytest.raises(Exception, match="waypoint name"):
        waypoint_gateway("shop", "Not_A_Name")


# =============================================================================================
# (b) Contract


def test_a_split_applies_the_httproute_then_each_destination_rule_and_reads_the_route_back(
    httpserver: HTTPServer, api: Any
) -> None:
    records: list[Any] = []
    adapter = ambient(Writer(api, context="test", on_write=records.append))
    expected = _by_name(ambient().render_traffic("reviews", TrafficState({"v1": 80, "v2": 20})))
    expect_apply(httpserver, ROUTE_PATH, expected["HTTPRoute/reviews"])
    for v in ("v1", "v2"):
        expect_apply(httpserver, DR_PATH.format(f"reviews-{v}"), expected[f"DestinationRule/reviews-{v}"])
    stored = json.loads(json.dumps(expected["HTTPRoute/reviews"]))
    stored["spec"]["rules"][0]["backendRefs"][0]["weight"] = 4  # 4:1, relative weights
    stored["spec"]["rules"][0]["backendRefs"][1]["weight"] = 1
    httpserver.expect_ordered_request(ROUTE_PATH, method="GET", query_string="").respond_with_json(stored)
    adapter.set_split("reviews", {"v1": 80, "v2": 20})
    assert adapter.get_split("reviews") == {"v1": 80, "v2": 20}
    httpserver.check_assertions()
    assert [(r.verb, r.kind, r.name) for r in records] == [
        ("apply", "HTTPRoute", "reviews"), ("apply", "DestinationRule", "reviews-v1"),
        ("apply", "DestinationRule", "reviews-v2"),
    ]  # fmt: skip
    assert TOKEN not in json.dumps([r.to_json() for r in records])


def test_no_route_yet_reads_as_the_stable_version(httpserver: HTTPServer, api: Any) -> None:
    httpserver.expect_request(ROUTE_PATH, method="GET").respond_with_json(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
         "message": 'httproutes.gateway.networking.k8s.io "reviews" not found',
         "details": {"name": "reviews", "group": "gateway.networking.k8s.io", "kind": "httproutes"}},
        status=404,
    )  # fmt: skip
    assert ambient(Writer(api, context="test")).get_split("reviews") == {"v1": 100, "v2": 0}


# =============================================================================================
# (c) Scenario on the emulator


def test_an_ambient_namespace_with_a_waypoint_is_found_split_read_back_and_rolled_back(
    kube_emulator: Any,
) -> None:
    kube_emulator.flavour("istio-ambient")
    backend = kube_emulator.backend()
    cluster = backend.cluster
    assert backend.mesh == "istio" and cluster.dataplane() == "ambient-waypoint"
    installs = cluster.meshes()[["component", "namespace", "version", "ready"]].to_dict("records")
    assert {
        "component": "ztunnel",
        "namespace": "istio-system",
        "version": "1.24.2",
        "ready": True,
    } in installs
    waypoints = cluster.waypoints().to_dict("records")
    assert waypoints == [
        {"namespace": "shop", "name": "waypoint", "waypoint_for": "service", "programmed": True,
         "used_by": ["namespace shop"]}
    ]  # fmt: skip
    assert set(cluster.namespaces().set_index("name").loc[["shop"], "injection"]) == {"istio-ambient"}
    assert (
        set(cluster.pods()["sidecar"]) <= {"", "istio"}
        and not cluster.pods().query("name.str.startswith('reviews-')")["meshed"].any()
    )  # ambient pods carry no sidecar
    summary = cluster.dataplane_summary()
    assert (
        "ambient-waypoint" in summary
        and "ztunnel 1.24.2 ready" in summary
        and "waypoint waypoint (programmed" in summary
    )

    assert isinstance(backend.adapter, IstioAmbientAdapter) and backend.dialect == "istio-ambient"
    offer = backend.capabilities()
    assert offer.has(Capability.SPLIT) and offer.has(Capability.AUTHZ_L7) and not offer.has(Capability.FAULT)

    applied = backend.set_split("reviews", {"v1": 80, "v3": 20})
    assert [m["kind"] for m in applied] == [
        "HTTPRoute",
        "DestinationRule",
        "DestinationRule",
        "DestinationRule",
    ]
    assert backend.get_split("reviews") == {"v1": 80, "v2": 0, "v3": 20}
    for m in applied:
        validate(m, stored=True)
    assert kube_emulator.get("networking.istio.io/v1/virtualservices", "shop", "reviews") is None
    backend.rollback("reviews")
    assert backend.get_split("reviews") == {"v1": 100, "v2": 0, "v3": 0}
    assert kube_emulator.get("gateway.networking.k8s.io/v1/httproutes", "shop", "reviews")["spec"]["rules"][
        0
    ]["backendRefs"][0] == {"group": "", "kind": "Service", "name": "reviews-v1", "port": 9080, "weight": 100}


def test_without_a_waypoint_l7_is_refused_before_anything_is_written(
    kube_emulator: Any, tmp_path: Path
) -> None:
    from workbench import config
    from workbench.config.capabilities import capability_problems

    kube_emulator.put(*ambient_objects(waypoint=False))
    backend = kube_emulator.backend()
    assert backend.cluster.dataplane() == "ambient" and backend.cluster.waypoints().empty
    assert "no waypoint (L4 only" in backend.cluster.dataplane_summary()
    suite = tmp_path / "experiments.yaml"
    suite.write_text(
        "backend: {type: kubernetes, context: lab, namespace: shop, prometheus_url: 'http://127.0.0.1:9'}\n"
        "experiments:\n"
        "  - {name: ab, kind: ab, service: reviews, variants: {baseline: v1, candidate: v2},"
        " split: {v1: 50, v2: 50}, rps: 50, duration: 10s}\n"
        "  - {name: l4, kind: authz, policy: {service: reviews, rules: [{sources: [catalog]}]},"
        " expect: [{caller: catalog, path: /, allowed: true},"
        " {caller: productpage, path: /, allowed: false}]}\n"
        "  - {name: l7, kind: authz,"
        " policy: {service: reviews, rules: [{sources: [catalog], paths: [/r/*]}]},"
        " expect: [{caller: catalog, path: /r/1, allowed: true}]}\n"
    )
    cfg = config.load(suite)
    problems = capability_problems(cfg, backend.capabilities(), "kubernetes", str(suite), suite.read_text())
    refused = {str(p).split("experiments[")[1][0] for p in problems}
    assert refused == {"0", "2"}, [
        str(p) for p in problems
    ]  # the split, the path rule; L4 authorization runs
    message = " ".join(str(p) for p in problems)
    assert "ambient, no waypoint in shop" in message and "istioctl waypoint apply -n shop" in message
    assert kube_emulator.list("gateway.networking.k8s.io/v1/httproutes") == []
    assert kube_emulator.list("networking.istio.io/v1/virtualservices") == []


def test_doctor_reports_ztunnel_and_the_waypoint(
    kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.suite import doctor

    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", kube_emulator.server)))
    checks = {c.name: c for c in doctor.check_mesh(None, "shop")}
    assert checks["mesh"].ok and checks["data plane"].detail.startswith("namespace shop: sidecars")

    kube_emulator.flavour("istio-ambient")
    checks = {c.name: c for c in doctor.check_mesh(None, "shop")}
    assert checks["mesh"].ok and "ztunnel 1.24.2 in istio-system (ready)" in checks["mesh"].detail
    plane = checks["data plane"]
    assert (
        plane.ok
        and not plane.fix
        and "waypoint waypoint (programmed, used by namespace shop)" in plane.detail
    )
    assert TOKEN not in json.dumps([c.__dict__ for c in checks.values()])

    kube_emulator.put(*ambient_objects(programmed=False))  # the Gateway exists, Istio has not deployed it
    plane = next(c for c in doctor.check_mesh(None, "shop") if c.name == "data plane")
    assert (
        not plane.ok and "NOT programmed" in plane.detail and "istioctl waypoint apply -n shop" in plane.fix
    )
    assert not plane.required  # informational: doctor itself does not fail on it
