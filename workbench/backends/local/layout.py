"""Where every process of the local mesh lives: ports, sidecars and files, per sidecar mode.

- ``none``: load and apps call apps directly (a version picked uniformly, like kube-proxy).
- ``serveronly``: an inbound sidecar in front of every app; callers reach it directly.
- ``both``: also an outbound sidecar per app, and one for the load generator (``loadgen``),
  like istio/tools' client sidecar; the outbound sidecars apply traffic policy.
- ``both-mtls``: as ``both``, with mutual TLS between sidecars.
- ``ambient``: no sidecar; one **node proxy** per simulated node (``Topology.nodes``) carries its pods'
  calls in mutual-TLS HTTP/2 CONNECT tunnels (HBONE, as Istio's ztunnel): the caller's node proxy
  wraps the TCP stream, the callee's terminates the tunnel and hands the stream to the app. A pod's
  calls reach its node proxy on one port per (caller pod, destination) — what ztunnel's capture in
  the pod's network namespace tells it; the caller picks the destination pod (a version) uniformly,
  as kube-proxy would (``backends.local.ambient``).
- ``ambient-waypoint``: as ``ambient``, plus a **waypoint** Envoy per service (or one per namespace,
  ``waypoint: namespace``) that applies traffic policy and authorization: caller's node proxy ->
  waypoint (HBONE) -> callee's node proxy (HBONE) -> app.

What each mode can do is declared in ``MODE_CAPABILITIES`` (``backends.capabilities``): traffic
policy (splits, routes, faults, retries, timeouts, breakers) needs the caller's sidecar, as in Istio;
authorization needs the callee's. Validation and the mesh's own refusals both read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.backends.capabilities import ALL, AUTHORIZATION, CLIENT_SIDE, NEEDS_WAYPOINT, Offer
from workbench.backends.local.envoy import Sidecar
from workbench.backends.local.procs import free_ports
from workbench.backends.local.topology import Topology

Mode = Literal["none", "serveronly", "both", "both-mtls", "ambient", "ambient-waypoint"]
MODES: tuple[str, ...] = ("none", "serveronly", "both", "both-mtls", "ambient", "ambient-waypoint")
AMBIENT: tuple[str, ...] = ("ambient", "ambient-waypoint")
WAYPOINT_SCOPES: tuple[str, ...] = ("service", "namespace")
NAMESPACE = "default"  # the local mesh's one namespace (SPIFFE ids: spiffe://local/ns/default/sa/...)
LOADGEN = "loadgen"


def _client_side(mode: str) -> str:
    return (
        f"client-side features need a client-side sidecar, and mode '{mode}' has none (as in Istio): "
        "use mode both or both-mtls"
    )


_NO_AUTHZ = "authorization needs sidecars: mode 'none' has none; use serveronly, both or both-mtls"
_NO_WAYPOINT = (
    "in Istio's ambient mode L7 features need a waypoint proxy, and mode 'ambient' has none (its node "
    "proxies are L4: mutual TLS and allow/deny by caller identity): use mode ambient-waypoint"
)
MODE_CAPABILITIES: dict[str, Offer] = {
    "none": Offer.lacking(
        "mode none",
        {**dict.fromkeys(CLIENT_SIDE, _client_side("none")), **dict.fromkeys(AUTHORIZATION, _NO_AUTHZ)},
    ),
    "serveronly": Offer.lacking("mode serveronly", dict.fromkeys(CLIENT_SIDE, _client_side("serveronly"))),
    "both": Offer("mode both", ALL),
    "both-mtls": Offer("mode both-mtls", ALL),
    "ambient": Offer.lacking("mode ambient", dict.fromkeys(NEEDS_WAYPOINT, _NO_WAYPOINT)),
    "ambient-waypoint": Offer("mode ambient-waypoint", ALL),
}


@dataclass
class AppInstance:
    service: str
    version: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"


@dataclass
class Layout:
    """The planned mesh: apps, sidecars, Prometheus port and the run directory."""

    mode: Mode
    run_dir: Path
    apps: dict[str, dict[str, AppInstance]]  # service -> version -> app
    inbound: dict[str, dict[str, Sidecar]] = field(default_factory=dict)
    outbound: dict[str, Sidecar] = field(default_factory=dict)  # "<service>-<version>" or LOADGEN
    prometheus_port: int = 0
    procstats_port: int = 0  # process CPU/RSS exporter scraped by Prometheus
    audit_port: int = 0  # audit log exporter (workbench_release_info, ...) scraped by Prometheus
    traces_port: int = 0  # span receiver (OTLP/HTTP, Zipkin) when tracing is on
    # ambient modes: service -> node, node -> its node proxy, waypoint key (service or NAMESPACE) -> waypoint
    nodes: dict[str, str] = field(default_factory=dict)
    node_proxies: dict[str, Sidecar] = field(default_factory=dict)
    waypoints: dict[str, Sidecar] = field(default_factory=dict)
    waypoint_scope: str = "service"

    @property
    def sidecars(self) -> list[Sidecar]:
        """Every Envoy of the mesh: sidecars, node proxies and waypoints."""
        return (
            [sc for versions in self.inbound.values() for sc in versions.values()]
            + list(self.outbound.values())
            + list(self.node_proxies.values())
            + list(self.waypoints.values())
        )

    @property
    def has_outbound(self) -> bool:
        return self.mode in ("both", "both-mtls")

    @property
    def mtls(self) -> bool:
        """Mutual TLS between proxies (certificates per identity): both-mtls and the ambient modes."""
        return self.mode == "both-mtls" or self.ambient

    @property
    def ambient(self) -> bool:
        return self.mode in AMBIENT

    def identities(self, services: list[str]) -> list[str]:
        """Every identity a certificate is needed for: the services, the load generator, the waypoints."""
        return [*services, LOADGEN, *(w.identity for w in self.waypoints.values())]

    def node_of(self, workload: str) -> str:
        """The node a workload (``<service>-<version>`` or the load generator) runs on."""
        if workload == LOADGEN:
            return next(iter(self.node_proxies))
        owner = {a.name: s for s, vs in self.apps.items() for a in vs.values()}
        return self.nodes[owner[workload]]

    def waypoint_for(self, service: str) -> Sidecar:
        """The waypoint that serves ``service`` (its own, or the namespace's)."""
        return self.waypoints[service if self.waypoint_scope == "service" else NAMESPACE]

    def tunnel_urls(self, workload: str, service: str) -> list[str]:
        """Where ``workload``'s calls to ``service`` enter its node proxy: one URL per destination pod
        (``ambient``: the caller picks one) or the service's one (``ambient-waypoint``)."""
        ports = self.node_proxies[self.node_of(workload)].ports
        if self.mode == "ambient-waypoint":
            return [f"http://127.0.0.1:{ports[f'{workload}>{service}']}"]
        return [f"http://127.0.0.1:{ports[f'{workload}>{service}-{v}']}" for v in self.apps[service]]

    def inbound_ports(self) -> dict[str, dict[str, int]]:
        return {s: {v: sc.listen_port for v, sc in vs.items()} for s, vs in self.inbound.items()}

    def to_state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "run_dir": str(self.run_dir),
            "prometheus_port": self.prometheus_port,
            "procstats_port": self.procstats_port,
            "audit_port": self.audit_port,
            "traces_port": self.traces_port,
            "nodes": self.nodes,
            "waypoint_scope": self.waypoint_scope,
            "apps": {s: {v: a.port for v, a in vs.items()} for s, vs in self.apps.items()},
            "sidecars": [
                {k: (str(v) if isinstance(v, Path) else v) for k, v in sc.__dict__.items()}
                for sc in self.sidecars
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Layout:
        apps = {s: {v: AppInstance(s, v, p) for v, p in vs.items()} for s, vs in state["apps"].items()}
        layout = cls(
            state["mode"], Path(state["run_dir"]), apps, prometheus_port=state["prometheus_port"],
            procstats_port=state.get("procstats_port", 0), audit_port=state.get("audit_port", 0),
            traces_port=state.get("traces_port", 0), nodes=state.get("nodes", {}),
            waypoint_scope=state.get("waypoint_scope", "service"),
        )  # fmt: skip
        for raw in state["sidecars"]:
            sc = Sidecar(**{**raw, "directory": Path(raw["directory"])})
            if sc.direction == "inbound":
                layout.inbound.setdefault(sc.service, {})[sc.version] = sc
            elif sc.direction == "node":
                layout.node_proxies[sc.node] = sc
            elif sc.direction == "waypoint":
                layout.waypoints[sc.service or NAMESPACE] = sc
            else:
                layout.outbound[sc.name.removesuffix("-outbound")] = sc
        return layout


def plan(
    topology: Topology, mode: Mode, run_dir: Path, concurrency: int = 1, loadgen_concurrency: int = 2,
    waypoint: str = "service",
) -> Layout:  # fmt: skip
    """Choose free ports and name every process and directory.

    Ambient modes: node proxies run ``loadgen_concurrency`` workers (each carries a whole node's
    traffic, the load generator's included, as its sidecar did), waypoints ``concurrency``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    if waypoint not in WAYPOINT_SCOPES:
        raise ValueError(f"waypoint must be one of {', '.join(WAYPOINT_SCOPES)} (got {waypoint!r})")
    versions = [(s, v) for s, spec in topology.services.items() for v in spec.versions]
    n_in = len(versions) if mode not in ("none", *AMBIENT) else 0
    n_out = len(versions) + 1 if mode in ("both", "both-mtls") else 0
    n_ambient = _ambient_ports(topology, mode, waypoint, len(versions))
    ports = iter(free_ports(len(versions) + 2 * n_in + 2 * n_out + n_ambient + 4))
    apps: dict[str, dict[str, AppInstance]] = {}
    for s, v in versions:
        apps.setdefault(s, {})[v] = AppInstance(s, v, next(ports))
    layout = Layout(mode, run_dir, apps)

    def sidecar(name: str, identity: str, direction: str, **extra: Any) -> Sidecar:
        settings = {"concurrency": concurrency, "service": identity, **extra}
        admin, listen = next(ports), next(ports)
        directory = run_dir / "envoy" / name
        return Sidecar(name, identity, direction, admin, listen, directory, **settings)

    if n_in:
        for s, v in versions:
            layout.inbound.setdefault(s, {})[v] = sidecar(
                f"{s}-{v}-inbound", s, "inbound", app_port=apps[s][v].port, version=v
            )
    if n_out:
        everyone = list(topology.services)  # every outbound sidecar knows every service, as in Istio
        for s, v in versions:
            layout.outbound[f"{s}-{v}"] = sidecar(
                f"{s}-{v}-outbound", s, "outbound", callees=everyone, version=v
            )
        layout.outbound[LOADGEN] = sidecar(
            f"{LOADGEN}-outbound", LOADGEN, "outbound", callees=everyone, concurrency=loadgen_concurrency
        )
    if mode in AMBIENT:
        _plan_ambient(layout, topology, waypoint, ports, sidecar, loadgen_concurrency)
    layout.prometheus_port = next(ports)
    layout.procstats_port = next(ports)
    layout.audit_port = next(ports)
    layout.traces_port = next(ports)
    return layout


def _ambient_ports(topology: Topology, mode: str, waypoint: str, pods: int) -> int:
    """Ports the ambient data plane needs: admin + HBONE per node proxy and waypoint, and one
    capture port per (caller workload, destination) on the callers' node proxies."""
    if mode not in AMBIENT:
        return 0
    nodes = len(topology.node_order())
    waypoints = (len(topology.services) if waypoint == "service" else 1) if mode == "ambient-waypoint" else 0
    targets = len(topology.services) if mode == "ambient-waypoint" else pods
    return 2 * nodes + 2 * waypoints + (pods + 1) * targets


def _plan_ambient(
    layout: Layout, topology: Topology, waypoint: str, ports: Iterator[int],
    sidecar: Callable[..., Sidecar], node_concurrency: int,
) -> None:  # fmt: skip
    """Node proxies (one per node: HBONE port + a capture port per caller workload and destination)
    and, in ambient-waypoint, the waypoints; the load generator's pod runs on the first node
    (``Topology.loadgen_node``, else the first service's)."""
    layout.nodes = topology.nodes()
    layout.waypoint_scope = waypoint
    pods = {a.name: s for s, vs in layout.apps.items() for a in vs.values()}  # pod -> service
    targets = list(topology.services) if layout.mode == "ambient-waypoint" else list(pods)
    for node in topology.node_order():  # the load generator's node first (``node_of``)
        layout.node_proxies[node] = sidecar(f"{node}-node-proxy", node, "node", node=node,
                                            concurrency=node_concurrency, service="")  # fmt: skip
    for node, proxy in layout.node_proxies.items():
        local = [p for p, s in pods.items() if layout.nodes[s] == node]
        if node == next(iter(layout.node_proxies)):
            local.append(LOADGEN)
        proxy.ports = {f"{src}>{dst}": next(ports) for src in local for dst in targets}
    if layout.mode == "ambient-waypoint":
        keys = list(topology.services) if waypoint == "service" else [NAMESPACE]
        for key in keys:
            served = [key] if waypoint == "service" else list(topology.services)
            layout.waypoints[key] = sidecar(f"{key}-waypoint", f"{key}-waypoint", "waypoint", callees=served,
                                            service=key if waypoint == "service" else "")  # fmt: skip
