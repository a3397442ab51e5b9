"""The local mesh's application topology: services, their versions' behaviour, who calls whom."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from workbench.units import Strict

DEMO = files("workbench.backends.local").joinpath("demo_topology.yaml")
ServiceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")]
VersionName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,20}$")]
NodeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")]
# Simulated nodes of the ambient modes: a service without ``node:`` goes to these in turn.
DEFAULT_NODES = ("node-1", "node-2")


class Behaviour(Strict):
    """How one version serves a request; every field can be changed while the mesh runs."""

    service_time_ms: Annotated[float, Field(ge=0, le=60_000)] = 2.0
    sigma: Annotated[float, Field(ge=0, le=3)] = 0.4
    error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    payload_bytes: Annotated[int, Field(ge=0, le=10_000_000)] = 256


class ServiceSpec(Strict):
    calls: list[ServiceName] = Field(default_factory=list)
    versions: Annotated[dict[VersionName, Behaviour], Field(min_length=1)]
    # The simulated node its pods run on (the ambient modes' node proxies); default: DEFAULT_NODES in turn
    node: NodeName | None = None


class Topology(Strict):
    """All services; the first version listed of each is its stable version."""

    services: Annotated[dict[ServiceName, ServiceSpec], Field(min_length=1)]
    # The simulated node of the load generator's pod (ambient modes); default: the first node of ``nodes``
    loadgen_node: NodeName | None = None

    @model_validator(mode="after")
    def _calls_exist_and_no_cycles(self) -> Topology:
        for name, spec in self.services.items():
            for callee in spec.calls:
                if callee not in self.services:
                    raise ValueError(f"services.{name}.calls: unknown service '{callee}'")
                if callee == name:
                    raise ValueError(f"services.{name}.calls: a service cannot call itself")
        seen: set[str] = set()

        def visit(node: str, path: tuple[str, ...]) -> None:
            if node in path:
                raise ValueError(f"services: call cycle {' -> '.join((*path, node))}")
            if node in seen:
                return
            for callee in self.services[node].calls:
                visit(callee, (*path, node))
            seen.add(node)

        for name in self.services:
            visit(name, ())
        return self

    def entry(self) -> str:
        """The service nobody calls (the demo's frontend): where load enters by default."""
        called = {c for s in self.services.values() for c in s.calls}
        roots = [n for n in self.services if n not in called]
        return roots[0] if roots else next(iter(self.services))

    def callers_of(self, service: str) -> list[str]:
        return [n for n, s in self.services.items() if service in s.calls]

    def nodes(self) -> dict[str, str]:
        """Service -> the simulated node its pods run on: its ``node:``, else the ``DEFAULT_NODES``
        in turn in listing order (so the demo's calls cross nodes)."""
        unplaced = iter(range(len(self.services)))
        return {
            name: spec.node or DEFAULT_NODES[next(unplaced) % len(DEFAULT_NODES)]
            for name, spec in self.services.items()
        }

    def node_order(self) -> list[str]:
        """Every simulated node once, the load generator's first (it runs a node proxy even when no
        service of the topology runs there)."""
        placed = list(self.nodes().values())
        return list(dict.fromkeys([self.loadgen_node or placed[0], *placed]))

    def call_tree(self, service: str) -> list[str]:
        """``service`` and every service a request entering it reaches, in listing order."""
        reached: set[str] = set()
        todo = [service]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(self.services[name].calls)
        return [n for n in self.services if n in reached]

    def serving(self, service: str) -> Topology:
        """The part of this topology a request entering ``service`` uses: its call tree (every
        version of each service), each service on the node it has here, and the load generator on
        its node here — the same paths and placement, without the services nothing calls.

        Why: the local mesh runs every pod on this one machine, so the services a comparison does
        not call would only take CPU from the ones it measures (on a cluster they run elsewhere, and
        idle). Comparisons start this part only (``Session.mesh(..., serving=...)``)."""
        if service not in self.services:
            raise ValueError(f"no service {service!r}; services: {', '.join(self.services)}")
        placed = self.nodes()
        tree = self.call_tree(service)
        return Topology(
            services={n: self.services[n].model_copy(update={"node": placed[n]}) for n in tree},
            loadgen_node=self.node_order()[0],
        )

    def calls_per_request(self, service: str | None = None) -> int:
        """Calls one request entering ``service`` (default: the entry) makes in all, itself included:
        every service calls all its callees for every request."""
        name = service or self.entry()
        return 1 + sum(self.calls_per_request(c) for c in self.services[name].calls)


def load_topology(path: str | Path | None = None) -> Topology:
    """The demo topology, or the one in ``path``; ConfigError names file, line and field."""
    # here, not at the top: each demo-app process imports this module for ``Behaviour`` only, and
    # the config package (its schema) would add ~0.1 s of CPU to each of the ~8 at a mesh's start
    from workbench.config.problems import ConfigError, Problem, parse_model

    if path is None:
        return parse_model(DEMO.read_text(), Topology, "demo_topology.yaml")[0]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot be read: {exc.strerror}")]) from None
    return parse_model(text, Topology, str(path))[0]
