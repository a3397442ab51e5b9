"""The release audit log: hash chain and tampering, concurrent writers, scrubbing, the CLI, the hooks
(local mesh, Kubernetes backend, runner, canary), the metrics exporter scraped by a real Prometheus,
and the Grafana dashboard."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from conftest import REPO, processes_using, run_workbench
from workbench.audit import GENESIS, AuditError, AuditLog
from workbench.audit import log as audit
from workbench.audit.exporter import AuditState
from workbench.metrics.dialects import DIALECTS

FAKE_TOKEN = "ghp_FAKEfakeFAKE0123456789abcdef"
DASHBOARD = REPO / "deploy" / "grafana" / "mesh-workbench.json"


def _log(tmp_path: Path, n: int = 6) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", backend={"type": "local", "context": "test"})
    for i in range(n):
        log.record("split", "catalog", {"v1": 100 - i, "v2": i}, {"v1": 99 - i, "v2": i + 1})
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------
# Hash chain


def test_entries_are_chained_and_verify(tmp_path: Path) -> None:
    log = _log(tmp_path)
    entries = log.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0]["prev"] == GENESIS
    lines = _lines(log)
    for prev_line, entry in zip(lines, entries[1:], strict=False):
        assert entry["prev"] == audit._sha256(prev_line)
    assert all(e["hash"] == audit.entry_hash(e) for e in entries)
    first = entries[0]
    assert first["actor"].count("@") == 1 and first["backend"] == {"type": "local", "context": "test"}
    assert first["time"].endswith("+00:00") and first["action"] == "split" and first["target"] == "catalog"
    result = log.verify()
    assert result.ok and result.entries == 6 and result.first_bad_line is None and not result.warnings
    assert json.loads(log.head_path.read_text())["entries"] == 6


def _edit(lines: list[str]) -> list[str]:
    lines[2] = lines[2].replace('"target":"catalog"', '"target":"pricing"')
    return lines


def _edit_and_rehash(lines: list[str]) -> list[str]:
    entry = json.loads(lines[2])
    entry["after"] = {"v1": 0, "v2": 100}
    entry["hash"] = audit.entry_hash(entry)
    lines[2] = audit.canonical(entry)
    return lines


def _reformat(lines: list[str]) -> list[str]:
    lines[2] = json.dumps(json.loads(lines[2]), indent=None)  # same content, other spacing
    return lines


TAMPER = {
    "edit": (_edit, 3, "content does not match its hash: the entry was edited"),
    "edit and re-hash": (_edit_and_rehash, 4, "prev does not match line 3"),
    "re-format": (_reformat, 3, "not in canonical form"),
    "delete": (lambda ls: ls[:2] + ls[3:], 3, "1 entry before it deleted"),
    "delete first": (lambda ls: ls[1:], 1, "entries before it were removed"),
    "insert": (lambda ls: [*ls[:3], ls[1], *ls[3:]], 4, "inserted or entries reordered"),
    "reorder": (lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], 3, "deleted, or entries reordered"),
    "truncate": (lambda ls: ls[:4], 5, "truncated: the head file records 6 entries, the log has 4"),
    "garbage": (lambda ls: [*ls[:1], "{not json", *ls[1:]], 2, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_verify_names_the_first_bad_line(tmp_path: Path, case: str) -> None:
    log = _log(tmp_path)
    change, line, reason = TAMPER[case]
    _write(log, change(_lines(log)))
    result = log.verify()
    assert not result.ok and result.first_bad_line == line, str(result)
    assert reason in result.reason
    assert str(result) == f"{log.path}: line {line}: {result.reason}"


def test_verify_catches_a_torn_last_line_and_writes_after_truncation(tmp_path: Path) -> None:
    log = _log(tmp_path)
    text = log.path.read_text()
    log.path.write_text(text[:-40])  # cut off mid-entry
    result = log.verify()
    assert (result.ok, result.first_bad_line) == (False, 6) and "cut off mid-entry" in result.reason
    with pytest.raises(AuditError, match="last line is incomplete"):
        log.record("split", "catalog", None, {"v1": 100})
    # truncating whole entries and then recording more: the new entry carries the evidence
    _write(log, text.splitlines()[:3])
    log.record("split", "catalog", None, {"v1": 100})
    result = log.verify()
    assert result.first_bad_line == 4 and "written after the log was altered" in result.reason
    assert "head recorded 6 entries, the log had 3" in result.reason


def test_verify_without_head_warns_and_missing_log_is_an_error(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    log.head_path.unlink()
    result = log.verify()
    assert result.ok and "cannot be detected" in result.warnings[0]
    with pytest.raises(AuditError, match=r"no audit log at .*nope\.jsonl"):
        AuditLog(tmp_path / "nope.jsonl").verify()


WRITER = """
import sys
from workbench.audit import AuditLog
log = AuditLog(sys.argv[1], backend={"type": "local", "context": sys.argv[2]})
for i in range(200):
    log.record("split", "catalog", {"v1": 100}, {"v1": 100 - i % 100, "v2": i % 100}, writer=sys.argv[2], i=i)
