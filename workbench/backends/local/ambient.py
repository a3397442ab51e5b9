"""Envoy configuration of the ambient modes: node proxies (L4, HBONE) and waypoints (L7).

Built the way Istio's first ambient data plane was built from Envoy:

- A **node proxy** (ztunnel's role) per simulated node. *Capture side*: one listener per (caller
  workload on the node, destination) — what ztunnel learns from the pod's network namespace and the
  original destination — whose ``tcp_proxy`` wraps the caller's TCP stream in an HTTP/2 ``CONNECT``
  tunnel (``tunneling_config``) over mutual TLS with the *caller's* certificate, to the destination
  node proxy (``ambient``) or to the service's waypoint (``ambient-waypoint``). *HBONE side*: a TLS
  listener requiring a client certificate that presents the destination workload's certificate (by
  SNI, as ztunnel impersonates its pods), terminates ``CONNECT`` and hands the stream to the pod the
  ``:authority`` names (``127.0.0.1:<app port>``, a pod address). Authorization by caller identity
  (L4: allow/deny by the verified peer certificate) is the RBAC filter on the ``CONNECT`` request
  (``ambient``); a denied tunnel is refused (403), so the caller's connection is reset.
- A **waypoint** per service (or one per namespace). Its HBONE listener terminates the tunnel
  (mTLS, ``CONNECT``) and passes the stream, with the caller's verified identity as shared filter
  state, to an internal listener whose HTTP connection manager applies the L7 policy exactly as a
  sidecar's outbound listener does (splits, header/cookie routes, faults, retries, timeouts,
  circuit breakers: ``envoy._virtual_host``/``_apply_breaker``) and authorization (RBAC with the
  caller identity from that filter state). Each version's cluster leads, through an internal
  listener that originates a new HBONE tunnel with the waypoint's own certificate, to the
  destination pod's node proxy. A server-side fault (one the waypoint's own retries must see, as a
  failing service) passes one more internal HTTP hop after the router, only while it is set.

Route files (``rds``; a waypoint's server hop ``srds``) and a waypoint's clusters (``cds``) change
live like a sidecar's; everything else is static. Node proxies and waypoints run no tracer (the
apps' own spans still cover their calls, as in mode ``none``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from workbench.backends.local import envoy as ev
from workbench.backends.local.certs import CertFiles, spiffe_id
from workbench.backends.local.layout import LOADGEN, Layout
from workbench.backends.traffic import Policy, PolicyRule

TCP_PROXY = ev.T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
SET_FILTER_STATE = ev.T + "envoy.extensions.filters.http.set_filter_state.v3.Config"
TLS_INSPECTOR = ev.T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
INTERNAL_LISTENER = ev.T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
INTERNAL_UPSTREAM = ev.T + "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
RAW_BUFFER = ev.T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
PEER_KEY = "workbench.peer"  # the caller's SPIFFE id, from the waypoint's HBONE side to its L7 side
POD_HEADER = "x-workbench-pod-version"  # the version the waypoint's router chose (server-side hop)
HBONE = "hbone"  # node proxies' CONNECT-terminating HTTP connection manager (stat prefix, RDS name)
WAYPOINT = "waypoint"  # a waypoint's L7 connection manager
SERVER = "waypoint_server"  # a waypoint's server-side fault hop
ROUTE_FILES = {"node": ("rds",), "waypoint": ("rds", "srds")}  # the live route files per proxy kind
RDS_NAMES = {"rds": {"node": HBONE, "waypoint": WAYPOINT}, "srds": {"waypoint": SERVER}}


def rendered(sc: ev.Sidecar, view: ev.MeshView, layout: Layout) -> dict[str, Any]:
    """Every file of one node proxy or waypoint, as data (the shape of ``envoy.rendered``)."""
    assert view.certs is not None, "the ambient modes need certificates"
    if sc.direction == "node":
        return {
            "bootstrap": _node_bootstrap(sc, view, layout),
            "rds": _resources([_node_routes(sc, view, layout)]),
        }
    return {
        "bootstrap": _waypoint_bootstrap(sc, view, layout),
        "rds": _resources([_waypoint_routes(sc, view)]),
        "srds": _resources([_server_routes(sc, view)]),
        "cds": {
            "resources": [
                {"@type": ev.T + "envoy.config.cluster.v3.Cluster", **c} for c in _waypoint_clusters(sc, view)
            ]
        },
    }


def route_prefixes(sc: ev.Sidecar) -> dict[str, str]:
    """Route file kind -> the stats prefix of its RDS subscription (for waiting on an update)."""
    return {
        kind: f"http.{names[sc.direction]}.rds.{names[sc.direction]}."
        for kind, names in RDS_NAMES.items()
        if sc.direction in names
    }


def _resources(configs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resources": [{"@type": ev.T + "envoy.config.route.v3.RouteConfiguration", **c} for c in configs]}


# ---------------------------------------------------------------------------------------------
# Pieces


def _base(sc: ev.Sidecar, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "node": {"id": sc.name, "cluster": sc.identity},
        "admin": {"address": ev._addr(sc.admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _access_log(sc: ev.Sidecar, peer: str | None = None) -> list[dict[str, Any]]:
    """The sidecars' JSON access log (same fields); ``peer``: where the caller's identity is read."""
    fmt = dict(ev.ACCESS_LOG_FORMAT)
    if peer is not None:
        fmt["peer"] = peer
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": ev.FILE_LOG,
                "path": str(sc.directory / "access.log"),
                "log_format": {"json_format": fmt},
            },
        }
    ]


def _tls_socket(context: dict[str, Any], downstream: bool) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": ev.TLS_DOWN if downstream else ev.TLS_UP, **context},
    }


def _hbone_cluster(name: str, port: int, files: CertFiles, server_identity: str) -> dict[str, Any]:
    """An HTTP/2 cluster over mutual TLS (the caller's certificate ``files``, the server's SAN
    checked) to an HBONE port: the tunnels of one caller identity to one destination identity."""
    common = ev._tls_common(files, allowed_sans=[spiffe_id(server_identity)])
    common["alpn_protocols"] = ["h2"]
    cluster = ev._static_cluster(name, port)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": ev.HTTP_OPTS,
            "explicit_http_config": {"http2_protocol_options": {}},
            "common_http_protocol_options": {"idle_timeout": "300s"},
        }
    }
    cluster["transport_socket"] = _tls_socket({"sni": server_identity, "common_tls_context": common}, False)
    ev._apply_breaker(cluster, None)
    return cluster


def _internal_cluster(name: str, listener: str, http: bool, share_state: bool = False) -> dict[str, Any]:
    """A cluster whose one endpoint is an internal listener of the same Envoy."""
    address = {"envoy_internal_address": {"server_listener_name": listener}}
    cluster = ev._static_cluster(name, address=address, http=http)
    if share_state:  # the HBONE side's filter state (the caller's identity) reaches the internal listener
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": INTERNAL_UPSTREAM,
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": RAW_BUFFER},
                },
            },
        }
    if share_state:
        _one_stream_per_connection(cluster)
    return cluster


def _one_stream_per_connection(cluster: dict[str, Any]) -> dict[str, Any]:
    """Never hand a finished tunnel's upstream connection to the next tunnel: Envoy's TCP pool would
    reuse it, splicing another caller's stream (and, into the waypoint's L7 side, its identity)
    onto it. As ztunnel, every tunnel gets a connection of its own."""
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": ev.HTTP_OPTS,
            "explicit_http_config": {"http_protocol_options": {}},
            "common_http_protocol_options": {"max_requests_per_connection": 1},
        }
    }
    return cluster


def _tunnel_listener(
    name: str, port: int | None, cluster: str, authority: str, log: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """A listener (on ``port``, or internal without one) whose TCP stream goes out as an HTTP/2
    CONNECT to ``authority`` over ``cluster``."""
    proxy: dict[str, Any] = {
        "@type": TCP_PROXY,
        "stat_prefix": name.replace("|", "_").replace(">", "_"),
        "cluster": cluster,
        "tunneling_config": {"hostname": authority},
    }
    if log:
        proxy["access_log"] = log
        # a tunnel lives as long as the caller keeps its connection: log it once it is up, too
        proxy["access_log_options"] = {"flush_access_log_on_connected": True}
    filters = [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]
    where = {"address": ev._addr(port)} if port is not None else {"internal_listener": {}}
    return {"name": name, **where, "filter_chains": [{"filters": filters}]}


def _connect_hcm(
    stat_prefix: str, filters: list[dict[str, Any]], routes: dict[str, Any], log: list[dict[str, Any]]
) -> dict[str, Any]:
    """An HTTP/2 connection manager that terminates CONNECT (HBONE's inner side)."""
    return {
        "@type": ev.HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "http_filters": [
            *filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ev.ROUTER}},
        ],
        **routes,
        "access_log": log,
        # a CONNECT stream lives as long as its tunnel: log it once it is established, too
        **({"access_log_options": {"flush_log_on_tunnel_successfully_established": True}} if log else {}),
    }


