"""The CI gate's pieces: exit status by threshold, summary.json against its schema, JUnit XML, scrubbing."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from workbench.report import ci

RUN = {
    "run_id": "20261125-101500-0042",
    "config": "/x/experiments.yaml",
    "quick": True,
    "seed": 7,
    "backend": "local mesh (mode both)",
    "started": "2026-11-25T10:15:00+00:00",
    "finished": "2026-11-25T10:18:00+00:00",
    "versions": {"workbench": "0.1.0", "k6": "1.1.0"},
}


def _result(name: str, kind: str, verdict: str, severity: str, status: str = "ok", **extra) -> dict:
    return {
        "name": name,
        "kind": kind,
        "verdict": verdict,
        "severity": severity,
        "status": status,
        "headline": f"{name}: {verdict}",
        "figures": {"delta_p50": 2.1, "delta_p50_ci": [1.7, 2.5]},
        "duration_s": 12.5,
        "report": f"{name}.html",
        **extra,
    }


WORSE = _result(
    "catalog-v2-ab",
    "ab",
    "worse",
    "worse",
    checks=[
        {
            "name": "p50",
            "verdict": "worse",
            "severity": "worse",
            "estimate": 2.1,
            "ci": [1.7, 2.5],
            "explanation": "p50 rose 2.1 ms [+1.7, +2.5] (6.8 → 8.9 ms), beyond the 1 ms margin: worse",
        },
        {
            "name": "p99",
            "verdict": "inconclusive",
            "severity": "inconclusive",
            "estimate": 5.0,
            "ci": [-18, 28],
            "explanation": "p99 rose 5 ms [-18, +28], the interval reaches across the ±1 ms margin",
        },
    ],
)
AA = _result("reviews-aa", "ab", "inconclusive", "inconclusive")
OK = _result("ratings-authz", "authz", "pass", "ok")
BROKEN = _result("sweep", "loadtest", "failed", "error", status="failed", error="k6 not found")


@pytest.mark.parametrize(
    ("results", "fail_on", "expected"),
    [
        ([OK, AA], "worse", 0),
        ([OK, WORSE], "worse", 1),
        ([OK, AA], "inconclusive", 1),
        ([OK, WORSE, AA], "never", 0),
        ([OK, WORSE, BROKEN], "worse", 3),
        ([BROKEN], "never", 3),
    ],
)
def test_exit_status_by_threshold(results: list[dict], fail_on: ci.FailOn, expected: int) -> None:
    assert ci.exit_status(results, fail_on) == expected


def test_summary_validates_against_the_shipped_schema() -> None:
    doc = ci.summary(RUN, [WORSE, AA, OK, BROKEN], "worse")
    jsonschema.validate(doc, ci.schema())
    gates = {e["name"]: e["gate"] for e in doc["experiments"]}
    assert gates == {"catalog-v2-ab": "fail", "reviews-aa": "pass", "ratings-authz": "pass", "sweep": "fail"}
    assert doc["exit_status"] == 3 and doc["seed"] == 7
    bad = json.loads(json.dumps(doc))
    bad["experiments"][0]["severity"] = "terrible"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ci.schema())


def test_junit_has_a_case_per_experiment_and_per_check_with_explanations() -> None:
    root = ET.fromstring(ci.junit_xml(RUN, [WORSE, AA, OK, BROKEN], "worse"))
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {
        "catalog-v2-ab",
        "catalog-v2-ab: p50",
        "catalog-v2-ab: p99",
        "reviews-aa",
        "ratings-authz",
        "sweep",
    }
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "2", "1")
    p50 = cases["catalog-v2-ab: p50"].find("failure")
    assert p50 is not None and "beyond the 1 ms margin" in (p50.text or "")
    assert cases["catalog-v2-ab: p99"].find("failure") is None  # inconclusive does not fail --fail-on worse
    assert cases["sweep"].find("error") is not None and "k6 not found" in cases["sweep"].find("error").get(
        "message"
    )
    strict = ET.fromstring(ci.junit_xml(RUN, [AA], "inconclusive")).find("testsuite")
    assert strict is not None and strict.get("failures") == "1"


def test_artifacts_never_carry_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "fake-kube-token-3141592653"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nusers:\n- name: ci\n  user:\n    token: other-secret-2718281828\n"
    )
    env = {"KUBE_TOKEN": token, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    scrub = ci.Scrubber.from_environment(env)
    leaky = _result(
        "cluster-canary",
        "canary",
        "failed",
        "error",
        status="failed",
        error=f"HTTP 401 with token {token} at https://admin:other-secret-2718281828@prom.example/api "
        "and https://user:pw12345@prom.example",
    )
    summary, junit = ci.write_artifacts(tmp_path / "out", RUN, [leaky], "worse", scrub)
    for path in (summary, junit):
        text = path.read_text()
        assert token not in text and "other-secret-2718281828" not in text and "pw12345" not in text
        assert "https://***@prom.example" in text
    jsonschema.validate(json.loads(summary.read_text()), ci.schema())
