"""Requests as a caller, from inside the mesh: a short-lived Job running as the caller's ServiceAccount.

An authorization check must be made *with the caller's identity*: its mTLS certificate, which the
mesh issues to pods running as the caller's ServiceAccount. So for each caller the workbench runs a
Job whose one pod runs as that ServiceAccount in the caller's namespace, joined to the mesh as the
caller's own pods are, and sends every (method, path) of that caller's checks ``attempts`` times
with curl to the service's in-cluster URL, printing one line per request::

    WB-PROBE <check> <attempt> <HTTP status, 000 without an answer> <curl exit status> <rbac|l5d|->

(``rbac``: the body starts with Envoy's "RBAC: access denied" — Istio sidecars and waypoints, Consul;
``l5d``: the answer carries Linkerd's ``l5d-proxy-error`` header), then ``WB-PROBE-DONE`` — and asks
its sidecar to exit, or the Job would never complete. Joining the mesh, per mesh and data plane:

- Istio sidecars: label ``sidecar.istio.io/inject: "true"`` and ``holdApplicationUntilProxyStarts``;
- Istio ambient: label ``istio.io/dataplane-mode: ambient`` (ztunnel carries the pod's identity; an
  L4 denial is a reset connection, counted as denied there);
- Linkerd: ``linkerd.io/inject: enabled`` with the proxy as a native sidecar (it starts first and
  stops with the pod);
- Consul: ``connect-inject`` with ``connect-service: <caller>`` (Consul's intentions name services:
  the pod speaks as the caller's service) and transparent proxy.

The pod carries only the workbench's labels — never the caller's ``app`` label, so no Service sends it
traffic. ``run_probes`` creates every caller's Job at once, waits for all (bounded), reads their logs
and deletes them — also on failure, timeout and Ctrl-C — telling ``audit`` of each Job created and
deleted. Pods are made by the Job controller: the workbench's RBAC has no write on pods.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.backends.base import Answer, BackendError, Probe
from workbench.backends.kubernetes.apply import KubernetesError, Writer
from workbench.backends.kubernetes.k6pod import LABELS, SECURITY, TTL_AFTER_FINISHED_S
from workbench.backends.kubernetes.loadjob import JOBS, PODS, job_state, pod_log, readable_tail

__all__ = [
    "PROBE_IMAGE",
    "ProbeError",
    "ProbeJob",
    "build_probe_job",
    "parse_probe_log",
    "probe_script",
    "run_probes",
]

LOADGEN = "loadgen"  # the load generator's identity: the namespace's default ServiceAccount
PROBE_IMAGE = "curlimages/curl:8.11.1"  # pinned; runs as curl_user (uid 100, gid 101)
CONTAINER = "probe"
PROBE_LABEL = "workbench.mesh/probe"
CALLER_LABEL = "workbench.mesh/caller"
START_ALLOWANCE_S = 180.0  # scheduling, image pull, sidecar start
HOLD = '{"holdApplicationUntilProxyStarts": true}'
# per mesh and data plane: pod labels, pod annotations, readiness URL to wait for, sidecar shutdown URL
_ISTIO_READY, _ISTIO_QUIT = "http://127.0.0.1:15021/healthz/ready", "http://127.0.0.1:15020/quitquitquit"
_CONSUL = {"consul.hashicorp.com/connect-inject": "true", "consul.hashicorp.com/transparent-proxy": "true",
           "consul.hashicorp.com/enable-sidecar-proxy-lifecycle": "true"}  # fmt: skip
_LINKERD = {"linkerd.io/inject": "enabled", "config.alpha.linkerd.io/proxy-enable-native-sidecar": "true"}
MESH_POD: dict[str, tuple[dict[str, str], dict[str, str], str, str]] = {
    "istio": (
        {"sidecar.istio.io/inject": "true"},
        {"proxy.istio.io/config": HOLD},
        _ISTIO_READY,
        _ISTIO_QUIT,
    ),
    "istio-ambient": ({"istio.io/dataplane-mode": "ambient", "sidecar.istio.io/inject": "false"}, {}, "", ""),
    "linkerd": ({}, _LINKERD, "http://127.0.0.1:4191/ready", ""),
    "consul": ({}, _CONSUL, "http://127.0.0.1:19000/ready", "http://127.0.0.1:20600/graceful_shutdown"),
}
# curl exit statuses a person can read (the rest: "curl exit N")
CURL_ERRORS = {6: "could not resolve the host", 7: "connection refused", 28: "timed out",
               52: "empty reply (connection closed)", 56: "connection reset"}  # fmt: skip
RESET = (52, 56)  # how an L4 (ztunnel) denial looks from the caller
_LINE = re.compile(r"^WB-PROBE (\d+) (\d+) (\d{3}) (\d+) (rbac|l5d|-)$")
_PATH = re.compile(r"^/[^\s'\"\\]*$")
Audit = Callable[..., None]


class ProbeError(BackendError):
    """A probe Job did not run or report; names the caller, the Job and why."""


def probe_script() -> str:
    """The probe pod's POSIX shell program (curl image): wait for the proxy, send, report, stop the proxy.

    Environment: ``TARGET`` (URL without path), ``PROBES`` (lines ``METHOD PATH``), ``ATTEMPTS``,
    ``TIMEOUT_S``, ``READY_URL`` and ``QUIT_URL`` (empty: none).
    """
    return """\
