"""A kubelet for the kmock emulator: the Jobs the workbench creates really run, here, as processes.

kmock stores objects; nothing runs them. ``FakeKubelet`` watches the emulator's Jobs and runs each
pod's container command (its ``sh -c`` program: the k6 load pod with real k6, the authz probe with
real curl) on this machine, with

- its volumes: a ConfigMap's data written to a directory, an emptyDir a fresh directory — every
  mount path in the program (and in the ConfigMap's files) replaced by that directory;
- its network: ``http://<service>.<ns>.svc.cluster.local:<port>`` replaced by the data plane's
  server for that service (``tests/dataplane.py``); a probe's requests carry its mesh identity —
  the ServiceAccount, or Consul's ``connect-service`` — as ``/~as~<identity>`` (a sidecar would);
- its environment: the container's, ``JOB_COMPLETION_INDEX``, ``HOSTNAME`` (the pod name), a free
  ``K6_API_PORT``, ``PATH`` with this venv's k6; no sidecar runs, so a probe's proxy readiness and
  shutdown URLs are blank (the data plane plays the proxies).

Pod objects (``job-name`` label, completion index annotation, phase Running → Succeeded/Failed) and
Job status (active/succeeded/failed and the Complete/Failed condition) are written back as the Job
controller would; every output line goes to the pod's log with its time (the emulator serves
``GET .../log`` with ``timestamps``/``sinceTime``). A Job deleted while running has its processes
killed and its pods removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOBS, PODS, CONFIGMAPS = "batch/v1/jobs", "v1/pods", "v1/configmaps"
CLUSTER_URL = re.compile(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:\d+")
CREATED = "2024-05-01T10:00:00Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Pod:
    namespace: str
    name: str
    job: str
    index: int
    proc: subprocess.Popen[str]
    reader: threading.Thread


@dataclass
class FakeKubelet:
    """See the module docstring. ``emulator``: a ``tests.kube.KubeEmulator``; ``dataplane``: a
    ``tests.dataplane.FakeDataPlane`` (its ``url(service)``)."""

    emulator: Any
    dataplane: Any
    root: Path
    pods: dict[tuple[str, str], list[_Pod]] = field(default_factory=dict)  # (ns, job) -> pods
    started: set[tuple[str, str, str]] = field(default_factory=set)  # (ns, job, uid)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)

    def __enter__(self) -> FakeKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        for pods in self.pods.values():
            for pod in pods:
                _kill(pod.proc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # surfaced by the tests through .errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.2)

    def _sync(self) -> None:
        jobs = {(j["metadata"]["namespace"], j["metadata"]["name"]): j for j in self.emulator.list(JOBS)}
        for key, job in jobs.items():
            uid = str(job["metadata"].get("uid"))
            if (*key, uid) not in self.started:
                self.started.add((*key, uid))
                self._start(job)
            else:
                self._update(key, job)
        for key in [k for k in self.pods if k not in jobs]:  # deleted: stop its pods, remove them
            for pod in self.pods.pop(key):
                _kill(pod.proc)
                self.emulator.remove((PODS, pod.namespace, pod.name))

    # --------------------------------------------------------------------------------------------

    def _start(self, job: dict[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        spec = job["spec"]
        template = spec["template"]
        pods = []
        for index in range(int(spec.get("completions") or 1)):
            pod_name = f"{name}-{index}-{secrets.token_hex(3)}"
            labels = {**(template["metadata"].get("labels") or {}), "job-name": name,
                      "batch.kubernetes.io/job-completion-index": str(index)}  # fmt: skip
            annotations = {**(template["metadata"].get("annotations") or {}),
                           "batch.kubernetes.io/job-completion-index": str(index)}  # fmt: skip
            meta = {"name": pod_name, "namespace": ns, "labels": labels, "annotations": annotations,
                    "uid": secrets.token_hex(8), "creationTimestamp": CREATED}  # fmt: skip
            spec_ = {**template["spec"], "nodeName": "node-1"}
            pod_obj = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": spec_,
                "status": {"phase": "Running"},
            }
            self.emulator.put(pod_obj)
            self.emulator.open_log(ns, pod_name)
            proc = self._run(ns, pod_name, index, template)
            reader = threading.Thread(target=self._read, args=(ns, pod_name, proc), daemon=True)
            reader.start()
            pods.append(_Pod(ns, pod_name, name, index, proc, reader))
        self.pods[(ns, name)] = pods
        self._status(job, pods)

    def _run(self, ns: str, pod: str, index: int, template: dict[str, Any]) -> subprocess.Popen[str]:
        spec = template["spec"]
        container = spec["containers"][0]
        workdir = self.root / pod
        workdir.mkdir(parents=True)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: dict[str, Path] = {}
        identity = self._identity(template)
        for vm in container.get("volumeMounts") or []:
            local = workdir / vm["name"]
            local.mkdir(exist_ok=True)
            mounts[vm["mountPath"]] = local
            cm = (volumes.get(vm["name"]) or {}).get("configMap")
            if cm:
                data = (self.emulator.get(CONFIGMAPS, ns, cm["name"]) or {}).get("data") or {}
                for key, text in data.items():
                    (local / key).write_text(self._network(text, identity=""))
        program = container["command"][2]
        if mounts:  # each mount path where it stands as a path, in one pass (never inside a replacement)
            paths = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
            pattern = re.compile(rf"(?<![\w./$-])({paths})(?=[/\"'\s]|$)")
            program = pattern.sub(lambda m: str(mounts[m.group(1)]), program)
        env = {
            **os.environ,
            "JOB_COMPLETION_INDEX": str(index),
            "HOSTNAME": pod,
            "K6_API_PORT": str(_free_port()),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        for item in container.get("env") or []:
            env[item["name"]] = self._network(str(item.get("value", "")), identity)
        env.update(READY_URL="", QUIT_URL="")  # no sidecar runs here: nothing to wait for or to stop
        return subprocess.Popen(["sh", "-c", program], cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)  # fmt: skip

    def _identity(self, template: dict[str, Any]) -> str:
        """The mesh identity a pod's requests carry: Consul's service name, else its ServiceAccount."""
        annotations = template["metadata"].get("annotations") or {}
        return annotations.get("consul.hashicorp.com/connect-service") or template["spec"].get(
            "serviceAccountName", "default"
        )

    def _network(self, text: str, identity: str) -> str:
        def local(m: re.Match[str]) -> str:
            url = self.dataplane.url(m.group(1))
            return f"{url}/~as~{identity}" if identity else url

        return CLUSTER_URL.sub(local, text)

    def _read(self, ns: str, pod: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.emulator.log(ns, pod, line.rstrip("\n"))

    def _update(self, key: tuple[str, str], job: dict[str, Any]) -> None:
        pods = self.pods.get(key, [])
        if job.get("status", {}).get("conditions"):
            return  # finished already
        changed = False
        for pod in pods:
            if pod.proc.poll() is not None:
                pod.reader.join(5)
                phase = "Succeeded" if pod.proc.returncode == 0 else "Failed"
                obj = self.emulator.get(PODS, pod.namespace, pod.name)
                if obj is not None and obj["status"].get("phase") != phase:
                    obj["status"]["phase"] = phase
                    self.emulator.put(obj)
                    changed = True
        if changed:
            self._status(job, pods)

    def _status(self, job: dict[str, Any], pods: list[_Pod]) -> None:
        done = [p for p in pods if p.proc.poll() is not None]
        succeeded = sum(1 for p in done if p.proc.returncode == 0)
        failed = len(done) - succeeded
        status: dict[str, Any] = {"active": len(pods) - len(done), "succeeded": succeeded, "failed": failed}
        if failed:
            status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": "Job has reached the specified backoff limit"}]  # fmt: skip
        elif succeeded == len(pods):
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        current = self.emulator.get(JOBS, job["metadata"]["namespace"], job["metadata"]["name"])
        if current is not None:
            current["status"] = status
            self.emulator.put(current)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ------------------------------------------------------------------------------------------------
# A whole cluster for scenario tests: emulator flavour, more services, data plane, kubelet, Prometheus

EXTRA_SERVICES = [("frontend", "v1", 8000), ("ratings", "v1", 9080), ("pricing", "v1", 8080)]


def add_services(emulator: Any, mesh: str) -> None:
    """frontend, ratings and pricing (the default suite's other services), as the demo's are made."""
    from kube import FLAVOUR_SIDECARS, deployment_obj, pod_obj, service_obj, version_service_obj

    sidecar, image = FLAVOUR_SIDECARS[mesh]
    objs = []
    for i, (app, version, port) in enumerate(EXTRA_SERVICES):
        objs.append(deployment_obj(app, version, port=port))
        objs.append(pod_obj(f"{app}-{version}-5d7f-x{i}", {"app": app, "version": version}, sidecar=sidecar,
                            sidecar_image=image or "docker.io/istio/proxyv2:1.22.3"))  # fmt: skip
        objs.append(service_obj(app, port, cluster_ip=f"10.96.2.{10 + i}"))
        if mesh in ("linkerd", "gateway-api"):
            objs.append(version_service_obj(app, version, port, f"10.96.3.{10 + i}"))
    emulator.put(*objs)


@contextmanager
def prometheus_scraping(target: str, root: Path, basic_auth: tuple[str, str] | None = None) -> Iterator[str]:
    """A real Prometheus on a free port scraping ``target`` (``http://host:port``) every second; with
    ``basic_auth`` its API wants that user and password (the URL given back carries them)."""
    import requests

    root.mkdir(parents=True, exist_ok=True)
    web: list[str] = []
    if basic_auth is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

            hashed = crypt.crypt(basic_auth[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        (root / "web.yml").write_text(f"basic_auth_users: {{{basic_auth[0]}: '{hashed}'}}\n")
        web = [f"--web.config.file={root / 'web.yml'}"]
    host = target.split("://", 1)[1]
    (root / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: mesh, static_configs: [{{targets: ['{host}']}}]}}]\n"
    )
    port = _free_port()
    log = (root / "prometheus.log").open("wb")
    args = ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *web]  # fmt: skip
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "prometheus.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=1, auth=basic_auth).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.1)
        userinfo = f"{basic_auth[0]}:{basic_auth[1]}@" if basic_auth else ""
        yield f"http://{userinfo}127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class _Reads:
    """What an adapter's ``read_split`` needs of a Writer (``get``), straight from the emulator's store."""

    emulator: Any
    dry_run: bool = False

    def get(self, res: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        group = f"{res.group}/" if res.group else ""
        return self.emulator.get(f"{group}{res.version}/{res.plural}", namespace, name)  # type: ignore[no-any-return]


@dataclass
class Rig:
    """A running scenario cluster: the emulator (a ``mesh`` flavour), its data plane and kubelet."""

    emulator: Any
    mesh: str
    dataplane: Any
    kubelet: FakeKubelet


@contextmanager
def running_cluster(emulator: Any, mesh: str, root: Path, dialect: str | None = None) -> Iterator[Rig]:
    """The demo cluster as ``mesh`` with the default suite's services, a data plane answering from its
    objects (telemetry in ``dialect``: the mesh's own, istio for gateway-api) and a kubelet running
    its Jobs. Everything stops when the block ends."""
    from dataplane import FakeDataPlane

    from workbench.backends.kubernetes.backend import KubernetesBackend

    emulator.flavour(mesh)
    add_services(emulator, mesh)
    accounts = []  # each app runs as a ServiceAccount named like it, as Istio's samples do
    for d in emulator.list("apps/v1/deployments", "shop"):
        d["spec"]["template"]["spec"]["serviceAccountName"] = d["spec"]["template"]["metadata"]["labels"][
            "app"
        ]
        accounts.append(d)
    emulator.put(*accounts)
    backend = KubernetesBackend(emulator.cluster(), mesh=mesh)
    versions = backend.cluster.versions()
    dialect = dialect or {"gateway-api": "istio"}.get(mesh, mesh)
    adapter = backend.adapter
    adapter.writer = _Reads(emulator)  # the data plane reads the objects directly, not through the API
    plane = FakeDataPlane(mesh, "shop", emulator.get, adapter, versions, dialect=dialect).start()
    try:
        with FakeKubelet(emulator, plane, root / "kubelet") as kubelet:
            yield Rig(emulator, mesh, plane, kubelet)
    finally:
        plane.stop()
