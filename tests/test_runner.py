"""``workbench run`` edge cases: bad input, a failing experiment, an unavailable backend, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import WORKBENCH, processes_using, run_workbench
from workbench.backends.local.mesh import LocalMesh


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "experiments.yaml"
    path.write_text(text)
    return path


def _run(tmp: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WORKBENCH), "run", *args, "--reports", str(tmp / "reports")],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=timeout,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp / "c"), **env},
        check=False,
    )


def _results(tmp: Path) -> dict[str, dict]:
    (run,) = (tmp / "data" / "runs").iterdir()
    return {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/result.json")}


def test_invalid_input_exits_2_before_anything_runs(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "experiments:\n  - {name: x, kind: ab, service: catalog}\n")
    proc = _run(tmp_path, str(cfg))
    assert proc.returncode == 2 and "experiments[0].variants" in proc.stderr
    ok = _write(tmp_path, "experiments:\n  - {name: log, kind: audit}\n")
    proc = _run(tmp_path, str(ok), "--only", "logs")
    assert proc.returncode == 2
    assert "--only: no experiment named logs; there are: log" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
@pytest.mark.beside  # a backend that is not there: measures nothing
def test_unavailable_backend_marks_experiments_failed_with_the_reason(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        "backend: {type: kubernetes, context: nowhere}\nexperiments:\n"
        "  - name: cluster-authz\n    kind: authz\n"
        "    policy: {service: ratings, rules: [{sources: [reviews]}]}\n"
        "    expect: [{caller: reviews, allowed: true}]\n",
    )
    missing = tmp_path / "no-such-kubeconfig"
    proc = _run(tmp_path, str(cfg), KUBECONFIG=str(missing))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    result = _results(tmp_path)["cluster-authz"]
    assert result["status"] == "failed" and f"no kubeconfig at {missing}" in result["error"]
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "cluster-authz" in index and f"no kubeconfig at {missing}" in index
    assert "could not run: cluster-authz" in proc.stderr


@pytest.mark.slow
@pytest.mark.beside  # statuses and reports, not figures
def test_a_failing_experiment_does_not_stop_the_others(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        "defaults: {warmup: 1s, window: 1s}\nexperiments:\n"
        "  - {name: bad-version, kind: ab, service: catalog, variants: {baseline: v1, candidate: v7},"
        " split: {v1: 50, v7: 50}, rps: 100, duration: 3s}\n"
        "  - {name: good, kind: ab, service: reviews, variants: {baseline: v1, candidate: v2},"
        " split: {v1: 50, v2: 50}, rps: 200, duration: 4s, ground_truth: false}\n",
    )
    proc = _run(tmp_path, str(cfg))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    results = _results(tmp_path)
    assert results["bad-version"]["status"] == "failed"
    assert "catalog has no version v7" in results["bad-version"]["error"]
    assert results["good"]["status"] == "ok" and results["good"]["figures"]["requests_v2"] > 100
    reports = tmp_path / "reports" / "latest"
    assert (reports / "bad-version.html").exists() and (reports / "good.html").exists()


@pytest.mark.slow
@pytest.mark.beside  # where traffic ends after a signal, not figures
def test_ctrl_c_interrupts_the_running_experiment_and_traffic_returns_to_stable(tmp_path: Path) -> None:
    state = tmp_path / "mesh"
    up = run_workbench("local", "up", "--state-dir", str(state))
    assert up.returncode == 0, up.stderr
    try:
        cfg = _write(
            tmp_path,
            "experiments:\n"
            "  - {name: long-ab, kind: ab, service: catalog, variants: {baseline: v1, candidate: v2},"
            " split: {v1: 50, v2: 50}, rps: 100, duration: 60s, warmup: 1s}\n"
            "  - {name: never, kind: authz, policy: {service: ratings, rules: [{sources: [reviews]}]},"
            " expect: [{caller: reviews, allowed: true}]}\n",
        )
        proc = subprocess.Popen(
            [
                str(WORKBENCH),
                "run",
                str(cfg),
                "--reports",
                str(tmp_path / "reports"),
                "--mesh-state",
                str(state),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        progress = None
        deadline = time.time() + 60
        while time.time() < deadline:
            logs = list((tmp_path / "data" / "runs").glob("*/progress.log"))
            if logs and "A/B v1 vs v2" in logs[0].read_text():
                progress = logs[0]
                break
            time.sleep(0.2)
        assert progress is not None, "the A/B never started"
        time.sleep(3)  # mid-run: the 50/50 split is live
        assert LocalMesh.attach(state).get_split("catalog") == {"v1": 50, "v2": 50}
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, output
        mesh = LocalMesh.attach(state)
        assert mesh.get_split("catalog") == {"v1": 100, "v2": 0}
        answered = Counter(mesh.request_as("loadgen", "catalog").headers["x-version"] for _ in range(30))
        assert answered == {"v1": 30}
        results = _results(tmp_path)
        assert results["long-ab"]["status"] == "failed" and results["long-ab"]["error"] == "interrupted"
        assert "never" not in results  # the run stopped after the interrupted experiment
        index = (tmp_path / "reports" / "index.html").read_text()
        assert "not run: the run was interrupted" in index
    finally:
        run_workbench("local", "down", "--state-dir", str(state))
    assert processes_using(state) == []


def test_fail_on_must_be_a_known_threshold(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "experiments:\n  - {name: log, kind: audit}\n")
    proc = _run(tmp_path, str(cfg), "--fail-on", "sometimes")
    assert proc.returncode == 2
    assert "--fail-on: must be one of worse, inconclusive, never (got 'sometimes')" in proc.stderr


@pytest.mark.slow
def test_a_missing_prometheus_binary_exits_3_with_the_fix(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        "experiments:\n  - name: ratings-authz\n    kind: authz\n"
        "    policy: {service: ratings, rules: [{sources: [reviews]}]}\n"
        "    expect: [{caller: reviews, allowed: true}]\n",
    )
    bin_only = str(Path(WORKBENCH).parent)  # the venv's envoy and k6, but no prometheus
    proc = _run(tmp_path, str(cfg), PATH=bin_only)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    summary = json.loads(next((tmp_path / "reports").glob("*/summary.json")).read_text())
    (entry,) = summary["experiments"]
    assert entry["status"] == "failed" and entry["gate"] == "fail"
    assert "prometheus is not installed: apt-get install" in entry["error"]
    assert summary["versions"]["prometheus"] == "missing"


def test_dry_run_on_the_local_mesh_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        "experiments:\n  - {name: aa, kind: ab, service: reviews, variants: {baseline: v1, candidate: v2},"
        " split: {v1: 50, v2: 50}}\n",
    )
    proc = _run(tmp_path, str(cfg), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "aa (ab): v1 vs v2, split v1:50/v2:50" in proc.stdout
    assert "nothing outside this machine changes" in proc.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


def test_dry_run_on_a_cluster_prints_manifests_and_writes_nothing(tmp_path: Path, kube_emulator) -> None:
    cfg = _write(
        tmp_path,
        "backend: {type: kubernetes, namespace: shop, mesh: istio, prometheus_url: 'http://127.0.0.1:9'}\n"
        "experiments:\n"
        "  - {name: canary, kind: canary, service: reviews, stable: v1, canary: v3,"
        " steps: [{weight: 10}, {weight: 100}]}\n"
        "  - name: authz\n    kind: authz\n"
        "    policy: {service: reviews, rules: [{sources: [frontend], methods: [GET]}]}\n"
        "    expect: [{caller: frontend, allowed: true}]\n",
    )
    before = list(kube_emulator.requests())
    proc = _run(tmp_path, str(cfg), "--dry-run", KUBECONFIG=str(kube_emulator.kubeconfig))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (
        "kind: VirtualService" in out
        and "kind: DestinationRule" in out
        and "kind: AuthorizationPolicy" in out
    )
    assert "weight: 90" in out and "weight: 10" in out
    assert "cluster.local/ns/shop/sa/frontend" in out
    writes = [
        r for r in kube_emulator.requests()[len(before) :] if r[0] in ("PATCH", "POST", "PUT", "DELETE")
    ]
    assert writes == []
    assert kube_emulator.token not in out + proc.stderr
