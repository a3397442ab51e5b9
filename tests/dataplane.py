"""A cluster's data plane for scenario tests: the services of the kmock emulator, answering as meshed apps.

Each Service of the emulator gets an HTTP server on 127.0.0.1 (``FakeDataPlane.url``); the fake
kubelet (``tests/kube.py``) points the pods it runs at them instead of ``<svc>.<ns>.svc.cluster.local``.
Every request is answered as the mesh's proxies would, from the mesh's objects *as stored in the
emulator* (what the workbench applied, read back, never its memory):

- the version: a header/cookie route, else the split (read with the adapter's own ``read_split``);
- a fault (Istio's VirtualService ``fault``: abort or delay a share of the requests);
- authorization, with the caller's identity (a probe pod's requests arrive as ``/~as~<identity>/<path>``):
  Istio AuthorizationPolicy (principals, paths, methods, ALLOW/DENY), Linkerd Server with
  AuthorizationPolicy/MeshTLSAuthentication (server- or route-wide), Consul ServiceIntentions;
  a denial is answered as that mesh's proxy does (Envoy's ``RBAC: access denied``, Linkerd's
  ``l5d-proxy-error`` header);
- the app: a lognormal service time per version (``service_ms``), ``x-version``/``x-service`` headers.

Every answer is counted in the mesh's telemetry dialect (inbound view: Istio standard metrics,
Linkerd ``response_total``/``response_latency_ms``, Consul's Envoy metrics) on ``metrics_url``,
which a real Prometheus scrapes each second.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

ISTIO_LE = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
TRUST = "cluster.local"
Reader = Callable[[str, str | None, str], "dict[str, Any] | None"]  # (group/version/plural, ns, name)


@dataclass
class Version:
    service_ms: float = 2.0
    error_rate: float = 0.0


@dataclass
class FakeDataPlane:
    """See the module docstring. ``read`` reads an emulator object; ``adapter`` the mesh adapter
    (with a Writer on the emulator) whose ``read_split`` gives the live split."""

    mesh: str
    namespace: str
    read: Reader
    adapter: Any
    versions: dict[str, list[str]]
    dialect: str = "istio"
    behaviour: dict[tuple[str, str], Version] = field(default_factory=dict)
    servers: dict[str, ThreadingHTTPServer] = field(default_factory=dict)
    seed: int = 7

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self.registry = CollectorRegistry()
        self._metrics = _metrics(self.dialect, self.registry)
        self.answers: list[tuple[str, str, int, str]] = []  # (service, version, status, identity)

    # --------------------------------------------------------------------------------------------
    # Servers

    def start(self) -> FakeDataPlane:
        plane = self
        for service in [*self.versions, "__metrics__"]:

            class Handler(BaseHTTPRequestHandler):
                target = service

                def _handle(self) -> None:
                    plane._answer(self)

                do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

                def log_message(self, *args: Any) -> None:
                    pass

            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True, name=f"dataplane-{service}").start()
            self.servers[service] = server
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        self.servers.clear()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.servers[service].server_address[1]}"

    @property
    def metrics_url(self) -> str:
        return self.url("__metrics__")

    # --------------------------------------------------------------------------------------------
    # Answering

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        service = h.target  # type: ignore[attr-defined]
        if service == "__metrics__":
            body = generate_latest(self.registry)
            return _reply(h, 200, body, {"Content-Type": "text/plain; version=0.0.4"})
        h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path, identity = h.path, "loadgen"
        if m := re.match(r"^/~as~([^/]+)(/.*)?$", path):
            identity, path = m.group(1), m.group(2) or "/"
        began = time.perf_counter()
        denial = self._authorize(service, identity, path.split("?")[0], h.command)
        if denial is not None:
            status, body, headers = denial
            version = ""
        else:
            version = self._version(service, h.headers)
            status, delay_s = self._fault(service)
            beh = self.behaviour.get((service, version), Version())
            if status == 0:
                with self.lock:
                    jitter = self.rng.lognormvariate(0, 0.3)
                    failing = self.rng.random() < beh.error_rate
                time.sleep(delay_s + beh.service_ms * jitter / 1000)
                status = 503 if failing else 200
            body, headers = (
                (b"ok" if status < 400 else b"fault"),
                {"x-version": version, "x-service": service},
            )
        ms = 1000 * (time.perf_counter() - began)
        self._count(service, version, status, identity, ms)
        _reply(h, status, b"" if h.command == "HEAD" else body, headers)

    def _object(self, path: str, name: str) -> Any:
        key = (path, name)
        now = time.monotonic()
        with self.lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < 0.3:
            return cached[1]
        obj = self.read(path, self.namespace, name)
        with self.lock:
            self._cache[key] = (now, obj)
        return obj

    def _split(self, service: str) -> dict[str, int]:
        key = ("split", service)
        now = time.monotonic()
        with self.lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < 0.3:
            return cached[1]  # type: ignore[no-any-return]
        split = dict(self.adapter.read_split(service))
        with self.lock:
            self._cache[key] = (now, split)
        return split

    def _version(self, service: str, headers: Any) -> str:
        routed = self._route(service, headers)
        if routed:
            return routed
        split = self._split(service)
        with self.lock:
            pick = self.rng.random() * 100
        for version, weight in split.items():
            pick -= weight
            if pick < 0:
                return version
        return self.versions[service][0]

    def _route(self, service: str, headers: Any) -> str:
        """The version a header/cookie route sends this request to ("" when none matches)."""
        if self.mesh == "istio":
            vs = self._object("networking.istio.io/v1/virtualservices", service) or {}
            for rule in (vs.get("spec") or {}).get("http") or []:
                for match in rule.get("match") or []:
                    if all(
                        _header_ok(headers.get(name, ""), cond)
                        for name, cond in (match.get("headers") or {}).items()
                    ):
                        return str(rule["route"][0]["destination"]["subset"])
        elif self.mesh in ("gateway-api", "linkerd"):
            path = ("gateway.networking.k8s.io/v1/httproutes" if self.mesh == "gateway-api"
                    else "policy.linkerd.io/v1beta3/httproutes")  # fmt: skip
            route = self._object(path, service) or {}
            for rule in (route.get("spec") or {}).get("rules") or []:
                for match in rule.get("matches") or []:
                    conds = match.get("headers") or []
                    if conds and all(_header_value_ok(headers.get(c["name"], ""), c) for c in conds):
                        return str(rule["backendRefs"][0]["name"]).removeprefix(f"{service}-")
        elif self.mesh == "consul":
            router = self._object("consul.hashicorp.com/v1alpha1/servicerouters", service) or {}
            for route in (router.get("spec") or {}).get("routes") or []:
                conds = ((route.get("match") or {}).get("http") or {}).get("header") or []
                if conds and all(_header_ok(headers.get(c["name"], ""), c) for c in conds):
                    subset = (route.get("destination") or {}).get("serviceSubset")
                    if subset:
                        return str(subset)
        return ""

    def _fault(self, service: str) -> tuple[int, float]:
        """(abort status or 0, delay s) from Istio's VirtualService fault (the default route's)."""
        if self.mesh != "istio":
            return 0, 0.0
        vs = self._object("networking.istio.io/v1/virtualservices", service) or {}
        for rule in (vs.get("spec") or {}).get("http") or []:
            fault = rule.get("fault") or {}
            with self.lock:
                roll = self.rng.random() * 100
            abort, delay = fault.get("abort"), fault.get("delay")
            if abort and roll < float((abort.get("percentage") or {}).get("value", 100)):
                return int(abort["httpStatus"]), 0.0
            if delay and roll < float((delay.get("percentage") or {}).get("value", 100)):
                return 0, _seconds(delay["fixedDelay"])
        return 0, 0.0

    # --------------------------------------------------------------------------------------------
    # Authorization, per mesh

    def _authorize(
        self, service: str, identity: str, path: str, method: str
    ) -> tuple[int, bytes, dict[str, str]] | None:
        if self.mesh == "istio":
            allowed = self._istio(service, identity, path, method)
            return None if allowed else (403, b"RBAC: access denied", {})
        if self.mesh == "consul":
            allowed = self._consul(service, identity, path, method)
            return None if allowed else (403, b"RBAC: access denied", {})
        if self.mesh == "linkerd":
            allowed = self._linkerd(service, identity, path, method)
            return None if allowed else (403, b"", {"l5d-proxy-error": "unauthorized request on route"})
        return None

    def _istio(self, service: str, identity: str, path: str, method: str) -> bool:
        policy = self._object("security.istio.io/v1/authorizationpolicies", f"{service}-workbench")
        if policy is None:
            return True
        spec = policy["spec"]
        principal = f"{TRUST}/ns/{self.namespace}/sa/{identity}"
        matched = any(_istio_rule(rule, principal, path, method) for rule in spec.get("rules") or [])
        return matched if spec.get("action", "ALLOW") == "ALLOW" else not matched

    def _consul(self, service: str, caller: str, path: str, method: str) -> bool:
        intentions = self._object("consul.hashicorp.com/v1alpha1/serviceintentions", service)
        if intentions is None:
            return True
        sources = intentions["spec"].get("sources") or []
        source = next((s for s in sources if s["name"] == caller), None) or next(
            (s for s in sources if s["name"] == "*"), None
        )
        if source is None:
            return True
        if "action" in source:
            return bool(source["action"] == "allow")
        for permission in source.get("permissions") or []:
            http = permission.get("http") or {}
            if _consul_http(http, path, method):
                return bool(permission["action"] == "allow")
        return True

    def _linkerd(self, service: str, identity: str, path: str, method: str) -> bool:
        server = self._object("policy.linkerd.io/v1beta3/servers", f"{service}-http")
        if server is None:
            return True
        me = f"{identity}.{self.namespace}.serviceaccount.identity.linkerd.{TRUST}"
        i = 0
        while (
            policy := self._object("policy.linkerd.io/v1alpha1/authorizationpolicies", f"{service}-authz-{i}")
        ) is not None:
            auth = (
                self._object("policy.linkerd.io/v1alpha1/meshtlsauthentications", f"{service}-authz-{i}")
                or {}
            )
            identities = (auth.get("spec") or {}).get("identities") or []
            who = "*" in identities or me in identities
            target = policy["spec"]["targetRef"]
            if target["kind"] == "Server" and who:
                return True
            if target["kind"] == "HTTPRoute" and who:
                route = self._object("policy.linkerd.io/v1beta3/httproutes", target["name"]) or {}
                for rule in (route.get("spec") or {}).get("rules") or []:
                    if any(_route_match(m, path, method) for m in rule.get("matches") or [{}]):
                        return True
            i += 1
        return False

    # --------------------------------------------------------------------------------------------
    # Telemetry

    def _count(self, service: str, version: str, status: int, identity: str, ms: float) -> None:
        requests, latency = self._metrics
        if self.dialect == "istio":
            labels = {"reporter": "destination", "source_workload": identity,
                      "destination_service_name": service, "destination_workload": f"{service}-{version}",
                      "destination_version": version, "destination_service_namespace": self.namespace,
                      "response_code": str(status)}  # fmt: skip
            requests.labels(**labels).inc()
            latency.labels(**{k: v for k, v in labels.items() if k != "response_code"}).observe(ms)
        elif self.dialect == "linkerd":
            client = f"{identity}.{self.namespace}.serviceaccount.identity.linkerd.{TRUST}"
            base = {"direction": "inbound", "client_id": client, "app": service,
                    "deployment": f"{service}-{version}", "version": version,
                    "namespace": self.namespace}  # fmt: skip
            outcome = "failure" if status >= 500 or status == 0 else "success"
            requests.labels(**base, classification=outcome).inc()
            latency.labels(**base).observe(ms)
        else:  # consul: Envoy's metrics with Consul's tags, inbound
            base = {"envoy_cluster_name": "local_app", "consul_source_service": service, "version": version}
            requests.labels(**base, envoy_response_code_class=str(status // 100)).inc()
            latency.labels(**base).observe(ms)
        with self.lock:
            self.answers.append((service, version, status, identity))


def _metrics(dialect: str, registry: CollectorRegistry) -> tuple[Any, Any]:
    """The request counter and latency histogram of ``dialect``'s inbound view."""
    if dialect == "istio":
        base = ["reporter", "source_workload", "destination_service_name", "destination_workload",
                "destination_version", "destination_service_namespace"]  # fmt: skip
        return (Counter("istio_requests", "requests", [*base, "response_code"], registry=registry),
                Histogram("istio_request_duration_milliseconds", "latency", base, buckets=ISTIO_LE,
                          registry=registry))  # fmt: skip
    if dialect == "linkerd":
        base = ["direction", "client_id", "app", "deployment", "version", "namespace"]
        latency = Histogram("response_latency_ms", "latency", base, buckets=ISTIO_LE, registry=registry)
        return Counter("response", "responses", [*base, "classification"], registry=registry), latency
    base = ["envoy_cluster_name", "consul_source_service", "version"]
    latency = Histogram(
        "envoy_cluster_upstream_rq_time", "latency", base, buckets=ISTIO_LE, registry=registry
    )
    return _EnvoyRequests(base, registry), latency


