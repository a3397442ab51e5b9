"""The ambient modes without running a mesh: placement on nodes, the rendered node proxies and
waypoints (checked by the real ``envoy --mode validate``), what each mode declares and refuses,
and the access-log roles. The traffic itself is tested in test_local_ambient.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.analysis.localize import parse_lines, sidecar_of
from workbench.analysis.proxycost import point_cost, traversals
from workbench.backends import declared
from workbench.backends.capabilities import NEEDS_WAYPOINT, Capability
from workbench.backends.local import ambient as am
from workbench.backends.local.certs import make_certs
from workbench.backends.local.envoy import EnvoyConfigError, validate
from workbench.backends.local.layout import plan
from workbench.backends.local.mesh import LocalMesh
from workbench.backends.local.topology import Topology, load_topology
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route
from workbench.config import ConfigError, loads
from workbench.config.capabilities import capability_problems, offer_for


def test_services_are_placed_on_two_nodes_in_turn_unless_they_name_one() -> None:
    demo = load_topology()
    assert demo.nodes() == {"frontend": "node-1", "catalog": "node-2", "pricing": "node-1",
                            "reviews": "node-2", "ratings": "node-1"}  # fmt: skip
    assert demo.calls_per_request() == 5  # loadgen->frontend, ->catalog->pricing, ->reviews->ratings
    placed = Topology(services={"a": {"calls": ["b"], "versions": {"v1": {}}, "node": "east"},
                                "b": {"versions": {"v1": {}}}, "c": {"versions": {"v1": {}}}})  # fmt: skip
    assert placed.nodes() == {"a": "east", "b": "node-1", "c": "node-2"}
    with pytest.raises(ValueError, match="node"):
        Topology(services={"a": {"versions": {"v1": {}}, "node": "Bad Node"}})


def test_ambient_plan_gives_each_node_a_proxy_and_each_caller_a_port_per_destination(tmp_path: Path) -> None:
    layout = plan(load_topology(), "ambient", tmp_path)
    assert list(layout.node_proxies) == ["node-1", "node-2"] and not layout.inbound and not layout.outbound
    assert not layout.waypoints and layout.mtls
    # the loadgen runs on node-1 with frontend, pricing, ratings: 4 workloads x 8 pods there
    assert len(layout.node_proxies["node-1"].ports) == 4 * 8
    assert len(layout.node_proxies["node-2"].ports) == 5 * 8  # catalog v1 v2, reviews v1 v2 v3
    urls = layout.tunnel_urls("frontend-v1", "reviews")  # one per pod: the caller picks, as kube-proxy
    assert len(urls) == 3 and len(set(urls)) == 3
    ports = [p for sc in layout.sidecars for p in (sc.admin_port, sc.listen_port, *sc.ports.values())]
    ports += [a.port for vs in layout.apps.values() for a in vs.values()]
    assert len(ports) == len(set(ports))


def test_serving_keeps_the_call_tree_its_versions_and_nodes_and_the_load_generators_node(
    tmp_path: Path,
) -> None:
    demo = load_topology()
    catalog = demo.serving("catalog")
    assert list(catalog.services) == ["catalog", "pricing"]
    assert list(catalog.services["catalog"].versions) == ["v1", "v2"]  # every pod of the Service
    assert catalog.nodes() == {"catalog": "node-2", "pricing": "node-1"}  # as in the whole demo
    layout = plan(catalog, "ambient", tmp_path)
    # without loadgen_node the first service's node (node-2) would carry the load generator
    assert catalog.loadgen_node == "node-1" and list(layout.node_proxies) == ["node-1", "node-2"]
    assert layout.node_of("loadgen") == "node-1" == plan(demo, "ambient", tmp_path).node_of("loadgen")
    pods = ("catalog-v1", "catalog-v2", "pricing-v1")
    assert set(layout.node_proxies["node-1"].ports) == {
        f"{src}>{dst}" for src in ("pricing-v1", "loadgen") for dst in pods
    }  # fmt: skip
    assert list(demo.serving("frontend").services) == list(demo.services)  # the entry reaches everything
    leaf = plan(demo.serving("pricing"), "both", tmp_path)
    assert [sc.name for sc in leaf.sidecars] == [
        "pricing-v1-inbound",
        "pricing-v1-outbound",
        "loadgen-outbound",
    ]
    with pytest.raises(ValueError, match="no service 'nope'; services: frontend, catalog"):
        demo.serving("nope")


def test_a_load_generator_node_without_services_gets_a_node_proxy_that_validates(tmp_path: Path) -> None:
    topology = Topology(services={"a": {"versions": {"v1": {}}, "node": "east"}}, loadgen_node="west")
    assert topology.node_order() == ["west", "east"]
    mesh = LocalMesh(mode="ambient", topology=topology, run_dir=tmp_path)
    mesh.layout = layout = plan(topology, "ambient", tmp_path)
    assert layout.node_of("loadgen") == "west" and set(layout.node_proxies["west"].ports) == {"loadgen>a-v1"}
    mesh.certs = make_certs(tmp_path / "certs", layout.identities(list(topology.services)))
    for sc in layout.sidecars:
        sc.directory.mkdir(parents=True, exist_ok=True)
    configs = {sc.name: mesh._render(sc, mesh._view()) for sc in layout.sidecars}
    validate(mesh._envoy, configs, tmp_path / "v")  # the real envoy --mode validate
    listeners = configs["west-node-proxy"]["bootstrap"]["static_resources"]["listeners"]
    assert [x["name"] for x in listeners] == ["capture|loadgen>a-v1"]  # no pod here: no HBONE side


def test_waypoint_plan_per_service_and_per_namespace(tmp_path: Path) -> None:
    per_service = plan(load_topology(), "ambient-waypoint", tmp_path)
    assert list(per_service.waypoints) == ["frontend", "catalog", "pricing", "reviews", "ratings"]
    assert per_service.waypoint_for("catalog").name == "catalog-waypoint"
    assert per_service.tunnel_urls("loadgen", "catalog") == [
        f"http://127.0.0.1:{per_service.node_proxies['node-1'].ports['loadgen>catalog']}"
    ]
    assert "catalog-waypoint" in per_service.identities(["catalog"])
    one = plan(load_topology(), "ambient-waypoint", tmp_path, waypoint="namespace")
    assert list(one.waypoints) == ["default"] and one.waypoint_for("ratings").callees == list(
        load_topology().services
    )
    with pytest.raises(ValueError, match="waypoint must be one of service, namespace"):
        plan(load_topology(), "ambient-waypoint", tmp_path, waypoint="node")


def _rendered(tmp_path: Path, mode: str, waypoint: str = "service") -> tuple[LocalMesh, dict]:
    mesh = LocalMesh(mode=mode, run_dir=tmp_path, waypoint=waypoint, tracing=100)  # type: ignore[arg-type]
    mesh.layout = plan(mesh.topology, mode, tmp_path, waypoint=waypoint)  # type: ignore[arg-type]
    mesh.certs = make_certs(tmp_path / "certs", mesh.layout.identities(list(mesh.topology.services)))
    for sc in mesh.layout.sidecars:
        sc.directory.mkdir(parents=True, exist_ok=True)
    return mesh, {sc.name: mesh._render(sc, mesh._view()) for sc in mesh.layout.sidecars}


def test_node_proxies_tunnel_in_mtls_http2_connect_and_validate(tmp_path: Path) -> None:
    mesh, configs = _rendered(tmp_path, "ambient")
    mesh.policies["ratings"] = Policy(service="ratings", rules=[PolicyRule(sources=["reviews"])])
    configs = {sc.name: mesh._render(sc, mesh._view()) for sc in mesh.layout.sidecars}
    validate(mesh._envoy, configs, tmp_path / "validate")  # the real envoy --mode validate
    node1 = configs["node-1-node-proxy"]
    listeners = {x["name"]: x for x in node1["bootstrap"]["static_resources"]["listeners"]}
    capture = listeners["capture|frontend-v1>catalog-v2"]["filter_chains"][0]["filters"][0]["typed_config"]
    catalog_v2 = mesh.layout.apps["catalog"]["v2"].port
    assert capture["tunneling_config"] == {"hostname": f"127.0.0.1:{catalog_v2}"}
    clusters = {c["name"]: c for c in node1["bootstrap"]["static_resources"]["clusters"]}
    tunnel = clusters[capture["cluster"]]
    tls = tunnel["transport_socket"]["typed_config"]
    assert tls["sni"] == "catalog" and tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    assert tls["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"].endswith(
        "frontend.pem"
    )
    options = tunnel["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    port = tunnel["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    assert port["port_value"] == mesh.layout.node_proxies["node-2"].listen_port  # catalog runs on node-2
    hbone = listeners["hbone"]
    assert {c["filter_chain_match"]["server_names"][0] for c in hbone["filter_chains"]} == {
        "frontend",
        "pricing",
        "ratings",
    }
    assert all(
        c["transport_socket"]["typed_config"]["require_client_certificate"] for c in hbone["filter_chains"]
    )
    routes = {h["name"]: h for h in node1["rds"]["resources"][0]["virtual_hosts"]}
    ratings = routes["ratings-v1"]["routes"][0]
    assert ratings["match"] == {"connect_matcher": {}}
    principals = ratings["typed_per_filter_config"]["envoy.filters.http.rbac"]["rbac"]["rules"]["policies"][
        "rule-0"
    ]
    assert principals["principals"] == [
        {"authenticated": {"principal_name": {"exact": "spiffe://local/ns/default/sa/reviews"}}}
    ]
    assert "typed_per_filter_config" not in routes["frontend-v1"]["routes"][0]


def test_waypoints_apply_l7_policy_and_validate(tmp_path: Path) -> None:
    mesh, _ = _rendered(tmp_path, "ambient-waypoint")
    mesh.traffic["catalog"].split = {"v1": 90, "v2": 10}
    mesh.traffic["reviews"].route, mesh.traffic["reviews"].route_version = (
        Route(header="x-user", value="a"),
        "v2",
    )
    mesh.traffic["pricing"].fault, mesh.traffic["pricing"].fault_at = Fault(abort=503, percent=20), "server"
    mesh.traffic["ratings"].retries = Retries(attempts=2, retry_on=["5xx"])
    mesh.traffic["ratings"].breaker = CircuitBreaker(max_connections=3)
    mesh.policies["ratings"] = Policy(
        service="ratings", rules=[PolicyRule(sources=["reviews"], paths=["/r/*"])]
    )
    configs = {sc.name: mesh._render(sc, mesh._view()) for sc in mesh.layout.sidecars}
    validate(mesh._envoy, configs, tmp_path / "validate")
    catalog = configs["catalog-waypoint"]["rds"]["resources"][0]["virtual_hosts"][0]
    weights = catalog["routes"][-1]["route"]["weighted_clusters"]["clusters"]
    assert [(w["name"], w["weight"]) for w in weights] == [
        ("outbound|catalog|v1", 90),
        ("outbound|catalog|v2", 10),
    ]
    ratings = configs["ratings-waypoint"]
    rbac = ratings["rds"]["resources"][0]["virtual_hosts"][0]["typed_per_filter_config"][
        "envoy.filters.http.rbac"
    ]
    principal = rbac["rbac"]["rules"]["policies"]["rule-0"]["principals"][0]
    assert principal == {
        "filter_state": {
            "key": am.PEER_KEY,
            "string_match": {"exact": "spiffe://local/ns/default/sa/reviews"},
        }
    }
    cluster = ratings["cds"]["resources"][0]
    assert cluster["circuit_breakers"]["thresholds"][0]["max_connections"] == 3
    # a server-side fault: after the router (its retries see it), only while it is set
    pricing = configs["pricing-waypoint"]
    to_pod = pricing["cds"]["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert to_pod["address"]["envoy_internal_address"]["server_listener_name"] == am.SERVER
    server_route = pricing["srds"]["resources"][0]["virtual_hosts"][0]["routes"][0]
    assert server_route["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"]["http_status"] == 503
    assert "typed_per_filter_config" not in pricing["rds"]["resources"][0]["virtual_hosts"][0]["routes"][0]
    to_pod = ratings["cds"]["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert to_pod["address"]["envoy_internal_address"]["server_listener_name"] == "originate|ratings|v1"
    # a finished tunnel's connection is never handed to the next caller (it would carry its identity)
    statics = {c["name"]: c for c in ratings["bootstrap"]["static_resources"]["clusters"]}
    options = statics["waypoint_inner"]["typed_extension_protocol_options"]
    assert options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "common_http_protocol_options"
    ] == {"max_requests_per_connection": 1}
    one = _rendered(tmp_path / "ns", "ambient-waypoint", waypoint="namespace")[1]
    validate(mesh._envoy, one, tmp_path / "validate")
    assert len(one["default-waypoint"]["rds"]["resources"][0]["virtual_hosts"]) == 5


def test_a_broken_ambient_config_is_refused_by_envoy_validate(tmp_path: Path) -> None:
    mesh, configs = _rendered(tmp_path, "ambient")
    node = configs["node-2-node-proxy"]
    node["rds"]["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "no-such-cluster"
    with pytest.raises(EnvoyConfigError, match="node-2-node-proxy"):
        validate(mesh._envoy, {"node-2-node-proxy": node}, tmp_path / "validate")


def test_ambient_declares_l4_only_and_names_the_missing_waypoint() -> None:
    offer = declared("local", mode="ambient")
    assert offer.has(Capability.AUTHZ_L4) and offer.has(Capability.AUTHZ_DENY) and offer.has(Capability.LOAD)
    for capability in NEEDS_WAYPOINT:
        assert not offer.has(capability)
        assert "mode 'ambient' has none" in offer.hint(capability) and "waypoint" in offer.hint(capability)
    assert declared("local", mode="ambient-waypoint").missing(list(Capability)) == [Capability.CONTEXTS]


EXPERIMENTS = """
backend: {type: local, mode: ambient}
experiments:
  - {name: split, kind: ab, service: catalog, variants: {baseline: v1, candidate: v2},
     split: {v1: 90, v2: 10}}
  - {name: by-header, kind: ab, service: reviews, variants: {baseline: v1, candidate: v2},
     route: {header: x-user, value: a}}
  - {name: faults, kind: resilience, service: frontend, dependency: catalog, fault: {abort: 503, percent: 20},
     protections: [{name: none}]}
  - {name: l4, kind: authz, policy: {service: ratings, rules: [{sources: [reviews]}]},
     expect: [{caller: reviews, allowed: true}, {caller: frontend, allowed: false}]}
  - {name: l7, kind: authz, policy: {service: ratings, rules: [{sources: [reviews], paths: [/r]}]},
     expect: [{caller: reviews, path: /r, allowed: true}]}
