"""The canary experiment end to end on a "cluster": the kmock emulator as API server, a real Prometheus.

Prometheus is loaded (``promtool tsdb create-blocks-from openmetrics``) with Istio standard metrics
for reviews v1 and v3 from ~30 minutes ago to ~10 minutes in the future, every second for the last
5 minutes on, so canary steps running in real time find their windows "now". The traffic is fixed,
whatever the split (a cluster's canary observes real traffic; it does not generate it): 2000 requests
per second per version (enough for the default anytime-valid looks to call 0.2 % vs 0.2 % equivalent
within 12 one-second windows), latencies on a deterministic lognormal grid (median 20 ms), v1 with 0.2 %
errors, v3 either the same (healthy) or 20 % errors (faulty). The canary runs through
``open_session`` on an experiments.yaml with ``backend: kubernetes`` (the emulator's context, the
kubeconfig via KUBECONFIG) and must end with the emulator's VirtualService on v3 100 % (healthy) or
v1 100 % after the first look (faulty), with a stored timeline consistent with the re-derived looks.

The last test runs ``notebooks/canary.ipynb`` under papermill against the emulator (kubeconfig token
``sekret-token-123``) and a basic-auth Prometheus (``http://user:sekret-pass-456@...``), renders the
HTML report and checks that neither secret appears in any file produced.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from kube import TOKEN
from scipy.stats import norm

from conftest import REPO
from workbench.backends.kubernetes.backend import KubernetesBackend
from workbench.experiments import canary
from workbench.experiments.session import PROGRESS_ENV, open_session

pytestmark = [
    pytest.mark.slow,
    pytest.mark.beside,  # fixed Prometheus data and the emulator: measures nothing
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("promtool")),
        reason="prometheus/promtool not installed",
    ),
]

PROM_USER, PROM_PASSWORD = "user", "sekret-pass-456"
RPS = 2000
ISTIO_LE = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]


def _times(now: int) -> np.ndarray:
    """Sample times around ``now`` (when the fixture loads Prometheus, not when the module is
    imported: a long test session reaches these tests many minutes after collection): 15 s
    samples from 30 minutes before, then every second from 5 minutes before to 10 minutes after."""
    start, dense, end = now - 30 * 60, now - 5 * 60, now + 10 * 60
    return np.array([*range(start, dense, 15), *range(dense, end + 1)])


VS = "networking.istio.io/v1/virtualservices"


@dataclass(frozen=True)
class Version:
    """One version's traffic per second: errors (HTTP 503) among RPS requests."""

    name: str
    errors_per_s: int


HEALTHY = [Version("v1", 4), Version("v3", 4)]  # 0.2 % errors each
FAULTY = [Version("v1", 4), Version("v3", 400)]  # v3: 20 % errors


def _latencies(n: int) -> np.ndarray:
    """n latencies (ms) on a deterministic lognormal grid: median 20 ms, sigma 0.5."""
    return np.exp(math.log(20.0) + 0.5 * norm.ppf((np.arange(n) + 0.5) / n))


