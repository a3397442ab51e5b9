"""Scenario tests per mesh against the kmock emulator: discover → set_split → get_split → rollback.

For Istio, Linkerd (policy.linkerd.io HTTPRoute), Consul (config-entry CRDs) and plain Gateway API the
demo cluster is given that mesh's flavour (``KubeEmulator.flavour``: control plane, sidecars,
per-version Services for HTTPRoute backends); the backend must find the mesh by itself, split traffic,
read the split back from the live objects and roll back. After every write the objects stored in the
emulator must equal what the adapter renders for its state (server-set metadata aside) and validate
against the meshes' published CRD schemas (../shared/crds).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kube import TOKEN
from kube_crds import validate

from workbench.backends.base import Backend
from workbench.backends.kubernetes.backend import KubernetesBackend

SERVER_SET = ("uid", "creationTimestamp", "resourceVersion", "generation", "managedFields")
# mesh -> the kinds its traffic objects are, and the versions the emulator's cluster runs
KINDS = {
    "istio": {"VirtualService", "DestinationRule"},
    "linkerd": {"HTTPRoute"},
    "consul": {"ServiceResolver", "ServiceSplitter", "ServiceRouter"},
    "gateway-api": {"HTTPRoute"},
}
CONTROL_PLANE = {
    "istio": [{"mesh": "istio", "namespace": "istio-system", "component": "istiod"}],
    "linkerd": [{"mesh": "linkerd", "namespace": "linkerd", "component": "linkerd-destination"}],
    "consul": [{"mesh": "consul", "namespace": "consul", "component": "consul-server"}],
    "gateway-api": [],
}
SIDECAR = {"istio": "istio", "linkerd": "linkerd", "consul": "consul", "gateway-api": ""}


def _without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k not in SERVER_SET}
    return {**obj, "metadata": meta}


def _assert_stored_equal_rendered(emulator: Any, backend: KubernetesBackend, service: str) -> None:
    """Every traffic object of ``service`` in the emulator is exactly the adapter's rendering, and
    both the rendering and the stored object are valid for their CRD."""
    adapter = backend.adapter
    rendered = adapter.render_traffic(service, adapter.state[service])
    assert {m["kind"] for _, m in rendered} == KINDS[backend.mesh]
    for res, manifest in rendered:
        validate(manifest)
        stored = emulator.get(f"{res.group}/{res.version}/{res.plural}", "shop", manifest["metadata"]["name"])
        assert stored is not None, f"{res.kind} {manifest['metadata']['name']} not stored"
        assert _without_server_fields(stored) == manifest
        validate(stored, stored=True)


@pytest.mark.parametrize("mesh", ["istio", "linkerd", "consul", "gateway-api"])
def test_discover_split_read_back_rollback(kube_emulator: Any, mesh: str) -> None:
    kube_emulator.flavour(mesh)
    backend = kube_emulator.backend()  # mesh: auto — found from the cluster
    assert isinstance(backend, Backend)

    # discover
    cluster = backend.cluster
    assert backend.mesh == mesh
    meshes = cluster.meshes()[["mesh", "namespace", "component"]].to_dict("records")
    assert meshes == CONTROL_PLANE[mesh]
    assert [(s.name, s.versions) for s in backend.services()] == [
        ("catalog", ("v1", "v2")),
        ("reviews", ("v1", "v2", "v3")),
    ]  # per-version Services (reviews-v1 ...) are not services of their own
    pods = cluster.pods()
    versioned = pods[pods["name"].str.startswith(("reviews-", "catalog-"))]
    assert len(versioned) == 5 and set(versioned["sidecar"]) == {SIDECAR[mesh]}
    assert backend.get_split("reviews") == {"v1": 100, "v2": 0, "v3": 0}  # nothing applied yet

    # set_split → get_split (read from the live objects)
    applied = backend.set_split("reviews", {"v1": 80, "v3": 20})
    assert {m["kind"] for m in applied} == KINDS[mesh]
    assert backend.get_split("reviews") == {"v1": 80, "v2": 0, "v3": 20}
    _assert_stored_equal_rendered(kube_emulator, backend, "reviews")
    for m in applied:  # what the server answered is what it stored
        res = f"{m['apiVersion']}/{m['kind'].lower()}s"
        assert kube_emulator.get(res, "shop", m["metadata"]["name"]) == m

    # a second change replaces the fields (server-side apply, one field manager)
    backend.set_split("reviews", {"v1": 50, "v2": 25, "v3": 25})
    assert backend.get_split("reviews") == {"v1": 50, "v2": 25, "v3": 25}
    _assert_stored_equal_rendered(kube_emulator, backend, "reviews")

    # rollback: all traffic to the stable version
    backend.rollback("reviews")
    assert backend.get_split("reviews") == {"v1": 100, "v2": 0, "v3": 0}
    _assert_stored_equal_rendered(kube_emulator, backend, "reviews")
    assert backend.get_split("catalog") == {"v1": 100, "v2": 0}  # untouched

    # every change is recorded, with its writes, and no credential anywhere
    assert [(c["action"], c["target"], c["after"]) for c in backend.changes] == [
        ("split", "reviews", {"v1": 80, "v3": 20}),
        ("split", "reviews", {"v1": 50, "v2": 25, "v3": 25}),
        ("split", "reviews", {"v1": 100}),
    ]
    assert backend.changes[-1]["before"] == {"v1": 50, "v2": 25, "v3": 25}
    assert all({w["kind"] for w in c["writes"]} == KINDS[mesh] for c in backend.changes)
    assert TOKEN not in json.dumps(backend.changes) and TOKEN not in repr(backend)
    patches = [q for m, q in kube_emulator.requests() if m == "PATCH"]
    assert len(patches) == 3 * len(KINDS[mesh])
    assert all(q.endswith("?fieldManager=mesh-workbench&force=false") for q in patches)


def test_httproute_backends_use_the_service_port(kube_emulator: Any) -> None:
    """Gateway API / Linkerd backendRefs name the per-version Services on the Service's own port."""
    kube_emulator.flavour("gateway-api")
    backend = kube_emulator.backend()
    backend.set_split("catalog", {"v1": 90, "v2": 10})
    route = kube_emulator.get("gateway.networking.k8s.io/v1/httproutes", "shop", "catalog")
    refs = route["spec"]["rules"][-1]["backendRefs"]
    assert [(r["name"], r["port"], r["weight"]) for r in refs] == [
        ("catalog-v1", 8080, 90),
        ("catalog-v2", 8080, 10),
    ]
    assert route["spec"]["parentRefs"][0]["port"] == 8080
    for ref in refs:
        assert kube_emulator.get("v1/services", "shop", ref["name"]) is not None


def test_gateway_api_has_no_telemetry_dialect_of_its_own(kube_emulator: Any) -> None:
    kube_emulator.flavour("gateway-api")
    backend = kube_emulator.backend(prometheus_url="http://127.0.0.1:9")
    with pytest.raises(Exception, match=r"backend\.dialect is not set: mesh gateway-api"):
        backend.observe("reviews", ["v1", "v3"], 0, 10, 1)
    assert kube_emulator.backend(dialect="envoy").dialect == "envoy"
    for mesh in ("istio", "linkerd", "consul"):
        assert kube_emulator.backend(mesh=mesh).dialect == mesh
