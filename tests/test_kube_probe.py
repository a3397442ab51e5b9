"""Requests as a caller on a cluster: the probe Job per mesh (schema-valid, the caller's identity, the
mesh's injection), its shell program against real HTTP answers (Envoy's RBAC denial, Linkerd's
l5d-proxy-error, an L4 reset), and the exact API conversation — every Job created, awaited, read,
deleted and audited, also on failure, timeout and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes.client as k8s
import pytest
from pytest_httpserver import HTTPServer
from test_loadjob import _strict
from werkzeug import Response

from workbench.backends.base import Answer
from workbench.backends.kubernetes.apply import Writer
from workbench.backends.kubernetes.probe import (
    PROBE_IMAGE,
    ProbeError,
    ProbeJob,
    build_probe_job,
    parse_probe_log,
    probe_script,
    run_probes,
)

NS = "shop"
URL = "http://ratings.shop.svc.cluster.local:9080"
CHECKS = [("GET", "/ratings/1"), ("POST", "/ratings/1")]


def _job(
    mesh: str, dataplane: str = "sidecar", caller: str = "reviews", name: str = "wb-probe-reviews-1"
) -> ProbeJob:
    return build_probe_job(
        caller, f"{caller}-sa", NS, URL, CHECKS, 2, mesh=mesh, dataplane=dataplane, name=name
    )


@pytest.mark.parametrize(
    ("mesh", "dataplane", "labels", "annotations"),
    [
        ("istio", "sidecar", {"sidecar.istio.io/inject": "true"},
         {"proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}'}),
        ("istio", "ambient", {"istio.io/dataplane-mode": "ambient", "sidecar.istio.io/inject": "false"}, {}),
        ("linkerd", "sidecar", {}, {"linkerd.io/inject": "enabled",
                                    "config.alpha.linkerd.io/proxy-enable-native-sidecar": "true"}),
        ("consul", "sidecar", {}, {"consul.hashicorp.com/connect-inject": "true",
                                   "consul.hashicorp.com/connect-service": "reviews",
                                   "consul.hashicorp.com/transparent-proxy": "true",
                                   "consul.hashicorp.com/enable-sidecar-proxy-lifecycle": "true"}),
    ],
)  # fmt: skip
def test_the_probe_pod_runs_as_the_caller_in_the_mesh(
    mesh: str, dataplane: str, labels: dict[str, str], annotations: dict[str, str]
) -> None:
    job = _job(mesh, dataplane)
    manifest = job.manifest
    _strict(manifest, "V1Job", "job")  # every field is a Kubernetes field
    api = k8s.ApiClient()
    assert api._ApiClient__deserialize(json.loads(json.dumps(manifest)), "V1Job").spec.backoff_limit == 0
    spec, template = manifest["spec"], manifest["spec"]["template"]
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    pod = template["spec"]
    assert pod["serviceAccountName"] == "reviews-sa" and pod["restartPolicy"] == "Never"
    assert manifest["metadata"]["namespace"] == NS and manifest["metadata"]["name"] == "wb-probe-reviews-1"
    meta_labels = template["metadata"]["labels"]
    assert {k: v for k, v in meta_labels.items() if k not in manifest["metadata"]["labels"]} == labels
    assert template["metadata"]["annotations"] == annotations
    assert (
        "app" not in meta_labels and meta_labels["workbench.mesh/caller"] == "reviews"
    )  # no Service picks it
    (container,) = pod["containers"]
    assert container["image"] == PROBE_IMAGE and container["command"][:2] == ["sh", "-c"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (
        env["TARGET"] == URL and env["PROBES"] == "GET /ratings/1\nPOST /ratings/1" and env["ATTEMPTS"] == "2"
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert job.reset_is_denial == (dataplane == "ambient")
    with pytest.raises(ProbeError, match="mesh gateway-api has none"):
        _job("gateway-api")
    with pytest.raises(ProbeError, match="must start with '/'"):
        build_probe_job("reviews", "default", NS, URL, [("GET", "/x; rm -rf /")], mesh=mesh)


# ------------------------------------------------------------------------------------------------
# The shell program against real answers


class _Mesh(BaseHTTPRequestHandler):
    """Answers as proxies do: by path, Envoy's RBAC denial, Linkerd's, the app's own 403, a 200."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/reset":
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.close()
            return
        status, body, headers = {
            "/rbac": (403, b"RBAC: access denied", {}),
            "/l5d": (403, b"", {"l5d-proxy-error": "unauthorized request on route"}),
            "/app403": (403, b"the app says no", {}),
        }.get(self.path, (200, b"ok", {}))  # fmt: skip
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def mesh_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mesh)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_the_probe_program_reports_what_each_request_got(mesh_server: str, tmp_path: Any) -> None:
    checks = [("GET", "/ok"), ("POST", "/rbac"), ("GET", "/l5d"), ("DELETE", "/app403"), ("HEAD", "/ok"),
              ("GET", "/reset")]  # fmt: skip
    job = build_probe_job("reviews", "default", NS, mesh_server, checks, 2, mesh="istio", dataplane="ambient")
    env = {e["name"]: e["value"] for e in job.manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    program = probe_script().replace("W=/tmp/wb", f"W={tmp_path}")
    done = subprocess.run(["sh", "-c", program], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = parse_probe_log(done.stdout, job, "pod-x")
    assert [a[0].status for a in answers] == [200, 403, 403, 403, 200, 0]
    assert [a[0].denied for a in answers] == [False, True, True, False, False, True]  # the app's 403 passed
    assert (
        answers[5][0].error == "connection reset by the L4 policy (ztunnel)"
    )  # ambient: a reset is a denial
    assert all(len(a) == 2 and a[0] == a[1] for a in answers)
    sidecar = build_probe_job("reviews", "default", NS, mesh_server, checks, 2, mesh="istio")
    again = parse_probe_log(done.stdout, sidecar)
    assert again[5][0] == Answer(
        0, False, "connection reset"
    )  # with sidecars a reset is an error, not a policy


def test_a_short_probe_log_names_the_job_and_pod() -> None:
    job = _job("istio")
    log = "WB-PROBE 0 1 200 0 -\nWB-PROBE 0 2 200 0 -\nWB-PROBE 1 1 403 0 rbac\n"
    with pytest.raises(
        ProbeError, match=r"probe Job wb-probe-reviews-1 \(caller reviews\) pod p1 reported 3 of 4 "
    ):
        parse_probe_log(log, job, "p1")


# ------------------------------------------------------------------------------------------------
# The API conversation


JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
APPLY_QS = {"fieldManager": "mesh-workbench", "force": "false"}
DONE = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}


def _pod(job: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"name": f"{job}-xyz", "labels": {"job-name": job}}, "status": {"phase": phase}}