def _openmetrics(versions: list[Version], times: np.ndarray) -> str:
    """Istio-shaped counters and histograms (reporter=destination) whose rate is constant per second."""
    elapsed = (times - times[0]).astype(float)  # seconds of traffic up to each sample
    lines: dict[str, list[str]] = {}

    def series(name: str, labels: dict[str, str], per_s: float) -> None:
        key = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        lines.setdefault(name, []).extend(
            f"{name}{key} {per_s * e:.17g} {t}" for t, e in zip(times, elapsed, strict=True)
        )

    for v in versions:
        base = {
            "reporter": "destination", "source_workload": "productpage-v1", "source_app": "productpage",
            "destination_workload": f"reviews-{v.name}", "destination_app": "reviews",
            "destination_service_name": "reviews", "destination_service_namespace": "shop",
            "destination_service": "reviews.shop.svc.cluster.local", "destination_version": v.name,
        }  # fmt: skip
        for code, n in (("200", RPS - v.errors_per_s), ("503", v.errors_per_s)):
            labels = {**base, "response_code": code, "response_flags": "-"}
            lat = _latencies(n)
            series("istio_requests_total", labels, n)
            family = "istio_request_duration_milliseconds"
            for le in [*ISTIO_LE, math.inf]:
                bucket = {**labels, "le": "+Inf" if le == math.inf else f"{le:g}"}
                series(f"{family}_bucket", bucket, float((lat <= le).sum()))
            series(f"{family}_sum", labels, float(lat.sum()))
            series(f"{family}_count", labels, n)
    return "\n".join([*(x for group in lines.values() for x in group), "# EOF", ""])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two real Prometheus servers on free ports: "healthy" (no auth) and "faulty" (basic auth); each
    with its own temp TSDB, stopped in a finally. Yields their URLs (the faulty one with userinfo)."""
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    urls: dict[str, str] = {}
    times = _times(int(time.time()))
    try:
        for name, versions, auth in (("healthy", HEALTHY, False), ("faulty", FAULTY, True)):
            root = tmp_path_factory.mktemp(f"prom-{name}")
            data = root / "data"
            data.mkdir()
            (root / "series.om").write_text(_openmetrics(versions, times))
            made = subprocess.run(
                ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(root / "series.om"), str(data)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert made.returncode == 0, made.stdout + made.stderr
            (root / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
            args = [f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
                    "--storage.tsdb.retention.time=30d", "--log.level=warn"]  # fmt: skip
            if auth:
                web = {"basic_auth_users": {PROM_USER: _bcrypt(PROM_PASSWORD)}}
                (root / "web.yml").write_text(yaml.safe_dump(web))
                args.append(f"--web.config.file={root / 'web.yml'}")
            port = _free_port()
            log = (root / "prometheus.log").open("wb")
            proc = subprocess.Popen(
                ["prometheus", *args, f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append((proc, log))
            basic = (PROM_USER, PROM_PASSWORD) if auth else None
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (root / "prometheus.log").read_text()
                try:
                    if requests.get(f"http://127.0.0.1:{port}/-/ready", auth=basic, timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.1)
            if auth:  # the credentials are really needed
                assert requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 401
            creds = f"{PROM_USER}:{PROM_PASSWORD}@" if auth else ""
            urls[name] = f"http://{creds}127.0.0.1:{port}"
        yield urls
    finally:
        for proc, log in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _suite(path: Path, prometheus_url: str) -> Path:
    """experiments.yaml: the emulator's context as the backend, one short canary (3 × 4 s, 1 s windows: a
    step holds the 3 whole windows an error-rate look needs)."""
    doc = {
        "backend": {"type": "kubernetes", "context": "lab", "namespace": "shop", "mesh": "istio",
                    "prometheus_url": prometheus_url},
        "experiments": [{
            "name": "reviews-canary", "kind": "canary", "service": "reviews", "stable": "v1", "canary": "v3",
            "steps": [{"weight": 10, "duration": "4s"}, {"weight": 25, "duration": "4s"},
                      {"weight": 50, "duration": "4s"}, {"weight": 100}],
            "duration": "4s", "warmup": "0s", "window": "1s", "metrics": ["p50", "p99", "error_rate"],
        }],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _weights(emulator: Any) -> dict[str, int]:
    vs = emulator.get(VS, "shop", "reviews")
    return {r["destination"]["subset"]: r.get("weight", 0) for h in vs["spec"]["http"] for r in h["route"]}


def _run(kube_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> tuple[Any, Any]:
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    s = open_session(_suite(tmp_path / "experiments.yaml", url), "reviews-canary", tmp_path / "run")
    assert isinstance(s.backend(), KubernetesBackend)
    return s, s.execute(canary)


def _events(s: Any) -> list[dict[str, Any]]:
    return json.loads((s.store / canary.TIMELINE_FILE).read_text())["events"]


def test_healthy_canary_is_promoted_from_prometheus_data(
    kube_emulator: Any, prometheus: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    began = time.monotonic()
    s, result = _run(kube_emulator, tmp_path, monkeypatch, prometheus["healthy"])
    assert result.verdict == "promoted", result.headline
    assert _weights(kube_emulator) == {"v1": 0, "v2": 0, "v3": 100}
    events = _events(s)
    assert [e["event"] for e in events if e["event"] in ("split", "decision", "end")] == [
        "split", "decision", "split", "decision", "split", "decision", "split", "end",
    ]  # fmt: skip
    splits = [e["split"] for e in events if e["event"] == "split"]
    assert splits == [{"v1": 90, "v3": 10}, {"v1": 75, "v3": 25}, {"v1": 50, "v3": 50}, {"v3": 100}]
    assert [e["action"] for e in events if e["event"] == "decision"] == ["continue", "continue", "promote"]
    assert result.figures["decisions_consistent"] and result.figures["final_split"] == {"v3": 100}
    # every step was observed in Prometheus, not loaded: ~2000 requests per second and version
    for i in (1, 2, 3):
        assert (s.store / f"step-{i}{canary.TELEMETRY_SUFFIX}").exists()
        assert not (s.store / f"step-{i}.json").exists()
    ends = [e for e in events if e["event"] == "step end"]
    for e in ends:
        assert set(e["requests"]) == {"v1", "v3"}
        assert all(n % RPS == 0 and 1 <= n // RPS <= 3 for n in e["requests"].values())
    last = result.details["looks"][-1].decision.comparison
    assert last["error_rate"].baseline == pytest.approx(0.2) and last[
        "error_rate"
    ].candidate == pytest.approx(0.2)
    assert last["p50"].estimate == 0 and last["p50"].verdict == "equivalent"  # identical distributions
    assert last["p50"].baseline == pytest.approx(20.0, rel=0.1)
    steps = result.tables["steps"]
    assert steps["stable_error_pct"].tolist() == pytest.approx([0.2] * 3)
    # the run re-analyses from the stored telemetry alone
    replay = open_session(s.config_file, "reviews-canary", s.run_dir, replay=True)
    again = canary.analyse(replay)
    assert again.verdict == "promoted" and again.figures["decisions_consistent"]
    assert set(canary.figures(again)) >= {"timeline", "looks"}
    assert time.monotonic() - began < 30


def test_faulty_canary_rolls_back_at_the_first_look(
    kube_emulator: Any,
    prometheus: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    s, result = _run(kube_emulator, tmp_path, monkeypatch, prometheus["faulty"])  # basic auth from userinfo
    assert result.verdict == "rolled back", result.headline
    assert _weights(kube_emulator) == {"v1": 100, "v2": 0, "v3": 0}
    events = _events(s)
    decisions = [e for e in events if e["event"] == "decision"]
    assert [(d["look"], d["step"], d["action"]) for d in decisions] == [(1, 1, "rollback")]
    assert decisions[0]["metrics"]["error_rate"]["verdict"] == "worse"
    assert [e["split"] for e in events if e["event"] == "split"] == [{"v1": 90, "v3": 10}, {"v1": 100}]
    assert events[-1] == {**events[-1], "event": "end", "outcome": "rolled back"}
    assert result.figures["decisions_consistent"] and result.figures["steps_completed"] == 1
    last = result.details["looks"][-1].decision.comparison["error_rate"]
    assert last.candidate == pytest.approx(20.0) and last.baseline == pytest.approx(0.2)
    assert "error" in result.headline and "rolled back to v1" in result.headline
    # the change log (what the audit log records) and every log line are free of credentials
    changes = json.dumps(s.backend().changes)
    assert '"split"' in changes and "VirtualService" in changes
    for secret in (TOKEN, PROM_PASSWORD):
        assert secret not in changes and secret not in caplog.text


def test_no_credential_in_notebook_report_or_data(
    kube_emulator: Any, prometheus: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papermill as pm

    from workbench.report.html import render_html

    assert TOKEN == "sekret-token-123" and TOKEN in kube_emulator.kubeconfig.read_text()
    assert PROM_PASSWORD in prometheus["faulty"]
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig))
    suite = _suite(tmp_path / "experiments.yaml", prometheus["faulty"])
    run_dir = tmp_path / "runs" / "r1"
    executed = run_dir / "reviews-canary.ipynb"
    run_dir.mkdir(parents=True)
    monkeypatch.setenv(PROGRESS_ENV, str(run_dir / "progress.log"))  # the progress log is checked too
    monkeypatch.setenv("WORKBENCH_AUDIT_LOG", str(run_dir / "audit.jsonl"))  # and the audit log
    pm.execute_notebook(
        str(REPO / "notebooks" / "canary.ipynb"), str(executed),
        parameters={"config_file": str(suite), "experiment": "reviews-canary", "run_dir": str(run_dir),
                    "quick": True},
        cwd=str(REPO / "notebooks"), progress_bar=False, kernel_name="python3",
    )  # fmt: skip
    html = render_html(executed, tmp_path / "reports" / "reviews-canary.html", "reviews-canary")
    store = run_dir / "reviews-canary"
    result = json.loads((store / "result.json").read_text())
    assert result["verdict"] == "rolled back" and result["status"] == "ok"
    assert (store / canary.TIMELINE_FILE).exists() and (store / f"step-1{canary.TELEMETRY_SUFFIX}").exists()
    assert _weights(kube_emulator) == {"v1": 100, "v2": 0, "v3": 0}
    produced = [p for p in [*run_dir.rglob("*"), html] if p.is_file()]
    assert {
        executed,
        html,
        run_dir / "progress.log",
        store / "result.json",
        store / canary.TIMELINE_FILE,
    } <= set(produced)
    assert "rolled back" in (run_dir / "progress.log").read_text()
    if (run_dir / "audit.jsonl").exists():  # the audit log records every split the canary made
        assert '"split"' in (run_dir / "audit.jsonl").read_text()
    for path in produced:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for secret in (TOKEN, PROM_PASSWORD):
            assert secret not in text, f"{secret} leaked into {path}"
