"""In-cluster load: k6 pods in the namespace, their samples followed out of their logs and merged.

Two engines run the pods, chosen by ``engine`` (``auto``: the k6 operator where its ``TestRun`` CRD
is installed, else the Job):

- ``job``: an Indexed Job (``completionMode: Indexed``, ``parallelism`` pods at once); pod *i* runs
  k6's execution segment ``i/N:(i+1)/N`` of one segment sequence, so together they generate the
  profile's rate while each request is made exactly once. The k6 script is the local runner's
  (``workbench.load.k6.render_script``), kept in a ConfigMap.
- ``operator``: the k6 operator's ``TestRun`` (k6.io/v1alpha1, ``testrun.py``) — the ecosystem's own
  engine for distributed k6 — with the same script; the operator gives each runner its segment.

Either way the samples leave each pod as bounded, numbered, checksummed chunks in its log
(``chunks.py``): printed while k6 runs and read while the pod runs (``timestamps``/``sinceTime``
reads), so kubelet log rotation cannot silently cut a long run; a missing or damaged chunk is a
``LoadJobError`` naming the pod. Samples are concatenated, never averaged: percentiles come from all
requests together. Parsing is pyarrow's CSV reader, the pods' in parallel.

Meshed namespaces: the pod asks sidecars to start before k6 (Istio ``holdApplicationUntilProxyStarts``)
and, once k6 is done, asks any sidecar to exit (Istio ``/quitquitquit``, Linkerd ``/shutdown``,
Consul ``/graceful_shutdown``; each a no-op when absent), or a pod with a sidecar would never
complete. ``inject`` forces sidecar injection on or off.

``LoadRun`` is one run: ``start()`` applies its objects, ``poll()`` follows it, ``wait()`` returns the
merged ``LoadResult``, ``stop()`` deletes every object (``propagationPolicy: Background``) — also on
failure, timeout and Ctrl-C (as a context manager); ``ttlSecondsAfterFinished`` and
``activeDeadlineSeconds`` are the cluster-side safety net should the workbench itself die. A
canary's background load keeps a ``LoadRun`` going for the whole roll-out (``start_load``).
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal

import pandas as pd

from workbench.backends.base import BackendError, LoadTarget
from workbench.backends.kubernetes.apply import CRDMissing, KubernetesError, Resource, Writer, _explain
from workbench.backends.kubernetes.chunks import (
    CHUNK,
    CHUNK_END,
    CHUNK_ROWS,
    KIND_DROPPED,
    KIND_REQUEST,
    KIND_START,
    ChunkError,
    ChunkReader,
    emitter,
)
from workbench.backends.kubernetes.k6pod import (
    CONFIGMAPS,
    CONTAINER,
    DEFAULT_RESOURCES,
    INDEX_ANNOTATION,
    K6_ENV,
    K6_IMAGE,
    LABELS,
    LOG_TAIL_LINES,
    POD_SECURITY,
    RUN_LABEL,
    SCRIPT_DIR,
    SECURITY,
    START_ALLOWANCE_S,
    TTL_AFTER_FINISHED_S,
    WORK_DIR,
    LoadJobError,
    Workload,
    check_request,
    pod_annotations,
    sidecar_shutdown,
)
from workbench.backends.kubernetes.testrun import TESTRUNS, build_testrun, testrun_workload
from workbench.load import k6 as k6mod
from workbench.load.results import LoadProfile, LoadResult

__all__ = [
    "K6_IMAGE",
    "LoadJobError",
    "LoadRun",
    "PodResult",
    "build_manifests",
    "execution_segments",
    "merge_pod_results",
    "parse_pod_log",
    "pod_script",
    "run_load_job",
]

JOBS = Resource("batch", "v1", "jobs", "Job")
PODS = Resource("", "v1", "pods", "Pod")
Engine = Literal["auto", "job", "operator"]
Audit = Callable[[str, str, str], None]  # (verb: created | deleted, kind, name)


# -------------------------------------------------------------------------------------------------
# The Indexed Job's manifests


def execution_segments(parallelism: int) -> list[str]:
    """k6 execution segments of ``parallelism`` equal shares: ``["0:1/3", "1/3:2/3", "2/3:1"]``."""
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1 (got {parallelism})")
    cuts = [str(Fraction(i, parallelism)) for i in range(parallelism + 1)]
    return [f"{a}:{b}" for a, b in itertools.pairwise(cuts)]


def segment_sequence(parallelism: int) -> str:
    """The execution segment sequence all pods share, e.g. ``0,1/3,2/3,1``."""
    return ",".join(str(Fraction(i, parallelism)) for i in range(parallelism + 1))


def pod_script(script_dir: str = SCRIPT_DIR, work_dir: str = WORK_DIR, chunk_rows: int = CHUNK_ROWS) -> str:
    """The Job pod's POSIX shell program: k6 on this pod's segment writing its CSV into the chunk
    emitter's FIFO while the emitter prints chunks (``chunks.py``), then the sidecars asked to exit.

    ``JOB_COMPLETION_INDEX`` (set by Kubernetes for Indexed Jobs) picks the segment line; exit codes
    0 and 99 (thresholds failed) count as success, like the local runner.
    """
    return f"""\
