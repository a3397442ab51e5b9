"""Backends: where experiments change traffic and generate load (the local mesh or a cluster).

``open_backend(settings)`` is the one factory: experiments.yaml's ``backend:`` settings in, a
``Backend`` (``base.py``) out — a ``KubernetesBackend`` for a cluster; for the local mesh, the
mesh whose state the runner passes, else the one ``workbench local up`` runs in the right mode,
else a new one started here (``Opened.owned``: the caller stops it). ``declared(...)`` is what such a
backend would offer (``backends.capabilities``), known from the settings alone: validation asks it
without reaching a cluster or starting a mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import BackendError

# The capabilities (and the config schema under them) are imported where used: every demo-app
# process of the local mesh imports workbench.backends.local, and so this package, at start.
if TYPE_CHECKING:
    from workbench.backends.base import Backend
    from workbench.backends.capabilities import Offer
    from workbench.config import BackendSettings

__all__ = ["Opened", "declared", "mesh_offer", "mode_offer", "open_backend"]


@dataclass(frozen=True)
class Opened:
    """A backend and whether ``open_backend`` started it (then the caller must ``stop()`` it)."""

    backend: Backend
    owned: bool = False


def open_backend(
    settings: BackendSettings,
    *,
    mesh_state: Path | None = None,
    mode: str | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> Opened:
    """The backend ``settings`` describe; see the module docstring.

    ``mesh_state``: attach to the local mesh whose state is there (it must be running).
    ``mode``: the local sidecar mode wanted (default: the settings'). ``options`` go to the
    Kubernetes backend (``dry_run``, ``kubeconfig`` ...). BackendError when it cannot be opened.
    """
    if settings.type == "kubernetes":
        from workbench.backends.kubernetes.backend import KubernetesBackend

        return Opened(KubernetesBackend.from_settings(settings, **options))  # type: ignore[arg-type]
    if settings.type != "local":
        raise BackendError(f"backend {settings.type!r} is not supported (use 'local' or 'kubernetes')")
    from workbench.backends.local.mesh import LocalMesh, running_mesh

    if mesh_state is not None:
        mesh = LocalMesh.attach(mesh_state)
        mesh.check()
        return Opened(mesh)
    wanted = mode or settings.mode
    attached = running_mesh(wanted)
    if attached is not None:
        return Opened(attached)
    if progress is not None:
        progress(f"starting a local mesh (mode {wanted})")
    mesh = LocalMesh(**{**settings.mesh_options(), "mode": wanted})  # type: ignore[arg-type]
    try:
        mesh.start()
    except BaseException:
        mesh.stop()
        raise
    return Opened(mesh, owned=True)


def mesh_offer(mesh: str) -> Offer:
    """The declared offer of a mesh adapter (``istio``, ``linkerd``, ``consul``, ``gateway-api``)."""
    from workbench.backends.capabilities import ADAPTERS, load_class

    if mesh not in ADAPTERS:
        raise BackendError(f"mesh must be one of {', '.join(ADAPTERS)} (got {mesh!r})")
    return load_class(ADAPTERS[mesh]).CAPABILITIES  # type: ignore[attr-defined,no-any-return]


def mode_offer(mode: str) -> Offer:
    """The declared offer of a local sidecar mode."""
    from workbench.backends.local.layout import MODE_CAPABILITIES

    if mode not in MODE_CAPABILITIES:
        raise BackendError(f"mode must be one of {', '.join(MODE_CAPABILITIES)} (got {mode!r})")
    return MODE_CAPABILITIES[mode]


def declared(
    backend: str,
    *,
    mode: str | None = None,
    mesh: str | None = None,
    prometheus_url: str | None = None,
    dialect: str | None = None,
    traces: bool = True,
) -> Offer:
    """The offer settings describe, without starting or reaching anything.

    ``traces``: the local mesh's tracer is on (``backend.tracing``), or a cluster has a trace store
    (``backend.traces``).

    ``backend``: ``local`` (with its sidecar ``mode``) or ``kubernetes`` (with ``mesh``; ``auto`` or
    None gives the backend's own offer only: the mesh's is known once detected, at the run's start).
    """
    from workbench.backends.capabilities import LOCAL, NO_TRACING, Capability, Offer, kubernetes_offer

    if backend == "local":
        offer = LOCAL & mode_offer(mode or "both")
        if not traces:
            offer = Offer(offer.name, offer.features - {Capability.TRACES},
                          {**offer.hints, Capability.TRACES: NO_TRACING})  # fmt: skip
        return offer
    if backend != "kubernetes":
        raise BackendError(f"backend must be local or kubernetes (got {backend!r})")
    known = None if mesh in (None, "auto") else mesh
    own = kubernetes_offer(prometheus_url, known, dialect, trace_store=traces)
    return own if known is None else own & mesh_offer(known)
