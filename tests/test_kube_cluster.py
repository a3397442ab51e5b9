"""Cluster access, discovery, writes and the Kubernetes backend.

Contract tests (``kube_api``: pytest-httpserver) pin every request: path, verb, query, bearer token,
content type, body — and the 403/404/409/422/unreachable answers. Scenario tests (``kube_emulator``:
kmock) run discovery and a split → read-back → rollback against an in-memory API server.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube import (
    CONTEXT,
    TOKEN,
    assert_schema_valid,
    demo_objects,
    deployment_obj,
    namespace_obj,
    peer_authentication_obj,
    pod_obj,
    replicaset_obj,
    service_obj,
    status_obj,
    write_kubeconfig,
)

from workbench.backends.base import Backend, BackendError, LoadTarget
from workbench.backends.kubernetes.apply import (
    APPLY_PATCH,
    MERGE_PATCH,
    CRDMissing,
    KubernetesError,
    Resource,
)
from workbench.backends.kubernetes.backend import ADAPTERS, KubernetesBackend
from workbench.backends.kubernetes.cluster import Cluster

VS = Resource("networking.istio.io", "v1", "virtualservices", "VirtualService", "Istio")
VS_PATH = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices"
ISTIOD_QUERY = "labelSelector=app%3Distiod"
REPO = Path(__file__).resolve().parents[1]


def _list(kind: str, items: list[dict[str, Any]], api_version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": f"{kind}List",
        "metadata": {"resourceVersion": "42"},
        "items": items,
    }


def _vs(weights: dict[str, int]) -> dict[str, Any]:
    route = [{"destination": {"host": "reviews", "subset": v}, "weight": w} for v, w in weights.items()]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": [{"name": "default", "route": route}]},
    }


def _expect_no_mesh(api: Any, istiod: list[dict[str, Any]] | None = None) -> None:
    """The reads of mesh detection, answering "nothing here" (or istiod; then ztunnel is looked for,
    Istio's ambient node proxy, and is not there)."""
    api.expect(
        "GET",
        "/apis/apps/v1/namespaces/istio-system/deployments",
        ISTIOD_QUERY,
        _list("Deployment", istiod or [], "apps/v1"),
    )
    paths = [("/apis/apps/v1/namespaces/istio-system/daemonsets/ztunnel", "daemonsets")] if istiod else []
    for path, plural in [
        *paths,
        ("/apis/apps/v1/namespaces/linkerd/deployments/linkerd-destination", "deployments"),
        ("/apis/apps/v1/namespaces/consul/statefulsets/consul-server", "statefulsets"),
        ("/apis/apps/v1/namespaces/consul/deployments/consul-connect-injector", "deployments"),
    ]:
        name = path.rsplit("/", 1)[1]
        api.expect(
            "GET",
            path,
            "",
            status_obj(
                404,
                "NotFound",
                f'{plural}.apps "{name}" not found',
                {"name": name, "group": "apps", "kind": plural},
            ),
            status=404,
        )


# ---------------------------------------------------------------------------------------------
# Fixtures are schema-valid


def test_demo_and_contract_objects_are_schema_valid() -> None:
    objs = [o for o in demo_objects() if o["kind"] != "PeerAuthentication"]
    objs += [
        pod_obj("p", {"app": "a"}, sidecar="linkerd-proxy"),
        deployment_obj("a", "v1", labels={"app.kubernetes.io/name": "a", "app.kubernetes.io/version": "1.0"}),
    ]
    for obj in objs:
        assert_schema_valid(obj)
    with pytest.raises(AssertionError, match="not a field"):
        assert_schema_valid({**namespace_obj("x"), "spec": {"finalizer": ["typo"]}})


# ---------------------------------------------------------------------------------------------
# Connecting


def test_cluster_from_kubeconfig_takes_context_and_namespace(kube_api: Any, tmp_path: Path) -> None:
    cluster = kube_api.cluster()
    assert (cluster.context, cluster.namespace, cluster.server) == (CONTEXT, "shop", kube_api.server)
    assert kube_api.cluster(namespace="other").namespace == "other"
    assert TOKEN not in repr(cluster) and TOKEN not in repr(cluster.writer)
    with pytest.raises(KubernetesError, match=r"context 'nope' is not in kubeconfig .* \(contexts: lab\)"):
        kube_api.cluster(context="nope")
    with pytest.raises(KubernetesError, match=r"no kubeconfig at .*missing.*set KUBECONFIG"):
        Cluster.from_kubeconfig(kubeconfig=tmp_path / "missing")
    bare = yaml.safe_load(kube_api.kubeconfig.read_text())
    del bare["current-context"], bare["contexts"][0]["context"]["namespace"]
    (tmp_path / "bare").write_text(yaml.safe_dump(bare))
    with pytest.raises(KubernetesError, match="has no current context"):
        Cluster.from_kubeconfig(kubeconfig=tmp_path / "bare")
    assert Cluster.from_kubeconfig("lab", kubeconfig=tmp_path / "bare").namespace == "default"
    bare["contexts"][0]["context"]["cluster"] = "gone"
    (tmp_path / "broken").write_text(yaml.safe_dump(bare))
    with pytest.raises(KubernetesError, match=r"context 'lab' of kubeconfig .*broken is not usable"):
        Cluster.from_kubeconfig("lab", kubeconfig=tmp_path / "broken")


# ---------------------------------------------------------------------------------------------
# Discovery contracts


def test_namespaces_read(kube_api: Any) -> None:
    items = [
        namespace_obj("shop", {"istio-injection": "enabled"}),
        namespace_obj("web"),
        namespace_obj("amb", {"istio.io/dataplane-mode": "ambient"}),
    ]
    items[1]["metadata"]["annotations"] = {"linkerd.io/inject": "enabled"}
    kube_api.expect("GET", "/api/v1/namespaces", "", _list("Namespace", items))
    frame = kube_api.cluster().namespaces()
    assert frame.to_dict("records") == [
        {"name": "shop", "phase": "Active", "injection": "istio", "created": "2024-05-01T10:00:00Z"},
        {"name": "web", "phase": "Active", "injection": "linkerd", "created": "2024-05-01T10:00:00Z"},
        {"name": "amb", "phase": "Active", "injection": "istio-ambient", "created": "2024-05-01T10:00:00Z"},
    ]


def test_deployments_and_replicasets_read(kube_api: Any) -> None:
    d1 = deployment_obj("reviews", "v1", revision=3)
    d2 = deployment_obj(
        "catalog", "", labels={"app.kubernetes.io/name": "catalog", "app.kubernetes.io/version": "2.1"}
    )
    kube_api.expect(
        "GET", "/apis/apps/v1/namespaces/shop/deployments", "", _list("Deployment", [d1, d2], "apps/v1")
    )
    kube_api.expect(
        "GET",
        "/apis/apps/v1/namespaces/web/replicasets",
        "",
        _list("ReplicaSet", [replicaset_obj(d1, "5d8f7c9b6")], "apps/v1"),
    )
    cluster = kube_api.cluster()
    deps = cluster.deployments()
    assert deps[["name", "app", "version", "replicas", "ready", "revision"]].to_dict("records") == [
        {"name": "reviews-v1", "app": "reviews", "version": "v1", "replicas": 1, "ready": 1, "revision": 3},
        {"name": "catalog", "app": "catalog", "version": "2.1", "replicas": 1, "ready": 1, "revision": 1},
    ]
    assert deps["images"].tolist() == [["example/reviews:v1"], ["example/catalog:"]]
    rs = cluster.replicasets("web")
    assert rs[["name", "deployment", "app", "version", "revision"]].to_dict("records") == [
        {
            "name": "reviews-v1-5d8f7c9b6",
            "deployment": "reviews-v1",
            "app": "reviews",
            "version": "v1",
            "revision": 3,
        }
    ]


def test_services_pods_and_coverage_read(kube_api: Any) -> None:
    svc = service_obj("reviews", 9080)
    svc["spec"]["ports"].insert(0, {"name": "grpc", "port": 9090, "targetPort": 9090, "protocol": "TCP"})
    kube_api.expect("GET", "/api/v1/namespaces/shop/services", "", _list("Service", [svc]))
    pods = [
        pod_obj("a", {"app": "reviews", "version": "v1"}),
        pod_obj(
            "b", {"app": "web"}, sidecar="linkerd-proxy", sidecar_image="cr.l5d.io/linkerd/proxy:edge-24.5.1"
        ),
        pod_obj("c", {"app": "api"}, sidecar="consul-dataplane", native=True),
        pod_obj("d", {"app": "job"}, sidecar=None),
    ]
    pods[3]["spec"]["initContainers"] = [
        {"name": "log-shipper", "image": "fluent-bit:3", "restartPolicy": "Always"}
    ]
    kube_api.expect("GET", "/api/v1/namespaces/shop/pods", "", _list("Pod", pods))
    other = pod_obj("e", {"app": "x"}, namespace="web", sidecar=None)
    kube_api.expect("GET", "/api/v1/pods", "", _list("Pod", [*pods, other]))
    cluster = kube_api.cluster()

    services = cluster.kube_services()
    assert services.loc[0, "port"] == 9080  # the http port, not the first
    assert services.loc[0, "ports"] == ["grpc:9090/TCP", "http:9080/TCP"]
    assert services.loc[0, "app"] == "reviews"

    frame = cluster.pods()
    cols = ["name", "sidecar", "sidecar_container", "native_sidecar", "sidecar_ready", "meshed"]
    assert frame[cols].to_dict("records") == [
        {
            "name": "a",
            "sidecar": "istio",
            "sidecar_container": "istio-proxy",
            "native_sidecar": False,
            "sidecar_ready": True,
            "meshed": True,
        },
        {
            "name": "b",
            "sidecar": "linkerd",
            "sidecar_container": "linkerd-proxy",
            "native_sidecar": False,
            "sidecar_ready": True,
            "meshed": True,
        },
        {
            "name": "c",
            "sidecar": "consul",
            "sidecar_container": "consul-dataplane",
            "native_sidecar": True,
            "sidecar_ready": True,
            "meshed": True,
        },
        {
            "name": "d",
            "sidecar": "",
            "sidecar_container": "",
            "native_sidecar": False,
            "sidecar_ready": False,
            "meshed": False,
        },
    ]
    assert frame.loc[3, "native_sidecars"] == ["log-shipper"]

    coverage = cluster.sidecar_coverage()
    assert coverage.to_dict("records") == [
        {
            "namespace": "shop",
            "pods": 4,
            "meshed": 3,
            "coverage": 0.75,
            "meshes": ["consul", "istio", "linkerd"],
        },
        {"namespace": "web", "pods": 1, "meshed": 0, "coverage": 0.0, "meshes": []},
    ]


def test_versions_and_services_for_the_seam(kube_api: Any) -> None:
    deps = [deployment_obj("reviews", v) for v in ("v10", "v2", "v1")] + [deployment_obj("db", "")]
    services = [service_obj("reviews", 9080), service_obj("db", 5432)]
    for _ in range(2):
        kube_api.expect(
            "GET", "/apis/apps/v1/namespaces/shop/deployments", "", _list("Deployment", deps, "apps/v1")
        )
        kube_api.expect("GET", "/api/v1/namespaces/shop/services", "", _list("Service", services))
    kube_api.expect("GET", "/api/v1/namespaces/shop/services/reviews", "", services[0])
    cluster = kube_api.cluster()
    assert cluster.versions() == {"reviews": ["v1", "v2", "v10"]}  # stable first, natural order
    assert [(s.name, s.versions) for s in cluster.services()] == [
        ("db", ()),
        ("reviews", ("v1", "v2", "v10")),
    ]
    assert cluster.service_port("reviews") == 9080


def test_mesh_detection_istio(kube_api: Any) -> None:
    istiod = deployment_obj(
        "istiod",
        "",
        "istio-system",
        image="docker.io/istio/pilot:1.22.3",
        container="discovery",
        labels={"app": "istiod", "istio.io/rev": "1-22-3"},
    )
    _expect_no_mesh(kube_api, [istiod])
    frame = kube_api.cluster().meshes()
    assert frame.to_dict("records") == [
        {
            "mesh": "istio",
            "namespace": "istio-system",
            "component": "istiod",
            "version": "1.22.3",
            "revision": "1-22-3",
            "ready": True,
        }
    ]


def test_mesh_detection_linkerd_and_consul(kube_api: Any) -> None:
    kube_api.expect(
        "GET",
        "/apis/apps/v1/namespaces/istio-system/deployments",
        ISTIOD_QUERY,
        _list("Deployment", [], "apps/v1"),
    )
    dest = deployment_obj(
        "linkerd-destination",
        "",
        "linkerd",
        image="cr.l5d.io/linkerd/controller:edge-24.5.1",
        container="destination",
        labels={
            "linkerd.io/control-plane-ns": "linkerd",
            "linkerd.io/control-plane-component": "destination",
        },
    )
    kube_api.expect("GET", "/apis/apps/v1/namespaces/linkerd/deployments/linkerd-destination", "", dest)
    server = deployment_obj(
        "consul-server",
        "",
        "consul",
        image="hashicorp/consul:1.18.1",
        container="consul",
        labels={"app": "consul", "component": "server"},
    )
    server.update(kind="StatefulSet")
    server["spec"].pop("strategy")
    server["spec"]["serviceName"] = "consul-server"
    kube_api.expect("GET", "/apis/apps/v1/namespaces/consul/statefulsets/consul-server", "", server)
    injector = deployment_obj(
        "consul-connect-injector",
        "",
        "consul",
        container="sidecar-injector",
        image="hashicorp/consul-k8s-control-plane:1.4.1@sha256:abc",
        labels={"app": "consul", "component": "connect-injector"},
    )
    kube_api.expect(
        "GET", "/apis/apps/v1/namespaces/consul/deployments/consul-connect-injector", "", injector
    )
    assert_schema_valid(server)
    cluster = kube_api.cluster()
    installs = cluster.mesh_installs()
    assert [(m.mesh, m.component, m.version) for m in installs] == [
        ("linkerd", "linkerd-destination", "edge-24.5.1"),
        ("consul", "consul-server", "1.18.1"),
        ("consul", "consul-connect-injector", "1.4.1"),
    ]
    assert cluster.detect_mesh(installs) == "linkerd"


def test_mesh_detection_gateway_api_or_nothing(kube_api: Any) -> None:
    _expect_no_mesh(kube_api)
    kube_api.expect(
        "GET",
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes",
        "",
        _list("HTTPRoute", [], "gateway.networking.k8s.io/v1"),
    )
    _expect_no_mesh(kube_api)
    kube_api.expect(
        "GET",
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes",
        "",
        status_obj(404, "NotFound", "the server could not find the requested resource", {}),
        status=404,
    )
    cluster = kube_api.cluster()
    assert cluster.detect_mesh() == "gateway-api"
    assert cluster.detect_mesh() is None


def test_mtls_modes_from_peer_authentications(kube_api: Any) -> None:
    istiod = deployment_obj(
        "istiod",
        "",
        "istio-system",
        image="docker.io/istio/pilot:1.22.3",
        container="discovery",
        labels={"app": "istiod"},
    )
    _expect_no_mesh(kube_api, [istiod])
    pa_path = "/apis/security.istio.io/v1beta1/namespaces/{}/peerauthentications"
    pa_list = lambda *items: _list("PeerAuthentication", list(items), "security.istio.io/v1beta1")  # noqa: E731
    kube_api.expect(
        "GET",
        pa_path.format("istio-system"),
        "",
        pa_list(peer_authentication_obj("default", "istio-system", "STRICT")),
    )
    kube_api.expect(
        "GET",
        pa_path.format("shop"),
        "",
        pa_list(
            peer_authentication_obj("default", "shop", "PERMISSIVE"),
            peer_authentication_obj("db", "shop", "DISABLE", selector={"app": "db"}),
        ),
    )
    kube_api.expect("GET", pa_path.format("web"), "", pa_list(peer_authentication_obj("x", "web", "UNSET")))
    # no mesh-wide policy: Istio's default
    _expect_no_mesh(kube_api, [istiod])
    kube_api.expect("GET", pa_path.format("istio-system"), "", pa_list())
    kube_api.expect("GET", pa_path.format("shop"), "", pa_list())
    cluster = kube_api.cluster()
    frame = cluster.mtls(["shop", "web"])
    assert frame.to_dict("records") == [
        {
            "namespace": "shop",
            "mesh": "istio",
            "mode": "PERMISSIVE",
            "source": "PeerAuthentication shop/default",
            "workload_policies": 1,
        },
        {
            "namespace": "web",
            "mesh": "istio",
            "mode": "STRICT",
            "source": "mesh-wide PeerAuthentication istio-system/default",
            "workload_policies": 0,
        },
    ]
    assert cluster.mtls().to_dict("records") == [
        {
            "namespace": "shop",
            "mesh": "istio",
            "mode": "PERMISSIVE",
            "source": "Istio default",
            "workload_policies": 0,
        }
    ]


def test_mtls_linkerd_is_automatic(kube_api: Any) -> None:
    kube_api.expect(
        "GET",
        "/apis/apps/v1/namespaces/istio-system/deployments",
        ISTIOD_QUERY,
        _list("Deployment", [], "apps/v1"),
    )
    dest = deployment_obj(
        "linkerd-destination",
        "",
        "linkerd",
        image="cr.l5d.io/linkerd/controller:stable-2.14.10",
        labels={"linkerd.io/control-plane-ns": "linkerd"},
        container="destination",
    )
    kube_api.expect("GET", "/apis/apps/v1/namespaces/linkerd/deployments/linkerd-destination", "", dest)
    for path in ("statefulsets/consul-server", "deployments/consul-connect-injector"):
        name = path.split("/")[1]
        kube_api.expect(
            "GET",
            f"/apis/apps/v1/namespaces/consul/{path}",
            "",
            status_obj(404, "NotFound", f'x "{name}" not found', {"name": name}),
            status=404,
        )
    row = kube_api.cluster().mtls().to_dict("records")[0]
    assert (row["mesh"], row["mode"]) == ("linkerd", "automatic") and "meshed pods" in row["source"]


# ---------------------------------------------------------------------------------------------
# Writer contracts (apply.py)


def test_apply_is_server_side_apply(kube_api: Any) -> None:
    manifest = _vs({"v1": 90, "v2": 10})
    stored = {**manifest, "metadata": {**manifest["metadata"], "uid": "u-1", "resourceVersion": "7"}}
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        "fieldManager=mesh-workbench&force=false",
        stored,
        content_type=APPLY_PATCH,
        body=manifest,
    )
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        "dryRun=All&fieldManager=mesh-workbench&force=false",
        manifest,
        content_type=APPLY_PATCH,
        body=manifest,
    )
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        "fieldManager=mesh-workbench&force=true",
        stored,
        content_type=APPLY_PATCH,
        body=manifest,
    )
    writer = kube_api.writer()
    assert writer.apply(VS, manifest) == stored
    assert kube_api.writer(server_dry_run=True).apply(VS, manifest) == manifest
    assert kube_api.writer(force=True).apply(VS, manifest) == stored
    record = writer.records[0]
    assert (record.verb, record.kind, record.namespace, record.name, record.context, record.dry_run) == (
        "apply",
        "VirtualService",
        "shop",
        "reviews",
        "lab",
        False,
    )


