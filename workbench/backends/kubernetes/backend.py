"""The Kubernetes backend: the Backend seam over one cluster namespace and its mesh.

Traffic operations go to the mesh adapter (istio.py, linkerd.py, consul.py, gateway_api.py), chosen
by the ``mesh`` setting or, with ``auto``, by what ``Cluster.detect_mesh`` finds; adapter classes are
imported by name on first use, so a missing mesh's module costs nothing. Every change is recorded
in ``changes`` like the local mesh's (time, action, target, before, after) plus the exact writes
(``WriteRecord``s); every applied change also goes to the audit log (``audit``; not a dry run's), and
``from_settings`` records the Deployment revisions that changed since the log last saw them
(``cluster.observe_releases``). ``dry_run=True`` sends no write: each operation returns the manifests it would
apply, and leaves the adapter's remembered state as it was. Load runs in the cluster as a k6 Job
(loadjob.py), aimed at the Service's in-cluster DNS name. ``observe`` reads what the versions' real
traffic did from the cluster's Prometheus in the mesh's telemetry dialect (the ``Observer`` seam).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.audit import AuditLog
from workbench.backends.base import Answer, BackendError, LoadTarget, Probe, Service, Split
from workbench.backends.capabilities import ADAPTERS, Offer, kubernetes_offer, load_class
from workbench.backends.kubernetes.apply import WriteRecord
from workbench.backends.kubernetes.cluster import Cluster, observe_releases
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, Retries, Route
from workbench.load.results import LoadProfile, LoadResult

# mesh -> telemetry dialect of its Prometheus (metrics/dialects.py); gateway-api has none of its own
DIALECT_OF = {"istio": "istio", "linkerd": "linkerd", "consul": "consul"}
# dialect -> the label naming the destination's Kubernetes namespace (consul's are Consul namespaces)
NAMESPACE_LABEL = {
    "istio": "destination_service_namespace",
    "istio-ambient": "destination_service_namespace",
    "linkerd": "namespace",
}
PORT_FORWARD = {
    "istio": "kubectl -n istio-system port-forward svc/prometheus 9090:9090",
    "linkerd": "kubectl -n linkerd-viz port-forward svc/prometheus 9090:9090",
    "consul": "kubectl -n consul port-forward svc/prometheus-server 9090:80",
}


class KubernetesBackend:
    """See the module docstring. Build with ``from_settings`` (experiments.yaml) or from a ``Cluster``."""

    def __init__(
        self,
        cluster: Cluster,
        mesh: str = "auto",
        prometheus_url: str | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        dialect: str | None = None,
        audit: AuditLog | None = None,
        trace_store: bool = False,
    ) -> None:
        if mesh not in ("auto", *ADAPTERS):
            raise BackendError(f"mesh must be auto or one of {', '.join(ADAPTERS)} (got {mesh!r})")
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.mesh_setting = mesh
        self._prometheus_url = prometheus_url
        self.dialect_setting = dialect
        self.trace_store = trace_store  # backend.traces is set: traces experiments can read them
        self.on_change = on_change
        context = {"type": "kubernetes", "context": cluster.context, "namespace": cluster.namespace}
        self.audit = audit or AuditLog(backend=context)
        if not self.audit.backend:  # a log given without a backend: entries still say which cluster
            self.audit.backend = context
        self.changes: list[dict[str, Any]] = []
        self._mesh: str | None = None if mesh == "auto" else mesh
        self._adapter: Any = None
        self._policies: dict[str, Policy] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        dry_run: bool = False,
        kubeconfig: str | Path | None = None,
        record_releases: bool = True,
        **options: Any,
    ) -> KubernetesBackend:
        """From experiments.yaml's ``backend:`` settings: context, namespace, prometheus_url, mesh.

        ``record_releases``: audit the releases (Deployment revision changes) made since the log's last look.
        """
        cluster = Cluster.connect(settings.context, settings.namespace, kubeconfig, dry_run=dry_run)
        url = str(settings.prometheus_url) if settings.prometheus_url else None
        options.setdefault("dialect", getattr(settings, "dialect", None))
        options.setdefault("trace_store", getattr(settings, "traces", None) is not None)
        backend = cls(cluster, mesh=settings.mesh, prometheus_url=url, **options)
        if record_releases:
            observe_releases(cluster, backend.audit, strict=False)
        return backend

    def __repr__(self) -> str:
        return f"KubernetesBackend({self.cluster!r}, mesh={self.mesh_setting!r}, dry_run={self.dry_run})"

    @property
    def dry_run(self) -> bool:
        return self.cluster.writer.dry_run

    @property
    def records(self) -> list[WriteRecord]:
        """Every write made (or prepared, in a dry run), in order."""
        return self.cluster.records

    # -----------------------------------------------------------------------------------------
    # Mesh and adapter

    @property
    def mesh(self) -> str:
        """The mesh the adapter drives: the setting, or what the cluster has (auto)."""
        if self._mesh is None:
            found = self.cluster.detect_mesh()
            if found is None:
                raise BackendError(
                    f"no service mesh found in context {self.cluster.context} (no istiod in istio-system, "
                    "no linkerd-destination in linkerd, no consul-server in consul, no Gateway API "
                    "HTTPRoute CRD): install one or set backend.mesh"
                )
            self._mesh = found
        return self._mesh

    @property
    def adapter(self) -> Any:
        """The MeshAdapter for ``mesh`` over this namespace (built on first use)."""
        if self._adapter is None:
            adapter_cls = load_class(ADAPTERS[self.mesh])
            if self.mesh == "istio" and self.cluster.dataplane() == "ambient-waypoint":
                # the waypoint routes Gateway API HTTPRoutes (istio_ambient.py says why not VirtualService)
                from workbench.backends.kubernetes.istio_ambient import IstioAmbientAdapter

                adapter_cls = IstioAmbientAdapter
            versions = self.cluster.versions()
            options: dict[str, Any] = {}
            if "ports" in {f.name for f in dataclasses.fields(adapter_cls)}:  # HTTPRoute backendRefs
                options["ports"] = {s: self.cluster.service_port(s) for s in versions}
            self._adapter = adapter_cls(self.cluster.writer, self.namespace, versions, **options)
        return self._adapter

    def capabilities(self) -> Offer:
        """What experiments can do here: the cluster backend's offer (telemetry only with a Prometheus
        URL and a dialect) and the mesh's — Istio's ambient mode without a waypoint offers L4 only,
        with one the L7 features an HTTPRoute can express (``istio_ambient.py``)."""
        own = kubernetes_offer(self._prometheus_url, self.mesh, self.dialect_setting, self.trace_store)
        mesh = self.adapter.capabilities()
        if self.mesh == "istio" and self.cluster.dataplane() == "ambient":
            from workbench.backends.kubernetes.istio import ambient_offer

            mesh = mesh & ambient_offer(self.namespace)
        return own & mesh

    def refresh(self) -> None:
        """Re-read the services' versions (after a deployment changed), keeping the traffic state."""
        if self._adapter is not None:
            self._adapter.versions = self.cluster.versions()

    # -----------------------------------------------------------------------------------------
    # The Backend seam

    def services(self) -> list[Service]:
        return self.cluster.services()

    def get_split(self, service: str) -> Split:
        """The split the cluster applies now, read from the live objects."""
        return dict(self.adapter.get_split(service))

    def set_split(self, service: str, split: Split) -> list[dict[str, Any]]:
        """Percentage weights per version; returns the applied (or, dry run, the would-be) manifests."""
        before = self.get_split(service)
        return self._change("split", service, before, dict(split), lambda a: a.set_split(service, split))

    def rollback(self, service: str) -> list[dict[str, Any]]:
        """All traffic back to the stable (first) version."""
        versions = self.cluster.versions().get(service) or []
        if not versions:
            raise BackendError(f"no versioned service {service!r} in namespace {self.namespace}")
        return self.set_split(service, {versions[0]: 100})

    def set_route(
        self, service: str, route: Route | None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Header/cookie ``route`` to ``version`` (None removes the route)."""
        before = self._state_field(service, "route", "route_version")
        after = {"match": _dump(route), "version": version}
        return self._change("route", service, before, after, lambda a: a.set_route(service, route, version))

    def set_fault(self, service: str, fault: Fault | None) -> list[dict[str, Any]]:
        """Delay or abort a share of the calls (None removes it)."""
        before = self._state_field(service, "fault")
        return self._change("fault", service, before, _dump(fault), lambda a: a.set_fault(service, fault))

    def set_policy(self, policy: Policy | None, service: str | None = None) -> list[dict[str, Any]]:
        """Authorization for calls to a service; None (with ``service``) removes the workbench's policy."""
        target = policy.service if policy is not None else service
        if target is None:
            raise BackendError("set_policy(None) needs the service whose policy to remove")
        before = _dump(self._policies.get(target))
        out = self._change("policy", target, before, _dump(policy), lambda a: a.set_policy(policy, service))
        if not self.dry_run:
            if policy is None:
                self._policies.pop(target, None)
            else:
                self._policies[target] = policy
        return out

    def set_resilience(
        self,
        service: str,
        retries: Retries | None = None,
        timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> list[dict[str, Any]]:
        """Retries, timeout and circuit breaking (outlier detection) for calls to ``service``."""
        before = self._state_field(service, "retries", "timeout_s", "breaker")
        after = {"retries": _dump(retries), "timeout_s": timeout_s, "breaker": _dump(breaker)}
        return self._change(
            "resilience",
            service,
            before,
            after,
            lambda a: a.set_resilience(service, retries=retries, timeout_s=timeout_s, breaker=breaker),
        )

    def prometheus_url(self) -> str:
        """backend.prometheus_url; a clear error, with the port-forward to run, when it is not set."""
        if self._prometheus_url:
            return self._prometheus_url
        forward = PORT_FORWARD.get(self._mesh or "", PORT_FORWARD["istio"])
        raise BackendError(
            "backend.prometheus_url is not set: the workbench reads telemetry from the cluster's "
            f"Prometheus. Port-forward it (e.g. '{forward}', or for Linkerd '{PORT_FORWARD['linkerd']}') "
            "and set prometheus_url: http://127.0.0.1:9090 in experiments.yaml"
        )

    @property
    def dialect(self) -> str:
        """The telemetry dialect of ``prometheus_url``: backend.dialect, else the mesh's own (Istio's
        ambient waypoint reports requests as ``reporter="waypoint"``: dialect istio-ambient)."""
        if self.dialect_setting:
            return self.dialect_setting
        if self.mesh == "istio" and self.cluster.dataplane() == "ambient-waypoint":
            return "istio-ambient"
        if self.mesh not in DIALECT_OF:
            raise BackendError(
                f"backend.dialect is not set: mesh {self.mesh} has no telemetry of its own to read from "
                "Prometheus; set backend.dialect to the metrics your data plane exports (istio, linkerd, "
                "consul or envoy)"
            )
        return DIALECT_OF[self.mesh]

    def observe(
        self,
        service: str,
        versions: Sequence[str],
        start: float | datetime,
        end: float | datetime,
        window_s: float,
    ) -> dict[str, pd.DataFrame]:
        """Per-window requests, errors and latency histogram of each version of ``service`` between
        ``start`` and ``end``, read from ``prometheus_url`` in ``dialect`` (inbound view: what each
        version's own sidecar saw, in this namespace). Only whole windows, aligned to multiples of
        ``window_s`` (whole seconds, at least Prometheus' scrape interval); a version with no traffic
        gets an empty frame."""
        from workbench.metrics import dialects

        if not float(window_s).is_integer() or window_s < 1:
            raise BackendError(f"window must be whole seconds >= 1 to read Prometheus (got {window_s:g})")
        dialect = self.dialect
        label = NAMESPACE_LABEL.get(dialect)
        matchers = f'{label}="{self.namespace}"' if label else ""
        frame = dialects.windows(self.prometheus_url(), dialect, start, end, int(window_s), matchers=matchers)
        return {v: dialects.arm_windows(frame, destination=service, version=v) for v in versions}

    def load_target(self, service: str) -> LoadTarget:
        """The Service's in-cluster URL, http://<svc>.<ns>.svc.cluster.local:<port> (k6 runs in a pod)."""
        port = self.cluster.service_port(service)
        url = f"http://{service}.{self.namespace}.svc.cluster.local:{port}"
        return LoadTarget(urls=(url,), headers={}, service=service)

    def run_load(self, service: str, profile: LoadProfile, **options: Any) -> LoadResult:
        """k6 in the namespace: ``loadjob.run_load_job(cluster, namespace, profile, target,
        labels={backend, namespace, service}, audit=..., **options)`` (options: parallelism, image,
        timeout_s, engine ...; the k6 operator's TestRun where installed, else an Indexed Job; samples
        followed out of the pods' logs and merged; every object created and deleted is audited and
        removed afterwards, also on failure)."""
        if self.dry_run:
            raise BackendError("dry run: no load is run against the cluster (the Job would be real traffic)")
        run_load_job = load_class("workbench.backends.kubernetes.loadjob.run_load_job")
        options.setdefault(
            "labels", {"backend": "kubernetes", "namespace": self.namespace, "service": service}
        )
        options.setdefault("audit", self.audit_workload)
        options.setdefault("poll_s", self.load_poll_s)
        target = self.load_target(service)
        return run_load_job(self.cluster, self.namespace, profile, target, **options)  # type: ignore[call-arg]

    policy_settle_s = 5.0  # the control plane pushes a new policy to the proxies within seconds
    load_poll_s = 2.0  # how often a running load's state and logs are read

    def requests_as(
        self, service: str, probes: Sequence[Probe], attempts: int = 3, timeout_s: float = 5.0
    ) -> list[list[Answer]]:
        """Each probe ``attempts`` times from inside the mesh with its caller's identity: one Job per
        caller (``probe.py``), running as the caller's ServiceAccount (``loadgen``: the namespace's
        default one, as the k6 pods run) in this namespace, joined to the mesh as the caller's pods
        are; all callers' Jobs at once, each created, deleted and audited."""
        from workbench.backends.kubernetes.probe import LOADGEN, build_probe_job, group, run_probes

        if self.dry_run:
            raise BackendError("dry run: no request is sent as a caller (a probe Job would be real traffic)")
        url = self.load_target(service).urls[0]
        dataplane = self.cluster.dataplane() if self.mesh == "istio" else "sidecar"
        by_caller = group(probes)
        jobs = []
        for caller, indexes in by_caller.items():
            account = "default" if caller == LOADGEN else self.cluster.service_account(caller)
            checks = [(probes[i].method, probes[i].path) for i in indexes]
            job = build_probe_job(caller, account, self.namespace, url, checks, attempts, mesh=self.mesh,
                                  dataplane=dataplane, timeout_s=timeout_s)  # fmt: skip
            jobs.append(job)
        run_probes(self.cluster.writer, self.namespace, jobs, audit=self.audit_workload)
        answers: list[list[Answer]] = [[] for _ in probes]
        for job, indexes in zip(jobs, by_caller.values(), strict=True):
            for i, got in zip(indexes, job.answers, strict=True):
                answers[i] = got
        return answers

    def start_load(self, service: str, profile: LoadProfile, **options: Any) -> Any:
        """Load on ``service`` while the caller does something else (a canary's roll-out): a
        ``loadjob.LoadRun`` to use as a context manager — started on entry, its state checked by
        ``poll()``, deleted on exit whatever happens. Its samples are not collected (the canary reads
        the versions' telemetry); its pods join the mesh (sidecars injected; in Istio's ambient mode
        the namespace's ztunnel and waypoint carry them), so the split applies to its requests."""
        if self.dry_run:
            raise BackendError("dry run: no load is run against the cluster (the Job would be real traffic)")
        prepare = load_class("workbench.backends.kubernetes.loadjob.prepare")
        ambient = self.mesh == "istio" and self.cluster.dataplane().startswith("ambient")
        options.setdefault("inject", None if ambient or self.mesh == "gateway-api" else True)
        labels = {
            "backend": "kubernetes",
            "namespace": self.namespace,
            "service": service,
            "purpose": "background",
        }
        options.setdefault("labels", labels)
        options.setdefault("audit", self.audit_workload)
        options.setdefault("timeout_s", profile.duration_s + 300.0)
        return prepare(
            self.cluster, self.namespace, profile, self.load_target(service), follow=False, **options
        )

    def audit_workload(self, verb: str, kind: str, name: str, **details: Any) -> None:
        """Record an object the workbench created (``verb`` created) or deleted in the cluster."""
        state = {"kind": kind, "name": name, **details}
        before, after = (None, state) if verb == "created" else (state, None)
        self.audit.record("workload", name, before, after, verb=verb, kind=kind, mesh=self._mesh)

    # -----------------------------------------------------------------------------------------
    # Internals

    def _state_field(self, service: str, *names: str) -> Any:
        state = self.adapter.state.get(service)
        if len(names) == 1:
            return _dump(getattr(state, names[0], None))
        return {n: _dump(getattr(state, n, None)) for n in names}

    def _change(
        self, action: str, target: str, before: Any, after: Any, op: Callable[[Any], list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Run ``op`` on the adapter; on failure, or in a dry run, put its remembered state back."""
        adapter = self.adapter
        saved = copy.deepcopy(adapter.state)
        first = len(self.records)
        try:
            out = op(adapter)
        except BaseException:
            adapter.state = saved
            raise
        if self.dry_run:
            adapter.state = saved
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "action": action,
            "target": target,
            "before": before,
            "after": after,
            "dry_run": self.dry_run,
            "writes": [r.to_json() for r in self.records[first:]],
        }
        self.changes.append(entry)
        if not self.dry_run:
            self.audit.record(action, target, before, after, writes=len(entry["writes"]), mesh=self._mesh)
        if self.on_change is not None:
            self.on_change(entry)
        return list(out or [])


def _dump(value: Any) -> Any:
    """JSON-able form of a config value (pydantic model, dataclass) for the change log."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return str(value)
