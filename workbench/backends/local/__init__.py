"""The embedded local mesh: real Envoy sidecars, a demo app with versions, Prometheus and k6 on 127.0.0.1."""

from __future__ import annotations

from typing import Any

__all__ = ["LocalMesh", "MeshProcessError"]


def __getattr__(name: str) -> Any:
    # Lazy, so the demo app processes (which import topology only) start quickly.
    if name in __all__:
        from workbench.backends.local import mesh

        return getattr(mesh, name)
    raise AttributeError(name)