W=/tmp/wb; mkdir -p "$W"
if [ -n "$READY_URL" ]; then
  i=0
  until curl -fs -o /dev/null --max-time 1 "$READY_URL"; do
    i=$((i + 1)); [ "$i" -ge 60 ] && break; sleep 1
  done
fi
n=0
printf '%s\\n' "$PROBES" | while read -r method path; do
  [ -n "$method" ] || continue
  a=1
  while [ "$a" -le "$ATTEMPTS" ]; do
    if [ "$method" = HEAD ]; then how="-I"; else how="-X $method"; fi
    code=$(curl -s $how -o "$W/body" -D "$W/headers" -w '%{http_code}' --max-time "$TIMEOUT_S" "$TARGET$path")
    rc=$?
    flag=-
    [ "$(head -c 19 "$W/body" 2>/dev/null)" = "RBAC: access denied" ] && flag=rbac
    grep -qi '^l5d-proxy-error:' "$W/headers" 2>/dev/null && flag=l5d
    echo "WB-PROBE $n $a ${code:-000} $rc $flag"
    rm -f "$W/body" "$W/headers"
    a=$((a + 1))
  done
  n=$((n + 1))
done
echo "WB-PROBE-DONE"
if [ -n "$QUIT_URL" ]; then curl -s -o /dev/null -X POST --max-time 2 "$QUIT_URL" || true; fi
"""


@dataclass
class ProbeJob:
    """One caller's probe Job: its manifest and the checks it reports, in order."""

    caller: str
    name: str
    manifest: dict[str, Any]
    probes: list[tuple[str, str]]  # (method, path)
    attempts: int
    reset_is_denial: bool = False
    answers: list[list[Answer]] = field(default_factory=list)


def pod_template(
    mesh: str, dataplane: str, caller: str
) -> tuple[str, dict[str, str], dict[str, str], str, str]:
    """(mesh key, labels, annotations, readiness URL, shutdown URL): a pod in ``mesh`` as ``caller``."""
    key = "istio-ambient" if mesh == "istio" and dataplane.startswith("ambient") else mesh
    if key not in MESH_POD:
        raise ProbeError(
            f"requests as a caller need a mesh that gives pods an identity (istio, linkerd, consul); "
            f"mesh {mesh} has none: set backend.mesh to the mesh you run"
        )
    labels, annotations, ready, quit_url = MESH_POD[key]
    annotations = dict(annotations)
    if key == "consul":
        annotations["consul.hashicorp.com/connect-service"] = caller
    return key, dict(labels), annotations, ready, quit_url


