"""Kubernetes test fixtures: a contract API (pytest-httpserver) and a scenario API (kmock emulator).

``kube_api``: pytest-httpserver plus a kubeconfig (context ``lab``, namespace ``shop``, a fake bearer
token) — for contract tests that pin each request exactly (path, verb, query, content type, body,
Authorization header) and feed the 403/404/409/422 answers.

``kube_emulator``: kmock's ``KubernetesEmulator`` on its own thread and event loop (the kubernetes
client is synchronous), with the core and mesh resources declared and a schema-valid demo app loaded
(namespace ``shop``: reviews v1/v2/v3, catalog v1/v2, Services, pods with istio-proxy sidecars;
istiod and a mesh-wide STRICT PeerAuthentication in istio-system); ``KubeEmulator.flavour(mesh)``
turns it into a Linkerd, Consul or plain Gateway API cluster. kmock is early v0: everything that
knows about it stays in this file.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

TOKEN = "sekret-token-123"
CONTEXT = "lab"
NAMESPACE = "shop"
CREATED = "2024-05-01T10:00:00Z"

# --------------------------------------------------------------------------------------------
# Kubeconfig


def write_kubeconfig(path: Path, server: str, token: str = TOKEN, namespace: str = NAMESPACE) -> Path:
    """A kubeconfig with one context ``lab`` (cluster c1, user u1 with a bearer token)."""
    kc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c1", "cluster": {"server": server}}],
        "users": [{"name": "u1", "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "c1", "user": "u1", "namespace": namespace}}],
        "current-context": CONTEXT,
    }
    path.write_text(yaml.safe_dump(kc))
    return path


# --------------------------------------------------------------------------------------------
# Schema-valid objects of the demo app


def _meta(
    name: str, namespace: str | None, labels: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}/{name}")),
        "resourceVersion": "1",
        "creationTimestamp": CREATED,
    }
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    meta.update(extra)
    return meta


def namespace_obj(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(name, None, labels),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _container(name: str, image: str, port: int | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent"}
    if port:
        c["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    return c


def deployment_obj(
    app: str,
    version: str,
    namespace: str = NAMESPACE,
    image: str = "",
    port: int = 9080,
    revision: int = 1,
    replicas: int = 1,
    labels: dict[str, str] | None = None,
    container: str = "",
) -> dict[str, Any]:
    """A Deployment ``<app>-<version>`` whose pods carry app/version labels."""
    pod_labels = labels if labels is not None else {"app": app, "version": version}
    name = f"{app}-{version}" if version else app
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            name,
            namespace,
            dict(pod_labels),
            generation=revision,
            annotations={"deployment.kubernetes.io/revision": str(revision)},
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(pod_labels)},
            "template": {
                "metadata": {"labels": dict(pod_labels)},
                "spec": {
                    "containers": [_container(container or app, image or f"example/{app}:{version}", port)]
                },
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
        },
        "status": {
            "observedGeneration": revision,
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
        },
    }


def replicaset_obj(deployment: dict[str, Any], pod_hash: str) -> dict[str, Any]:
    """The ReplicaSet a Deployment controller would make (owner reference, revision annotation)."""
    d_meta = deployment["metadata"]
    labels = {**deployment["spec"]["template"]["metadata"]["labels"], "pod-template-hash": pod_hash}
    template = copy.deepcopy(deployment["spec"]["template"])
    template["metadata"]["labels"] = dict(labels)
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": d_meta["name"],
        "uid": d_meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": _meta(
            f"{d_meta['name']}-{pod_hash}",
            d_meta["namespace"],
            labels,
            ownerReferences=[owner],
            annotations=dict(d_meta["annotations"]),
        ),
        "spec": {
            "replicas": deployment["spec"]["replicas"],
            "selector": {"matchLabels": labels},
            "template": template,
        },
        "status": {
            "replicas": deployment["spec"]["replicas"],
            "readyReplicas": deployment["spec"]["replicas"],
        },
    }


def service_obj(
    name: str, port: int, namespace: str = NAMESPACE, cluster_ip: str = "10.96.0.10"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, {"app": name, "service": name}),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {}},
    }


ISTIO_PROXY = "docker.io/istio/proxyv2:1.22.3"


def pod_obj(
    name: str,
    labels: dict[str, str],
    namespace: str = NAMESPACE,
    sidecar: str | None = "istio-proxy",
    native: bool = False,
    image: str = "example/app:1",
    sidecar_image: str = ISTIO_PROXY,
) -> dict[str, Any]:
    """A running pod; ``sidecar`` as a container, or as a native sidecar (initContainer restartPolicy
    Always) when ``native``."""
    app = labels.get("app", name)
    spec: dict[str, Any] = {
        "containers": [_container(app, image, 9080)],
        "nodeName": "node-1",
        "restartPolicy": "Always",
        "serviceAccountName": "default",
    }
    statuses = [
        {
            "name": app,
            "image": image,
            "imageID": "",
            "ready": True,
            "restartCount": 0,
            "started": True,
            "state": {"running": {"startedAt": CREATED}},
        }
    ]
    init_statuses = []
    if sidecar:
        proxy = _container(sidecar, sidecar_image)
        proxy_status = {
            "name": sidecar,
            "image": sidecar_image,
            "imageID": "",
            "ready": True,
            "restartCount": 0,
            "started": True,
            "state": {"running": {"startedAt": CREATED}},
        }
        if native:
            spec["initContainers"] = [{**proxy, "restartPolicy": "Always"}]
            init_statuses.append(proxy_status)
        else:
            spec["containers"].append(proxy)
            statuses.append(proxy_status)
    status: dict[str, Any] = {
        "phase": "Running",
        "podIP": "10.244.0.12",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": CREATED}],
        "containerStatuses": statuses,
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(name, namespace, dict(labels)),
        "spec": spec,
        "status": status,
    }


def peer_authentication_obj(
    name: str, namespace: str, mode: str, selector: dict[str, str] | None = None
) -> dict:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": _meta(name, namespace),
        "spec": spec,
    }


def demo_objects() -> list[dict[str, Any]]:
    """The demo app: namespace shop with reviews v1-v3 and catalog v1-v2 (istio-proxy sidecars; catalog
    v2 as a native sidecar), a pod without sidecar, and Istio 1.22.3 in istio-system."""
    objs: list[dict[str, Any]] = [
        namespace_obj("default"),
        namespace_obj(NAMESPACE, {"istio-injection": "enabled"}),
        namespace_obj("istio-system"),
    ]
    for i, (app, version, port) in enumerate(
        [
            ("reviews", "v1", 9080),
            ("reviews", "v2", 9080),
            ("reviews", "v3", 9080),
            ("catalog", "v1", 8080),
            ("catalog", "v2", 8080),
        ]
    ):
        d = deployment_obj(app, version, port=port)
        pod_hash = f"{7 + i}f8c9d{i}b5"
        objs += [d, replicaset_obj(d, pod_hash)]
        objs.append(
            pod_obj(
                f"{app}-{version}-{pod_hash}-x{i}z",
                {"app": app, "version": version, "pod-template-hash": pod_hash},
                native=(app, version) == ("catalog", "v2"),
            )
        )
    objs += [
        service_obj("reviews", 9080, cluster_ip="10.96.0.21"),
        service_obj("catalog", 8080, cluster_ip="10.96.0.22"),
    ]
    objs.append(pod_obj("toolbox", {"run": "toolbox"}, sidecar=None, image="busybox:1.36"))
    istiod = deployment_obj(
        "istiod",
        "",
        "istio-system",
        image="docker.io/istio/pilot:1.22.3",
        port=15010,
        labels={"app": "istiod", "istio.io/rev": "default", "istio": "pilot"},
        container="discovery",
    )
    istiod_pod = pod_obj(
        "istiod-6d4f9c7b8-q2x7p",
        {"app": "istiod", "istio.io/rev": "default"},
        "istio-system",
        sidecar=None,
        image="docker.io/istio/pilot:1.22.3",
    )
    objs += [istiod, istiod_pod, peer_authentication_obj("default", "istio-system", "STRICT")]
    return objs


def statefulset_obj(
    name: str, namespace: str, image: str, labels: dict[str, str], container: str
) -> dict[str, Any]:
    """A ready StatefulSet (Consul's servers run as one)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, namespace, dict(labels), generation=1),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [_container(container, image, 8500)]},
            },
        },
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1},
    }