"""


def test_two_processes_append_200_entries_each(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("a", "b")]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = AuditLog(path)
    result = log.verify()
    assert result.ok and result.entries == 400, str(result)
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(1, 401))
    for name in ("a", "b"):
        assert [e["details"]["i"] for e in entries if e["details"]["writer"] == name] == list(range(200))


# ---------------------------------------------------------------------------------------------
# Content rules


def test_credentials_are_scrubbed_before_writing(tmp_path: Path) -> None:
    log = AuditLog(
        tmp_path / "a.jsonl", backend={"type": "kubernetes", "server": f"https://u:{FAKE_TOKEN}@k8s"}
    )
    log.record(
        "fault",
        "ratings",
        before={"headers": {"Authorization": f"Bearer {FAKE_TOKEN}"}, "percent": 5},
        after={
            "note": f"curl -H 'Authorization: Bearer {FAKE_TOKEN}' https://admin:{FAKE_TOKEN}@prom:9090/x"
        },
        token=FAKE_TOKEN,
        api_key=FAKE_TOKEN,
        db_password=FAKE_TOKEN,
        prometheus_url=f"http://user:{FAKE_TOKEN}@127.0.0.1:9090",
        cookie="canary",  # routing by cookie is configuration, not a credential
    )
    text = log.path.read_text()
    assert FAKE_TOKEN not in text
    (entry,) = log.entries()
    assert entry["before"] == {"headers": {"Authorization": "***"}, "percent": 5}
    assert (
        entry["details"]["token"] == entry["details"]["api_key"] == entry["details"]["db_password"] == "***"
    )
    assert entry["details"]["prometheus_url"] == "http://***@127.0.0.1:9090"
    assert entry["details"]["cookie"] == "canary" and entry["backend"]["server"] == "https://***@k8s"
    assert "Bearer ***" in entry["after"]["note"] and "https://***@prom:9090/x" in entry["after"]["note"]
    assert log.verify().ok


def test_actions_targets_and_times_are_validated(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    with pytest.raises(AuditError, match="audit action: 'deploy' is not one of release_observed, split"):
        log.record("deploy", "catalog")
    with pytest.raises(AuditError, match="audit target: must be a non-empty string"):
        log.record("split", "")
    assert log.record("release observed", "catalog", None, {"version": "v2"})["action"] == "release_observed"
    assert log.record("Experiment-Start", "c", run_id="r1")["run_id"] == "r1"
    assert [e["action"] for e in log.entries(action="experiment_start", run_id="r1")] == ["experiment_start"]
    assert len(log.entries(since="1h")) == 2 and log.entries(since="2999-01-01T00:00") == []
    with pytest.raises(AuditError, match=r"since: expected a duration like 30m.*got 'yesterday'"):
        log.entries(since="yesterday")
    assert AuditLog(tmp_path / "missing.jsonl").entries() == []


def test_default_path_follows_env_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_AUDIT_LOG", str(tmp_path / "mine.jsonl"))
    assert AuditLog().path == tmp_path / "mine.jsonl"
    monkeypatch.delenv("WORKBENCH_AUDIT_LOG")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert audit.default_path() == tmp_path / "xdg" / "mesh-workbench" / "audit.jsonl"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert audit.default_path() == tmp_path / "home" / ".local" / "share" / "mesh-workbench" / "audit.jsonl"


def test_the_suite_never_writes_the_real_log(_isolated_audit_log: Path) -> None:
    assert audit.default_path() == _isolated_audit_log
    assert ".local" not in str(_isolated_audit_log)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_show_verify_and_grafana_annotations(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    log.record("experiment_start", "reviews-canary", run_id="r1", kind="canary")
    log.record("promote", "reviews", {"v1": 50, "v3": 50}, {"v3": 100}, run_id="r1")
    log.record("experiment_end", "reviews-canary", run_id="r1", kind="canary", verdict="promoted")
    f = str(log.path)
    shown = run_workbench("audit", "show", "--file", f, "--since", "1h")
    assert shown.returncode == 0, shown.stderr
    assert "v1:100 v2:0 → v1:99 v2:1" in shown.stdout and "promote" in shown.stdout
    assert "kind=canary verdict=promoted" in shown.stdout and "5 entries" in shown.stdout
    ok = run_workbench("audit", "verify", "--file", f)
    assert ok.returncode == 0 and "ok, 5 entries, hash chain intact" in ok.stdout
    out = tmp_path / "ann.json"
    ann = run_workbench(
        "audit", "grafana-annotations", "--file", f, "--out", str(out), "--dashboard-uid", "mw"
    )
    assert ann.returncode == 0 and "4 annotations written" in ann.stderr
    bodies = json.loads(out.read_text())
    assert all(set(b) == {"time", "timeEnd", "tags", "text", "dashboardUID"} for b in bodies)
    assert all(
        isinstance(b["time"], int) and b["time"] > 1.6e12 and b["timeEnd"] >= b["time"] for b in bodies
    )
    region = next(b for b in bodies if "experiment_start" in b["tags"])
    assert region["timeEnd"] > region["time"] and "run:r1" in region["tags"]
    assert "(promoted)" in region["text"]
    assert bodies[-1]["text"] == "promote reviews: v1:50 v3:50 → v3:100" and "workbench" in bodies[-1]["tags"]
    lines = _lines(log)
    _write(log, lines[:1] + lines[2:])  # delete line 2
    bad = run_workbench("audit", "verify", "--file", f)
    assert bad.returncode == 1
    assert (
        f"{f}:2: prev does not match line 1 (seq 3, expected 2: 1 entry before it deleted, "
        "or entries reordered)" in bad.stderr
    )
    missing = run_workbench("audit", "verify", "--file", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "--file: no audit log at" in missing.stderr
    since = run_workbench("audit", "show", "--file", f, "--since", "last tuesday")
    assert since.returncode == 2 and "--since: expected a duration" in since.stderr


# ---------------------------------------------------------------------------------------------
# Exporter state


def test_exporter_state_folds_releases_and_weights() -> None:
    state = AuditState("mesh-a/")
    local = {"type": "local", "context": "mesh-a"}
    kube = {"type": "kubernetes", "context": "mesh-a"}
    for entry in [
        {"action": "release_observed", "target": "catalog", "after": {"version": "v1"}, "backend": local},
        {"action": "release_observed", "target": "catalog", "after": {"version": "v2"}, "backend": local},
        {"action": "split", "target": "catalog", "after": {"v1": 90, "v2": 10}, "backend": local},
        {"action": "split", "target": "catalog", "after": {"v2": 100}, "backend": local},
        {"action": "split", "target": "catalog", "after": {"v1": 50}, "backend": {"context": "other"}},
        {"action": "release_observed", "target": "reviews", "after": {"version": "v1", "revision": 1},
         "details": {"deployment": "reviews-v1"}, "backend": kube},
        {"action": "release_observed", "target": "reviews", "after": {"version": "v1", "revision": 2},
         "details": {"deployment": "reviews-v1"}, "backend": kube},
        {"action": "release_observed", "target": "catalog", "before": {"version": "v1"}, "after": None,
         "backend": local},
    ]:  # fmt: skip
        state.add(entry)
    assert set(state.releases.values()) == {("catalog", "v2"), ("reviews", "v1")}
    assert state.weights == {"catalog": {"v1": 0.0, "v2": 100.0}}
    assert state.counts == {"release_observed": 5, "split": 3}


# ---------------------------------------------------------------------------------------------
# Grafana dashboard


def _known_metrics() -> set[str]:
    from workbench.audit.exporter import METRICS

    known = set(METRICS)
    for d in DIALECTS.values():
        known |= {d.requests, d.errors, d.buckets}
    return known


def _dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return exprs + [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]


def test_grafana_dashboard_panels_reference_known_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    known = _known_metrics()
    for p in panels:
        assert p["title"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p
        assert p["targets"] and {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        for t in p["targets"]:
            names = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", t["expr"])
            assert names and set(names) <= known, (p["title"], names)
    text = json.dumps(dash)
    for dialect in ("istio", "linkerd", "envoy"):
        d = DIALECTS[dialect]
        for metric in (d.requests, d.errors, d.buckets):
            assert metric in text, metric
    titles = " ".join(p["title"] for p in panels).lower()
    for word in ("requests per second", "error rate", "p50 and p99", "traffic weight"):
        assert titles.count(word) >= (3 if word != "traffic weight" else 1), word
    quantiles = [t["expr"] for p in panels for t in p["targets"] if "histogram_quantile" in t["expr"]]
    assert sum("0.99" in q for q in quantiles) == 3 and sum("0.50" in q for q in quantiles) == 3
    annotations = dash["annotations"]["list"]
    prom = next(a for a in annotations if "expr" in a)
    assert "workbench_audit_events_total" in prom["expr"] and prom["enable"]
    assert any(a.get("target", {}).get("tags") == ["workbench"] for a in annotations)
    for expr in _dashboard_exprs(dash):
        assert set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) <= known, expr


# ---------------------------------------------------------------------------------------------
# Hooks: Kubernetes backend and release observation


istio_available = pytest.mark.skipif(
    importlib.util.find_spec("workbench.backends.kubernetes.istio") is None, reason="istio.py not written"
)


@istio_available
def test_kubernetes_changes_and_releases_are_audited(kube_emulator: Any, tmp_path: Path) -> None:
    from kube import deployment_obj

    from workbench.backends.kubernetes.cluster import observe_releases

    log = AuditLog(tmp_path / "k.jsonl")
    backend = kube_emulator.backend(mesh="istio", audit=log)
    backend.set_split("reviews", {"v1": 80, "v2": 20})
    kube_emulator.backend(mesh="istio", dry_run=True, audit=log).set_split("reviews", {"v3": 100})
    (split,) = log.entries()
    assert (split["action"], split["target"]) == ("split", "reviews")
    assert split["before"] == {"v1": 100, "v2": 0, "v3": 0} and split["after"] == {"v1": 80, "v2": 20}
    assert split["backend"] == {"type": "kubernetes", "context": "lab", "namespace": "shop"}
    assert split["details"]["writes"] >= 1 and kube_emulator.token not in log.path.read_text()

    first = observe_releases(backend.cluster, log)
    assert first and all(e["action"] == "release_observed" and e["before"] is None for e in first)
    names = {e["details"]["deployment"]: e for e in first}
    assert names["reviews-v2"]["target"] == "reviews" and names["reviews-v2"]["after"]["version"] == "v2"
    assert observe_releases(backend.cluster, log) == []  # nothing changed since
    kube_emulator.put(deployment_obj("reviews", "v2", revision=7, image="example/reviews:v2.1"))
    (changed,) = observe_releases(backend.cluster, log)
    assert changed["details"]["deployment"] == "reviews-v2"
    assert changed["before"]["revision"] == names["reviews-v2"]["after"]["revision"]
    assert changed["after"] == {"version": "v2", "revision": 7, "images": ["example/reviews:v2.1"]}
    assert log.verify().ok


@pytest.mark.slow
@pytest.mark.beside  # audit entries, not figures
def test_runner_records_experiment_start_and_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.suite.runner import run_suite

    log_path = tmp_path / "run-audit.jsonl"
    monkeypatch.setenv("WORKBENCH_AUDIT_LOG", str(log_path))
    cfg = tmp_path / "experiments.yaml"
    cfg.write_text(
        "backend: {type: kubernetes, context: nowhere}\nexperiments:\n"
        "  - name: cluster-authz\n    kind: authz\n"
        "    policy: {service: ratings, rules: [{sources: [reviews]}]}\n"
        "    expect: [{caller: reviews, allowed: true}]\n"
    )
    outcome = run_suite(cfg, reports=tmp_path / "reports", echo=lambda _: None)
    start, end = AuditLog(log_path).entries()
    assert (start["action"], end["action"]) == ("experiment_start", "experiment_end")
    assert start["run_id"] == end["run_id"] == outcome.run_id and start["target"] == "cluster-authz"
    assert start["details"]["kind"] == "authz" and end["details"]["verdict"] == "failed"
    assert start["backend"] == {"type": "kubernetes", "context": "nowhere", "namespace": ""}
    assert AuditLog(log_path).verify().ok


# ---------------------------------------------------------------------------------------------
# A real local mesh: hooks, exporter, Prometheus, canary markers


def _prom(url: str, query: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
    assert resp["status"] == "success", (query, resp)
    return resp["data"]["result"]


def _by(result: list[dict[str, Any]], label: str = "version") -> dict[str, float]:
    return {x["metric"][label]: float(x["value"][1]) for x in result}


def _wait_for(url: str, query: str, want: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = _prom(url, query)
        if want(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.beside  # audit metrics and markers, not figures
def test_local_mesh_audit_metrics_in_prometheus_and_canary_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.backends.local.mesh import LocalMesh
    from workbench.experiments import canary
    from workbench.experiments.session import open_session

    log_path = tmp_path / "mesh-audit.jsonl"
    monkeypatch.setenv("WORKBENCH_AUDIT_LOG", str(log_path))  # the mesh's and the canary's default log
    mesh = LocalMesh(mode="both")
    try:
        with mesh:
            log = mesh.audit
            releases = log.entries(action="release_observed")
            assert {(e["target"], e["after"]["version"]) for e in releases} == {
                (s, v) for s, spec in mesh.topology.services.items() for v in spec.versions
            }
            catalog_v2 = next(
                e for e in releases if e["target"] == "catalog" and e["after"]["version"] == "v2"
            )
            assert catalog_v2["after"]["behaviour"]["service_time_ms"] == 4.0
            assert catalog_v2["backend"] == {"type": "local", "context": str(mesh.run_dir), "mode": "both"}
            for split in ({"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 25, "v2": 75}):
                mesh.set_split("catalog", split)
            mesh.set_behaviour("pricing", "v1", error_rate=0.01)
            splits = log.entries(action="split")
            assert [(e["before"], e["after"]) for e in splits] == [
                ({"v1": 100, "v2": 0}, {"v1": 90, "v2": 10}),
                ({"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}),
                ({"v1": 50, "v2": 50}, {"v1": 25, "v2": 75}),
            ]
            (behaviour,) = log.entries(action="behaviour")
            assert behaviour["target"] == "pricing/v1" and behaviour["after"]["error_rate"] == 0.01
            assert LocalMesh.attach(mesh.run_dir).audit.path == log_path  # other processes: same log

            # the exporter, and Prometheus scraping it
            metrics = requests.get(f"http://127.0.0.1:{mesh.layout.audit_port}/metrics", timeout=5).text
            assert 'workbench_traffic_weight{service="catalog",version="v2"} 75.0' in metrics
            url = mesh.prometheus_url()
            expected = {"v1": 25.0, "v2": 75.0}
            weight = _wait_for(
                url, 'workbench_traffic_weight{service="catalog"}', lambda r: _by(r) == expected
            )
            assert _by(weight) == expected
            assert weight[0]["metric"]["job"] == "audit"
            info = _prom(url, "workbench_release_info")
            live = {(x["metric"]["service"], x["metric"]["version"]) for x in info}
            assert live == {(e["target"], e["after"]["version"]) for e in releases}
            assert all(float(x["value"][1]) == 1.0 for x in info)
            events = _wait_for(url, 'workbench_audit_events_total{action="split"}',
                               lambda r: r and float(r[0]["value"][1]) == 3.0)  # fmt: skip
            assert float(events[0]["value"][1]) == 3.0
            count = {
                x["metric"]["action"]: float(x["value"][1])
                for x in _prom(url, "workbench_audit_events_total")
            }
            assert (
                count["release_observed"] == len(releases)
                and count["behaviour"] == 1
                and count["promote"] == 0
            )

            # every PromQL of the dashboard is valid for a real Prometheus
            dash = json.loads(DASHBOARD.read_text())
            for expr in _dashboard_exprs(dash):
                _prom(url, expr.replace("$__rate_interval", "5s").replace("$__interval", "5s"))
            traffic = next(p for p in dash["panels"] if p["title"] == "Traffic weight per version")
            assert len(_prom(url, traffic["targets"][0]["expr"])) >= 2

            # canary: a rollback is audited with its run id, and its timeline figure shows the events
            suite = tmp_path / "experiments.yaml"
            suite.write_text(yaml.safe_dump({"experiments": [{
                "name": "cat-canary", "kind": "canary", "service": "catalog", "stable": "v1", "canary": "v2",
                "steps": [{"weight": 10}, {"weight": 100}], "duration": "5s"}]}))  # fmt: skip
            s = open_session(suite, "cat-canary", tmp_path / "runs" / "r-canary")
            plan = canary.plan_of(s.spec)
            timeline = canary.Timeline(s, plan)
            timeline.add("initial split", split=mesh.get_split("catalog"))
            canary._finish(s, mesh, plan, timeline, "rolled back", "p99 worse")
            assert mesh.get_split("catalog") == {"v1": 100, "v2": 0}
            (rollback,) = log.entries(action="rollback", run_id="r-canary")
            assert rollback["before"] == {"v1": 25, "v2": 75} and rollback["after"] == {"v1": 100}
            assert rollback["details"]["outcome"] == "rolled back"
            result = canary.analyse(s)
            labels = [m["label"] for m in result.details["audit"]]
            assert "rollback catalog: v1:25 v2:75 → v1:100" in labels
            assert "split catalog: v1:25 v2:75 → v1:100 v2:0" in labels
            fig = canary.figures(result)["timeline"]
            texts = [a.text for a in fig.layout.annotations]
            assert "rollback catalog: v1:25 v2:75 → v1:100" in texts
            assert log.verify().ok
    finally:
        mesh.stop()
    assert processes_using(mesh.run_dir) == []