def _log(n: int, attempts: int, status: int = 200, flag: str = "-") -> str:
    lines = [f"WB-PROBE {i} {a} {status} 0 {flag}" for i in range(n) for a in range(1, attempts + 1)]
    return "\n".join([*lines, "WB-PROBE-DONE", ""])


def test_probe_conversation_creates_awaits_reads_and_deletes_every_job(
    httpserver: HTTPServer, writer: Writer
) -> None:
    jobs = [
        _job("istio", caller="reviews", name="wb-probe-a"),
        _job("istio", caller="frontend", name="wb-probe-b"),
    ]
    headers = {"Content-Type": "application/apply-patch+yaml"}
    expect = httpserver.expect_ordered_request
    for name in ("wb-probe-a", "wb-probe-b"):
        expect(f"{JOBS}/{name}", "PATCH", query_string=APPLY_QS, headers=headers).respond_with_json(
            {"kind": "Job"}
        )
    logs = {"wb-probe-a": _log(2, 2), "wb-probe-b": _log(2, 2, 403, "rbac")}
    for name, answers in (("wb-probe-a", [DONE]), ("wb-probe-b", [{"status": {"active": 1}}, DONE])):
        for answer in answers:
            expect(f"{JOBS}/{name}", "GET").respond_with_json(answer)
        pods = {"items": [_pod(name, "Succeeded")]}
        expect(PODS, "GET", query_string={"labelSelector": f"job-name={name}"}).respond_with_json(pods)
        log = Response(logs[name], content_type="text/plain")
        expect(f"{PODS}/{name}-xyz/log", "GET", query_string={"container": "probe"}).respond_with_response(
            log
        )
    for name in ("wb-probe-b", "wb-probe-a"):
        expect(f"{JOBS}/{name}", "DELETE", json={"propagationPolicy": "Background"}).respond_with_json({})
    audited: list[tuple[Any, ...]] = []

    run_probes(writer, NS, jobs, poll_s=0.01, audit=lambda *a, **k: audited.append((*a, k.get("caller"))))

    httpserver.check_assertions()
    assert [a[0].status for a in jobs[0].answers] == [200, 200] and not jobs[0].answers[1][1].denied
    assert all(a.denied and a.status == 403 for row in jobs[1].answers for a in row)
    applied = json.loads(httpserver.log[0][0].data)
    assert applied["spec"]["template"]["spec"]["serviceAccountName"] == "reviews-sa"
    assert httpserver.log[0][0].headers["Authorization"] == "Bearer fake-token-123"
    a, b = f"{NS}/wb-probe-a", f"{NS}/wb-probe-b"
    assert audited == [("created", "Job", a, "reviews"), ("created", "Job", b, "frontend"),
                       ("deleted", "Job", b, "frontend"), ("deleted", "Job", a, "reviews")]  # fmt: skip