def version_service_obj(service: str, version: str, port: int, cluster_ip: str) -> dict[str, Any]:
    """The per-version Service ``<service>-<version>`` an HTTPRoute backendRef names."""
    obj = service_obj(f"{service}-{version}", port, cluster_ip=cluster_ip)
    obj["metadata"]["labels"] = {"app": service, "version": version}
    obj["spec"]["selector"] = {"app": service, "version": version}
    return obj


# mesh -> (sidecar container, its image) of the demo pods in that flavour
FLAVOUR_SIDECARS: dict[str, tuple[str | None, str]] = {
    "istio": ("istio-proxy", ISTIO_PROXY),
    "linkerd": ("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.14.10"),
    "consul": ("consul-dataplane", "hashicorp/consul-dataplane:1.4.1"),
    "gateway-api": (None, ""),
}
ZTUNNEL_IMAGE = "docker.io/istio/ztunnel:1.24.2"


def daemonset_obj(
    name: str, namespace: str, image: str, labels: dict[str, str], nodes: int = 2, ready: int = 2
) -> dict[str, Any]:
    """A DaemonSet with ``ready`` of ``nodes`` pods ready (Istio's ztunnel: one per node)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(name, namespace, dict(labels), generation=1),
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [_container(
                "istio-proxy", image)]}},
            "updateStrategy": {"type": "RollingUpdate"},
        },
        "status": {"currentNumberScheduled": nodes, "desiredNumberScheduled": nodes, "numberMisscheduled": 0,
                   "numberReady": ready, "numberAvailable": ready, "observedGeneration": 1},
    }  # fmt: skip


def ambient_objects(waypoint: bool = True, programmed: bool = True) -> list[dict[str, Any]]:
    """The demo cluster in Istio's ambient mode: namespace shop labelled istio.io/dataplane-mode=ambient
    (and, with ``waypoint``, istio.io/use-waypoint=waypoint), pods without sidecars, per-version
    Services (an HTTPRoute's backends), ztunnel's DaemonSet in istio-system and the waypoint Gateway
    (class istio-waypoint; ``programmed``: its status says so)."""
    from workbench.backends.kubernetes.istio_ambient import waypoint_gateway

    labels = {
        "istio.io/dataplane-mode": "ambient",
        **({"istio.io/use-waypoint": "waypoint"} if waypoint else {}),
    }
    objs = [o for o in flavour_objects("gateway-api") if o["kind"] != "Namespace"]
    objs += [
        namespace_obj(NAMESPACE, labels),
        daemonset_obj("ztunnel", "istio-system", ZTUNNEL_IMAGE, {"app": "ztunnel"}),
    ]
    if waypoint:
        gateway = waypoint_gateway(NAMESPACE)
        gateway["metadata"] = _meta("waypoint", NAMESPACE, gateway["metadata"]["labels"], generation=1)
        status = "True" if programmed else "False"
        gateway["status"] = {"conditions": [
            {"type": t, "status": status, "reason": t if programmed else "Pending", "message": "",
             "lastTransitionTime": CREATED, "observedGeneration": 1} for t in ("Accepted", "Programmed")
        ]}  # fmt: skip
        objs.append(gateway)
    return objs


ISTIO_OBJECTS = [
    ("apps/v1/deployments", "istio-system", "istiod"),
    ("v1/pods", "istio-system", "istiod-6d4f9c7b8-q2x7p"),
    ("security.istio.io/v1beta1/peerauthentications", "istio-system", "default"),
]


def flavour_objects(mesh: str) -> list[dict[str, Any]]:
    """What the demo cluster has instead of Istio in another flavour: the control plane (Linkerd's
    linkerd-destination in ``linkerd``, Consul's consul-server in ``consul``; none for plain Gateway
    API), the demo pods with that mesh's sidecar, and for HTTPRoute meshes (linkerd, gateway-api) the
    per-version Services ``<service>-<version>``. Istio's objects are ``ISTIO_OBJECTS``."""
    sidecar, image = FLAVOUR_SIDECARS[mesh]
    objs: list[dict[str, Any]] = [namespace_obj(NAMESPACE)]
    for obj in demo_objects():
        meta = obj["metadata"]
        if obj["kind"] == "Pod" and meta.get("namespace") == NAMESPACE and meta["labels"].get("version"):
            native = bool(obj["spec"].get("initContainers"))
            objs.append(
                pod_obj(meta["name"], meta["labels"], sidecar=sidecar, native=native, sidecar_image=image)
            )
    if mesh == "linkerd":
        objs.append(namespace_obj("linkerd"))
        objs.append(
            deployment_obj(
                "linkerd-destination",
                "",
                "linkerd",
                image="cr.l5d.io/linkerd/controller:stable-2.14.10",
                port=8086,
                labels={
                    "linkerd.io/control-plane-component": "destination",
                    "linkerd.io/control-plane-ns": "linkerd",
                },
                container="destination",
            )
        )
    if mesh == "consul":
        objs.append(namespace_obj("consul"))
        objs.append(
            statefulset_obj(
                "consul-server",
                "consul",
                "hashicorp/consul:1.18.1",
                {"app": "consul", "component": "server"},
                "consul",
            )
        )
    if mesh in ("linkerd", "gateway-api"):
        for i, (svc, version, port) in enumerate(
            [("reviews", "v1", 9080), ("reviews", "v2", 9080), ("reviews", "v3", 9080),
             ("catalog", "v1", 8080), ("catalog", "v2", 8080)]
        ):  # fmt: skip
            objs.append(version_service_obj(svc, version, port, f"10.96.1.{10 + i}"))
    return objs


# --------------------------------------------------------------------------------------------
# Contract fixture


@dataclass
class KubeAPI:
    """pytest-httpserver as the API server of context ``lab``; ``expect`` pins one exact request."""

    httpserver: Any
    kubeconfig: Path
    token: str = TOKEN
    context: str = CONTEXT

    @property
    def server(self) -> str:
        return self.httpserver.url_for("").rstrip("/")

    def cluster(self, **options: Any) -> Any:
        """A Cluster on context ``lab`` (namespace shop from the context unless given)."""
        from workbench.backends.kubernetes.cluster import Cluster

        return Cluster.from_kubeconfig(kubeconfig=self.kubeconfig, **options)

    def writer(self, **options: Any) -> Any:
        return self.cluster(**options).writer

    def expect(
        self,
        method: str,
        path: str,
        query: str | None = "",
        response: Any = None,
        status: int = 200,
        content_type: str | None = None,
        body: Any = None,
    ) -> Any:
        """An ordered expectation: exact method, path, query string (None: any), bearer token,
        content type and JSON body when given; answered with ``response`` as JSON."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        kwargs: dict[str, Any] = {"method": method, "headers": headers}
        if query is not None:
            kwargs["query_string"] = query
        if body is not None:
            kwargs["json"] = body
        handler = self.httpserver.expect_ordered_request(path, **kwargs)
        handler.respond_with_json(response if response is not None else {}, status=status)
        return handler


@pytest.fixture
def api(httpserver: Any) -> Any:
    """An ApiClient configured like one from a kubeconfig with a bearer token, on pytest-httpserver."""
    import kubernetes.client

    cfg = kubernetes.client.Configuration(host=httpserver.url_for("").rstrip("/"))
    cfg.api_key = {"BearerToken": f"Bearer {TOKEN}"}
    cfg.retries = 0
    return kubernetes.client.ApiClient(cfg)


def expect_apply(httpserver: Any, path: str, manifest: dict[str, Any]) -> None:
    """One ordered server-side apply of ``manifest`` at ``path``: exact verb, query, headers and body."""
    httpserver.expect_ordered_request(
        path,
        method="PATCH",
        query_string="fieldManager=mesh-workbench&force=false",
        headers={
            "Content-Type": "application/apply-patch+yaml",
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/json",
        },
        json=manifest,
    ).respond_with_json({**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "7"}})


@pytest.fixture
def writer(httpserver: Any) -> Iterator[Any]:
    """A ``Writer`` on pytest-httpserver (context ``test-ctx``, bearer token ``fake-token-123``), for
    contract tests of code that takes a Writer."""
    import kubernetes.client as k8s

    from workbench.backends.kubernetes.apply import Writer

    cfg = k8s.Configuration()
    cfg.host = httpserver.url_for("").rstrip("/")
    cfg.api_key = {"BearerToken": "fake-token-123"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    api = k8s.ApiClient(cfg)
    yield Writer(api, context="test-ctx")
    api.close()


def status_obj(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A metav1.Status error body, as the API server sends it."""
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        doc["details"] = details
    return doc


@pytest.fixture
def kube_api(httpserver: Any, tmp_path: Path) -> Iterator[KubeAPI]:
    """See ``KubeAPI``; fails the test when a request was not exactly as expected."""
    kc = write_kubeconfig(tmp_path / "kubeconfig", httpserver.url_for("").rstrip("/"))
    api = KubeAPI(httpserver, kc)
    yield api
    httpserver.check_assertions()


# --------------------------------------------------------------------------------------------
# Scenario fixture: kmock's emulator on its own thread

# (group/version/plural, kind, namespaced) of every type the workbench reads or writes.
RESOURCES: list[tuple[str, str, bool]] = [
    ("v1/namespaces", "Namespace", False),
    ("v1/pods", "Pod", True),
    ("v1/services", "Service", True),
    ("v1/configmaps", "ConfigMap", True),
    ("apps/v1/deployments", "Deployment", True),
    ("apps/v1/replicasets", "ReplicaSet", True),
    ("apps/v1/statefulsets", "StatefulSet", True),
    ("apps/v1/daemonsets", "DaemonSet", True),
    ("batch/v1/jobs", "Job", True),
]
MESH_RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "istio": [
        ("networking.istio.io/v1/virtualservices", "VirtualService", True),
        ("networking.istio.io/v1/destinationrules", "DestinationRule", True),
        ("networking.istio.io/v1beta1/virtualservices", "VirtualService", True),
        ("networking.istio.io/v1beta1/destinationrules", "DestinationRule", True),
        ("security.istio.io/v1/authorizationpolicies", "AuthorizationPolicy", True),
        ("security.istio.io/v1beta1/authorizationpolicies", "AuthorizationPolicy", True),
        ("security.istio.io/v1/peerauthentications", "PeerAuthentication", True),
        ("security.istio.io/v1beta1/peerauthentications", "PeerAuthentication", True),
    ],
    "gateway-api": [
        ("gateway.networking.k8s.io/v1/httproutes", "HTTPRoute", True),
        ("gateway.networking.k8s.io/v1/gateways", "Gateway", True),
    ],
    "linkerd": [
        ("policy.linkerd.io/v1beta3/httproutes", "HTTPRoute", True),
        ("policy.linkerd.io/v1beta1/servers", "Server", True),
        ("policy.linkerd.io/v1beta3/servers", "Server", True),
        ("policy.linkerd.io/v1alpha1/authorizationpolicies", "AuthorizationPolicy", True),
        ("policy.linkerd.io/v1alpha1/meshtlsauthentications", "MeshTLSAuthentication", True),
        ("split.smi-spec.io/v1alpha2/trafficsplits", "TrafficSplit", True),
    ],
    "consul": [
        (f"consul.hashicorp.com/v1alpha1/{plural}", kind, True)
        for plural, kind in [
            ("servicesplitters", "ServiceSplitter"),
            ("servicerouters", "ServiceRouter"),
            ("serviceresolvers", "ServiceResolver"),
            ("serviceintentions", "ServiceIntentions"),
        ]
    ],
}
_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
_POD_LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def _selected(obj: dict[str, Any], selector: str) -> bool:
    """An equality label selector (``a=b,c=d``) matches the object's labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    pairs = [part.split("=", 1) for part in selector.split(",") if "=" in part]
    return all(labels.get(k.strip()) == v.strip() for k, v in pairs)


def _emulator_class() -> type:
    """kmock's KubernetesEmulator with the quirks worked around (see ``kube_emulator``)."""
    import aiohttp.web
    import kmock

    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        async def __call__(self, raw_request: Any) -> Any:
            # Quirk 1: kmock parses /api/v1/namespaces[/<name>] as "namespace <name>, no resource" (a
            # 500, or a wrong object): serve Namespace reads from the stored objects here.
            logs = _POD_LOG_PATH.match(raw_request.path)
            if logs and raw_request.method == "GET":  # Quirk 5: pod logs (the fake kubelet writes them)
                return _serve_log(self, logs.group(1), logs.group(2), raw_request.query)
            m = _NAMESPACES_PATH.match(raw_request.path)
            if m and raw_request.method == "GET":
                await raw_request.read()
                res = kmock.resource("", "v1", "namespaces")
                live = {k[2]: o.raw for k, o in self.objects.items() if k[0] == res and not o.deleted}
                if m.group(1) is None:
                    items = [live[n] for n in sorted(live)]
                    return aiohttp.web.json_response(
                        {
                            "apiVersion": "v1",
                            "kind": "NamespaceList",
                            "metadata": {"resourceVersion": "1"},
                            "items": items,
                        }
                    )
                if m.group(1) in live:
                    return aiohttp.web.json_response(live[m.group(1)])
                return aiohttp.web.json_response(_not_found("namespaces", "", m.group(1)), status=404)
            response = await super().__call__(raw_request)
            selector = raw_request.query.get("labelSelector", "")
            if selector and raw_request.method == "GET" and getattr(response, "body", None):
                # Quirk 6: kmock lists ignore labelSelector; a real API server filters
                doc = json.loads(response.body)
                if isinstance(doc, dict) and isinstance(doc.get("items"), list):
                    doc["items"] = [o for o in doc["items"] if _selected(o, selector)]
                    return aiohttp.web.json_response(doc, status=response.status)
            return response

        async def _handle(self, request: Any) -> Any:
            declared = {(r.group, r.version, r.plural) for r in self.resources}
            res = request.resource
            if res is not None and (res.group, res.version, res.plural) not in declared:
                # Quirk 2: an undeclared resource answers "Object Not Found" on a GET by name; a real
                # API server answers a bare NotFound (no details) — what a missing CRD looks like.
                return aiohttp.web.json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": "the server could not find the requested resource",
                        "reason": "NotFound",
                        "details": {},
                        "code": 404,
                    },
                    status=404,
                )
            content_type = request.headers.get("Content-Type", "")
            if (
                res is not None
                and request.action == kmock.action.UPDATE
                and content_type.startswith("application/apply-patch")
            ):
                # Quirk 3: kmock treats every PATCH as a merge of an existing object (404 when absent).
                # Server-side apply creates a missing object, and (one field manager owning every field
                # it sets) a re-apply replaces the object's fields rather than merging stale ones in.
                if request.params.get("dryRun") == "All":
                    return aiohttp.web.json_response(request.data)
                async with self._lock:
                    key = (res, request.namespace, request.name)
                    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    new = copy.deepcopy(request.data)
                    meta = new.setdefault("metadata", {})
                    if key not in self.objects or self.objects[key].deleted:
                        meta.update(
                            uid=str(uuid.uuid4()), creationTimestamp=now, resourceVersion="1", generation=1
                        )
                        self.objects[key] = new
                    else:
                        obj = self.objects[key]
                        old = obj.raw.get("metadata", {})
                        for k in ("uid", "creationTimestamp"):
                            meta[k] = old.get(k)
                        meta["resourceVersion"] = str(int(old.get("resourceVersion", "1")) + 1)
                        meta["generation"] = int(old.get("generation", 1)) + 1
                        obj.history.append(new)
            try:
                return await super()._handle(request)
            except kmock.KubernetesObjectNotFoundError:
                # Quirk 4: kmock's 404 for a missing object has no details and another message; a
                # real API server names the object (details.name) — which is how clients tell a
                # missing object from a missing CRD.
                return aiohttp.web.json_response(
                    _not_found(res.plural, res.group, request.name or ""), status=404
                )

    return Emulator


