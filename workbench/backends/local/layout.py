"""Where every process of the local mesh lives: ports, sidecars and files, per sidecar mode.

- ``none``: load and apps call apps directly (a version picked uniformly, like kube-proxy).
- ``serveronly``: an inbound sidecar in front of every app; callers reach it directly.
- ``both``: also an outbound sidecar per app, and one for the load generator (``loadgen``),
  like istio/tools' client sidecar; the outbound sidecars apply traffic policy.
- ``both-mtls``: as ``both``, with mutual TLS between sidecars.

What each mode can do is declared in ``MODE_CAPABILITIES`` (``backends.capabilities``): traffic
policy (splits, routes, faults, retries, timeouts, breakers) needs the caller's sidecar, as in Istio;
authorization needs the callee's. Validation and the mesh's own refusals both read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.backends.capabilities import ALL, AUTHORIZATION, CLIENT_SIDE, Offer
from workbench.backends.local.envoy import Sidecar
from workbench.backends.local.procs import free_ports
from workbench.backends.local.topology import Topology

Mode = Literal["none", "serveronly", "both", "both-mtls"]
MODES: tuple[str, ...] = ("none", "serveronly", "both", "both-mtls")
LOADGEN = "loadgen"


def _client_side(mode: str) -> str:
    return (
        f"client-side features need a client-side sidecar, and mode '{mode}' has none (as in Istio): "
        "use mode both or both-mtls"
    )


_NO_AUTHZ = "authorization needs sidecars: mode 'none' has none; use serveronly, both or both-mtls"
MODE_CAPABILITIES: dict[str, Offer] = {
    "none": Offer.lacking(
        "mode none",
        {**dict.fromkeys(CLIENT_SIDE, _client_side("none")), **dict.fromkeys(AUTHORIZATION, _NO_AUTHZ)},
    ),
    "serveronly": Offer.lacking("mode serveronly", dict.fromkeys(CLIENT_SIDE, _client_side("serveronly"))),
    "both": Offer("mode both", ALL),
    "both-mtls": Offer("mode both-mtls", ALL),
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

    @property
    def sidecars(self) -> list[Sidecar]:
        return [sc for versions in self.inbound.values() for sc in versions.values()] + list(
            self.outbound.values()
        )

    @property
    def has_outbound(self) -> bool:
        return self.mode in ("both", "both-mtls")

    @property
    def mtls(self) -> bool:
        return self.mode == "both-mtls"

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
            traces_port=state.get("traces_port", 0),
        )  # fmt: skip
        for raw in state["sidecars"]:
            sc = Sidecar(**{**raw, "directory": Path(raw["directory"])})
            if sc.direction == "inbound":
                layout.inbound.setdefault(sc.service, {})[sc.version] = sc
            else:
                layout.outbound[sc.name.removesuffix("-outbound")] = sc
        return layout


def plan(
    topology: Topology, mode: Mode, run_dir: Path, concurrency: int = 1, loadgen_concurrency: int = 2
) -> Layout:
    """Choose free ports and name every process and directory."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    versions = [(s, v) for s, spec in topology.services.items() for v in spec.versions]
    n_in = len(versions) if mode != "none" else 0
    n_out = len(versions) + 1 if mode in ("both", "both-mtls") else 0
    ports = iter(free_ports(len(versions) + 2 * n_in + 2 * n_out + 4))
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
    layout.prometheus_port = next(ports)
    layout.procstats_port = next(ports)
    layout.audit_port = next(ports)
    layout.traces_port = next(ports)
    return layout