def _rds(name: str, path: str) -> dict[str, Any]:
    return {
        "rds": {
            "route_config_name": name,
            "config_source": {"resource_api_version": "V3", "path_config_source": {"path": path}},
        }
    }


def _connect_route(cluster: str) -> dict[str, Any]:
    return {
        "match": {"connect_matcher": {}},
        "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
    }


def pod_address(port: int) -> str:
    """The ``:authority`` of a tunnel to a pod: its address (HBONE names the destination pod)."""
    return f"127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------
# Node proxy


def _node_bootstrap(sc: ev.Sidecar, view: ev.MeshView, layout: Layout) -> dict[str, Any]:
    certs = view.certs
    assert certs is not None
    listeners, clusters = [], {}
    log = _access_log(sc)
    for key, port in sc.ports.items():
        src, dst = key.split(">", 1)
        caller = LOADGEN if src == LOADGEN else _service_of(layout, src)
        if layout.mode == "ambient-waypoint":  # to the service's waypoint, named by the service
            wp = layout.waypoint_for(dst)
            cluster, target_port, authority = f"hbone|{caller}|{wp.identity}", wp.listen_port, dst
            server = wp.identity
        else:  # straight to the destination pod's node proxy, named by the pod's address
            service = _service_of(layout, dst)
            app = layout.apps[service][dst.removeprefix(f"{service}-")]
            target_port = layout.node_proxies[layout.nodes[service]].listen_port
            cluster, authority, server = f"hbone|{caller}|{service}", pod_address(app.port), service
        if cluster not in clusters:
            clusters[cluster] = _hbone_cluster(cluster, target_port, certs[caller], server)
        listeners.append(_tunnel_listener(f"capture|{key}", port, cluster, authority, log))
    # HBONE side: one filter chain per identity whose pods run here (the certificate picked by SNI)
    chains = []
    local = [s for s, node in layout.nodes.items() if node == sc.node]
    for service in local:
        common = ev._tls_common(certs[service], allowed_sans=None)
        common["alpn_protocols"] = ["h2"]
        tls = _tls_socket({"require_client_certificate": True, "common_tls_context": common}, True)
        rbac = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": ev.RBAC}}
        hcm = _connect_hcm(HBONE, [rbac], _rds(HBONE, str(sc.path("rds"))), log)
        chains.append(
            {
                "filter_chain_match": {"server_names": [service]},
                "transport_socket": tls,
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            }
        )
        for version, app in layout.apps[service].items():
            name = f"pod|{service}|{version}"
            clusters[name] = _one_stream_per_connection(ev._static_cluster(name, app.port, http=False))
    if chains:  # a node with only the load generator's pod (``Topology.loadgen_node``) takes no tunnels
        listeners.append(
            {
                "name": HBONE,
                "address": ev._addr(sc.listen_port),
                "listener_filters": [
                    {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
                ],
                "filter_chains": chains,
            }
        )
    return _base(sc, listeners, list(clusters.values()))


def _node_routes(sc: ev.Sidecar, view: ev.MeshView, layout: Layout) -> dict[str, Any]:
    """The HBONE side's routes: each local pod by its address; in ``ambient`` each service's L4
    policy (caller identity only) on its pods' routes."""
    hosts = []
    for service, node in layout.nodes.items():
        if node != sc.node:
            continue
        policy = view.policies.get(service) if layout.mode == "ambient" else None
        for version, app in layout.apps[service].items():
            route = _connect_route(f"pod|{service}|{version}")
            if policy is not None:
                route["typed_per_filter_config"] = {
                    "envoy.filters.http.rbac": _rbac_per_route(policy, _peer_principal)
                }
            hosts.append(
                {"name": f"{service}-{version}", "domains": [pod_address(app.port)], "routes": [route]}
            )
    return {"name": HBONE, "virtual_hosts": hosts}


def _service_of(layout: Layout, workload: str) -> str:
    return {a.name: s for s, vs in layout.apps.items() for a in vs.values()}[workload]


# ---------------------------------------------------------------------------------------------
# Waypoint


def _waypoint_bootstrap(sc: ev.Sidecar, view: ev.MeshView, layout: Layout) -> dict[str, Any]:
    certs = view.certs
    assert certs is not None
    common = ev._tls_common(certs[sc.identity], allowed_sans=None)
    common["alpn_protocols"] = ["h2"]
    tls = _tls_socket({"require_client_certificate": True, "common_tls_context": common}, True)
    remember_peer = {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": SET_FILTER_STATE,
            "on_request_headers": [
                {
                    # hashable: Envoy keys its upstream connection pools by it, so a new connection to
                    # the L7 side never inherits another caller's identity from a shared pool
                    "object_key": PEER_KEY,
                    "factory_key": "envoy.hashable_string",
                    "format_string": {"text_format_source": {"inline_string": "%DOWNSTREAM_PEER_URI_SAN%"}},
                    "shared_with_upstream": "ONCE",
                }
            ],
        },
    }
    tunnel_routes = {
        "route_config": {
            "name": "tunnel",
            "virtual_hosts": [
                {"name": "tunnel", "domains": ["*"], "routes": [_connect_route("waypoint_inner")]}
            ],
        }
    }
    outer = _connect_hcm(HBONE, [remember_peer], tunnel_routes, [])
    hbone = {
        "name": HBONE,
        "address": ev._addr(sc.listen_port),
        "filter_chains": [
            {
                "transport_socket": tls,
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": outer}],
            }
        ],
    }
    l7 = _http_hcm(WAYPOINT, str(sc.path("rds")), ("rbac", "fault", "router"))
    l7.update(generate_request_id=True, access_log=_access_log(sc, peer=f"%FILTER_STATE({PEER_KEY}:PLAIN)%"))
    server = _http_hcm(SERVER, str(sc.path("srds")), ("fault", "router"))
    listeners = [hbone, _internal_hcm("waypoint_inner", l7), _internal_hcm(SERVER, server)]
    clusters = [_internal_cluster("waypoint_inner", "waypoint_inner", http=False, share_state=True)]
    for service in sc.callees:
        node_proxy = layout.node_proxies[layout.nodes[service]]
        tunnels = f"hbone|{sc.identity}|{service}"
        clusters.append(_hbone_cluster(tunnels, node_proxy.listen_port, certs[sc.identity], service))
        for version, app in layout.apps[service].items():
            originate = f"originate|{service}|{version}"
            listeners.append(_tunnel_listener(originate, None, tunnels, pod_address(app.port), None))
            clusters.append(_internal_cluster(f"pod|{service}|{version}", originate, http=True))
    boot = _base(sc, listeners, clusters)
    boot["bootstrap_extensions"] = [
        {"name": "envoy.bootstrap.internal_listener", "typed_config": {"@type": INTERNAL_LISTENER}}
    ]
    boot["dynamic_resources"] = {
        "cds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(sc.path("cds"))}}
    }
    boot["stats_config"] = {
        "histogram_bucket_settings": [
            {"match": {"safe_regex": {"regex": ".*rq_time$"}}, "buckets": ev.RQ_TIME_BUCKETS_MS}
        ]
    }
    return boot


