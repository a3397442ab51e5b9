"""Rendering Envoy configuration for the local mesh, validating it, and swapping it in live.

Each Envoy reads listeners, clusters and routes from files (``path_config_source``). Traffic
changes rewrite only route files (RDS), so listeners and their connections stay untouched.
Files are replaced atomically (write a temp file, rename over): Envoy reacts to the move, and
rejects an invalid file while keeping the last good config. Before any file is written, the
whole configuration is checked by the real ``envoy --mode validate``.

Semantics follow Istio: traffic policy (splits, header routes, faults, retries, timeouts,
circuit breakers) is applied by the caller's outbound sidecar; authorization (RBAC) by the
callee's inbound sidecar.
"""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.backends.base import TrafficState, cookie_regex
from workbench.backends.local.app import CALLER_HEADER
from workbench.backends.local.certs import CertFiles, spiffe_id
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, PolicyRule, Route
from workbench.errors import BackendError

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
FAULT = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE = T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
FILE_LOG = T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
TLS_DOWN = T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_UP = T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTS = T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
OTEL = T + "envoy.config.trace.v3.OpenTelemetryConfig"
ZIPKIN = T + "envoy.config.trace.v3.ZipkinConfig"
TRACES_CLUSTER = "workbench_traces"

# Envoy records request times in whole milliseconds; these buckets keep the low end useful.
RQ_TIME_BUCKETS_MS = [
    0.5,
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    12,
    15,
    20,
    25,
    30,
    40,
    50,
    75,
    100,
    150,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
]

# How often each Envoy flushes its access log: a reader sees a request at most this long after it ended
# (a few small writes a second; per-point readers wait this long after the load).
ACCESS_LOG_FLUSH_S = 0.25
ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME(%s.%6f)%",
    "duration_us": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
    "upstream_us": "%COMMON_DURATION(US_TX_BEG:US_RX_END:us)%",
    # The proxy's own time is duration - upstream = request path + response path:
    "request_us": "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)%",  # filters, routing, pool, new connection
    "response_us": "%COMMON_DURATION(US_RX_END:DS_TX_END:us)%",  # last byte in -> last byte out
    # Upstream connection points repeat for every request on a connection; a connection begun after
    # this request arrived (>= 0) was opened for it.
    "cx_after_us": "%COMMON_DURATION(DS_RX_BEG:US_CX_BEG:us)%",
    "connect_us": "%COMMON_DURATION(US_CX_BEG:US_CX_END:us)%",
    "handshake_us": "%COMMON_DURATION(US_CX_END:US_HS_END:us)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "caller": f"%REQ({CALLER_HEADER.upper()})%",
    "peer": "%DOWNSTREAM_PEER_URI_SAN%",
    "version": "%RESP(X-VERSION)%",
}


class EnvoyConfigError(BackendError):
    """``envoy --mode validate`` rejected a rendered configuration."""


@dataclass
class TrafficPolicy(TrafficState):
    """Everything the sidecars apply to calls to one service, plus where a fault is injected.

    ``fault_at``: "client" = the callers' outbound sidecars (Istio's place: the callers' own
    retries/timeouts never see it); "server" = the service's inbound sidecars, so it looks like the
    service failing and the callers' retries, timeouts and breakers act on it.
    """

    fault_at: str = "client"


@dataclass
class Sidecar:
    """One Envoy process: its name, ports, files and what it routes to."""

    name: str  # e.g. "reviews-v2-inbound"
    identity: str  # the service it speaks for (mTLS SAN, caller header)
    direction: str  # "inbound", "outbound", or in the ambient modes "node" (node proxy) or "waypoint"
    admin_port: int
    listen_port: int
    directory: Path
    concurrency: int = 1
    app_port: int | None = None  # inbound: the local app
    callees: list[str] = field(default_factory=list)  # outbound: services it can call
    service: str = ""
    version: str = ""
    node: str = ""  # ambient: the simulated node (a node proxy's own, or its pods')
    ports: dict[str, int] = field(default_factory=dict)  # node proxy: "<caller>><destination>" -> port

    def path(self, kind: str) -> Path:
        return self.directory / f"{kind}.yaml"