def test_a_stuck_probe_times_out_says_why_and_is_deleted(httpserver: HTTPServer, writer: Writer) -> None:
    job = _job("linkerd", name="wb-probe-a")
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "PATCH").respond_with_json({"kind": "Job"})
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "GET").respond_with_json({"status": {"active": 1}})
    waiting = {"metadata": {"name": "wb-probe-a-xyz"},
               "status": {"phase": "Pending", "containerStatuses": [
                   {"name": "probe", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}  # fmt: skip
    httpserver.expect_request(PODS, "GET").respond_with_json({"items": [waiting]})
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "DELETE").respond_with_json({"kind": "Status"})
    with pytest.raises(ProbeError) as info:
        run_probes(writer, NS, [job], timeout_s=0.2, poll_s=0.05)
    assert "did not finish within 0 s" in str(info.value)
    assert "wb-probe-a (caller reviews): wb-probe-a-xyz Pending (ImagePullBackOff)" in str(info.value)
    assert [r.method for r, _ in httpserver.log][-1] == "DELETE"


def test_a_failed_probe_and_ctrl_c_still_delete(
    httpserver: HTTPServer, writer: Writer, monkeypatch: Any
) -> None:
    job = _job("consul", name="wb-probe-a")
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "PATCH").respond_with_json({"kind": "Job"})
    failed = {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "GET").respond_with_json(failed)
    httpserver.expect_request(PODS, "GET").respond_with_json({"items": [_pod("wb-probe-a", "Failed")]})
    httpserver.expect_request(f"{PODS}/wb-probe-a-xyz/log", "GET").respond_with_response(
        Response("sh: curl: not found\n", content_type="text/plain"))  # fmt: skip
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "DELETE").respond_with_json({"kind": "Status"})
    with pytest.raises(ProbeError, match=r"(?s)caller reviews\) failed; pod wb-probe-a-xyz.*curl: not found"):
        run_probes(writer, NS, [job], poll_s=0.01)
    assert [r.method for r, _ in httpserver.log][-1] == "DELETE"
    httpserver.clear_log()
    httpserver.clear_all_handlers()
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "PATCH").respond_with_json({"kind": "Job"})
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "GET").respond_with_json({"status": {"active": 1}})
    httpserver.expect_request(f"{JOBS}/wb-probe-a", "DELETE").respond_with_json({"kind": "Status"})

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("workbench.backends.kubernetes.probe.time.sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_probes(writer, NS, [job], poll_s=0.01)
    assert [r.method for r, _ in httpserver.log][-1] == "DELETE"