def _http_hcm(name: str, route_file: str, filters: tuple[str, ...]) -> dict[str, Any]:
    """An HTTP connection manager named ``name`` (stats, RDS) with routes from ``route_file``."""
    types = {"rbac": ev.RBAC, "fault": ev.FAULT, "router": ev.ROUTER}
    return {
        "@type": ev.HCM,
        "stat_prefix": name,
        **_rds(name, route_file),
        "http_filters": [
            {"name": f"envoy.filters.http.{f}", "typed_config": {"@type": types[f]}} for f in filters
        ],
    }


def _internal_hcm(name: str, hcm: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "internal_listener": {},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _server_hop(view: ev.MeshView, service: str) -> bool:
    traffic = view.traffic[service]
    return traffic.fault is not None and traffic.fault_at == "server"


def _waypoint_clusters(sc: ev.Sidecar, view: ev.MeshView) -> list[dict[str, Any]]:
    """Each version of each served service: HTTP to its pod's tunnel (through the server-side
    fault hop while one is set), with the service's circuit breaker and outlier detection."""
    out = []
    for service in sc.callees:
        for version in view.traffic[service].split:
            listener = SERVER if _server_hop(view, service) else f"originate|{service}|{version}"
            cluster = _internal_cluster(ev.cluster_name(service, version), listener, http=True)
            ev._apply_breaker(cluster, view.traffic[service].breaker)
            out.append(cluster)
    return out


def _waypoint_routes(sc: ev.Sidecar, view: ev.MeshView) -> dict[str, Any]:
    """The L7 routes: per served service, exactly the sidecars' outbound virtual host (splits,
    header/cookie routes, client-side faults, retries, timeouts) plus its authorization."""
    hosts = []
    for service in sc.callees:
        policy = view.traffic[service]
        if _server_hop(view, service):  # the fault is injected after the router instead
            policy = dataclasses.replace(policy, fault=None)
        host = ev._virtual_host(service, policy)
        if _server_hop(view, service):
            for route in host["routes"]:
                _tag_version(route)
        authz = view.policies.get(service)
        if authz is not None:
            host["typed_per_filter_config"] = {
                "envoy.filters.http.rbac": _rbac_per_route(authz, _filter_state_principal)
            }
        hosts.append(host)
    return {"name": WAYPOINT, "virtual_hosts": hosts}


def _tag_version(route: dict[str, Any]) -> None:
    """Name the version a route chooses in a header, for the server-side hop to route by."""

    def header(cluster: str) -> list[dict[str, Any]]:
        version = cluster.rsplit("|", 1)[1]
        return [
            {"header": {"key": POD_HEADER, "value": version}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ]

    action = route["route"]
    if "cluster" in action:
        route["request_headers_to_add"] = header(action["cluster"])
    for weighted in action.get("weighted_clusters", {}).get("clusters", []):
        weighted["request_headers_to_add"] = header(weighted["name"])


def _server_routes(sc: ev.Sidecar, view: ev.MeshView) -> dict[str, Any]:
    """The server-side hop: by the chosen version to its pod, injecting the service's server-side fault."""
    hosts = []
    for service in sc.callees:
        routes = []
        for version in view.traffic[service].split:
            route: dict[str, Any] = {
                "match": {
                    "prefix": "/",
                    "headers": [{"name": POD_HEADER, "string_match": {"exact": version}}],
                },
                "route": {"cluster": f"pod|{service}|{version}", "timeout": "0s"},
            }
            fault = view.traffic[service].fault
            if fault is not None and _server_hop(view, service):
                route["typed_per_filter_config"] = {"envoy.filters.http.fault": ev._fault(fault)}
            routes.append(route)
        hosts.append({"name": service, "domains": [service, f"{service}:*"], "routes": routes})
    return {"name": SERVER, "virtual_hosts": hosts}


# ---------------------------------------------------------------------------------------------
# Authorization by the caller's verified identity


def _peer_principal(identity: str) -> dict[str, Any]:
    """The node proxy's principal: the tunnel's verified client certificate."""
    return {"authenticated": {"principal_name": {"exact": spiffe_id(identity)}}}


def _filter_state_principal(identity: str) -> dict[str, Any]:
    """The waypoint's principal: the certificate its HBONE side verified, carried as filter state."""
    return {"filter_state": {"key": PEER_KEY, "string_match": {"exact": spiffe_id(identity)}}}


def _rbac_per_route(policy: Policy, principal: Any) -> dict[str, Any]:
    def ids(rule: PolicyRule) -> dict[str, Any]:
        if not rule.sources:
            return {"any": True}
        found = [principal(s) for s in rule.sources]
        return found[0] if len(found) == 1 else {"or_ids": {"ids": found}}

    rules = {
        "action": "ALLOW" if policy.action == "allow" else "DENY",
        "policies": {
            f"rule-{i}": {"permissions": [ev._permission(rule)], "principals": [ids(rule)]}
            for i, rule in enumerate(policy.rules)
        },
    }
    return {"@type": ev.RBAC_PER_ROUTE, "rbac": {"rules": rules}}