def test_merge_patch_get_list_delete(kube_api: Any) -> None:
    patch = {"metadata": {"labels": {"workbench": "on"}}}
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        "fieldManager=mesh-workbench",
        _vs({"v1": 100}),
        content_type=MERGE_PATCH,
        body=patch,
    )
    kube_api.expect("GET", f"{VS_PATH}/reviews", "", _vs({"v1": 100}))
    kube_api.expect(
        "GET",
        VS_PATH,
        "labelSelector=app.kubernetes.io/managed-by%3Dmesh-workbench",
        _list("VirtualService", [_vs({"v1": 100})], "networking.istio.io/v1"),
    )
    kube_api.expect(
        "DELETE",
        f"{VS_PATH}/reviews",
        "",
        {"status": "Success"},
        content_type="application/json",
        body={"propagationPolicy": "Background"},
    )
    writer = kube_api.writer()
    writer.merge_patch(VS, "shop", "reviews", patch)
    assert writer.get(VS, "shop", "reviews") == _vs({"v1": 100})
    assert len(writer.list(VS, "shop", "app.kubernetes.io/managed-by=mesh-workbench")) == 1
    writer.delete(VS, "shop", "reviews")
    assert [r.verb for r in writer.records] == ["merge-patch", "delete"]


def test_dry_run_sends_nothing(kube_api: Any) -> None:
    writer = kube_api.writer(dry_run=True)
    manifest = _vs({"v1": 50, "v2": 50})
    assert writer.apply(VS, manifest) == manifest
    writer.delete(VS, "shop", "reviews")
    assert len(kube_api.httpserver.log) == 0
    assert [(r.verb, r.dry_run) for r in writer.records] == [("apply", True), ("delete", True)]