def build_probe_job(
    caller: str,
    service_account: str,
    namespace: str,
    target_url: str,
    probes: Sequence[tuple[str, str]],
    attempts: int = 3,
    *,
    mesh: str = "istio",
    dataplane: str = "sidecar",
    timeout_s: float = 5.0,
    image: str = PROBE_IMAGE,
    name: str | None = None,
) -> ProbeJob:
    """The Job for ``caller``'s checks (see the module docstring); nothing is sent."""
    for method, path in probes:
        if not _PATH.match(path):
            raise ProbeError(f"probe path {path!r} must start with '/' and have no spaces or quotes")
        if not re.fullmatch(r"[A-Z]+", method):
            raise ProbeError(f"probe method {method!r} must be an HTTP method in capitals")
    key, mesh_labels, annotations, ready, quit_url = pod_template(mesh, dataplane, caller)
    name = (
        name
        or f"wb-probe-{re.sub(r'[^a-z0-9-]', '-', caller.lower())[:30].strip('-')}-{secrets.token_hex(3)}"
    )
    labels = {**LABELS, "app.kubernetes.io/name": "authz-probe", "app.kubernetes.io/component": "authz-probe",
              PROBE_LABEL: name, CALLER_LABEL: caller}  # fmt: skip
    env = {"TARGET": target_url.rstrip("/"), "PROBES": "\n".join(f"{m} {p}" for m, p in probes),
           "ATTEMPTS": str(attempts), "TIMEOUT_S": f"{timeout_s:g}", "READY_URL": ready,
           "QUIT_URL": quit_url}  # fmt: skip
    run_s = len(probes) * attempts * (timeout_s + 1)
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(START_ALLOWANCE_S + run_s),
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {
                "metadata": {"labels": {**labels, **mesh_labels}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": service_account,
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 100,
                        "runAsGroup": 101,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", probe_script()],
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"memory": "64Mi"},
                            },
                            "securityContext": SECURITY,
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    return ProbeJob(caller, name, manifest, list(probes), attempts, reset_is_denial=key == "istio-ambient")


def parse_probe_log(text: str, job: ProbeJob, pod: str = "") -> list[list[Answer]]:
    """Every check's answers from the pod's log; ProbeError naming the pod when lines are missing."""
    got: dict[tuple[int, int], Answer] = {}
    done = False
    for line in text.splitlines():
        line = line.strip()
        if line == "WB-PROBE-DONE":
            done = True
        elif m := _LINE.match(line):
            status, exit_status, flag = int(m.group(3)), int(m.group(4)), m.group(5)
            reset = status == 0 and exit_status in RESET
            denied = flag in ("rbac", "l5d") or (reset and job.reset_is_denial)
            error = "" if status else CURL_ERRORS.get(exit_status, f"curl exit {exit_status}")
            if denied and reset:
                error = "connection reset by the L4 policy (ztunnel)"
            got[int(m.group(1)), int(m.group(2))] = Answer(status, denied, error)
    expected = [(i, a) for i in range(len(job.probes)) for a in range(1, job.attempts + 1)]
    missing = [k for k in expected if k not in got]
    if missing or not done:
        raise ProbeError(
            f"probe Job {job.name} (caller {job.caller}) pod {pod or '?'} reported {len(got)} of "
            f"{len(expected)} requests{'' if done else ' and did not finish'}; last lines of its log:\n"
            f"{readable_tail(text)}"
        )
    return [[got[i, a] for a in range(1, job.attempts + 1)] for i in range(len(job.probes))]