WORK="{work_dir}"
{emitter(chunk_rows)}
i="${{JOB_COMPLETION_INDEX:-0}}"
seg="$(sed -n "$((i + 1))p" {script_dir}/segments.txt)"
wb_start new
(k6 run --quiet --no-summary --no-usage-report --no-color --address "127.0.0.1:${{K6_API_PORT:-6565}}" \\
  --execution-segment "$seg" --execution-segment-sequence "$(cat {script_dir}/sequence.txt)" \\
  --out "csv=$WORK/samples.csv" --system-tags=status,scenario {script_dir}/script.js
 echo "$?" > "$WORK/k6.exit"; wb_release) &
wb_pump
wait
rc="$(cat "$WORK/k6.exit" 2>/dev/null || echo 255)"
wb_done "$rc"
{sidecar_shutdown()}
[ "$rc" -eq 0 ] || [ "$rc" -eq 99 ] || exit "$rc"
"""


def job_name() -> str:
    """A fresh object name: ``wb-k6-`` and 8 hex digits."""
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
    check_request(name, profile, parallelism)
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
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", pod_script()],
        "env": [{"name": k, "value": v} for k, v in K6_ENV.items()],
        "resources": resources or DEFAULT_RESOURCES,
        "volumeMounts": [
            {"name": "script", "mountPath": SCRIPT_DIR, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        "securityContext": SECURITY,
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
                "metadata": {"labels": meta_labels, "annotations": pod_annotations(inject)},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": POD_SECURITY,
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
# Engines: how the pods are made, watched and found


def job_workload(name: str, namespace: str, configmap: dict[str, Any], job: dict[str, Any]) -> Workload:
    """The Indexed Job engine."""
    parallelism = int(job["spec"]["parallelism"])

    def state(writer: Writer) -> tuple[str, dict[str, Any]]:
        status = writer.get(JOBS, namespace, name)
        if status is None:
            raise LoadJobError(f"load Job {namespace}/{name} disappeared while running (deleted by someone?)")
        return job_state(status, parallelism), status

    return Workload("job", name, namespace, parallelism, [(CONFIGMAPS, configmap), (JOBS, job)], CONTAINER,
                    state, f"job-name={name}", job_pod_index)  # fmt: skip


def job_pod_index(pod: dict[str, Any]) -> int:
    """An Indexed Job pod's completion index (annotation, else label)."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or (meta.get("labels") or {}).get(
        INDEX_ANNOTATION, "0"
    )
    return int(value)


def job_state(job: dict[str, Any], parallelism: int) -> str:
    """``running``, ``complete`` or ``failed`` from a Job's status."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Failed") == "True" or (status.get("failed") or 0) > 0:
        return "failed"
    if conditions.get("Complete") == "True" or (status.get("succeeded") or 0) >= parallelism:
        return "complete"
    return "running"


# -------------------------------------------------------------------------------------------------
# Results


@dataclass
class PodResult:
    """One pod's measured k6 samples, dropped iterations and measured-phase start."""

    index: int
    samples: pd.DataFrame
    dropped: int
    start: datetime | None
    exit_code: int | None
    pod: str = ""