def test_write_errors_are_explained(kube_api: Any) -> None:
    manifest = _vs({"v1": 100})
    q = "fieldManager=mesh-workbench&force=false"
    forbidden = (
        'virtualservices.networking.istio.io "reviews" is forbidden: User "system:serviceaccount:shop:'
        'mesh-workbench" cannot patch resource "virtualservices" in API group "networking.istio.io" '
        'in the namespace "shop"'
    )
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        q,
        status_obj(
            403,
            "Forbidden",
            forbidden,
            {"name": "reviews", "group": "networking.istio.io", "kind": "virtualservices"},
        ),
        status=403,
    )
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        q,
        status_obj(404, "NotFound", "the server could not find the requested resource", {}),
        status=404,
    )
    conflict = (
        'Apply failed with 1 conflict: conflict with "flagger" using networking.istio.io/v1: .spec.http'
    )
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        q,
        status_obj(
            409,
            "Conflict",
            conflict,
            {
                "causes": [
                    {
                        "reason": "FieldManagerConflict",
                        "message": 'conflict with "flagger"',
                        "field": ".spec.http",
                    }
                ]
            },
        ),
        status=409,
    )
    invalid = (
        'VirtualService.networking.istio.io "reviews" is invalid: spec.http[0].route[0].weight: Invalid value'
    )
    kube_api.expect(
        "PATCH",
        f"{VS_PATH}/reviews",
        q,
        status_obj(
            422,
            "Invalid",
            invalid,
            {
                "name": "reviews",
                "group": "networking.istio.io",
                "kind": "VirtualService",
                "causes": [
                    {
                        "reason": "FieldValueInvalid",
                        "message": "Invalid value: 200: must be at most 100",
                        "field": "spec.http[0].route[0].weight",
                    }
                ],
            },
        ),
        status=422,
    )
    kube_api.expect(
        "GET",
        f"{VS_PATH}/reviews",
        "",
        status_obj(
            404,
            "NotFound",
            'virtualservices.networking.istio.io "reviews" not found',
            {"name": "reviews", "group": "networking.istio.io", "kind": "virtualservices"},
        ),
        status=404,
    )
    kube_api.expect(
        "GET",
        f"{VS_PATH}/reviews",
        "",
        status_obj(404, "NotFound", "the server could not find the requested resource", {}),
        status=404,
    )
    writer = kube_api.writer()

    with pytest.raises(KubernetesError) as exc:
        writer.apply(VS, manifest)
    assert exc.value.status == 403
    assert "forbidden" in str(exc.value) and "RBAC" in str(exc.value) and "deploy/rbac.yaml" in str(exc.value)
    assert "virtualservices.networking.istio.io in namespace shop" in str(exc.value)
    with pytest.raises(
        CRDMissing, match=r"^Istio is not installed in context lab: VirtualService CRD not found"
    ):
        writer.apply(VS, manifest)
    with pytest.raises(
        KubernetesError, match=r"conflict writing VirtualService shop/reviews .*flagger"
    ) as exc:
        writer.apply(VS, manifest)
    assert exc.value.status == 409
    with pytest.raises(
        KubernetesError, match=r"invalid .*spec\.http\[0\]\.route\[0\]\.weight: Invalid value: 200"
    ):
        writer.apply(VS, manifest)
    assert writer.get(VS, "shop", "reviews") is None
    with pytest.raises(
        CRDMissing, match="Istio is not installed in context lab: VirtualService CRD not found"
    ):
        writer.get(VS, "shop", "reviews")


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    cluster = Cluster.from_kubeconfig(kubeconfig=kc)
    with pytest.raises(
        KubernetesError,
        match=r"cannot reach the Kubernetes API server of context lab at "
        r"http://127\.0\.0\.1:9",
    ) as exc:
        cluster.deployments()
    assert exc.value.status == 0 and TOKEN not in str(exc.value)