@dataclass
class MeshView:
    """What the renderer needs to know about the whole mesh."""

    inbound_ports: dict[str, dict[str, int]]  # service -> version -> inbound sidecar port
    traffic: dict[str, TrafficPolicy]  # service -> policy applied by callers
    policies: dict[str, Policy]  # service -> authorization policy
    certs: dict[str, CertFiles] | None  # identity -> files, in both-mtls mode
    tracing: Tracing | None = None  # Envoy's own tracer on every sidecar, exporting to the receiver


@dataclass
class Tracing:
    """Envoy's tracer on every sidecar: where spans go and how many requests are sampled.

    ``tracer``: ``opentelemetry`` (OTLP/HTTP protobuf to ``/v1/traces``, W3C ``traceparent``) or
    ``zipkin`` (Zipkin v2 JSON to ``/api/v2/spans``, B3 headers, ``shared_span_context: false`` so
    client and server spans are distinct). ``sampling``: percent of new traces sampled, decided at
    the first sidecar a request meets and followed downstream; changeable live through the admin
    runtime key ``tracing.random_sampling`` (``LocalMesh.set_sampling``).
    """

    port: int  # the span receiver on 127.0.0.1
    sampling: float = 100.0
    tracer: str = "opentelemetry"
    flush_ms: int = 1000  # Envoy's export interval (runtime tracing.<tracer>.flush_interval_ms)


# ---------------------------------------------------------------------------------------------
# Rendering


def bootstrap(sc: Sidecar, view: MeshView) -> dict[str, Any]:
    """The bootstrap: admin on 127.0.0.1, static listener, routes (and outbound clusters) from files.

    Listeners never change (only their routes do), and an inbound sidecar's one cluster never
    changes either, so they are static: every file subscription costs Envoy an inotify instance,
    and a machine allows only 128 per user by default.
    """
    static: dict[str, Any] = {"listeners": listeners(sc, view)}
    dynamic: dict[str, Any] = {}
    if sc.direction == "inbound":
        static["clusters"] = clusters(sc, view)
    else:
        dynamic["cds_config"] = {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(sc.path("cds"))},
        }
    if view.tracing is not None:
        static.setdefault("clusters", []).append(_static_cluster(TRACES_CLUSTER, view.tracing.port))
    out: dict[str, Any] = {
        "node": {"id": sc.name, "cluster": sc.identity},
        "admin": {"address": _addr(sc.admin_port)},
        "static_resources": static,
        "stats_config": {
            "histogram_bucket_settings": [
                {"match": {"safe_regex": {"regex": ".*rq_time$"}}, "buckets": RQ_TIME_BUCKETS_MS},
            ]
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": T + "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
    }
    if dynamic:
        out["dynamic_resources"] = dynamic
    if view.tracing is not None:
        out["layered_runtime"] = tracing_runtime(view.tracing)
    return out


# ---------------------------------------------------------------------------------------------
# Tracing


def tracing_provider(sc: Sidecar, t: Tracing) -> dict[str, Any]:
    """The HCM ``tracing`` block: Envoy's OpenTelemetry or Zipkin tracer exporting to the receiver."""
    if t.tracer == "zipkin":
        provider: dict[str, Any] = {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": ZIPKIN,
                "collector_cluster": TRACES_CLUSTER,
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "shared_span_context": False,
                "trace_id_128bit": True,
            },
        }
    elif t.tracer == "opentelemetry":
        provider = {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OTEL,
                "service_name": sc.identity,
                "http_service": {
                    "http_uri": {
                        "uri": f"http://127.0.0.1:{t.port}/v1/traces",
                        "cluster": TRACES_CLUSTER,
                        "timeout": "1s",
                    }
                },
            },
        }
    else:
        raise ValueError(f"tracer must be opentelemetry or zipkin (got {t.tracer!r})")
    return {"random_sampling": {"value": t.sampling}, "provider": provider}


def tracing_runtime(t: Tracing) -> dict[str, Any]:
    """Runtime layers: export every ``flush_ms`` in batches (Envoy's default posts every 5 spans),
    and an admin layer so ``/runtime_modify`` can change ``tracing.random_sampling`` live."""
    prefix = f"tracing.{t.tracer}"
    return {
        "layers": [
            {
                "name": "tracing",
                "static_layer": {
                    f"{prefix}.flush_interval_ms": t.flush_ms,
                    f"{prefix}.min_flush_spans": 100000,
                },
            },
            {"name": "admin", "admin_layer": {}},
        ]
    }


