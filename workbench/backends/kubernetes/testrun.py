"""The k6 operator's engine: a ``TestRun`` (k6.io/v1alpha1) whose runner pods stream their samples.

Where the operator is installed (its CRD is served), ``loadjob`` hands it the run: the operator
makes ``parallelism`` runner Jobs ``<name>-1`` … ``<name>-N`` (pods labelled ``k6_cr=<name>``,
``runner=true``), gives each its execution segment, starts them together through their REST APIs
and reports ``status.stage`` (``initialization`` … ``started`` → ``finished`` or ``error``).

The operator builds the runner's command itself (``k6 run --quiet <arguments> /test/script.js
--address=0.0.0.0:6565 --paused --tag instance_id=<i> ...``), so the workbench's part sits beside k6:
``arguments`` sends its CSV into a FIFO on a shared emptyDir, a regular init container ``wb-fifo``
makes the FIFO (before k6 can start), and a native sidecar ``wb-samples`` (an init container with
``restartPolicy: Always``, Kubernetes ≥ 1.29) reads it and prints the chunks of ``chunks.py`` — so
the log the workbench follows is ``wb-samples``'s. When k6 closes the CSV the sidecar prints the
rest, asks mesh sidecars to exit (the pod could not complete with a classic Istio sidecar; the
operator's own ``scuttle`` is off because the plain k6 image has none) and waits to be stopped.
"""

from __future__ import annotations

import math
from typing import Any

from workbench.backends.base import LoadTarget
from workbench.backends.kubernetes.apply import Resource, Writer
from workbench.backends.kubernetes.chunks import FLUSH_S, emitter
from workbench.backends.kubernetes.k6pod import (
    CONFIGMAPS,
    DEFAULT_RESOURCES,
    K6_ENV,
    LABELS,
    POD_SECURITY,
    RUN_LABEL,
    SECURITY,
    WORK_DIR,
    LoadJobError,
    Workload,
    check_request,
    pod_annotations,
    sidecar_shutdown,
)
from workbench.load import k6 as k6mod
from workbench.load.results import LoadProfile

__all__ = ["SIDECAR", "TESTRUNS", "build_testrun", "sidecar_script", "testrun_workload"]

TESTRUNS = Resource("k6.io", "v1alpha1", "testruns", "TestRun", product="the k6 operator")
SIDECAR = "wb-samples"
SCRIPT_FILE = "script.js"
ARGUMENTS = f"--out csv={WORK_DIR}/samples.csv --system-tags=status,scenario --no-usage-report"


def sidecar_script(work_dir: str = WORK_DIR, flush_s: float = FLUSH_S) -> str:
    """The ``wb-samples`` sidecar: chunks of k6's CSV until k6 closes it, mesh sidecars off, then idle."""
    return f"""\
WORK="{work_dir}"
trap 'exit 0' TERM
{emitter(flush_s=flush_s)}
wb_start
wb_pump
wb_done -
{sidecar_shutdown()}
while :; do sleep 5 </dev/null >/dev/null 2>&1 & wait $!; done
"""


def build_testrun(
    name: str,
    namespace: str,
    profile: LoadProfile,
    target: LoadTarget,
    parallelism: int = 1,
    image: str = "grafana/k6:1.1.0",
    timeout_s: float | None = None,
    *,
    resources: dict[str, Any] | None = None,
    inject: bool | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap with the script, TestRun) for one load point; nothing is sent.

    ``timeout_s`` is not a TestRun field (the workbench enforces it while following); it is accepted
    for the same signature as ``loadjob.build_manifests``.
    """
    check_request(name, profile, parallelism)
    meta_labels = {**LABELS, **(labels or {}), RUN_LABEL: name}
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "data": {SCRIPT_FILE: k6mod.render_script(profile, target)},
    }
    work = [{"name": "work", "mountPath": WORK_DIR}]
    init = [
        {"name": "wb-fifo", "image": image, "command": ["sh", "-c", f"rm -f {WORK_DIR}/samples.csv && "
                                                        f"mkfifo {WORK_DIR}/samples.csv"],
         "volumeMounts": work},
        {"name": SIDECAR, "image": image, "restartPolicy": "Always",
         "command": ["sh", "-c", sidecar_script()], "volumeMounts": work,
         "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}},
    ]  # fmt: skip
    testrun = {
        "apiVersion": TESTRUNS.api_version,
        "kind": TESTRUNS.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "parallelism": parallelism,
            "separate": False,
            "script": {"configMap": {"name": name, "file": SCRIPT_FILE}},
            "arguments": ARGUMENTS,
            "quiet": "true",
            "scuttle": {"enabled": "false"},
            "runner": {
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "metadata": {"labels": meta_labels, "annotations": pod_annotations(inject)},
                "env": [{"name": k, "value": v} for k, v in K6_ENV.items()],
                "resources": resources or DEFAULT_RESOURCES,
                "securityContext": POD_SECURITY,
                "containerSecurityContext": SECURITY,
                "initContainers": init,
                "volumes": [{"name": "work", "emptyDir": {}}],
                "volumeMounts": work,
            },
        },
    }
    return configmap, testrun


def testrun_workload(
    name: str, namespace: str, configmap: dict[str, Any], testrun: dict[str, Any]
) -> Workload:
    """The k6 operator engine: state from ``status.stage``, runner pods by the operator's labels."""

    def state(writer: Writer) -> tuple[str, dict[str, Any]]:
        obj = writer.get(TESTRUNS, namespace, name)
        if obj is None:
            raise LoadJobError(
                f"k6 TestRun {namespace}/{name} disappeared while running (deleted by someone?)"
            )
        stage = (obj.get("status") or {}).get("stage") or ""
        return {"finished": "complete", "error": "failed"}.get(stage, "running"), obj

    return Workload("operator", name, namespace, int(testrun["spec"]["parallelism"]),
                    [(CONFIGMAPS, configmap), (TESTRUNS, testrun)], SIDECAR, state,
                    f"k6_cr={name},runner=true", runner_index)  # fmt: skip


def runner_index(pod: dict[str, Any]) -> int:
    """A runner pod's index: the number ending its Job's name ``<testrun>-<i>`` (from 1)."""
    job = ((pod.get("metadata") or {}).get("labels") or {}).get("job-name", "")
    tail = job.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else math.inf  # type: ignore[return-value]
