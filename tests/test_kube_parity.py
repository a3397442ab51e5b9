"""Kubernetes parity: every experiment kind of the default suite runs against the kmock emulator — its
Jobs really run by a fake kubelet (``tests/kubelet.py``: k6 with chunked samples, the authz probes
with curl) against a data plane answering from the mesh objects the workbench applied
(``tests/dataplane.py``), with a real Prometheus scraping that data plane's telemetry — or is refused
by validation before anything is written, with a message naming the experiment, the feature, the mesh
and what to change. One test per mesh walks every experiment of ``experiments.yaml``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubelet import prometheus_scraping, running_cluster

from conftest import REPO, SHARED
from workbench import config
from workbench.backends.base import Probe
from workbench.backends.kubernetes.backend import KubernetesBackend
from workbench.config.capabilities import capability_problems
from workbench.experiments import NOTEBOOKS, open_session
from workbench.load.results import LoadProfile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lane2,
    pytest.mark.skipif(not shutil.which("prometheus"), reason="prometheus not installed"),
]

# What each mesh cannot run of the default suite, and the words the refusal must carry.
# The local mesh's data plane modes (sidecars and ambient) are the local mesh's: refused on every mesh,
# the optional ambient-overhead included (validation reads every experiment, optional or not).
TRACES = {"request-flows": "set backend.traces"}  # no Jaeger or Tempo is given: nothing to read traces from
MODES = {"sidecar-overhead": "sidecar modes", "ambient-overhead": "sidecar modes"}
REFUSED = {
    "istio": {**MODES, **TRACES},
    "linkerd": {**MODES, "pricing-faults": "Linkerd has no fault injection", **TRACES},
    "consul": {**MODES, "pricing-faults": "Consul has no fault injection", **TRACES},
    "gateway-api": {**MODES, "ratings-authz": "Gateway API has no authorization",
                    "pricing-faults": "Gateway API has no fault injection", **TRACES},
}  # fmt: skip
VS = "networking.istio.io/v1/virtualservices"


def test_a_load_job_and_probes_run_on_the_emulator(kube_emulator: Any, tmp_path: Path) -> None:
    with running_cluster(kube_emulator, "istio", tmp_path) as rig:
        backend = KubernetesBackend(kube_emulator.cluster(), mesh="istio")
        backend.set_split("reviews", {"v1": 50, "v2": 50})
        result = backend.run_load("reviews", LoadProfile(rps=50, connections=2, duration_s=2), poll_s=0.2)
        assert 80 <= result.count <= 120, result.count
        assert set(result.samples["variant"]) == {"v1", "v2"}  # the split applied reached the data plane
        answers = backend.requests_as("reviews", [Probe("catalog", "GET", "/x")], attempts=2)
        assert [a.status for a in answers[0]] == [200, 200], answers
        assert kube_emulator.list("batch/v1/jobs") == [] and rig.kubelet.errors == []


def _suite(path: Path, mesh: str, prometheus: str) -> Path:
    """The default suite with ``backend: kubernetes`` (the emulator's context) and the fortio files
    found where the suite's relative path points."""
    doc = yaml.safe_load((REPO / "experiments.yaml").read_text())
    doc["backend"] = {"type": "kubernetes", "context": "lab", "namespace": "shop", "mesh": mesh,
                      "prometheus_url": prometheus}  # fmt: skip
    if mesh == "gateway-api":  # no telemetry of its own: the data plane's (Istio's standard metrics)
        doc["backend"]["dialect"] = "istio"
    for exp in doc["experiments"]:
        if exp.get("fortio_results"):
            exp["fortio_results"] = [str(SHARED / "fixtures" / "istio-1.2-fortio" / "*_qps_*.json")]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _shorter(spec: Any) -> None:
    """Cut the quick experiment further: a test, not a measurement (each kind keeps its features), at
    rates a Python data plane on a shared 2-core machine answers without queueing."""
    if spec.kind == "loadtest":
        spec.rps, spec.connections = [50.0], [2]
    if spec.kind in ("ab", "resilience", "topology"):
        spec.duration, spec.warmup = {"ab": 4.0, "resilience": 1.0}.get(spec.kind, 2.0), 0.0
    if spec.kind == "ab":
        spec.window = 1.0
    if spec.kind == "resilience":  # no protection and one protection: the kind, at half the cost
        spec.protections = spec.protections[:2]
    if spec.kind in ("ab", "resilience", "canary", "topology"):
        spec.rps, spec.connections = (150.0 if spec.kind == "canary" else 80.0), 4
    if spec.kind == "canary":  # one look, then the promotion; 10 % of 150 rps: 30 canary requests a window
        spec.window = 2.0
        spec.steps = [spec.steps[0], spec.steps[-1]]


@pytest.mark.beside  # verdicts and objects, not figures: the emulator's data plane may be slow
@pytest.mark.parametrize("mesh", ["istio", "linkerd", "consul", "gateway-api"])
def test_every_kind_of_the_default_suite_runs_or_is_refused(
    mesh: str, kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    monkeypatch.setattr(KubernetesBackend, "policy_settle_s", 0.5)
    monkeypatch.setattr(KubernetesBackend, "load_poll_s", 0.3)
    with (
        running_cluster(kube_emulator, mesh, tmp_path) as rig,
        prometheus_scraping(rig.dataplane.metrics_url, tmp_path / "prometheus") as prometheus,
    ):
        suite = _suite(tmp_path / "experiments.yaml", mesh, prometheus)
        text = suite.read_text()
        cfg = config.load(suite)
        backend = KubernetesBackend.from_settings(cfg.backend, dry_run=True, record_releases=False)
        problems = capability_problems(cfg, backend.capabilities(), "kubernetes", str(suite), text)
        refused: dict[str, list[str]] = {}
        for p in problems:
            refused.setdefault(cfg.experiments[int(p.path.split("[")[1].split("]")[0])].name, []).append(
                str(p)
            )
        assert set(refused) == set(REFUSED[mesh]), refused
        for name, words in REFUSED[mesh].items():
            message = " ".join(refused[name])
            assert f"{name} (" in message and words in message, message  # the experiment, the feature
            assert "which backend kubernetes" in message and f"mesh {mesh}" in message  # the mesh
            assert "does not offer: " in message  # and what to change, after it
        ran = {}
        for spec in cfg.experiments:
            if spec.name in refused:
                continue
            s = open_session(suite, spec.name, tmp_path / "run", quick=True)
            _shorter(s.spec)
            began = time.monotonic()
            result = s.execute(importlib.import_module(f"workbench.experiments.{NOTEBOOKS[spec.kind]}"))
            print(f"{mesh} {spec.name}: {result.verdict} in {time.monotonic() - began:.1f} s")
            ran[spec.name] = result
            assert result.severity != "error", (spec.name, result.headline)
        assert len(ran) + len(refused) == len(cfg.experiments) and {r.kind for r in ran.values()} >= {
            "loadtest", "ab", "canary", "topology", "audit", "mesh_compare"
        }  # fmt: skip
        _safe_state(kube_emulator, rig, mesh, ran)


def _safe_state(emulator: Any, rig: Any, mesh: str, ran: dict[str, Any]) -> None:
    """What the experiments leave: no Job, each service's traffic on its stable version (or the promoted
    canary), no authorization policy, and the right verdicts where the data plane makes them knowable."""
    assert emulator.list("batch/v1/jobs") == [] and rig.kubelet.errors == []
    backend = KubernetesBackend(emulator.cluster(), mesh=mesh)
    canary = ran["reviews-canary"]
    assert canary.verdict in ("promoted", "rolled back", "inconclusive, rolled back"), canary.headline
    expected = {"v3": 100} if canary.verdict == "promoted" else {"v1": 100}
    assert {v: w for v, w in backend.get_split("reviews").items() if w} == expected
    assert {v: w for v, w in backend.get_split("catalog").items() if w} == {"v1": 100}
    assert ran["sweep"].verdict in ("pass", "fail") and ran["release-audit"].verdict == "intact"
    assert ran["istio-1-2-published"].verdict == "measured"
    ab = ran["catalog-v2-ab"]
    assert ab.tables["comparison"].loc["p50", "n_windows"] >= 3, ab.headline  # both arms had traffic
    if "ratings-authz" in ran:
        authz = ran["ratings-authz"]
        assert authz.verdict == "pass", (
            authz.headline
        )  # the probes ran as the callers; the policy judged them
        assert backend.cluster.writer.get(*_policy(mesh)) is None  # the policy was removed afterwards
    assert ran["blueprint"].severity != "error"


def _policy(mesh: str) -> tuple[Any, str, str]:
    from workbench.backends.kubernetes import consul, istio, linkerd

    return {
        "istio": (istio.AUTHORIZATION_POLICY, "shop", "ratings-workbench"),
        "linkerd": (linkerd.SERVER, "shop", "ratings-http"),
        "consul": (consul.SERVICE_INTENTIONS, "shop", "ratings"),
    }[mesh]


def test_meshes_in_two_contexts_compare_by_trials_as_replicates(
    kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two kube contexts (here: one emulator, two contexts) with declared meshes; the Linkerd arm's
    service answers ~6 ms slower. Trials interleave (A B, B A, A B), each trial gives one estimate per
    arm, the difference gets a t interval over trials, and each mesh's column is filled from its arm."""
    from dataplane import Version
    from kube import write_kubeconfig

    from workbench.experiments import mesh_compare

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_emulator.server)
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["contexts"].append({"name": "lab-b", "context": {"cluster": "c1", "user": "u1", "namespace": "shop"}})
    kubeconfig.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(KubernetesBackend, "load_poll_s", 0.3)
    arms = [{"context": "lab", "name": "istio-arm", "mesh": "istio", "service": "reviews"},
            {"context": "lab-b", "name": "linkerd-arm", "mesh": "linkerd", "service": "catalog"}]  # fmt: skip
    experiment = {"name": "meshes", "kind": "mesh_compare", "meshes": arms, "rps": 40, "connections": [2],
                  "trials": 3, "duration": "2s", "warmup": "0s", "window": "1s"}  # fmt: skip
    suite = tmp_path / "experiments.yaml"
    suite.write_text(yaml.safe_dump({"backend": {"type": "kubernetes", "context": "lab", "mesh": "istio"},
                                     "experiments": [experiment]}))  # fmt: skip
    with running_cluster(kube_emulator, "istio", tmp_path) as rig:
        rig.dataplane.behaviour[("catalog", "v1")] = Version(service_ms=8.0)
        s = open_session(suite, "meshes", tmp_path / "run")
        result = s.execute(mesh_compare)
        assert kube_emulator.list("batch/v1/jobs") == [] and rig.kubelet.errors == []
    points = sorted((s.store / "points").glob("*.json"))
    assert len(points) == 6
    from workbench.load import storage

    runs = sorted((storage.load(p) for p in points), key=lambda r: r.meta["start"])
    assert [(r.meta["trial"], r.meta["arm"]) for r in runs] == [
        (0, "istio-arm"), (0, "linkerd-arm"), (1, "linkerd-arm"), (1, "istio-arm"),
        (2, "istio-arm"), (2, "linkerd-arm"),
    ]  # fmt: skip
    assert {r.meta["mesh"] for r in runs} == {"istio", "linkerd"} and {r.meta["context"] for r in runs} == {
        "lab", "lab-b"
    }  # fmt: skip
    overhead = result.tables["overhead"].set_index("metric")
    p50 = overhead.loc["p50"]
    assert p50["mode"] == "linkerd-arm" and p50["trials"] == 3 and "trials as replicates" in p50["method"]
    assert 4.0 < p50["estimate"] < 8.5 and p50["ci_low"] < p50["estimate"] < p50["ci_high"], p50.to_dict()
    assert p50["verdict"] == "worse" and len(result.tables["trials"]) == 6
    decision = result.tables["decision"]
    measured = decision.loc["measured p50 latency (mean over trials, 95 % interval)"]
    assert measured["Istio"].startswith("istio-arm: ") and measured["Linkerd"].startswith("linkerd-arm: ")
    assert measured["Consul"] == "not measured here (no arm runs Consul)"
    diff = decision.loc["p50 difference from istio-arm (interval over trials)"]
    assert diff["Linkerd"].startswith("linkerd-arm: +") and diff["Linkerd"].endswith("worse")
    assert diff["Istio"] == "the baseline" and "own context" in result.headline
    assert result.verdict == "measured" and set(mesh_compare.figures(result)) >= {"overhead", "percentiles"}


@pytest.mark.beside  # verdicts, objects and files, not figures
def test_no_credential_in_any_artifact_of_a_cluster_run(
    kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workbench run`` (papermill, the shared kernel) on the emulator with the new paths — a load Job
    whose samples come back in chunks, authz probe Jobs, a canary's background load, a mesh comparison
    across contexts — with a kubeconfig bearer token and a basic-auth Prometheus: neither secret appears
    in any notebook, report, summary, data file, progress or audit log; the audit log has every Job."""
    from kube import TOKEN

    from workbench.suite.runner import run_suite

    password = "sekret-pass-789"
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    monkeypatch.setenv("WORKBENCH_AUDIT_LOG", str(audit))
    experiments = [
        {"name": "ab", "kind": "ab", "service": "catalog", "variants": {"baseline": "v1", "candidate": "v2"},
         "split": {"v1": 50, "v2": 50}, "rps": 60, "connections": 2, "duration": "3s", "warmup": "0s",
         "window": "1s", "metrics": ["p50", "error_rate"]},
        {"name": "authz", "kind": "authz", "policy": {"service": "ratings",
                                                      "rules": [{"sources": ["reviews"]}]},
         "expect": [{"caller": "reviews", "allowed": True}, {"caller": "frontend", "allowed": False}]},
        {"name": "roll", "kind": "canary", "service": "reviews", "stable": "v1", "canary": "v3", "rps": 100,
         "connections": 4, "steps": [{"weight": 50, "duration": "3s"}, {"weight": 100}], "warmup": "0s",
         "window": "1s", "metrics": ["p50", "error_rate"]},
        {"name": "meshes", "kind": "mesh_compare", "service": "reviews",
         "meshes": [{"context": "lab", "name": "a", "mesh": "istio"}], "rps": 30, "connections": [2],
         "trials": 2, "duration": "2s", "warmup": "0s"},
    ]  # fmt: skip
    with (
        running_cluster(kube_emulator, "istio", tmp_path) as rig,
        prometheus_scraping(rig.dataplane.metrics_url, tmp_path / "prometheus", ("prom", password)) as url,
    ):
        assert password in url
        suite = tmp_path / "experiments.yaml"
        backend = {
            "type": "kubernetes",
            "context": "lab",
            "namespace": "shop",
            "mesh": "istio",
            "prometheus_url": url,
        }
        suite.write_text(yaml.safe_dump({"backend": backend, "experiments": experiments}))
        outcome = run_suite(suite, reports=tmp_path / "reports", echo=lambda line: None, fail_on="never")
        assert kube_emulator.list("batch/v1/jobs") == [] and rig.kubelet.errors == []
    by_name = {r["name"]: r for r in outcome.results}
    assert {n: r["status"] for n, r in by_name.items()} == dict.fromkeys(
        ["ab", "authz", "roll", "meshes"], "ok"
    ), by_name
    assert by_name["authz"]["verdict"] == "pass"
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    workloads = [e for e in entries if e["action"] == "workload"]
    created = {e["target"] for e in workloads if e["details"]["verb"] == "created"}
    deleted = {e["target"] for e in workloads if e["details"]["verb"] == "deleted"}
    assert (
        created == deleted and any("wb-probe-" in t for t in created) and any("wb-k6-" in t for t in created)
    )
    produced = [
        p for p in [*outcome.data_dir.rglob("*"), *(tmp_path / "reports").rglob("*"), audit] if p.is_file()
    ]
    assert any(p.suffix == ".ipynb" for p in produced) and any(p.name == "summary.json" for p in produced)
    for path in produced:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for secret in (TOKEN, password):
            assert secret not in text, f"{secret} leaked into {path}"