def listeners(sc: Sidecar, view: MeshView) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if sc.direction == "inbound":
        filters.append({"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC}})
        filters.append({"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}})
    else:
        filters.append({"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": sc.direction,
        "rds": {
            "route_config_name": sc.direction,
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(sc.path("rds"))},
            },
        },
        "http_filters": filters,
        "generate_request_id": True,
        **({"tracing": tracing_provider(sc, view.tracing)} if view.tracing is not None else {}),
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": str(sc.directory / "access.log"),
                    "log_format": {"json_format": ACCESS_LOG_FORMAT},
                },
            }
        ],
    }
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if sc.direction == "inbound" and view.certs is not None:
        files = view.certs[sc.identity]
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS_DOWN,
                "require_client_certificate": True,
                "common_tls_context": _tls_common(files, allowed_sans=None),
            },
        }
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"uri": True}
    listener = {"name": sc.direction, "address": _addr(sc.listen_port), "filter_chains": [chain]}
    if view.tracing is not None:  # the span kind: server (ingress) or client (egress)
        listener["traffic_direction"] = sc.direction.upper()
    return [listener]


def clusters(sc: Sidecar, view: MeshView) -> list[dict[str, Any]]:
    if sc.direction == "inbound":
        assert sc.app_port is not None
        return [_static_cluster("local_app", sc.app_port)]
    out = []
    for callee in sc.callees:
        policy = view.traffic[callee]
        for version, port in view.inbound_ports[callee].items():
            cluster = _static_cluster(cluster_name(callee, version), port)
            if view.certs is not None:
                files = view.certs[sc.identity]
                cluster["transport_socket"] = {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": TLS_UP,
                        "sni": callee,
                        "common_tls_context": _tls_common(files, allowed_sans=[spiffe_id(callee)]),
                    },
                }
            _apply_breaker(cluster, policy.breaker)
            out.append(cluster)
    return out


