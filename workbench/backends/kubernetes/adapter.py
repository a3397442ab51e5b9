"""The mesh adapter seam: one subclass per data plane (istio.py, linkerd.py, consul.py, gateway_api.py).

An adapter keeps, per service, the traffic state the workbench wants (split, header/cookie route,
fault, retries, timeout, circuit breaker) — the same ``TrafficState`` the local mesh renders to Envoy
— and renders it into that mesh's objects (``render_traffic``), applied together with server-side
apply, so one VirtualService (or HTTPRoute, ServiceSplitter ...) always carries the whole state.
``get_split`` reads the live objects, not memory: what the cluster does is what counts.
Authorization has its own objects (``render_policy``). What a mesh can express is declared in its
class's ``CAPABILITIES`` (``backends.capabilities.Offer``), so validation refuses an experiment before
anything is written; a feature a mesh cannot express still raises ``Unsupported`` naming the mesh and
the feature should it be asked anyway — never a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workbench.backends.base import BackendError, Split, TrafficState, full_split
from workbench.backends.capabilities import Offer
from workbench.backends.kubernetes.apply import Resource, Writer
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, Retries, Route

Manifest = tuple[Resource, dict[str, Any]]
LABELS = {"app.kubernetes.io/managed-by": "mesh-workbench"}


class Unsupported(BackendError):
    """The mesh (or this API of it) has no way to express the requested traffic feature."""


@dataclass
class MeshAdapter:
    """Base class; subclasses set ``mesh`` and implement the ``render_*``/``read_split`` methods.

    ``versions`` maps each service to its versions, stable first (from cluster discovery: the
    ``version`` label of its Deployments). ``namespace`` is where the objects go.
    """

    writer: Writer
    namespace: str
    versions: Mapping[str, Sequence[str]]
    state: dict[str, TrafficState] = field(default_factory=dict)

    mesh: ClassVar[str] = ""
    CAPABILITIES: ClassVar[Offer]  # what the mesh can express (each subclass declares its own)

    def capabilities(self) -> Offer:
        """What this adapter, as configured, can express (the class's declaration by default)."""
        return self.CAPABILITIES

    # -----------------------------------------------------------------------------------------
    # The Backend seam's traffic operations

    def get_split(self, service: str) -> Split:
        """The split the cluster applies now (read from the live objects)."""
        self._versions(service)
        return self.read_split(service)

    def set_split(self, service: str, split: Split) -> list[dict[str, Any]]:
        """Percentage weights per version (missing versions get 0); returns the applied manifests."""
        full = full_split(service, self._versions(service), split)
        self._state(service).split = full
        return self._apply_traffic(service)

    def set_route(
        self, service: str, route: Route | None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Requests matching ``route`` (header or cookie) go to ``version``; None removes the route."""
        versions = self._versions(service)
        if route is not None and version not in versions:
            raise BackendError(f"{service} has no version {version!r} (versions: {', '.join(versions)})")
        st = self._state(service)
        st.route, st.route_version = (route, version) if route is not None else (None, None)
        return self._apply_traffic(service)

    def set_fault(self, service: str, fault: Fault | None) -> list[dict[str, Any]]:
        """Delay or abort a share of the calls to ``service``; None removes it."""
        self._versions(service)
        self._state(service).fault = fault
        return self._apply_traffic(service)

    def set_resilience(
        self, service: str, retries: Retries | None = None, timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Retries, timeout and circuit breaking (outlier detection) for calls to ``service``."""
        self._versions(service)
        st = self._state(service)
        st.retries, st.timeout_s, st.breaker = retries, timeout_s, breaker
        return self._apply_traffic(service)

    def set_policy(self, policy: Policy | None, service: str | None = None) -> list[dict[str, Any]]:
        """Authorization for calls to a service; None (with ``service``) removes the workbench's policy."""
        target = policy.service if policy is not None else service
        if target is None:
            raise BackendError("set_policy(None) needs the service whose policy to remove")
        self._versions(target)
        if policy is None:
            for res, name in self.policy_objects(target):
                self.writer.delete(res, self.namespace, name)
            return []
        return [self.writer.apply(res, m) for res, m in self.render_policy(policy)]

    # -----------------------------------------------------------------------------------------
    # What subclasses implement

    def render_traffic(self, service: str, state: TrafficState) -> list[Manifest]:
        """The objects that make ``state`` true for calls to ``service``."""
        raise NotImplementedError

    def render_policy(self, policy: Policy) -> list[Manifest]:
        """The objects that enforce ``policy``."""
        raise NotImplementedError

    def policy_objects(self, service: str) -> list[tuple[Resource, str]]:
        """The (type, name) of every object ``render_policy`` creates for ``service``."""
        raise NotImplementedError

    def read_split(self, service: str) -> Split:
        """The live split of ``service`` (stable 100 % when the workbench's objects are absent)."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    # Helpers

    def _versions(self, service: str) -> list[str]:
        if service not in self.versions:
            raise BackendError(
                f"no service {service!r} in namespace {self.namespace}; "
                f"services: {', '.join(self.versions) or 'none'}"
            )
        return list(self.versions[service])

    def _state(self, service: str) -> TrafficState:
        if service not in self.state:
            versions = self._versions(service)
            self.state[service] = TrafficState(
                split={v: (100 if i == 0 else 0) for i, v in enumerate(versions)}
            )
        return self.state[service]

    def _apply_traffic(self, service: str) -> list[dict[str, Any]]:
        return [self.writer.apply(res, m) for res, m in self.render_traffic(service, self._state(service))]

    def metadata(self, name: str) -> dict[str, Any]:
        """metadata for a rendered object: name, namespace and the managed-by label."""
        return {"name": name, "namespace": self.namespace, "labels": dict(LABELS)}