def parse_csv(reader: ChunkReader, index: int) -> PodResult:
    """A pod's samples from its complete chunks (ChunkError when any is missing): the numeric rows
    of every chunk parsed at once by pyarrow, each chunk's tag numbers shifted onto one list."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as pacsv

    parts = reader.payload()
    data = b"".join(p[2] for p in parts)
    if not data:
        raise ChunkError(f"pod {reader.pod}: k6 wrote no samples (exit status {reader.exit_status})")
    names = ["kind", "timestamp", "value", "status", "tag"]
    types = dict(zip(names, (pa.int8(), pa.int64(), pa.float64(), pa.int32(), pa.int32()), strict=True))
    table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    sizes = [len(p[1]) for p in parts]
    offsets = np.repeat(np.cumsum([0, *sizes[:-1]]), [p[0] for p in parts]).astype(np.int32)
    tag = pc.add(table["tag"].combine_chunks(), pa.array(offsets))
    tag_sets = [t for p in parts for t in p[1]]
    kind = table["kind"].combine_chunks()
    requests = pc.equal(kind, KIND_REQUEST)
    columns = [pc.filter(table[c].combine_chunks(), requests) for c in ("timestamp", "value", "status")]
    samples = k6mod.samples_from(*columns, pc.filter(tag, requests), tag_sets)
    starts = pc.filter(table["value"], pc.equal(kind, KIND_START))
    dropped = int(pc.sum(pc.filter(table["value"], pc.equal(kind, KIND_DROPPED))).as_py() or 0)
    start = datetime.fromtimestamp(pc.min(starts).as_py() / 1000, tz=UTC) if len(starts) else None
    return PodResult(index, samples, dropped, start, reader.exit_status, reader.pod)


def parse_pod_log(text: str, pod: str = "pod", index: int = 0, timestamps: bool = False) -> PodResult:
    """The samples of a whole pod log (``timestamps``: lines prefixed as ``?timestamps=true`` gives
    them). ChunkError (a BackendError) naming ``pod`` when a chunk is missing or damaged."""
    reader = ChunkReader(pod)
    reader.feed(text, timestamps=timestamps)
    return parse_csv(reader, index)


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


def parse_pods(readers: list[tuple[int, ChunkReader]], workers: int = 4) -> list[PodResult]:
    """Every pod's samples, parsed in parallel (pyarrow and zlib release the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(readers)))) as pool:
        return list(pool.map(lambda item: parse_csv(item[1], item[0]), readers))


# -------------------------------------------------------------------------------------------------
# Reading the API


def _writer(writer_or_cluster: Any) -> Writer:
    if isinstance(writer_or_cluster, Writer):
        return writer_or_cluster
    writer = getattr(writer_or_cluster, "writer", None)
    if isinstance(writer, Writer):
        return writer
    raise TypeError(
        f"expected a Writer or an object with a .writer (a Cluster), got {type(writer_or_cluster)}"
    )


def pod_log(
    writer: Writer,
    namespace: str,
    pod: str,
    container: str = CONTAINER,
    tail_lines: int | None = None,
    since_time: str = "",
    timestamps: bool = False,
) -> str:
    """A container's log (``GET /api/v1/namespaces/<ns>/pods/<pod>/log``) as text."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    query = [("container", container)]
    if timestamps:
        query.append(("timestamps", "true"))
    if since_time:
        query.append(("sinceTime", since_time))
    if tail_lines:
        query.append(("tailLines", str(tail_lines)))
    api = writer.api_client
    try:
        method, url, headers, body, _ = api.param_serialize(
            method="GET", resource_path=PODS.path(namespace, pod) + "/log", query_params=query,
            header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"],
        )  # fmt: skip
        response = api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=writer.timeout_s
        )
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


def readable_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log without the chunks' base64 (what a person can read)."""
    out, inside = [], False
    for line in text.splitlines():
        bare = line.split(" ", 1)[1] if line[:4].isdigit() and " " in line else line  # timestamps=true
        if bare.startswith(CHUNK_END):
            inside = False
        elif bare.startswith(CHUNK):
            inside = True
        elif not inside:
            out.append(line)
    return "\n".join(out[-lines:]).strip() or "(empty log)"


# -------------------------------------------------------------------------------------------------
# One run


