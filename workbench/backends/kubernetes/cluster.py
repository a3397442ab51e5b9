"""Cluster access and discovery: which services, versions, sidecars and mesh a cluster has.

A ``Cluster`` is one kube context (or the in-cluster service account) and a default namespace
(the context's, unless given). It builds the ``kubernetes`` ApiClient and the ``Writer`` (apply.py)
every read and write goes through, so each request is one exact, contract-tested REST call.
Discovery answers as pandas DataFrames (one row per object, tidy columns) so a notebook can show
them as they are; ``versions()`` and ``services()`` feed the mesh adapters and the Backend seam.

Reads use the raw JSON of the API (``Writer.get``/``Writer.list``), not the typed models: discovery
needs only a few fields, and a CRD the client has no model for (PeerAuthentication) reads the same way.
Credentials stay inside the ApiClient's configuration: no repr, log line or error shows them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from workbench.backends.base import Service
from workbench.backends.kubernetes.apply import CRDMissing, KubernetesError, Resource, Writer, WriteRecord
from workbench.tools import redact_url

# The core and mesh types discovery reads (the adapters declare the types they write).
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
# v1beta1 is served by every Istio release since 1.5 (v1 only since 1.22).
PEER_AUTHENTICATIONS = Resource(
    "security.istio.io", "v1beta1", "peerauthentications", "PeerAuthentication", "Istio"
)
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", "Gateway API")
GATEWAYS = Resource("gateway.networking.k8s.io", "v1", "gateways", "Gateway", "Gateway API")
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
READ_RESOURCES = (
    NAMESPACES, PODS, SERVICES, DEPLOYMENTS, REPLICASETS, STATEFULSETS, DAEMONSETS, PEER_AUTHENTICATIONS,
    GATEWAYS,
)  # fmt: skip

# Where each control plane lives by default (override with Cluster(mesh_namespaces=...)).
MESH_NAMESPACES = {"istio": "istio-system", "linkerd": "linkerd", "consul": "consul"}
# Proxy container names -> mesh (consul-k8s < 1.0 named its proxy envoy-sidecar).
SIDECARS = {
    "istio-proxy": "istio",
    "linkerd-proxy": "linkerd",
    "consul-dataplane": "consul",
    "envoy-sidecar": "consul",
}
APP_LABELS = ("app", "app.kubernetes.io/name")
VERSION_LABELS = ("version", "app.kubernetes.io/version")
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
AMBIENT_LABEL = "istio.io/dataplane-mode"
WAYPOINT_LABEL = "istio.io/use-waypoint"
WAYPOINT_CLASS = "istio-waypoint"  # the GatewayClass of Istio's waypoints
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class MeshInstall:
    """One control-plane component found in the cluster."""

    mesh: str  # istio | linkerd | consul
    namespace: str
    component: str  # Deployment or StatefulSet name
    version: str  # image tag or version label; "" when neither says
    revision: str = ""  # Istio revision (istio.io/rev)
    ready: bool = False


@dataclass
class Cluster:
    """One kube context (or in-cluster config) and a default namespace; see the module docstring.

    Build with ``Cluster.connect`` (kubeconfig, else in-cluster), ``from_kubeconfig`` or
    ``in_cluster``; the constructor takes an already-configured ``kubernetes.client.ApiClient``.
    """

    api_client: Any = field(repr=False)
    context: str
    namespace: str
    dry_run: bool = False
    server_dry_run: bool = False
    force: bool = False
    mesh_namespaces: Mapping[str, str] = field(default_factory=lambda: dict(MESH_NAMESPACES))
    writer: Writer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.writer = Writer(
            self.api_client,
            context=self.context,
            dry_run=self.dry_run,
            server_dry_run=self.server_dry_run,
            force=self.force,
        )

    def __repr__(self) -> str:
        return f"Cluster(context={self.context!r}, namespace={self.namespace!r}, server={self.server!r})"

    @property
    def server(self) -> str:
        """The API server URL (credentials in it redacted)."""
        return redact_url(str(getattr(self.api_client.configuration, "host", "")))

    @property
    def records(self) -> list[WriteRecord]:
        """Every write made (or, in a dry run, prepared) through this cluster's writer."""
        return self.writer.records

    # -----------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def connect(
        cls,
        context: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        **options: Any,
    ) -> Cluster:
        """The kubeconfig context (``KUBECONFIG`` or ~/.kube/config); in a pod without one, in-cluster."""
        path = Path(kubeconfig or _default_kubeconfig()).expanduser()
        if context is None and not path.exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster(namespace, **options)
        return cls.from_kubeconfig(context, namespace, path, **options)

    @classmethod
    def from_kubeconfig(
        cls,
        context: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        **options: Any,
    ) -> Cluster:
        """A context of a kubeconfig file; ``namespace`` defaults to the context's (else "default")."""
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        path = Path(kubeconfig or _default_kubeconfig()).expanduser()
        fix = "set KUBECONFIG, or run 'kubectl config use-context NAME', or set backend.context"
        if not path.exists():
            raise KubernetesError(f"no kubeconfig at {path}: {fix}")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            contexts = [c for c in doc.get("contexts") or [] if isinstance(c, dict)]
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise KubernetesError(f"kubeconfig {path} is not usable: {_first_line(exc)} ({fix})") from None
        names = [c.get("name") for c in contexts]
        chosen = context or doc.get("current-context")
        if not chosen:
            raise KubernetesError(f"kubeconfig {path} has no current context: {fix}")
        if chosen not in names:
            raise KubernetesError(
                f"context {chosen!r} is not in kubeconfig {path} (contexts: {', '.join(map(str, names))})"
            )
        entry = next(c for c in contexts if c.get("name") == chosen)
        try:
            api_client = config.new_client_from_config(config_file=str(path), context=chosen)
        except (ConfigException, OSError, TypeError, ValueError, AttributeError) as exc:
            raise KubernetesError(
                f"context {chosen!r} of kubeconfig {path} is not usable: {_first_line(exc)}"
            ) from None
        ns = namespace or (entry.get("context") or {}).get("namespace") or "default"
        return cls(api_client, context=chosen, namespace=ns, **options)

    @classmethod
    def in_cluster(cls, namespace: str | None = None, **options: Any) -> Cluster:
        """The pod's service account; ``namespace`` defaults to the pod's own."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise KubernetesError(f"not running in a pod with a service account: {exc}") from None
        ns = namespace
        if ns is None:
            ns_file = SA_DIR / "namespace"
            ns = ns_file.read_text().strip() if ns_file.exists() else "default"
        return cls(client.ApiClient(configuration), context="(in-cluster)", namespace=ns, **options)

    def close(self) -> None:
        """Close the connection pool."""
        self.api_client.close()

    # -----------------------------------------------------------------------------------------
    # Discovery

    def namespaces(self) -> pd.DataFrame:
        """Namespaces with their phase and which mesh injects sidecars there (label/annotation)."""
        rows = []
        for ns in self.writer.list(NAMESPACES):
            meta = ns.get("metadata") or {}
            rows.append(
                {
                    "name": meta.get("name", ""),
                    "phase": (ns.get("status") or {}).get("phase", ""),
                    "injection": _injection(meta),
                    "created": meta.get("creationTimestamp", ""),
                }
            )
        return _frame(rows, ["name", "phase", "injection", "created"])

    def deployments(self, namespace: str | None = None) -> pd.DataFrame:
        """Deployments with app/version (pod-template labels first), replicas, revision, images."""
        rows = []
        for d in self.writer.list(DEPLOYMENTS, namespace or self.namespace):
            meta, spec, status = _parts(d)
            app, version = _app_version(d)
            rows.append(
                {
                    "namespace": meta.get("namespace", ""),
                    "name": meta.get("name", ""),
                    "app": app,
                    "version": version,
                    "replicas": int(spec.get("replicas", 1) or 0),
                    "ready": int(status.get("readyReplicas", 0) or 0),
                    "revision": _revision(meta),
                    "images": [c.get("image", "") for c in _pod_spec(d).get("containers") or []],
                    "created": meta.get("creationTimestamp", ""),
                }
            )
        cols = ["namespace", "name", "app", "version", "replicas", "ready", "revision", "images", "created"]
        return _frame(rows, cols)

    def replicasets(self, namespace: str | None = None) -> pd.DataFrame:
        """ReplicaSets with their owning Deployment, app/version and rollout revision."""
        rows = []
        for rs in self.writer.list(REPLICASETS, namespace or self.namespace):
            meta, spec, status = _parts(rs)
            app, version = _app_version(rs)
            owner = next(
                (
                    o.get("name", "")
                    for o in meta.get("ownerReferences") or []
                    if o.get("kind") == "Deployment"
                ),
                "",
            )
            rows.append(
                {
                    "namespace": meta.get("namespace", ""),
                    "name": meta.get("name", ""),
                    "deployment": owner,
                    "app": app,
                    "version": version,
                    "revision": _revision(meta),
                    "replicas": int(spec.get("replicas", 0) or 0),
                    "ready": int(status.get("readyReplicas", 0) or 0),
                    "created": meta.get("creationTimestamp", ""),
                }
            )
        cols = [
            "namespace",
            "name",
            "deployment",
            "app",
            "version",
            "revision",
            "replicas",
            "ready",
            "created",
        ]
        return _frame(rows, cols)

    def kube_services(self, namespace: str | None = None) -> pd.DataFrame:
        """Kubernetes Services: type, cluster IP, ports, selector and the app it selects."""
        rows = []
        for s in self.writer.list(SERVICES, namespace or self.namespace):
            meta, spec, _ = _parts(s)
            ports = spec.get("ports") or []
            selector = spec.get("selector") or {}
            rows.append(
                {
                    "namespace": meta.get("namespace", ""),
                    "name": meta.get("name", ""),
                    "type": spec.get("type", "ClusterIP"),
                    "cluster_ip": spec.get("clusterIP", ""),
                    "port": _main_port(ports),
                    "ports": [
                        f"{p.get('name') or '-'}:{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports
                    ],
                    "selector": dict(selector),
                    "app": _first(selector, APP_LABELS),
                }
            )
        cols = ["namespace", "name", "type", "cluster_ip", "port", "ports", "selector", "app"]
        return _frame(rows, cols)

    def pods(self, namespace: str | None = None, all_namespaces: bool = False) -> pd.DataFrame:
        """Pods with their sidecar: which mesh's proxy, whether native (initContainer restartPolicy
        Always), ready; ``meshed`` is True when a known mesh proxy is present."""
        ns = None if all_namespaces else (namespace or self.namespace)
        rows = [_pod_row(p) for p in self.writer.list(PODS, ns)]
        cols = [
            "namespace",
            "name",
            "app",
            "version",
            "phase",
            "ready",
            "sidecar",
            "sidecar_container",
            "native_sidecar",
            "sidecar_ready",
            "meshed",
            "native_sidecars",
            "node",
        ]
        return _frame(rows, cols)

    def sidecar_coverage(self, namespaces: Iterable[str] | None = None) -> pd.DataFrame:
        """Meshed pods / pods per namespace (``namespaces`` None: every namespace, one cluster-wide list)."""
        chosen = None if namespaces is None else list(namespaces)
        if chosen is None:
            frame = self.pods(all_namespaces=True)
        else:
            frame = pd.concat([self.pods(ns) for ns in chosen], ignore_index=True)
        cols = ["namespace", "pods", "meshed", "coverage", "meshes"]
        rows: list[dict[str, Any]] = []
        if chosen is not None:  # asked-for namespaces without pods show up too (coverage undefined)
            present = set(frame["namespace"])
            rows += [{"namespace": ns, "pods": 0, "meshed": 0, "coverage": float("nan"), "meshes": []}
                     for ns in chosen if ns not in present]  # fmt: skip
        for ns, group in frame.groupby("namespace", sort=True):
            meshed = int(group["meshed"].sum())
            rows.append(
                {
                    "namespace": ns,
                    "pods": len(group),
                    "meshed": meshed,
                    "coverage": meshed / len(group),
                    "meshes": sorted({str(m) for m in group["sidecar"] if m}),
                }
            )
        return _frame(sorted(rows, key=lambda r: r["namespace"]), cols)

    def mesh_installs(self) -> list[MeshInstall]:
        """Every mesh control-plane component found (Istio istiod, Linkerd destination, Consul)."""
        found: list[MeshInstall] = []
        ns = self.mesh_namespaces.get("istio", "istio-system")
        for d in self.writer.list(DEPLOYMENTS, ns, label_selector="app=istiod"):
            meta = d.get("metadata") or {}
            labels = meta.get("labels") or {}
            if labels.get("app") != "istiod":  # servers filter already; cheap insurance for fakes
                continue
            found.append(
                MeshInstall(
                    "istio",
                    ns,
                    meta.get("name", ""),
                    _version(d, "discovery", ("app.kubernetes.io/version", "operator.istio.io/version")),
                    labels.get("istio.io/rev", "default"),
                    _ready(d),
                )
            )
        ztunnel = self.writer.get(DAEMONSETS, ns, "ztunnel") if found else None
        if ztunnel is not None:  # Istio's ambient node proxy: one pod per node
            labels = (ztunnel.get("metadata") or {}).get("labels") or {}
            version = _version(
                ztunnel, "istio-proxy", ("app.kubernetes.io/version", "operator.istio.io/version")
            )
            revision = labels.get("istio.io/rev", "default")
            found.append(MeshInstall("istio", ns, "ztunnel", version, revision, _daemonset_ready(ztunnel)))
        ns = self.mesh_namespaces.get("linkerd", "linkerd")
        d = self.writer.get(DEPLOYMENTS, ns, "linkerd-destination")
        if d is not None:
            labels = (d.get("metadata") or {}).get("labels") or {}
            if labels.get("linkerd.io/control-plane-ns", ns) == ns:
                version = _version(
                    d, "destination", ("app.kubernetes.io/version", "linkerd.io/control-plane-version")
                )
                found.append(MeshInstall("linkerd", ns, "linkerd-destination", version, "", _ready(d)))
        ns = self.mesh_namespaces.get("consul", "consul")
        server = self.writer.get(STATEFULSETS, ns, "consul-server")
        if server is not None:
            found.append(
                MeshInstall("consul", ns, "consul-server", _version(server, "consul", ()), "", _ready(server))
            )
        injector = self.writer.get(DEPLOYMENTS, ns, "consul-connect-injector")
        if injector is not None:
            version = _version(injector, "sidecar-injector", ("app.kubernetes.io/version",))
            found.append(MeshInstall("consul", ns, "consul-connect-injector", version, "", _ready(injector)))
        return found

    def meshes(self) -> pd.DataFrame:
        """``mesh_installs()`` as a DataFrame."""
        rows = [m.__dict__ for m in self.mesh_installs()]
        return _frame(rows, ["mesh", "namespace", "component", "version", "revision", "ready"])

    def detect_mesh(self, installs: list[MeshInstall] | None = None) -> str | None:
        """The installed mesh (istio, linkerd, consul — in that order), else "gateway-api" when the
        HTTPRoute CRD exists, else None."""
        found = {m.mesh for m in (installs if installs is not None else self.mesh_installs())}
        for mesh in ("istio", "linkerd", "consul"):
            if mesh in found:
                return mesh
        try:
            self.writer.list(HTTPROUTES, self.namespace)
        except CRDMissing:
            return None
        return "gateway-api"

    def waypoints(self, namespace: str | None = None) -> pd.DataFrame:
        """Istio's waypoints in the namespace: Gateways of class ``istio-waypoint``, what traffic each
        serves (label istio.io/waypoint-for, default service), whether it is programmed, and who uses
        it (the namespace, or the Services labelled istio.io/use-waypoint with its name). Empty when
        the Gateway API's Gateway CRD is not installed."""
        ns = namespace or self.namespace
        cols = ["namespace", "name", "waypoint_for", "programmed", "used_by"]
        try:
            gateways = self.writer.list(GATEWAYS, ns)
        except CRDMissing:
            return _frame([], cols)
        ns_obj = self.writer.get(NAMESPACES, None, ns) or {}
        ns_waypoint = ((ns_obj.get("metadata") or {}).get("labels") or {}).get(WAYPOINT_LABEL, "")
        services = {(s.get("metadata") or {}).get("name", ""): ((s.get("metadata") or {}).get("labels") or {})
                    for s in self.writer.list(SERVICES, ns)}  # fmt: skip
        rows = []
        for g in gateways:
            meta, spec, status = _parts(g)
            if spec.get("gatewayClassName") != WAYPOINT_CLASS:
                continue
            name = meta.get("name", "")
            users = ([f"namespace {ns}"] if ns_waypoint == name else []) + sorted(
                s for s, labels in services.items() if labels.get(WAYPOINT_LABEL) == name
            )
            rows.append({
                "namespace": ns, "name": name,
                "waypoint_for": (meta.get("labels") or {}).get("istio.io/waypoint-for", "service"),
                "programmed": any(c.get("type") == "Programmed" and c.get("status") == "True"
                                  for c in status.get("conditions") or []),
                "used_by": users,
            })  # fmt: skip
        return _frame(sorted(rows, key=lambda r: r["name"]), cols)

    def dataplane_summary(self, namespace: str | None = None) -> str:
        """One sentence on how the namespace's pods join the mesh (``workbench doctor``): sidecars, or
        ambient with ztunnel's readiness and each waypoint (programmed or not, who uses it)."""
        ns = namespace or self.namespace
        mode = self.dataplane(ns)
        if mode == "sidecar":
            return f"namespace {ns}: sidecars (no istio.io/dataplane-mode=ambient label)"
        ztunnel = next((m for m in self.mesh_installs() if m.component == "ztunnel"), None)
        node = "ztunnel DaemonSet missing in istio-system"
        if ztunnel is not None:
            node = f"ztunnel {ztunnel.version or '?'} {'ready' if ztunnel.ready else 'NOT ready'}"
        found = self.waypoints(ns)
        if found.empty:
            return f"namespace {ns}: ambient, {node}, no waypoint (L4 only: no L7 routing or HTTP policy)"
        listed = "; ".join(
            f"waypoint {r.name} ({'programmed' if r.programmed else 'NOT programmed'}, used by "
            f"{', '.join(r.used_by) or 'nothing'})" for r in found.itertuples()
        )  # fmt: skip
        return f"namespace {ns}: {mode}, {node}; {listed}"

    def dataplane(self, namespace: str | None = None) -> str:
        """How the namespace's pods join Istio: ``ambient`` (label istio.io/dataplane-mode=ambient, no
        waypoint), ``ambient-waypoint`` (also istio.io/use-waypoint) or ``sidecar`` (anything else)."""
        ns = self.writer.get(NAMESPACES, None, namespace or self.namespace) or {}
        labels = (ns.get("metadata") or {}).get("labels") or {}
        if labels.get(AMBIENT_LABEL) != "ambient":
            return "sidecar"
        return "ambient-waypoint" if labels.get(WAYPOINT_LABEL) else "ambient"

    def mtls(self, namespaces: Iterable[str] | None = None) -> pd.DataFrame:
        """mTLS mode per namespace: Istio PeerAuthentication (namespace-wide, else mesh-wide in the
        root namespace, else Istio's default PERMISSIVE); Linkerd and Consul: automatic between
        meshed pods; "none" without a mesh. ``workload_policies`` counts selector-scoped ones."""
        chosen = list(namespaces) if namespaces is not None else [self.namespace]
        installs = self.mesh_installs()
        mesh = next((m.mesh for m in installs), None)
        cols = ["namespace", "mesh", "mode", "source", "workload_policies"]
        if mesh is None:
            return _frame(
                [
                    {
                        "namespace": ns,
                        "mesh": "",
                        "mode": "none",
                        "source": "no mesh installed",
                        "workload_policies": 0,
                    }
                    for ns in chosen
                ],
                cols,
            )
        if mesh != "istio":
            note = {
                "linkerd": "Linkerd default: mTLS between meshed pods, on automatically",
                "consul": "Consul service mesh: mTLS between sidecars, on automatically",
            }[mesh]
            return _frame(
                [
                    {
                        "namespace": ns,
                        "mesh": mesh,
                        "mode": "automatic",
                        "source": note,
                        "workload_policies": 0,
                    }
                    for ns in chosen
                ],
                cols,
            )
        root = self.mesh_namespaces.get("istio", "istio-system")
        mesh_wide = _namespace_wide(self.writer.list(PEER_AUTHENTICATIONS, root))
        default_mode, default_source = "PERMISSIVE", "Istio default"
        if mesh_wide is not None and _pa_mode(mesh_wide):
            default_mode = _pa_mode(mesh_wide)
            default_source = f"mesh-wide PeerAuthentication {root}/{mesh_wide['metadata'].get('name', '')}"
        rows = []
        for ns in chosen:
            items = self.writer.list(PEER_AUTHENTICATIONS, ns) if ns != root else []
            own = _namespace_wide(items)
            mode, source = default_mode, default_source
            if own is not None and _pa_mode(own):
                mode, source = _pa_mode(own), f"PeerAuthentication {ns}/{own['metadata'].get('name', '')}"
            workload = sum(1 for pa in items if (pa.get("spec") or {}).get("selector"))
            rows.append(
                {
                    "namespace": ns,
                    "mesh": "istio",
                    "mode": mode,
                    "source": source,
                    "workload_policies": workload,
                }
            )
        return _frame(rows, cols)

    # -----------------------------------------------------------------------------------------
    # What the adapters and the Backend seam need

    def versions(self, namespace: str | None = None) -> dict[str, list[str]]:
        """{Service name: [versions, stable first]} from the ``version`` label of the Deployments its
        selector picks; stable = the lowest version in natural order (v1 < v2 < v10)."""
        return {s.name: list(s.versions) for s in self.services(namespace) if s.versions}

    def services(self, namespace: str | None = None) -> list[Service]:
        """The namespace's Services that select an app, with the app's versions (may be empty).

        Per-version Services (``<service>-<version>``, selecting a version label too: the backends of
        Gateway API / Linkerd HTTPRoutes) address one version of a service, not a service: left out."""
        ns = namespace or self.namespace
        by_app: dict[str, set[str]] = {}
        for d in self.writer.list(DEPLOYMENTS, ns):
            app, version = _app_version(d)
            if app:
                by_app.setdefault(app, set())
                if version:
                    by_app[app].add(version)
        out = []
        for s in self.writer.list(SERVICES, ns):
            meta, spec, _ = _parts(s)
            selector = spec.get("selector") or {}
            app = _first(selector, APP_LABELS)
            if app and not _first(selector, VERSION_LABELS):
                out.append(Service(meta.get("name", ""), tuple(sorted(by_app.get(app, ()), key=_natural))))
        return sorted(out, key=lambda s: s.name)

    def service_account(self, app: str, namespace: str | None = None) -> str:
        """The ServiceAccount the pods of ``app`` run as (its Deployments' pod template; ``default``
        when unset). KubernetesError when no Deployment runs ``app``; one that differs between the
        app's Deployments names them."""
        ns = namespace or self.namespace
        accounts = {}
        for d in self.writer.list(DEPLOYMENTS, ns):
            if _app_version(d)[0] == app:
                spec = _pod_spec(d)
                account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
                accounts[(d.get("metadata") or {}).get("name", "")] = account
        if not accounts:
            raise KubernetesError(
                f"no Deployment runs {app!r} in namespace {ns} (context {self.context})", 404
            )
        if len(set(accounts.values())) > 1:
            listed = ", ".join(f"{name}: {sa}" for name, sa in sorted(accounts.items()))
            raise KubernetesError(f"the Deployments of {app!r} run as different ServiceAccounts ({listed})")
        return next(iter(accounts.values()))

    def service_port(self, service: str, namespace: str | None = None) -> int:
        """The Service's HTTP port (a port named http*, else the first)."""
        ns = namespace or self.namespace
        obj = self.writer.get(SERVICES, ns, service)
        if obj is None:
            raise KubernetesError(f"Service {ns}/{service} not found in context {self.context}", 404)
        port = _main_port((obj.get("spec") or {}).get("ports") or [])
        if port is None:
            raise KubernetesError(f"Service {ns}/{service} has no ports (context {self.context})")
        return port