def run_probes(
    writer: Writer,
    namespace: str,
    jobs: list[ProbeJob],
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    audit: Audit | None = None,
) -> list[ProbeJob]:
    """Create every Job, wait for all (bounded by ``timeout_s``, default from their checks), read each
    one's answers into it and delete them all — in every case, also Ctrl-C. ProbeError naming the
    caller and Job when one fails, times out or reports less than asked."""
    if writer.dry_run:
        raise BackendError("dry run: no probe Job is started (requests as a caller are real traffic)")
    timeout = (
        timeout_s if timeout_s is not None else max(j.manifest["spec"]["activeDeadlineSeconds"] for j in jobs)
    )
    created: list[ProbeJob] = []
    failure: BaseException | None = None
    try:
        for job in jobs:
            created.append(job)
            writer.apply(JOBS, job.manifest)
            if audit is not None:
                account = job.manifest["spec"]["template"]["spec"]["serviceAccountName"]
                audit("created", "Job", f"{namespace}/{job.name}", purpose="authz probe", caller=job.caller,
                      service_account=account)  # fmt: skip
        deadline = time.monotonic() + timeout
        waiting = list(jobs)
        while waiting:
            for job in list(waiting):
                status = writer.get(JOBS, namespace, job.name)
                if status is None:
                    raise ProbeError(f"probe Job {namespace}/{job.name} (caller {job.caller}) disappeared")
                state = job_state(status, 1)
                if state == "running":
                    continue
                pods = writer.list(PODS, namespace, label_selector=f"job-name={job.name}")
                ended = [p for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
                pod = ended[0] if ended else None
                if pod is None:
                    raise ProbeError(
                        f"probe Job {namespace}/{job.name} (caller {job.caller}) {state} without a pod"
                    )
                name = pod["metadata"]["name"]
                text = pod_log(writer, namespace, name, CONTAINER)
                if state == "failed":
                    raise ProbeError(
                        f"probe Job {namespace}/{job.name} (caller {job.caller}) failed; pod {name}, last "
                        f"lines of its log:\n{readable_tail(text)}"
                    )
                job.answers = parse_probe_log(text, job, name)
                waiting.remove(job)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise ProbeError(_stuck(writer, namespace, waiting, timeout))
            time.sleep(poll_s)
        return jobs
    except BaseException as exc:
        failure = exc
        raise
    finally:
        errors = []
        for job in reversed(created):
            try:
                writer.delete(JOBS, namespace, job.name)
                if audit is not None:
                    audit(
                        "deleted", "Job", f"{namespace}/{job.name}", purpose="authz probe", caller=job.caller
                    )
            except KubernetesError as exc:
                errors.append(str(exc))
        if errors:
            note = "cleanup of probe Jobs failed: " + "; ".join(errors)
            if failure is not None:
                failure.add_note(note)
            else:
                raise ProbeError(note)


def _stuck(writer: Writer, namespace: str, waiting: list[ProbeJob], timeout: float) -> str:
    """Why the Jobs still waiting have not finished: each one's pod phase and container waiting reason."""
    lines = [f"probe Jobs did not finish within {timeout:.0f} s; deleted them:"]
    for job in waiting:
        try:
            pods = writer.list(PODS, namespace, label_selector=f"job-name={job.name}")
        except KubernetesError as exc:
            pods, note = [], f" (pods could not be listed: {exc})"
        else:
            note = ""
        states = []
        for pod in pods:
            st = pod.get("status") or {}
            containers = [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]
            reasons = [((c.get("state") or {}).get("waiting") or {}).get("reason", "") for c in containers]
            why = ", ".join(r for r in reasons if r)
            states.append(f"{pod['metadata']['name']} {st.get('phase', '?')}{f' ({why})' if why else ''}")
        lines.append(f"  {job.name} (caller {job.caller}): {'; '.join(states) or 'no pod yet'}{note}")
    return "\n".join(lines)


def group(probes: Sequence[Probe]) -> dict[str, list[int]]:
    """Probe indexes per caller, callers in order of first appearance."""
    out: dict[str, list[int]] = {}
    for i, p in enumerate(probes):
        out.setdefault(p.caller, []).append(i)
    return out