"""


def test_validate_refuses_every_l7_feature_in_ambient_naming_mode_and_waypoint(tmp_path: Path) -> None:
    cfg = loads(EXPERIMENTS)
    problems = capability_problems(cfg, offer_for(cfg.backend), "local", text=EXPERIMENTS)
    by_name = {p.message.split(" (")[0]: p.message for p in problems}
    assert set(by_name) == {"split", "by-header", "faults", "l7"}  # l4 authz runs at the node proxy
    for message in by_name.values():
        assert "mode ambient" in message and "waypoint" in message
    assert "authorization by path and method (L7)" in by_name["l7"]
    assert capability_problems(cfg, offer_for(cfg.backend, mode="ambient-waypoint"), "local") == []
    from workbench.cli import app

    suite = tmp_path / "experiments.yaml"
    suite.write_text(EXPERIMENTS)
    done = CliRunner().invoke(app, ["validate", str(suite)])
    assert (
        done.exit_code == 2 and "needs traffic split, which the local mesh with mode ambient" in done.output
    )
    assert "Traceback" not in done.output
    ok = CliRunner().invoke(app, ["validate", str(suite), "--mode", "ambient-waypoint"])
    assert ok.exit_code == 0, ok.output


def test_waypoint_and_node_proxy_logs_have_roles(tmp_path: Path) -> None:
    assert sidecar_of("node-2-node-proxy")["direction"] == "node"
    assert sidecar_of("default-waypoint")["direction"] == "waypoint"
    base = {"start_time": "100.000000", "duration_us": 900, "upstream_us": 600, "status": 200,
            "request_id": "r1", "caller": "reviews"}  # fmt: skip
    waypoint = [json.dumps({**base, "upstream_cluster": "outbound|ratings|v1", "version": "v1"})]
    entry = [json.dumps({**base, "start_time": "99.999000", "duration_us": 2000, "upstream_us": 1500,
                         "upstream_cluster": "outbound|reviews|v2", "caller": "loadgen"})]  # fmt: skip
    tunnel = [
        json.dumps({"start_time": "99.0", "duration_us": None, "upstream_cluster": "hbone|reviews|ratings"})
    ]
    logs = parse_lines({"ratings-waypoint": waypoint, "reviews-waypoint": entry, "node-1-node-proxy": tunnel})
    row = logs[logs["sidecar"] == "ratings-waypoint"].iloc[0]
    assert (row["service"], row["version"], row["direction"]) == ("ratings", "v1", "waypoint")
    t = traversals(logs, 99.5, 101.0)
    assert set(t["role"]) == {"waypoint"} and len(t) == 2  # the tunnel record is not a request
    cores = {"envoy ratings-waypoint": 0.02, "envoy reviews-waypoint": 0.03, "envoy node-1-node-proxy": 0.01}
    cost = point_cost(t, requests=1, seconds=1.0, process_cores=cores, node_proxy_per_request=4)
    node = cost[cost["role"] == "node proxy"].iloc[0]
    assert node["per_request"] == 4 and node["cpu_cores"] == pytest.approx(0.01)
    assert node["vcpu_per_1000_rps"] == pytest.approx(10.0) and node[
        "vcpu_per_1000_traversals"
    ] == pytest.approx(2.5)
    wp = cost[cost["role"] == "waypoint"].iloc[0]
    assert wp["per_request"] == 2 and wp["own_p50_us"] == pytest.approx(400.0)


def test_local_settings_take_the_waypoint_scope() -> None:
    text = EXPERIMENTS.replace("mode: ambient}", "mode: ambient-waypoint, waypoint: namespace}")
    assert loads(text).backend.mesh_options()["waypoint"] == "namespace"
    with pytest.raises(ConfigError, match="waypoint"):
        loads(EXPERIMENTS.replace("mode: ambient}", "mode: ambient, waypoint: node}"))


def test_components_table_sets_node_proxies_beside_istios_ztunnel() -> None:
    import numpy as np
    import pandas as pd

    from workbench.analysis import proxycost
    from workbench.experiments.mesh_compare import component_sentence, components

    cores = {"envoy node-1-node-proxy": 0.05, "envoy node-2-node-proxy": 0.03}
    rss = {"envoy node-1-node-proxy": 30.0, "envoy node-2-node-proxy": 28.0}
    trials = [
        point_cost(proxycost._empty(), 3000, 10.0, cores, rss, node_proxy_per_request=10).assign(
            mode="ambient", connections=16, repetition=i, saturated=False, critical_p50_ms=np.nan,
            critical_traversals=np.nan,
        )
        for i in range(3)
    ]  # fmt: skip
    summary = proxycost.over_trials(pd.concat(trials, ignore_index=True))
    assert list(summary["role"]) == ["node proxy"] and "logs tunnels" in summary["own_p50_note"].iloc[0]
    row = components(summary).iloc[0]
    # 0.08 cores over 300 rps x 10 node-proxy traversals per request = 3000 traversals/s
    assert row["vcpu_per_1000_rps"] == pytest.approx(0.08 / 3.0) and row["istio_vcpu_per_1000_rps"] == 0.06
    assert row["cpu_ratio"] == pytest.approx(0.08 / 3.0 / 0.06) and row["memory_ratio"] == pytest.approx(
        29 / 12
    )
    assert row["source"].startswith("https://istio.io/") and row["per_request"] == 10
    assert "node proxy 0.03 vCPU, 29 MiB (Istio's ztunnel: 0.06 vCPU, 12 MB)" in component_sentence(
        components(summary)
    )


def test_optional_experiments_run_only_when_named(tmp_path: Path) -> None:
    from workbench.config import load

    cfg = load(Path(__file__).resolve().parents[1] / "experiments.yaml")
    ambient = cfg.get("ambient-overhead")
    assert ambient.optional and ambient.modes == ["none", "both-mtls", "ambient", "ambient-waypoint"]
    assert "ambient-overhead" not in [e.name for e in cfg.select()]
    assert [e.name for e in cfg.select(["ambient-overhead"])] == ["ambient-overhead"]


def test_topology_blueprint_draws_node_proxies_and_waypoints(tmp_path: Path) -> None:
    import pandas as pd

    from workbench.analysis.topology import ServiceGraph
    from workbench.experiments.topology import data_plane

    rows = pd.DataFrame(
        {
            "source": ["loadgen", "frontend", "catalog"],
            "destination": ["frontend", "catalog", "pricing"],
            "version": ["v1", "v2", "v1"],
            "requests": [100, 100, 100],
            "errors": [0, 1, 0],
            "p50_ms": [5.0, 3.0, 1.0],
            "p99_ms": [9.0, 6.0, 2.0],
        }
    )
    layout = plan(load_topology(), "ambient-waypoint", tmp_path)
    proxies = data_plane(layout)
    assert {
        "name": "node-2-node-proxy",
        "role": "node proxy",
        "serves": ["catalog", "reviews"],
        "node": "node-2",
    } in proxies
    graph = ServiceGraph.from_edges(rows, 10.0, "test").with_data_plane(proxies)
    fig = graph.figure()
    legend = {t.name: t for t in fig.data if t.name}
    nodes, waypoints = legend["node proxies (L4: mTLS tunnels)"], legend["waypoints (L7 policy)"]
    assert list(nodes.text) == ["node-1", "node-2"] and nodes.marker.symbol == "square"
    assert "catalog" in list(waypoints.text) and waypoints.marker.symbol == "diamond"
    assert "node-1-node-proxy" in nodes.hovertext[0] and "frontend, pricing, ratings" in nodes.hovertext[0]
    mermaid = graph.to_mermaid()
    assert "node_1_node_proxy" in mermaid.replace("-", "_") and "-.-" in mermaid and "waypoint" in mermaid
    assert "box3d" in graph.to_dot() and "diamond" in graph.to_dot()
    again = ServiceGraph.from_json(json.loads(graph.dumps()))
    assert [p.role for p in again.proxies] == [p.role for p in graph.proxies] and len(again.proxies) == 7