def test_token_never_shown(
    kube_api: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """Reprs, errors, write records, change logs and DEBUG logs never carry the bearer token."""
    caplog.set_level(logging.DEBUG)
    kube_api.expect(
        "GET", "/api/v1/namespaces", "", status_obj(401, "Unauthorized", "Unauthorized"), status=401
    )
    kube_api.expect(
        "PATCH", f"{VS_PATH}/reviews", None, status_obj(403, "Forbidden", "forbidden"), status=403
    )
    cluster = kube_api.cluster()
    shown = [repr(cluster), repr(cluster.writer), repr(KubernetesBackend(cluster, mesh="istio"))]
    for call in (cluster.namespaces, lambda: cluster.writer.apply(VS, _vs({"v1": 100}))):
        with pytest.raises(KubernetesError) as exc:
            call()
        shown += [str(exc.value), repr(exc.value)]
    shown += [json.dumps([r.to_json() for r in cluster.records], default=str)]
    out = capsys.readouterr()
    shown += [caplog.text, out.out, out.err]
    assert "unauthorized: context lab" in shown[3]
    assert all(TOKEN not in text for text in shown)


# ---------------------------------------------------------------------------------------------
# The backend (contract side)


def test_backend_prometheus_url_and_load_target(kube_api: Any) -> None:
    kube_api.expect("GET", "/api/v1/namespaces/shop/services/reviews", "", service_obj("reviews", 9080))
    kube_api.expect(
        "GET",
        "/api/v1/namespaces/shop/services/nope",
        "",
        status_obj(404, "NotFound", 'services "nope" not found', {"name": "nope", "kind": "services"}),
        status=404,
    )
    backend = KubernetesBackend(kube_api.cluster(), mesh="istio")
    with pytest.raises(BackendError, match=r"prometheus_url is not set.*port-forward svc/prometheus 9090"):
        backend.prometheus_url()
    assert KubernetesBackend(kube_api.cluster(), prometheus_url="http://127.0.0.1:9090").prometheus_url() == (
        "http://127.0.0.1:9090"
    )
    target = backend.load_target("reviews")
    assert target == LoadTarget(urls=("http://reviews.shop.svc.cluster.local:9080",), service="reviews")
    with pytest.raises(KubernetesError, match="Service shop/nope not found in context lab"):
        backend.load_target("nope")


def test_backend_run_load_delegates_to_the_load_job(kube_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.load.results import LoadProfile

    kube_api.expect("GET", "/api/v1/namespaces/shop/services/reviews", "", service_obj("reviews", 9080))
    calls = []
    fake = types.ModuleType("workbench.backends.kubernetes.loadjob")
    fake.run_load_job = lambda *args, **kwargs: calls.append((args, kwargs)) or "result"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "workbench.backends.kubernetes.loadjob", fake)
    backend = KubernetesBackend(kube_api.cluster(), mesh="istio")
    profile = LoadProfile(rps=50, connections=4, duration_s=10)
    assert backend.run_load("reviews", profile, parallelism=2) == "result"
    ((args, kwargs),) = calls
    assert args[0] is backend.cluster and args[1:3] == ("shop", profile)
    assert kwargs == {
        "parallelism": 2,
        "labels": {"backend": "kubernetes", "namespace": "shop", "service": "reviews"},
        "audit": backend.audit_workload,
        "poll_s": backend.load_poll_s,
    }
    assert args[3].urls == ("http://reviews.shop.svc.cluster.local:9080",)
    with pytest.raises(BackendError, match="dry run: no load"):
        KubernetesBackend(kube_api.cluster(dry_run=True), mesh="istio").run_load("reviews", profile)


def test_backend_mesh_choice(kube_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="mesh must be auto or one of istio"):
        KubernetesBackend(kube_api.cluster(), mesh="kuma")
    _expect_no_mesh(kube_api)
    kube_api.expect(
        "GET",
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes",
        "",
        status_obj(404, "NotFound", "the server could not find the requested resource", {}),
        status=404,
    )
    with pytest.raises(BackendError, match="no service mesh found in context lab"):
        _ = KubernetesBackend(kube_api.cluster()).mesh
    monkeypatch.setitem(ADAPTERS, "consul", "workbench.backends.kubernetes.nope.NopeAdapter")
    with pytest.raises(
        BackendError, match=r"workbench\.backends\.kubernetes\.nope\.NopeAdapter is not available"
    ):
        _ = KubernetesBackend(kube_api.cluster(), mesh="consul").adapter


def test_session_opens_the_kubernetes_backend(
    kube_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.experiments.session import open_session

    suite = tmp_path / "experiments.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "backend": {
                    "type": "kubernetes",
                    "context": "lab",
                    "mesh": "istio",
                    "prometheus_url": "http://127.0.0.1:9090",
                },
                "experiments": [{"name": "sweep", "kind": "loadtest", "service": "reviews", "rps": [10]}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    monkeypatch.setenv("WORKBENCH_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    # creating the backend records the releases it sees (Deployment revisions) in the audit log
    deps = [deployment_obj("reviews", "v1", revision=3)]
    kube_api.expect(
        "GET", "/apis/apps/v1/namespaces/shop/deployments", "", _list("Deployment", deps, "apps/v1")
    )
    backend = open_session(suite, "sweep", tmp_path / "run").backend()
    assert isinstance(backend, KubernetesBackend) and isinstance(backend, Backend)
    assert (backend.cluster.context, backend.namespace, backend.mesh) == ("lab", "shop", "istio")
    assert backend.prometheus_url() == "http://127.0.0.1:9090"
    (seen,) = backend.audit.entries(action="release_observed")
    assert (seen["target"], seen["after"]["version"], seen["after"]["revision"]) == ("reviews", "v1", 3)


# ---------------------------------------------------------------------------------------------
# RBAC


def _adapter_resources() -> list[Resource]:
    """Every Resource the adapters and the load job declare (the types the workbench writes)."""
    found: dict[tuple[str, str], Resource] = {}
    for name in (
        "istio",
        "istio_ambient",
        "linkerd",
        "consul",
        "gateway_api",
        "loadjob",
        "testrun",
        "k6pod",
        "probe",
    ):
        try:
            module = importlib.import_module(f"workbench.backends.kubernetes.{name}")
        except ImportError:
            continue
        for value in vars(module).values():
            if isinstance(value, Resource):
                found[value.group, value.plural] = value
    linkerd = sys.modules.get("workbench.backends.kubernetes.linkerd")
    if linkerd is not None and hasattr(linkerd, "httproute_resource"):
        for api in ("policy", "gateway"):
            r = linkerd.httproute_resource(api)
            found[r.group, r.plural] = r
    return list(found.values())


# Written by the workbench even when a module above is not there yet (the brief's list).
WRITES = [
    ("networking.istio.io", "virtualservices"),
    ("networking.istio.io", "destinationrules"),
    ("security.istio.io", "authorizationpolicies"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("policy.linkerd.io", "httproutes"),
    ("policy.linkerd.io", "servers"),
    ("policy.linkerd.io", "authorizationpolicies"),
    ("policy.linkerd.io", "meshtlsauthentications"),
    ("consul.hashicorp.com", "servicesplitters"),
    ("consul.hashicorp.com", "servicerouters"),
    ("consul.hashicorp.com", "serviceresolvers"),
    ("consul.hashicorp.com", "serviceintentions"),
    ("batch", "jobs"),
    ("", "configmaps"),
    ("k6.io", "testruns"),
]
WRITE_VERBS = {"get", "list", "patch", "create", "delete"}
READ_ONLY = {("", "pods")}


def test_rbac_covers_every_read_and_write() -> None:
    from workbench.backends.kubernetes.cluster import READ_RESOURCES

    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert {"ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"} <= set(kinds)
    granted: dict[tuple[str, str], set[str]] = {}
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], (
                    f"{doc['metadata']['name']}: wildcard"
                )
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        granted.setdefault((group, res), set()).update(rule["verbs"])
        if doc["kind"].endswith("Binding"):
            assert doc["subjects"][0]["name"] == "mesh-workbench"
    for res in READ_RESOURCES:
        assert {"get", "list"} <= granted.get((res.group, res.plural), set()), f"read {res.crd_name}"
    # loadjob.py declares Pod to read the k6 pods and their logs; it never writes one
    loadjob = REPO / "workbench" / "backends" / "kubernetes" / "loadjob.py"
    if loadjob.exists():
        assert not re.search(r"\.(apply|merge_patch|delete)\(\s*PODS", loadjob.read_text())
    writes = {(r.group, r.plural) for r in _adapter_resources()} - READ_ONLY | set(WRITES)
    for key in writes:
        assert granted.get(key, set()) >= WRITE_VERBS, f"write {key}"
    assert "get" in granted.get(("", "pods/log"), set())
    assert not {"create", "patch", "delete"} & granted.get(("", "pods"), set())  # pods are only read


# ---------------------------------------------------------------------------------------------
# Scenarios against the emulator


def test_discovery_against_the_emulator(kube_emulator: Any) -> None:
    cluster = kube_emulator.cluster()
    assert cluster.namespace == "shop"
    assert set(cluster.namespaces()["name"]) == {"default", "shop", "istio-system"}
    assert cluster.versions() == {"catalog": ["v1", "v2"], "reviews": ["v1", "v2", "v3"]}
    assert [s.name for s in cluster.services()] == ["catalog", "reviews"]
    deps = cluster.deployments()
    assert sorted(deps["name"]) == ["catalog-v1", "catalog-v2", "reviews-v1", "reviews-v2", "reviews-v3"]
    assert set(cluster.replicasets()["deployment"]) == set(deps["name"])
    pods = cluster.pods().set_index("name")
    assert pods["meshed"].sum() == 5 and not pods.loc["toolbox", "meshed"]
    assert pods.filter(like="catalog-v2", axis=0)["native_sidecar"].tolist() == [True]
    assert cluster.meshes()[["mesh", "version", "revision"]].to_dict("records") == [
        {"mesh": "istio", "version": "1.22.3", "revision": "default"}
    ]
    assert cluster.detect_mesh() == "istio"
    assert cluster.mtls()[["namespace", "mode"]].to_dict("records") == [
        {"namespace": "shop", "mode": "STRICT"}
    ]
    cov = cluster.sidecar_coverage().set_index("namespace")
    assert (cov.loc["shop", "pods"], cov.loc["shop", "meshed"]) == (6, 5)
    assert cov.loc["istio-system", "coverage"] == 0.0
    empty = cluster.sidecar_coverage(["default", "shop"]).set_index("namespace")
    assert empty.loc["default", "pods"] == 0 and math.isnan(empty.loc["default", "coverage"])
    assert empty.loc["shop", "coverage"] == pytest.approx(5 / 6)


def test_missing_object_and_crd_against_the_emulator(kube_emulator: Any) -> None:
    writer = kube_emulator.cluster().writer
    assert writer.get(VS, "shop", "nothing") is None
    ghost = Resource("ghost.example.com", "v1", "ghosts", "Ghost", "Ghost")
    with pytest.raises(CRDMissing, match="Ghost is not installed in context lab: Ghost CRD not found"):
        writer.get(ghost, "shop", "x")
    with pytest.raises(CRDMissing):
        writer.apply(
            ghost,
            {
                "apiVersion": "ghost.example.com/v1",
                "kind": "Ghost",
                "metadata": {"name": "x", "namespace": "shop"},
            },
        )


istio_available = pytest.mark.skipif(
    importlib.util.find_spec("workbench.backends.kubernetes.istio") is None, reason="istio.py not written yet"
)


@istio_available
def test_istio_split_read_back_and_rollback(kube_emulator: Any) -> None:
    backend = kube_emulator.backend()
    assert backend.mesh == "istio"
    assert backend.get_split("reviews") == {"v1": 100, "v2": 0, "v3": 0}
    backend.set_split("reviews", {"v1": 80, "v2": 20})
    assert backend.get_split("reviews") == {"v1": 80, "v2": 20, "v3": 0}
    vs = kube_emulator.get("networking.istio.io/v1/virtualservices", "shop", "reviews")
    weights = {r["destination"]["subset"]: r.get("weight", 0) for h in vs["spec"]["http"] for r in h["route"]}
    assert weights == {"v1": 80, "v2": 20, "v3": 0}
    dr = kube_emulator.get("networking.istio.io/v1/destinationrules", "shop", "reviews")
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2", "v3"]
    backend.rollback("reviews")
    assert backend.get_split("reviews") == {"v1": 100, "v2": 0, "v3": 0}
    assert [(c["action"], c["before"], c["after"]) for c in backend.changes] == [
        ("split", {"v1": 100, "v2": 0, "v3": 0}, {"v1": 80, "v2": 20}),
        ("split", {"v1": 80, "v2": 20, "v3": 0}, {"v1": 100}),
    ]
    writes = backend.changes[0]["writes"]
    assert {w["kind"] for w in writes} == {"VirtualService", "DestinationRule"}
    assert all(w["verb"] == "apply" and not w["dry_run"] for w in writes)
    assert TOKEN not in json.dumps(backend.changes) and TOKEN not in repr(backend)
    patches = [q for m, q in kube_emulator.requests() if m == "PATCH"]
    assert patches and all(q.endswith("?fieldManager=mesh-workbench&force=false") for q in patches)


@istio_available
def test_istio_dry_run_returns_manifests_and_changes_nothing(kube_emulator: Any) -> None:
    backend = kube_emulator.backend(mesh="istio", dry_run=True)
    manifests = backend.set_split("reviews", {"v1": 50, "v3": 50})
    assert {m["kind"] for m in manifests} == {"VirtualService", "DestinationRule"}
    assert kube_emulator.get("networking.istio.io/v1/virtualservices", "shop", "reviews") is None
    assert not any(m == "PATCH" for m, _ in kube_emulator.requests())
    assert backend.changes[0]["dry_run"] and all(w["dry_run"] for w in backend.changes[0]["writes"])
    assert backend.adapter.state.get("reviews") is None  # a dry run leaves no remembered state