# ---------------------------------------------------------------------------------------------
# Helpers


def _default_kubeconfig() -> str:
    return os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _parts(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    return (obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {})


def _first(labels: Mapping[str, str], keys: Iterable[str]) -> str:
    return next((str(labels[k]) for k in keys if labels.get(k)), "")


def _pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    return ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}


def _app_version(workload: Mapping[str, Any]) -> tuple[str, str]:
    """app/version from the pod template's labels (what the mesh sees), else the object's own."""
    template = (((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "labels"
    ) or {}
    own = (workload.get("metadata") or {}).get("labels") or {}
    return (
        _first(template, APP_LABELS) or _first(own, APP_LABELS),
        _first(template, VERSION_LABELS) or _first(own, VERSION_LABELS),
    )


def _revision(meta: Mapping[str, Any]) -> int | None:
    value = (meta.get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _main_port(ports: list[dict[str, Any]]) -> int | None:
    named = [p for p in ports if str(p.get("name") or "").startswith("http")]
    chosen = (named or ports or [None])[0]
    return int(chosen["port"]) if chosen else None


def _natural(version: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", version)]


def _image_tag(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def _version(workload: Mapping[str, Any], container: str, labels: Iterable[str]) -> str:
    """The image tag of ``container`` (else the first container), else a version label."""
    containers = _pod_spec(workload).get("containers") or []
    chosen = next((c for c in containers if c.get("name") == container), containers[0] if containers else {})
    tag = _image_tag(str(chosen.get("image", "")))
    if tag and tag != "latest":
        return tag
    own = (workload.get("metadata") or {}).get("labels") or {}
    return _first(own, labels) or tag


def _ready(workload: Mapping[str, Any]) -> bool:
    want = int((workload.get("spec") or {}).get("replicas", 1) or 0)
    return int((workload.get("status") or {}).get("readyReplicas", 0) or 0) >= max(want, 1)


def _daemonset_ready(ds: Mapping[str, Any]) -> bool:
    status = ds.get("status") or {}
    want = int(status.get("desiredNumberScheduled", 0) or 0)
    return want > 0 and int(status.get("numberReady", 0) or 0) >= want


def _injection(meta: Mapping[str, Any]) -> str:
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if labels.get("istio-injection") == "enabled" or labels.get("istio.io/rev"):
        return "istio"
    if labels.get(AMBIENT_LABEL) == "ambient":
        return "istio-ambient"
    if annotations.get("linkerd.io/inject") == "enabled":
        return "linkerd"
    if "true" in (labels.get("connect-inject"), annotations.get("consul.hashicorp.com/connect-inject")):
        return "consul"
    return ""


def _pod_row(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec, status = _parts(pod)
    labels = meta.get("labels") or {}
    containers = [(c.get("name", ""), False) for c in spec.get("containers") or []]
    native = [
        c.get("name", "") for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"
    ]
    candidates = [(n, True) for n in native] + containers
    mesh, sidecar, is_native = "", "", False
    for name, nat in candidates:
        if name in SIDECARS:
            mesh, sidecar, is_native = SIDECARS[name], name, nat
            break
    statuses = (
        (status.get("initContainerStatuses") or []) if is_native else (status.get("containerStatuses") or [])
    )
    sidecar_ready = next((bool(s.get("ready")) for s in statuses if s.get("name") == sidecar), False)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "app": _first(labels, APP_LABELS),
        "version": _first(labels, VERSION_LABELS),
        "phase": status.get("phase", ""),
        "ready": ready,
        "sidecar": mesh,
        "sidecar_container": sidecar,
        "native_sidecar": is_native,
        "sidecar_ready": sidecar_ready,
        "meshed": bool(mesh),
        "native_sidecars": native,
        "node": spec.get("nodeName", ""),
    }


def _namespace_wide(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The PeerAuthentication without a selector (the namespace-/mesh-wide one); oldest wins."""
    wide = [pa for pa in items if not (pa.get("spec") or {}).get("selector")]
    wide.sort(key=lambda pa: (pa.get("metadata") or {}).get("creationTimestamp") or "")
    return wide[0] if wide else None


def _pa_mode(pa: Mapping[str, Any]) -> str:
    mode = str((((pa.get("spec") or {}).get("mtls") or {}).get("mode")) or "").upper()
    return "" if mode in ("", "UNSET") else mode


# ---------------------------------------------------------------------------------------------
# Releases observed


def observe_releases(cluster: Cluster, log: Any, strict: bool = True) -> list[dict[str, Any]]:
    """Record ``release_observed`` for each Deployment whose revision, version or images changed since
    the audit log last saw it in this context and namespace (and ``after: null`` for one that is gone).

    Returns the entries written. ``strict=False``: a cluster that cannot be read is skipped with a
    warning (observing releases must not stop an experiment).
    """
    try:
        current = cluster.deployments()
    except KubernetesError as exc:
        if strict:
            raise
        log_warning(f"releases not observed: {exc}")
        return []
    backend = {"type": "kubernetes", "context": cluster.context, "namespace": cluster.namespace}
    last: dict[str, dict[str, Any] | None] = {}
    for entry in log.entries(action="release_observed"):
        b, d = entry.get("backend") or {}, entry.get("details") or {}
        here = (b.get("context"), b.get("namespace")) == (cluster.context, cluster.namespace)
        if here and d.get("deployment"):
            last[d["deployment"]] = entry.get("after")
    written = []
    seen = set()
    for row in current.to_dict("records"):
        name = row["name"]
        seen.add(name)
        rev = row["revision"]
        rev = int(rev) if isinstance(rev, int | float) and not math.isnan(rev) else None  # NaN in pandas
        now = {"version": row["version"] or name, "revision": rev, "images": list(row["images"])}
        if last.get(name) != now:
            app = row["app"] or name
            written.append(log.record("release_observed", app, last.get(name), now, backend=backend,
                                      deployment=name, namespace=cluster.namespace))  # fmt: skip
    for name, after in last.items():
        if name not in seen and after is not None:
            app = next((e["target"] for e in reversed(log.entries(action="release_observed"))
                        if (e.get("details") or {}).get("deployment") == name), name)  # fmt: skip
            written.append(log.record("release_observed", app, after, None, backend=backend, deployment=name,
                                      namespace=cluster.namespace, reason="deployment removed"))  # fmt: skip
    return written


def log_warning(text: str) -> None:
    logging.getLogger("workbench.kubernetes").warning(text)