class _EnvoyRequests:
    """Envoy's pair: ``envoy_cluster_upstream_rq_total`` and ``_rq_xx`` by response code class."""

    def __init__(self, base: list[str], registry: CollectorRegistry) -> None:
        self.total = Counter("envoy_cluster_upstream_rq", "requests", base, registry=registry)
        self.xx = Counter("envoy_cluster_upstream_rq_xx", "by class", [*base, "envoy_response_code_class"],
                          registry=registry)  # fmt: skip

    def labels(self, envoy_response_code_class: str, **base: str) -> Any:
        self.xx.labels(**base, envoy_response_code_class=envoy_response_code_class).inc()
        return self.total.labels(**base)


def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if body:
        h.wfile.write(body)


def _header_ok(value: str, cond: dict[str, Any]) -> bool:
    if "exact" in cond:
        return bool(value == cond["exact"])
    if "regex" in cond:
        return re.search(cond["regex"], value) is not None
    return False


def _header_value_ok(value: str, cond: dict[str, Any]) -> bool:
    if cond.get("type") == "RegularExpression":
        return re.search(cond["value"], value) is not None
    return bool(value == cond.get("value"))


def _path_ok(pattern: str, path: str) -> bool:
    """Istio's path semantics: exact, ``prefix*``, ``*suffix``, ``*``."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def _istio_rule(rule: dict[str, Any], principal: str, path: str, method: str) -> bool:
    sources = [s["source"] for s in rule.get("from") or []]
    if sources and not any(principal in (s.get("principals") or []) for s in sources):
        return False
    operations = [t["operation"] for t in rule.get("to") or []]
    return not operations or any(
        (not op.get("paths") or any(_path_ok(p, path) for p in op["paths"]))
        and (not op.get("methods") or method in op["methods"])
        for op in operations
    )


def _consul_http(http: dict[str, Any], path: str, method: str) -> bool:
    if "methods" in http and method not in http["methods"]:
        return False
    if "pathExact" in http:
        return bool(path == http["pathExact"])
    if "pathPrefix" in http:
        return path.startswith(http["pathPrefix"])
    if "pathRegex" in http:
        return re.fullmatch(http["pathRegex"], path) is not None
    return True


def _route_match(match: dict[str, Any], path: str, method: str) -> bool:
    if match.get("method") and match["method"] != method:
        return False
    p = match.get("path") or {}
    kind, value = p.get("type"), p.get("value", "/")
    if kind == "Exact":
        return bool(path == value)
    if kind == "RegularExpression":
        return re.fullmatch(value, path) is not None
    return path.startswith(value)


def _seconds(go: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|s|m|h)", go):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total if math.isfinite(total) else 0.0