def routes(sc: Sidecar, view: MeshView) -> dict[str, Any]:
    """RouteConfiguration: outbound = per-callee traffic policy; inbound = RBAC + local app."""
    if sc.direction == "inbound":
        route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": "local_app", "timeout": "0s"}}
        policy = view.policies.get(sc.service)
        per_filter: dict[str, Any] = {}
        if policy is not None:
            per_filter["envoy.filters.http.rbac"] = {
                "@type": RBAC_PER_ROUTE,
                "rbac": {"rules": rbac_rules(policy, view)},
            }
        traffic = view.traffic.get(sc.service)
        if traffic is not None and traffic.fault is not None and traffic.fault_at == "server":
            per_filter["envoy.filters.http.fault"] = _fault(traffic.fault)
        if per_filter:
            route["typed_per_filter_config"] = per_filter
        hosts = [{"name": "local", "domains": ["*"], "routes": [route]}]
        return {"name": "inbound", "virtual_hosts": hosts}
    hosts = [_virtual_host(callee, view.traffic[callee]) for callee in sc.callees]
    return {
        "name": "outbound",
        "virtual_hosts": hosts,
        "request_headers_to_add": [
            {
                "header": {"key": CALLER_HEADER, "value": sc.identity},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def cluster_name(service: str, version: str) -> str:
    return f"outbound|{service}|{version}"


def rbac_rules(policy: Policy, view: MeshView) -> dict[str, Any]:
    """Envoy RBAC for an Istio-style policy: ALLOW or DENY when any rule matches."""
    return {
        "action": "ALLOW" if policy.action == "allow" else "DENY",
        "policies": {
            f"rule-{i}": {"permissions": [_permission(rule)], "principals": [_principal(rule, view)]}
            for i, rule in enumerate(policy.rules)
        },
    }


def _permission(rule: PolicyRule) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if rule.paths:
        parts.append({"or_rules": {"rules": [{"url_path": {"path": _path_match(p)}} for p in rule.paths]}})
    if rule.methods:
        parts.append(
            {
                "or_rules": {
                    "rules": [
                        {"header": {"name": ":method", "string_match": {"exact": m}}} for m in rule.methods
                    ]
                }
            }
        )
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def _principal(rule: PolicyRule, view: MeshView) -> dict[str, Any]:
    if not rule.sources:
        return {"any": True}
    if view.certs is not None:  # mTLS: the verified peer certificate is the caller's identity
        ids = [{"authenticated": {"principal_name": {"exact": spiffe_id(s)}}} for s in rule.sources]
    else:  # plaintext: the caller header set by the caller's sidecar
        ids = [{"header": {"name": CALLER_HEADER, "string_match": {"exact": s}}} for s in rule.sources]
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _path_match(pattern: str) -> dict[str, Any]:
    """Istio path semantics: exact, ``prefix*``, ``*suffix`` or ``*``."""
    if pattern == "*":
        return {"prefix": "/"}
    if pattern.endswith("*"):
        return {"prefix": pattern[:-1]}
    if pattern.startswith("*"):
        return {"suffix": pattern[1:]}
    return {"exact": pattern}


def _virtual_host(service: str, policy: TrafficPolicy) -> dict[str, Any]:
    action: dict[str, Any] = {"timeout": f"{policy.timeout_s:g}s" if policy.timeout_s else "30s"}
    if policy.retries is not None:
        r = policy.retries
        retry: dict[str, Any] = {"retry_on": ",".join(r.retry_on), "num_retries": r.attempts}
        if r.per_try_timeout:
            retry["per_try_timeout"] = f"{r.per_try_timeout:g}s"
        action["retry_policy"] = retry
    weighted = [{"name": cluster_name(service, v), "weight": w} for v, w in policy.split.items() if w > 0]
    default = {**action}
    if len(weighted) == 1:
        default["cluster"] = weighted[0]["name"]
    else:
        default["weighted_clusters"] = {"clusters": weighted}
    route_list: list[dict[str, Any]] = []
    if policy.route is not None and policy.route_version is not None:
        route_list.append(
            {
                "name": "ab-match",
                "match": {"prefix": "/", "headers": [_header_match(policy.route)]},
                "route": {**action, "cluster": cluster_name(service, policy.route_version)},
            }
        )
    route_list.append({"name": "default", "match": {"prefix": "/"}, "route": default})
    if policy.fault is not None and policy.fault_at == "client":
        for r in route_list:
            r["typed_per_filter_config"] = {"envoy.filters.http.fault": _fault(policy.fault)}
    return {"name": service, "domains": [service, f"{service}:*"], "routes": route_list}


def _header_match(route: Route) -> dict[str, Any]:
    if route.header is not None:
        return {"name": route.header, "string_match": {"exact": route.value}}
    regex = cookie_regex(route.cookie or "", route.value)
    return {"name": "cookie", "string_match": {"safe_regex": {"regex": regex}}}


def _fault(fault: Fault) -> dict[str, Any]:
    pct = {"numerator": round(fault.percent * 10_000), "denominator": "MILLION"}
    out: dict[str, Any] = {"@type": FAULT}
    if fault.delay is not None:
        out["delay"] = {"fixed_delay": f"{fault.delay:g}s", "percentage": pct}
    else:
        out["abort"] = {"http_status": fault.abort, "percentage": pct}
    return out


# Istio's connection-pool defaults: no limit unless a DestinationRule sets one. Envoy's own
# defaults (1024 connections/requests, 3 concurrent retries) would silently cap retries and load.
UNLIMITED = 4294967295


def _apply_breaker(cluster: dict[str, Any], b: CircuitBreaker | None) -> None:
    thresholds: dict[str, Any] = {
        "priority": "DEFAULT",
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
        "max_retries": UNLIMITED,
    }
    if b is None:
        cluster["circuit_breakers"] = {"thresholds": [thresholds]}
        return
    for key in ("max_connections", "max_pending_requests", "max_requests"):
        value = getattr(b, key)
        if value is not None:
            thresholds[key] = value
    cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    if b.consecutive_5xx is not None:
        cluster["outlier_detection"] = {
            "consecutive_5xx": b.consecutive_5xx,
            "interval": f"{b.interval:g}s",
            "base_ejection_time": f"{b.base_ejection_time:g}s",
            "max_ejection_percent": int(b.max_ejection_percent),
        }


def _static_cluster(
    name: str, port: int = 0, address: dict[str, Any] | None = None, http: bool = True
) -> dict[str, Any]:
    """One endpoint (127.0.0.1:``port``, or ``address``, e.g. an internal listener), HTTP/1.1 unless
    ``http`` is false (a plain TCP upstream)."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address or _addr(port)}}]}],
        },
    }
    if http:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTS,
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {"idle_timeout": "300s"},
            }
        }
    return cluster


def _tls_common(files: CertFiles, allowed_sans: list[str] | None) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(files.ca)}}
    if allowed_sans:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": san}} for san in allowed_sans
        ]
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(files.cert)}, "private_key": {"filename": str(files.key)}}
        ],
        "validation_context": validation,
    }


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


# ---------------------------------------------------------------------------------------------
# Validation and atomic writes


def rendered(sc: Sidecar, view: MeshView) -> dict[str, Any]:
    """Every file of one sidecar, as data: bootstrap, rds and (outbound) cds."""
    files = {
        "bootstrap": bootstrap(sc, view),
        "rds": {"resources": [{"@type": T + "envoy.config.route.v3.RouteConfiguration", **routes(sc, view)}]},
    }
    if sc.direction == "outbound":
        files["cds"] = {
            "resources": [{"@type": T + "envoy.config.cluster.v3.Cluster", **x} for x in clusters(sc, view)]
        }
    return files


def _static_equivalent(files: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap with the route (and cluster) files inlined, for ``--mode validate``: every
    HTTP connection manager's RDS name is replaced by the route configuration of that name found
    in the files (``rds``; a waypoint also has ``srds``)."""
    boot = copy.deepcopy(files["bootstrap"])
    boot.pop("dynamic_resources", None)
    route_configs = {
        r["name"]: {k: v for k, v in r.items() if k != "@type"}
        for kind, data in files.items()
        if kind not in ("bootstrap", "cds")
        for r in data["resources"]
    }
    for listener in boot["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f["typed_config"]
                if "rds" in hcm:
                    hcm["route_config"] = route_configs[hcm.pop("rds")["route_config_name"]]
    if "cds" in files:
        boot["static_resources"]["clusters"] = boot["static_resources"].get("clusters", []) + [
            {k: v for k, v in x.items() if k != "@type"} for x in files["cds"]["resources"]
        ]
    return boot


def validate(envoy_bin: Path, configs: dict[str, dict[str, Any]], workdir: Path) -> None:
    """Run ``envoy --mode validate`` on every sidecar's config; EnvoyConfigError names the bad one."""
    workdir.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, dict[str, Any]]) -> tuple[str, int, str]:
        name, files = item
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=workdir, delete=False) as fh:
            yaml.dump(_static_equivalent(files), fh, Dumper=DUMPER, sort_keys=False)
        try:
            proc = subprocess.run(
                [str(envoy_bin), "--mode", "validate", "-c", fh.name, "-l", "error", "--disable-hot-restart"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            os.unlink(fh.name)
        return name, proc.returncode, (proc.stdout + proc.stderr).strip()

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for name, code, output in pool.map(one, configs.items()):
            if code != 0:
                lines = [x for x in output.splitlines() if x.strip()][-5:]
                raise EnvoyConfigError(
                    f"envoy --mode validate rejected the config of {name}:\n" + "\n".join(lines)
                )


# libyaml's emitter: PyYAML's pure-Python one took ~6 of a mesh start's ~11 s on 2 cores (43 files).
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write YAML next to ``path`` and rename it over, so Envoy sees one complete file.

    The rename is what makes the file whole for Envoy's watcher; no fsync: these files live in a
    run directory that does not outlive the mesh, so durability across a power cut buys nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.dump(data, fh, Dumper=DUMPER, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Envoy's event loop is libevent's, whose timers by default run on a coarse clock and millisecond
# epoll timeouts: a 2 ms fault delay then fires 2-3 ms late by a millisecond rounding. Libevent
# reads EVENT_PRECISE_TIMER from the environment (Envoy creates its event bases without ignoring
# it) and then uses the precise monotonic clock and a timerfd, so injected delays, retries' back-off
# and timeouts last what they were set to.
ENVOY_ENV = {"EVENT_PRECISE_TIMER": "1"}


def envoy_argv(envoy_bin: Path, sc: Sidecar) -> list[str]:
    return [
        str(envoy_bin),
        "-c",
        str(sc.path("bootstrap")),
        "--concurrency",
        str(sc.concurrency),
        "--disable-hot-restart",
        "--log-level",
        "warning",
        "--file-flush-interval-msec",
        str(round(ACCESS_LOG_FLUSH_S * 1000)),
        "--drain-time-s",
        "1",
    ]