@dataclass
class LoadRun:
    """One load point in the cluster; see the module docstring."""

    writer: Writer
    workload: Workload
    profile: LoadProfile
    target: LoadTarget
    image: str
    timeout_s: float
    labels: dict[str, Any] = field(default_factory=dict)
    audit: Audit | None = None
    follow: bool = True  # False: only watch its state (load whose samples are not wanted)
    readers: dict[str, tuple[int, ChunkReader]] = field(default_factory=dict)
    _finished: set[str] = field(default_factory=set)
    _applied: list[tuple[Resource, str]] = field(default_factory=list)
    _deadline: float = 0.0

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def where(self) -> str:
        kind = "load Job" if self.workload.engine == "job" else "k6 TestRun"
        return f"{kind} {self.workload.namespace}/{self.name}"

    def start(self) -> LoadRun:
        """Apply the objects (a failure part way deletes what was applied: see ``stop``)."""
        if self.writer.dry_run:
            raise BackendError("dry run: no load is started (build_manifests() shows what would be applied)")
        self._deadline = time.monotonic() + self.timeout_s
        for res, manifest in self.workload.objects:
            self._applied.append((res, manifest["metadata"]["name"]))
            self.writer.apply(res, manifest)
            if self.audit is not None:
                self.audit("created", res.kind, f"{self.workload.namespace}/{manifest['metadata']['name']}")
        return self

    def poll(self) -> str:
        """One look: the workload's state, and the new log lines of every started pod. LoadJobError
        when it failed (with each failed pod's last lines) or ran past its deadline."""
        state, status = self.workload.state(self.writer)
        pods = self.writer.list(PODS, self.workload.namespace, label_selector=self.workload.pod_selector)
        for pod in sorted(pods, key=self.workload.index_of) if self.follow else []:
            self._follow(pod)
        if state == "failed":
            raise LoadJobError(self._failure(status, pods))
        if state == "running" and time.monotonic() > self._deadline:
            seen = status.get("status") or {}
            raise LoadJobError(
                f"{self.where} did not finish within {self.timeout_s:.0f} s (status: {seen}); deleted it"
            )
        return state

    def _follow(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        if name in self._finished or phase not in ("Running", "Succeeded", "Failed"):
            return
        _, reader = self.readers.setdefault(name, (self.workload.index_of(pod), ChunkReader(name)))
        text = pod_log(self.writer, self.workload.namespace, name, self.workload.container,
                       since_time=reader.since_time(), timestamps=True)  # fmt: skip
        try:
            reader.feed(text)
        except ChunkError as exc:
            raise LoadJobError(f"{self.where}: {exc}") from None
        if phase in ("Succeeded", "Failed"):
            self._finished.add(name)

    def wait(self, poll_s: float = 2.0) -> LoadResult:
        """Follow until complete; the merged samples of every pod (LoadJobError naming a pod whose
        samples are missing or damaged)."""
        while self.poll() != "complete":
            time.sleep(poll_s)
        return self.result()

    def result(self) -> LoadResult:
        """The merged samples of a completed run."""
        by_index: dict[int, tuple[int, ChunkReader]] = {}
        for name, (index, reader) in self.readers.items():
            if name in self._finished:
                by_index.setdefault(index, (index, reader))
        first = 1 if self.workload.engine == "operator" else 0
        missing = sorted(set(range(first, first + self.workload.parallelism)) - set(by_index))
        if missing:
            raise LoadJobError(f"{self.where} completed but the pods of indexes {missing} are gone")
        try:
            pods = parse_pods([by_index[i] for i in sorted(by_index)])
        except ChunkError as exc:
            raise LoadJobError(f"{self.where}: {exc}") from None
        failed = [p for p in pods if p.exit_code not in (None, 0, k6mod.EXIT_THRESHOLDS_FAILED)]
        if failed:
            raise LoadJobError(f"{self.where}: k6 in pod {failed[0].pod} exited with {failed[0].exit_code}")
        meta = {**self.labels, "backend": "kubernetes", "namespace": self.workload.namespace,
                "job": self.name, "engine": self.workload.engine, "parallelism": self.workload.parallelism,
                "image": self.image}  # fmt: skip
        return merge_pod_results(pods, self.profile, self.target, self.image, meta)

    def stop(self) -> list[str]:
        """Delete every applied object (newest first); the errors, if any."""
        errors = []
        for res, name in reversed(self._applied):
            try:
                self.writer.delete(res, self.workload.namespace, name)
                if self.audit is not None:
                    self.audit("deleted", res.kind, f"{self.workload.namespace}/{name}")
            except KubernetesError as exc:
                errors.append(str(exc))
        self._applied.clear()
        return errors

    def __enter__(self) -> LoadRun:
        try:
            return self.start()
        except BaseException as exc:
            self._stop_noting(exc)
            raise

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self._stop_noting(exc)

    def _stop_noting(self, failure: BaseException | None) -> None:
        errors = self.stop()
        if errors:
            note = f"cleanup of {self.where} failed: " + "; ".join(errors)
            if failure is not None:
                failure.add_note(note)
            else:
                raise LoadJobError(note)  # the run succeeded but left objects behind

    def _failure(self, status: dict[str, Any], pods: list[dict[str, Any]]) -> str:
        """What failed: the status and the readable log tail of each failed pod."""
        st = status.get("status") or {}
        failed = next((c for c in st.get("conditions") or [] if c.get("type") == "Failed"), {})
        detail = (
            f"{st.get('failed', 0)} pod(s) failed"
            if self.workload.engine == "job"
            else f"stage {st.get('stage')}"
        )
        if failed:
            detail += f"; {failed.get('reason')}: {failed.get('message', '')}".rstrip(": ")
        lines = [f"{self.where} failed ({detail})"]
        for pod in sorted(pods, key=self.workload.index_of):
            if (pod.get("status") or {}).get("phase") != "Failed":
                continue
            name = pod["metadata"]["name"]
            try:
                text = pod_log(
                    self.writer, self.workload.namespace, name, self.workload.container, tail_lines=200
                )
                tail = readable_tail(text)
            except KubernetesError as exc:
                tail = f"(log unavailable: {exc})"
            lines.append(
                f"--- pod {name} (index {self.workload.index_of(pod)}), last lines of its log:\n{tail}"
            )
        return "\n".join(lines)


def operator_installed(writer: Writer, namespace: str) -> bool:
    """Whether the k6 operator's TestRun CRD is served (a list in ``namespace`` answers)."""
    try:
        writer.list(TESTRUNS, namespace)
    except CRDMissing:
        return False
    return True


def prepare(
    writer_or_cluster: Any,
    namespace: str,
    profile: LoadProfile,
    target: LoadTarget,
    parallelism: int = 1,
    image: str = K6_IMAGE,
    timeout_s: float | None = None,
    *,
    name: str | None = None,
    resources: dict[str, Any] | None = None,
    inject: bool | None = None,
    labels: dict[str, Any] | None = None,
    engine: Engine = "auto",
    audit: Audit | None = None,
    follow: bool = True,
) -> LoadRun:
    """A ``LoadRun`` not yet started (``engine`` auto: the operator where its CRD is, else the Job;
    ``follow`` False: its samples are not read, only its state watched)."""
    writer = _writer(writer_or_cluster)
    if writer.dry_run:
        raise BackendError("dry run: no load Job is started (build_manifests() shows what would be applied)")
    if engine not in ("auto", "job", "operator"):
        raise ValueError(f"engine must be auto, job or operator (got {engine!r})")
    name = name or job_name()
    timeout = timeout_s if timeout_s is not None else default_timeout(profile)
    str_labels = {k: str(v) for k, v in (labels or {}).items()}
    use_operator = engine == "operator" or (engine == "auto" and operator_installed(writer, namespace))
    if use_operator:
        configmap, testrun = build_testrun(name, namespace, profile, target, parallelism, image, timeout,
                                           resources=resources, inject=inject, labels=str_labels)  # fmt: skip
        workload = testrun_workload(name, namespace, configmap, testrun)
    else:
        configmap, job = build_manifests(name, namespace, profile, target, parallelism, image, timeout,
                                         resources=resources, inject=inject, labels=str_labels)  # fmt: skip
        workload = job_workload(name, namespace, configmap, job)
    return LoadRun(writer, workload, profile, target, image, timeout, dict(labels or {}), audit, follow)


def run_load_job(
    writer_or_cluster: Any,
    namespace: str,
    profile: LoadProfile,
    target: LoadTarget,
    *args: Any,
    poll_s: float = 2.0,
    **options: Any,
) -> LoadResult:
    """Run one load point in ``namespace`` and return the merged measured samples.

    ``writer_or_cluster``: an ``apply.Writer``, or any object with a ``.writer`` (a ``Cluster``);
    ``args``/``options`` are ``prepare``'s: ``parallelism``, ``image``, ``timeout_s`` (default: run
    time + in-flight timeout + 300 s) bounds the wait, ``inject`` forces mesh sidecar injection on/off
    (None: the namespace's default), ``engine``, ``audit`` is told of every object created and
    deleted. LoadJobError when the run fails (with each failed pod's log tail), times out or loses
    samples; its objects are deleted in every case, also on Ctrl-C.
    """
    run = prepare(writer_or_cluster, namespace, profile, target, *args, **options)
    with run:
        return run.wait(poll_s)
