"""Capabilities: what each backend, mesh and local mode declares, what each experiment needs, and the
refusals validation gives before anything is written.

The declarations are checked against behaviour: every feature a mesh declares is rendered by its
adapter into CRD-valid objects, every feature it does not declare is refused by the adapter too
(``Unsupported``) — so validation and the adapters cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_crds import validate

from conftest import REPO, run_workbench
from workbench.backends import declared, mesh_offer, mode_offer
from workbench.backends.capabilities import ALL, AUTHORIZATION, CLIENT_SIDE, Capability, Offer, Unavailable
from workbench.backends.kubernetes.adapter import Unsupported
from workbench.backends.kubernetes.apply import Writer
from workbench.backends.kubernetes.consul import ConsulAdapter
from workbench.backends.kubernetes.gateway_api import GatewayAPIAdapter
from workbench.backends.kubernetes.istio import IstioAdapter, ambient_offer
from workbench.backends.kubernetes.linkerd import LinkerdAdapter
from workbench.backends.traffic import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route
from workbench.config import ConfigError, load, loads
from workbench.config.capabilities import (
    capability_problems,
    check_capabilities,
    offer_for,
    required_capabilities,
)

NS = "shop"
VERSIONS = {"reviews": ["v1", "v2"], "catalog": ["v1"]}
PORTS = {"reviews": 9080, "catalog": 8080}
MESHES = ("istio", "linkerd", "consul", "gateway-api")

# One request per traffic/authorization capability, needing exactly that capability (and what it rests on).
REQUESTS: dict[Capability, Callable[[Any], list[dict[str, Any]]]] = {
    Capability.SPLIT: lambda a: a.set_split("reviews", {"v1": 90, "v2": 10}),
    Capability.HEADER_ROUTE: lambda a: a.set_route("reviews", Route(header="x-variant", value="b"), "v2"),
    Capability.COOKIE_ROUTE: lambda a: a.set_route("reviews", Route(cookie="variant", value="b"), "v2"),
    Capability.FAULT: lambda a: a.set_fault("reviews", Fault(abort=503, percent=10)),
    Capability.RETRIES: lambda a: a.set_resilience("reviews", retries=Retries(attempts=2, retry_on=["5xx"])),
    Capability.RETRY_ON_RESET: lambda a: a.set_resilience(
        "reviews", retries=Retries(retry_on=["5xx", "reset"])
    ),
    Capability.PER_TRY_TIMEOUT: lambda a: a.set_resilience(
        "reviews", retries=Retries(retry_on=["5xx"], per_try_timeout=0.2)
    ),
    Capability.TIMEOUT: lambda a: a.set_resilience("reviews", timeout_s=1.5),
    Capability.CIRCUIT_BREAKER: lambda a: a.set_resilience("reviews", breaker=CircuitBreaker()),
    Capability.AUTHZ_L4: lambda a: a.set_policy(
        Policy(service="reviews", rules=[PolicyRule(sources=["catalog"])])
    ),
    Capability.AUTHZ_L7: lambda a: a.set_policy(
        Policy(service="reviews", rules=[PolicyRule(sources=["catalog"], paths=["/r/*"], methods=["GET"])])
    ),
    Capability.AUTHZ_DENY: lambda a: a.set_policy(
        Policy(service="reviews", action="deny", rules=[PolicyRule(sources=["catalog"])])
    ),
}


def _adapter(mesh: str) -> Any:
    writer = Writer(None, context="test", dry_run=True)
    if mesh == "istio":
        return IstioAdapter(writer, NS, VERSIONS)
    if mesh == "linkerd":
        return LinkerdAdapter(writer, NS, VERSIONS, ports=PORTS)
    if mesh == "consul":
        return ConsulAdapter(writer, NS, VERSIONS)
    return GatewayAPIAdapter(writer, NS, VERSIONS, ports=PORTS)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("capability", list(REQUESTS), ids=lambda c: c.name.lower())
def test_declared_capabilities_are_what_the_adapter_renders(
    mesh: str, capability: Capability, shared: Path
) -> None:
    offer = mesh_offer(mesh)
    adapter = _adapter(mesh)
    if offer.has(capability):
        manifests = REQUESTS[capability](adapter)
        assert manifests
        for manifest in manifests:
            validate(manifest)  # against the mesh's own CRD schema in ../shared/crds
    else:
        assert offer.hint(capability) and mesh.split("-")[0] in offer.name
        with pytest.raises(Unsupported):
            REQUESTS[capability](adapter)


def test_every_mesh_declares_every_capability_it_lacks_with_a_hint() -> None:
    for mesh in MESHES:
        offer = mesh_offer(mesh)
        for capability in ALL - offer.features:
            assert capability in offer.hints, (mesh, capability)
    assert mesh_offer("istio").features == ALL
    assert {c for c in ALL if not mesh_offer("linkerd").has(c)} == {
        Capability.FAULT, Capability.CIRCUIT_BREAKER, Capability.AUTHZ_DENY, Capability.RETRY_ON_RESET
    }  # fmt: skip
    assert mesh_offer("gateway-api").features.isdisjoint(AUTHORIZATION)


def test_linkerd_smi_and_istio_ambient_narrow_what_the_mesh_offers() -> None:
    smi = LinkerdAdapter(Writer(None, dry_run=True), NS, VERSIONS, smi=True).capabilities()
    assert (
        smi.has(Capability.SPLIT) and not smi.has(Capability.HEADER_ROUTE) and not smi.has(Capability.TIMEOUT)
    )
    assert "TrafficSplit" in smi.hint(Capability.HEADER_ROUTE)
    ambient = mesh_offer("istio") & ambient_offer(NS)
    assert ambient.has(Capability.AUTHZ_L4) and ambient.has(Capability.AUTHZ_DENY)
    assert not (ambient.features & (CLIENT_SIDE | {Capability.AUTHZ_L7}))
    assert "waypoint" in ambient.hint(Capability.SPLIT) and "istioctl waypoint apply -n shop" in ambient.hint(
        Capability.AUTHZ_L7
    )


def test_local_modes_declare_what_their_sidecars_allow() -> None:
    assert mode_offer("both").features == ALL == mode_offer("both-mtls").features
    serveronly, none = mode_offer("serveronly"), mode_offer("none")
    assert serveronly.features == ALL - CLIENT_SIDE and none.features == ALL - CLIENT_SIDE - AUTHORIZATION
    assert "mode 'serveronly' has none" in serveronly.hint(Capability.SPLIT)
    assert "mode 'none' has none" in none.hint(Capability.AUTHZ_L4)
    with pytest.raises(
        Unavailable, match=r"^traffic splits: client-side features need a client-side sidecar"
    ):
        (declared("local", mode="serveronly")).require(Capability.SPLIT, "traffic splits")


def test_offers_combine_and_keep_the_hint_of_the_side_that_lacks() -> None:
    a = Offer.lacking("backend x", {Capability.FAULT: "x has no faults"})
    b = Offer.lacking("mesh y", {Capability.SPLIT: "y has no splits"})
    both = a & b
    assert both.name == "backend x with mesh y" and both.features == ALL - {
        Capability.FAULT,
        Capability.SPLIT,
    }
    assert (
        both.hint(Capability.FAULT) == "x has no faults" and both.hint(Capability.SPLIT) == "y has no splits"
    )
    assert both.hint(Capability.LOAD) == "" and both.missing([Capability.LOAD, Capability.SPLIT]) == [
        Capability.SPLIT
    ]
    assert not declared("kubernetes").has(Capability.TELEMETRY)  # no prometheus_url
    assert declared("kubernetes", prometheus_url="http://p:9090").has(Capability.TELEMETRY)
    gateway = declared("kubernetes", mesh="gateway-api", prometheus_url="http://p:9090")
    assert "backend.dialect" in gateway.hint(Capability.TELEMETRY)
    assert declared("kubernetes", mesh="gateway-api", prometheus_url="http://p", dialect="envoy").has(
        Capability.TELEMETRY
    )


def _needs(spec: Any, backend: str = "local") -> list[tuple[str, str]]:
    return [(n.capability.name, ".".join(map(str, n.field))) for n in required_capabilities(spec, backend)]


def test_what_the_default_suite_needs() -> None:
    cfg = load(REPO / "experiments.yaml")
    needs = {e.name: _needs(e) for e in cfg.experiments}
    assert needs["sweep"] == [("LOAD", "rps")]
    assert needs["sidecar-overhead"] == [("LOAD", "rps"), ("SIDECAR_MODES", "modes")]
    assert needs["istio-1-2-published"] == []
    assert needs["catalog-v2-ab"] == [("LOAD", "rps"), ("SPLIT", "split")]
    assert needs["reviews-aa"] == [("LOAD", "rps"), ("SPLIT", "route"), ("HEADER_ROUTE", "route")]
    assert needs["reviews-canary"] == [("SPLIT", "steps"), ("LOAD", "rps")]
    assert _needs(cfg.get("reviews-canary"), "kubernetes") == [
        ("SPLIT", "steps"),
        ("TELEMETRY", ""),
        ("LOAD", "rps"),
    ]
    assert needs["ratings-authz"] == [("REQUEST_AS", "expect"), ("AUTHZ_L4", "policy"),
                                      ("AUTHZ_L7", "policy.rules.0.paths")]  # fmt: skip
    assert needs["pricing-faults"] == [
        ("LOAD", "rps"), ("FAULT", "fault"), ("RETRIES", "protections.1.retries"),
        ("RETRY_ON_RESET", "protections.1.retries"), ("PER_TRY_TIMEOUT", "protections.1.retries"),
        ("TIMEOUT", "protections.2.timeout"), ("CIRCUIT_BREAKER", "protections.3.circuit_breaker"),
    ]  # fmt: skip
    assert needs["blueprint"] == [("LOAD", "rps"), ("TELEMETRY", "")]
    assert needs["release-audit"] == []


def test_a_cluster_canary_without_rps_only_observes() -> None:
    canary = {"name": "c", "kind": "canary", "service": "reviews", "stable": "v1", "canary": "v2",
              "steps": [{"weight": 10}]}  # fmt: skip
    policy = {"service": "r", "action": "deny", "rules": [{"sources": ["a"]}]}
    deny = {"name": "deny", "kind": "authz", "policy": policy, "expect": [{"caller": "a", "allowed": False}]}
    cfg = loads(yaml.safe_dump({"backend": "kubernetes", "experiments": [canary, deny]}))
    assert _needs(cfg.get("c"), "kubernetes") == [("SPLIT", "steps"), ("TELEMETRY", "")]
    assert ("AUTHZ_DENY", "policy.action") in _needs(cfg.get("deny"), "kubernetes")


def test_problems_name_experiment_feature_mesh_and_what_to_change() -> None:
    text = (REPO / "experiments.yaml").read_text()
    cfg = loads(text)
    linkerd = offer_for(cfg.backend, type="kubernetes", mesh="linkerd")
    problems = capability_problems(cfg, linkerd, "kubernetes", "experiments.yaml", text)
    by_path = {p.path: p for p in problems}
    fault = by_path["experiments[7].fault"]
    assert fault.line == text.splitlines().index("    fault: {abort: 503, percent: 20}") + 1
    assert str(fault).startswith(
        f"experiments.yaml:{fault.line} experiments[7].fault: pricing-faults (resilience) "
    )
    assert "needs fault injection, which backend kubernetes with mesh linkerd does not offer" in fault.message
    assert "Linkerd has no fault injection" in fault.message and "use mesh istio" in fault.message
    assert "retry_on: [5xx]" in by_path["experiments[7].protections[1].retries"].message
    assert "backend.prometheus_url" in by_path["experiments[5]"].message  # the canary reads Prometheus there
    assert "meshes:" in by_path["experiments[1].modes"].message  # sidecar modes are local
    assert set(by_path) == {
        "experiments[1].modes", "experiments[5]", "experiments[7].fault", "experiments[8]",
        "experiments[7].protections[1].retries", "experiments[7].protections[3].circuit_breaker",
        "experiments[11].modes",  # the optional ambient comparison: sidecar modes are local too
    }  # fmt: skip
    assert capability_problems(cfg, offer_for(cfg.backend), "local") == []  # the default suite runs locally
    only = capability_problems(
        cfg, offer_for(cfg.backend, mode="serveronly"), "local", only=["ratings-authz"]
    )
    assert only == []  # authorization needs only the callee's sidecar
    with pytest.raises(ConfigError) as info:
        check_capabilities(cfg, offer_for(cfg.backend, mode="none"), "local", only=["ratings-authz"])
    assert "authorization needs sidecars: mode 'none' has none" in str(info.value)


def test_validate_refuses_per_backend_and_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    monkeypatch.chdir(REPO)
    cli = CliRunner()
    done = cli.invoke(app, ["validate", "--backend", "kubernetes", "--mesh", "consul"])
    assert done.exit_code == 2, done.output
    assert (
        "pricing-faults (resilience) needs fault injection, which backend kubernetes with mesh consul"
        in done.output
    )
    assert "per-try timeout" in done.output and "Traceback" not in done.output
    bad = cli.invoke(app, ["validate", "--mesh", "kuma"])
    assert bad.exit_code == 2 and "--mesh: must be one of" in bad.output
    ab = {"name": "a", "kind": "ab", "service": "reviews", "variants": {"baseline": "v1", "candidate": "v2"},
          "split": {"v1": 50, "v2": 50}}  # fmt: skip
    backend = {"type": "kubernetes", "mesh": "auto", "prometheus_url": "http://127.0.0.1:9090"}
    suite = tmp_path / "cluster.yaml"
    suite.write_text(yaml.safe_dump({"backend": backend, "experiments": [ab]}))
    auto = cli.invoke(app, ["validate", str(suite)])
    assert auto.exit_code == 0 and "checked when 'workbench run' starts" in auto.output, auto.output
    done = run_workbench("validate", "--backend", "kubernetes", "--mesh", "linkerd")  # the installed command
    assert done.returncode == 2 and "mesh linkerd" in done.stderr and "Traceback" not in done.stderr


def _cluster_suite(path: Path, mesh: str = "auto") -> Path:
    resilience = {"name": "faults", "kind": "resilience", "service": "reviews", "dependency": "catalog",
                  "fault": {"abort": 503, "percent": 20}, "protections": [{"name": "none"}]}  # fmt: skip
    ab = {"name": "split", "kind": "ab", "service": "reviews", "split": {"v1": 50, "v2": 50},
          "variants": {"baseline": "v1", "candidate": "v2"}}  # fmt: skip
    backend = {"type": "kubernetes", "context": "lab", "namespace": "shop", "mesh": mesh,
               "prometheus_url": "http://127.0.0.1:9"}  # fmt: skip
    path.write_text(yaml.safe_dump({"backend": backend, "experiments": [ab, resilience]}, sort_keys=False))
    return path


def test_run_refuses_at_its_start_after_detecting_the_mesh(
    kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mesh: auto finds Linkerd; the fault experiment is refused before any write and any run directory."""
    from workbench.suite.runner import run_suite

    kube_emulator.flavour("linkerd")
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    suite = _cluster_suite(tmp_path / "experiments.yaml")
    lines: list[str] = []
    with pytest.raises(ConfigError) as info:
        run_suite(suite, reports=tmp_path / "reports", echo=lines.append)
    (problem,) = info.value.problems
    assert (
        problem.path == "experiments[1].fault"
        and "fault:" in suite.read_text().splitlines()[problem.line - 1]
    )
    assert (
        "faults (resilience) needs fault injection, which backend kubernetes with mesh linkerd"
        in problem.message
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()
    assert {method for method, _ in kube_emulator.requests()} <= {"GET"}  # discovery only
    with pytest.raises(ConfigError):  # --only the refused one: still refused
        run_suite(suite, only=["faults"], reports=tmp_path / "reports", echo=lines.append)


def test_dry_run_shows_the_refused_experiment_and_writes_nothing(
    kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.suite.dryrun import plan_run

    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    suite = _cluster_suite(tmp_path / "experiments.yaml", mesh="consul")
    kube_emulator.flavour("consul")
    lines: list[str] = []
    with pytest.raises(ConfigError) as info:
        plan_run(load(suite), load(suite).experiments, lines.append, str(suite), suite.read_text())
    text = "\n".join(lines)
    assert "--- split: would apply" in text and "kind: ServiceSplitter" in text
    assert "--- faults: refused, writes nothing" in text and "refused: 1 need(s)" in text
    assert "Consul has no fault injection" in str(info.value)
    assert {method for method, _ in kube_emulator.requests()} <= {"GET"}


def test_run_refuses_a_local_experiment_its_mode_cannot_do_before_starting_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    policy = {"service": "ratings", "rules": [{"sources": ["reviews"]}]}
    exp = {
        "name": "policy",
        "kind": "authz",
        "policy": policy,
        "expect": [{"caller": "reviews", "allowed": True}],
    }
    suite = tmp_path / "experiments.yaml"
    suite.write_text(yaml.safe_dump({"backend": {"type": "local", "mode": "none"}, "experiments": [exp]}))
    done = CliRunner().invoke(app, ["run", str(suite), "--reports", str(tmp_path / "reports")])
    assert done.exit_code == 2, done.output
    assert (
        "policy (authz) needs authorization by caller (L4), which the local mesh with mode none"
        in done.output
    )
    assert "nothing was run or written" in done.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()