def _serve_log(emulator: Any, namespace: str, pod: str, query: Any) -> Any:
    """``GET .../pods/<pod>/log`` from the fake kubelet's lines: ``timestamps``, ``sinceTime`` (whole
    seconds, as the API server takes it), ``tailLines``."""
    import aiohttp.web

    lines = list(getattr(emulator, "pod_logs", {}).get((namespace, pod), []))
    if not lines and (namespace, pod) not in getattr(emulator, "pod_logs", {}):
        return aiohttp.web.json_response(_not_found("pods", "", pod), status=404)
    since = query.get("sinceTime", "")
    if since:
        lines = [(t, ln) for t, ln in lines if t[:19] >= since[:19]]
    if query.get("tailLines"):
        lines = lines[-int(query["tailLines"]) :]
    stamped = query.get("timestamps") == "true"
    text = "".join(f"{t} {ln}\n" if stamped else f"{ln}\n" for t, ln in lines)
    return aiohttp.web.Response(text=text, content_type="text/plain")


def _not_found(plural: str, group: str, name: str) -> dict[str, Any]:
    qualified = f"{plural}.{group}" if group else plural
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{qualified} "{name}" not found',
        "reason": "NotFound",
        "details": {"name": name, "group": group, "kind": plural},
        "code": 404,
    }


def _key(obj: dict[str, Any]) -> tuple[str, str | None, str]:
    """(group/version/plural, namespace, name) of an object, from RESOURCES/MESH_RESOURCES by kind."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    for path, k, _ in [*RESOURCES, *(r for rs in MESH_RESOURCES.values() for r in rs)]:
        if k == kind and path.rsplit("/", 1)[0] == group_version:
            return path, obj["metadata"].get("namespace"), obj["metadata"]["name"]
    raise KeyError(f"no resource declared for {group_version} {kind}")


@dataclass
class KubeEmulator:
    """A running emulator: its kubeconfig, Cluster/backend builders and the stored objects."""

    kubeconfig: Path
    server: str
    _emulator: Any = field(repr=False)
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    token: str = TOKEN

    def cluster(self, **options: Any) -> Any:
        from workbench.backends.kubernetes.cluster import Cluster

        return Cluster.from_kubeconfig(kubeconfig=self.kubeconfig, **options)

    def backend(self, mesh: str = "auto", dry_run: bool = False, **options: Any) -> Any:
        from workbench.backends.kubernetes.backend import KubernetesBackend

        return KubernetesBackend(self.cluster(dry_run=dry_run), mesh=mesh, **options)

    def _call(self, fn: Any) -> Any:
        async def run() -> Any:
            async with self._emulator._lock:
                return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def put(self, *objs: dict[str, Any]) -> None:
        """Store objects as they are (schema-valid ones, please)."""

        def store() -> None:
            for obj in objs:
                path, ns, name = _key(obj)
                self._emulator.objects[path, ns, name] = copy.deepcopy(obj)

        self._call(store)

    def remove(self, *keys: tuple[str, str | None, str]) -> None:
        """Delete stored objects by (group/version/plural, namespace, name), as if they never were."""

        def drop() -> None:
            for key in keys:
                del self._emulator.objects[key]

        self._call(drop)

    def flavour(self, mesh: str) -> None:
        """Make the demo cluster a ``mesh`` one (istio, istio-ambient, linkerd, consul, gateway-api): see
        ``flavour_objects`` and ``ambient_objects``; Istio's control plane goes away for the others."""
        if mesh == "istio":
            return
        if mesh == "istio-ambient":  # Istio's control plane stays; its data plane is ztunnel + waypoint
            self.put(*ambient_objects())
            return
        self.remove(*ISTIO_OBJECTS)
        self.put(*flavour_objects(mesh))

    def get(self, path: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (``path`` like "networking.istio.io/v1/virtualservices"), or None."""

        def read() -> dict[str, Any] | None:
            import kmock

            key = (kmock.resource(path), namespace, name)
            if key not in self._emulator.objects or self._emulator.objects[key].deleted:
                return None
            return copy.deepcopy(self._emulator.objects[key].raw)

        return self._call(read)

    def list(self, path: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every stored object of a type (``path`` like "batch/v1/jobs"), in ``namespace`` if given."""

        def read() -> list[dict[str, Any]]:
            import kmock

            res = kmock.resource(path)
            live = [(k, o) for k, o in self._emulator.objects.items() if k[0] == res and not o.deleted]
            return [copy.deepcopy(o.raw) for k, o in live if namespace is None or k[1] == namespace]

        return self._call(read)

    def open_log(self, namespace: str, pod: str) -> None:
        """A pod's (still empty) log: its container has started."""
        self._emulator.__dict__.setdefault("pod_logs", {}).setdefault((namespace, pod), [])

    def log(self, namespace: str, pod: str, line: str) -> None:
        """Append a line to a pod's log (with the time it was written, as the kubelet keeps it)."""
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S") + f".{now.microsecond * 1000:09d}Z"
        logs = self._emulator.__dict__.setdefault("pod_logs", {})
        logs.setdefault((namespace, pod), []).append((stamp, line))

    def requests(self) -> list[tuple[str, str]]:
        """(method, path?query) of every request served through kmock (namespace reads excluded)."""
        return self._call(
            lambda: [(str(r.method.value), str(r.url.path_qs)) for r in self._emulator._requests]
        )


@pytest.fixture
def kube_emulator(tmp_path: Path) -> Iterator[KubeEmulator]:
    """kmock's KubernetesEmulator with the demo app, on a thread of its own, and a kubeconfig for it.

    Why a thread: kmock serves on the event loop it is entered in, and the kubernetes client blocks;
    on the test's own loop every request would deadlock. Quirks of kmock 0.8 worked around here:

    1. ``/api/v1/namespaces`` (and ``/api/v1/namespaces/<name>``) is parsed as "namespace <name>"
       with no resource: the list fails with a 500. Namespace GETs are served from the stored objects.
    2. An undeclared resource answers a GET by name with "Object Not Found" (only lists say "Resource
       Not Found"); a real server answers a bare NotFound. Undeclared resources get that, so a
       missing CRD looks like one.
    3. PATCH with ``application/apply-patch+yaml`` is a dict merge into an existing object (404 when
       absent). Server-side apply is emulated: create when absent (uid, creationTimestamp,
       resourceVersion), else replace the applied fields (one field manager) keeping uid and
       creationTimestamp; ``dryRun=All`` echoes the manifest and stores nothing.
    4. kmock's 404s carry no ``details.name``; they get the API server's shape (NotFound, message
       '<plural>.<group> "<name>" not found', details name/group/kind).
    Other differences left as they are: lists ignore ``labelSelector`` (filter again in tests, or
    use names), no managedFields/conflicts (409), no validation (422), no watch bookmarks.
    """
    import kmock

    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        cls = _emulator_class()
        async with cls() as emulator, kmock.Server(emulator) as server:
            for table in (RESOURCES, *MESH_RESOURCES.values()):
                for path, kind, namespaced in table:
                    emulator.resources[path] = kmock.ResourceInfo(
                        kind=kind,
                        namespaced=namespaced,
                        singular=kind.lower(),
                        verbs={"get", "list", "watch", "create", "patch", "delete"},
                    )
            for obj in demo_objects():
                p, ns, name = _key(obj)
                emulator.objects[p, ns, name] = obj
            stop = asyncio.Event()
            state.update(
                emulator=emulator,
                server=str(server.url).rstrip("/"),
                stop=stop,
                loop=asyncio.get_running_loop(),
            )
            ready.set()
            await stop.wait()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=thread_main, name="kmock-emulator", daemon=True)
    thread.start()
    if not ready.wait(15) or "error" in state:
        raise RuntimeError(f"kmock emulator did not start: {state.get('error')!r}")
    kc = write_kubeconfig(tmp_path / "kubeconfig-emulator", state["server"])
    try:
        yield KubeEmulator(kc, state["server"], state["emulator"], state["loop"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def assert_schema_valid(obj: dict[str, Any]) -> None:
    """``obj`` deserializes into the kubernetes client's model for its kind, and every field it has
    is one the model knows (the client ignores unknown fields; a real API server would not)."""
    from kubernetes import client

    model_cls = getattr(client, f"V1{obj['kind']}")
    model = model_cls.from_dict(obj)
    back = client.ApiClient().sanitize_for_serialization(model)
    _assert_known(obj, back, obj["kind"])


def _assert_known(data: Any, back: Any, where: str) -> None:
    if isinstance(data, dict):
        assert isinstance(back, dict), f"{where}: not an object in the schema"
        for k, v in data.items():
            if k in ("labels", "annotations", "matchLabels", "selector", "nodeSelector") and isinstance(
                v, dict
            ):
                continue
            assert k in back, f"{where}.{k}: not a field of the schema"
            _assert_known(v, back[k], f"{where}.{k}")
    elif isinstance(data, list):
        assert isinstance(back, list) and len(back) == len(data), f"{where}: list mismatch"
        for i, (a, b) in enumerate(zip(data, back, strict=True)):
            _assert_known(a, b, f"{where}[{i}]")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


# --------------------------------------------------------------------------------------------
# k6 output and pod logs, as load pods print them (chunks.py)

K6_HEADER = "metric_name,timestamp,metric_value,scenario,status,extra_tags,metadata"


def k6_csv(requests: int, base_ms: float = 1.0, noise: int = 0, start_us: int = 1_700_000_000_000_000) -> str:
    """A k6 ``--out csv`` file (``--system-tags=status,scenario``) of ``requests`` measured requests with
    latencies ``base_ms + i / 10`` ms, 10 ms apart, answered by v1 with 200; ``noise`` other k6 metric
    rows per request (which load pods leave out) and the measured scenario's start."""
    lines = [K6_HEADER, f"workbench_scenario_start,{start_us},{start_us / 1000:.0f},measure,,,"]
    for i in range(requests):
        ts = start_us + 10_000 * i
        lines += [f"http_req_duration,{ts},{base_ms:.6f},measure,200,," for _ in range(noise)]
        lines.append(f"workbench_req,{ts},{base_ms + i / 10:.6f},measure,200,tagged=0&version=v1,")
    return "\n".join(lines) + "\n"


def chunked_log(csv_text: str, chunk_rows: int, pod: str = "pod", exit_status: int | str = 0) -> str:
    """What ``chunks.emitter`` prints for ``csv_text``: a Python twin of the shell (its grep, split and
    awk), for API fakes; ``test_loadjob`` checks the two agree."""
    import base64
    import gzip
    import hashlib
    import re as _re

    keep = [
        ln
        for ln in csv_text.splitlines()
        if _re.match(r"^(metric_name|workbench_[a-z_]+|dropped_iterations),", ln)
    ]
    out, total = [f"WB-SAMPLES pod={pod}"], 0
    parts = [keep[i : i + chunk_rows] for i in range(0, len(keep), chunk_rows)]
    for seq, part in enumerate(parts):
        tags: list[str] = []
        rows = []
        for line in part:
            name, ts, value, scenario, status, extra = line.split(",")[:6]
            if scenario != "measure":
                continue
            if name == "workbench_req":
                if extra not in tags:
                    tags.append(extra)
                rows.append(f"0,{ts},{value},{status or 0},{tags.index(extra)}")
            elif name == "workbench_scenario_start":
                rows.append(f"1,{ts},{value},0,0")
            elif name == "dropped_iterations":
                rows.append(f"2,{ts},{value},0,0")
        data = gzip.compress("".join(r + "\n" for r in rows).encode(), mtime=0)
        out.append(f"WB-CHUNK {seq} {len(rows)} {hashlib.sha256(data).hexdigest()} {'|'.join(tags) or '-'}")
        text = base64.b64encode(data).decode()
        out += [text[i : i + 76] for i in range(0, len(text), 76)]
        out.append(f"WB-CHUNK-END {seq}")
        total += len(rows)
    out.append(f"WB-DONE chunks={len(parts)} rows={total} exit={exit_status}")
    return "\n".join(out) + "\n"


def stamped(log: str, start: float, per_line_s: float) -> str:
    """``log`` as ``GET .../log?timestamps=true`` returns it: each line after its RFC 3339 time."""
    out = []
    for i, line in enumerate(log.splitlines()):
        t = start + i * per_line_s
        whole = datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%S")
        out.append(f"{whole}.{round((t - int(t)) * 1e9):09d}Z {line}")
    return "\n".join(out) + "\n"
