"""The authz and resilience experiment kinds on a real local mesh (no mocks), and their notebooks.

One mesh serves the whole module; sessions and notebook kernels attach to it through its state
directory, as ``workbench run`` does. Every test leaves the mesh as it found it, and checks so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import papermill as pm
import pytest
import requests
from statsmodels.stats.proportion import proportion_confint

from conftest import REPO
from workbench.backends.base import Answer
from workbench.backends.local import LocalMesh
from workbench.backends.local.envoy import TrafficPolicy
from workbench.experiments import authz, open_session, resilience
from workbench.experiments.session import read_result

pytestmark = pytest.mark.slow

SUITE = REPO / "experiments.yaml"
PERCENT = 25
TEST_SUITE = f"""
backend: {{type: local, mode: both}}
defaults: {{window: 1s, warmup: 1s}}
experiments:
  - name: authz-wrong
    kind: authz
    policy:
      service: ratings
      rules: [{{sources: [reviews], paths: [/ratings/*], methods: [GET]}}]
    expect:
      - {{caller: reviews, path: /ratings/1, method: GET, allowed: true}}
      - {{caller: frontend, path: /ratings/7, method: GET, allowed: true}}   # wrong on purpose
  - name: authz-bad-caller
    kind: authz
    policy:
      service: ratings
      rules: [{{sources: [reviews]}}]
    expect:
      - {{caller: reviews, allowed: true}}
      - {{caller: nobody, path: /ratings/1, allowed: false}}
  - name: pricing-aborts
    kind: resilience
    service: catalog
    dependency: pricing
    fault: {{abort: 503, percent: {PERCENT}}}
    protections:
      - {{name: none}}
      - {{name: retries, retries: {{attempts: 3, per_try_timeout: 200ms}}}}
    rps: 300
    duration: 15s      # quick: 3 s per protection
"""


def _inside(count: int, n: int, p: float, alpha: float = 0.001) -> bool:
    """Is p inside the (1 - alpha) Wilson interval of count/n?"""
    lo, hi = proportion_confint(count, n, alpha=alpha, method="wilson")
    return lo <= p <= hi


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with LocalMesh(mode="both") as m:
        m.save_state()  # sessions and notebook kernels attach through m.run_dir
        yield m


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "experiments.yaml"
    path.write_text(TEST_SUITE)
    return path


def _statuses(mesh: LocalMesh, caller: str, service: str, path: str = "/", n: int = 3) -> list[int]:
    return [mesh.request_as(caller, service, path).status_code for _ in range(n)]


def _routes(mesh: LocalMesh, sidecar: str) -> str:
    url = mesh.admin_url(sidecar) + "/config_dump"
    return requests.get(url, params={"resource": "dynamic_route_configs"}, timeout=5).text


def _outputs(nb_path: Path) -> tuple[str, int]:
    """All text/markdown/html output of a notebook, and how many outputs are plotly figures."""
    nb = nbformat.read(nb_path, as_version=4)
    text, figures = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data: dict[str, Any] = out.get("data", {})
            text += [out.get("text", ""), data.get("text/markdown", ""), data.get("text/plain", "")]
            html = data.get("text/html", "")
            text.append(html)
            figures += "application/vnd.plotly.v1+json" in data or "Plotly.newPlot" in html
    return "\n".join(text), figures


def _papermill(name: str, config_file: Path, experiment: str, run_dir: Path, mesh: LocalMesh) -> Path:
    out = run_dir / f"{name}.ipynb"
    pm.execute_notebook(
        str(REPO / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters={
            "config_file": str(config_file),
            "experiment": experiment,
            "run_dir": str(run_dir),
            "quick": True,
            "mesh_state": str(mesh.run_dir),
        },
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    return out


# ---------------------------------------------------------------------------------------------
# authz


def test_classify_tells_a_policy_denial_from_failures() -> None:
    assert authz.classify(Answer(403, denied=True)) == "denied"  # the proxy's own denial
    assert authz.classify(Answer(403)) == "allowed"  # the app answered 403: the policy let it through
    assert authz.classify(Answer(503, error="no healthy upstream")) == "error"
    assert authz.classify(Answer(0, error="connection refused")) == "error"
    assert authz.classify(Answer(0, denied=True, error="connection reset by the L4 policy")) == "denied"
    assert authz.classify(Answer(404)) == "allowed"
    assert authz.summarise(["allowed", "error", "allowed"]) == "mixed"


def test_default_policy_every_check_passes_and_is_removed_after(mesh: LocalMesh, tmp_path: Path) -> None:
    s = open_session(SUITE, "ratings-authz", tmp_path, mesh_state=mesh.run_dir)
    result = s.execute(authz)
    checks = result.tables["checks"]
    assert (result.verdict, result.severity) == ("pass", "ok"), result.headline
    assert list(checks["result"]) == ["pass"] * len(s.spec.expect)
    assert list(checks["after"]) == ["allowed" if e.allowed else "denied" for e in s.spec.expect]
    assert set(checks["before"]) == {"allowed"}  # no policy before: the policy made the difference
    denied = checks[checks["after"] == "denied"]
    assert (denied["statuses_after"] == "403 403 403").all()
    assert result.figures["changed_by_policy"] == len(denied)
    assert _statuses(mesh, "frontend", "ratings", "/ratings/1") == [200, 200, 200]  # policy removed
    assert "matrix" in authz.figures(result)


def test_a_wrong_expectation_fails_naming_the_row(mesh: LocalMesh, suite: Path, tmp_path: Path) -> None:
    s = open_session(suite, "authz-wrong", tmp_path, mesh_state=mesh.run_dir)
    result = s.execute(authz)
    assert (result.verdict, result.severity) == ("fail", "worse")
    assert "frontend → GET /ratings/7 expected allowed, observed denied (403 403 403)" in result.headline
    assert "reviews" not in result.headline.split("fail:")[1]  # only the wrong row is named
    assert list(result.tables["checks"]["result"]) == ["pass", "fail"]
    assert read_result(s.store)["verdict"] == "fail"
    assert _statuses(mesh, "frontend", "ratings", "/ratings/7") == [200, 200, 200]


def test_a_caller_not_in_the_mesh_is_a_clear_error(mesh: LocalMesh, suite: Path, tmp_path: Path) -> None:
    s = open_session(suite, "authz-bad-caller", tmp_path, mesh_state=mesh.run_dir)
    with pytest.raises(ValueError, match=r"expect\[1\]\.caller: 'nobody' is not a service of the mesh"):
        s.execute(authz)
    assert read_result(s.store)["status"] == "failed"
    assert _statuses(mesh, "frontend", "ratings", "/ratings/1") == [200, 200, 200]  # nothing applied


def test_authz_notebook_runs_and_replays(mesh: LocalMesh, tmp_path: Path) -> None:
    out = _papermill("authz", SUITE, "ratings-authz", tmp_path, mesh)
    text, figures = _outputs(out)
    assert "ratings-authz: **pass**" in text and figures >= 1
    stored = read_result(tmp_path / "ratings-authz")
    replay = open_session(SUITE, "ratings-authz", tmp_path, replay=True)
    again = replay.execute(authz)
    assert replay._backend is None  # re-analysed from the stored data, no mesh touched
    assert (again.verdict, again.headline) == (stored["verdict"], stored["headline"])


# ---------------------------------------------------------------------------------------------
# resilience


def test_best_protection_breaks_ties_by_p99() -> None:
    frame = pd.DataFrame(
        {"success_pct": [75.0, 99.9, 99.8], "ci_low_pct": [73.0, 99.6, 99.5], "p99": [5.0, 9.0, 7.0]},
        index=pd.Index(["none", "retries", "retries-fast"], name="protection"),
    )
    assert resilience.best_protection(frame) == "retries-fast"


def test_a_dependency_the_service_does_not_call_is_a_clear_error() -> None:
    spec = type("Spec", (), {"name": "x", "service": "ratings", "dependency": "pricing"})()
    services = {"ratings": (), "pricing": (), "catalog": ("pricing",)}
    with pytest.raises(ValueError, match=r"dependency: ratings does not call 'pricing'"):
        resilience.validate(spec, services)


@pytest.fixture(scope="module")
def resilience_run(mesh: LocalMesh, suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick resilience notebook, run once under papermill; its run directory."""
    run_dir = tmp_path_factory.mktemp("resilience-run")
    _papermill("resilience", suite, "pricing-aborts", run_dir, mesh)
    return run_dir


def test_resilience_notebook_shows_the_verdict_and_figures(resilience_run: Path) -> None:
    text, figures = _outputs(resilience_run / "resilience.ipynb")
    stored = read_result(resilience_run / "pricing-aborts")
    assert stored["status"] == "ok" and f"pricing-aborts: **{stored['verdict']}**" in text
    assert figures == 3  # success with intervals, latency CDF, percentiles


def test_retries_recover_aborts_as_binomial_math_says(resilience_run: Path, suite: Path) -> None:
    s = open_session(suite, "pricing-aborts", resilience_run, replay=True)
    stored = json.loads((s.store / "result.json").read_text())
    result = s.execute(resilience)
    assert s._backend is None  # replay: from stored data only
    assert (result.verdict, result.headline) == (stored["verdict"], stored["headline"])
    frame = result.tables["protections"]
    p = PERCENT / 100
    none, retries = frame.loc["none"], frame.loc["retries"]
    assert none["requests"] > 300 and retries["requests"] > 300
    assert _inside(int(none["successes"]), int(none["requests"]), 1 - p), none
    assert _inside(int(retries["successes"]), int(retries["requests"]), 1 - p**4), retries  # 4 tries
    assert result.details["best"] == "retries" and result.verdict == "best: retries"
    assert result.headline.startswith(f"abort 503 on {PERCENT} % of pricing calls")
    assert "retries raised success from" in result.headline
    comp = result.tables["comparison"].set_index(["protection", "metric"])
    assert comp.loc[("retries", "error_rate"), "verdict"] == "better"


def test_every_change_is_restored_after_the_run(resilience_run: Path, mesh: LocalMesh) -> None:
    state = LocalMesh.attach(mesh.run_dir)
    assert state.traffic["pricing"] == TrafficPolicy(split={"v1": 100})  # no fault, retries, timeout, breaker
    assert "retry_policy" not in _routes(mesh, "catalog-v1-outbound")
    assert "envoy.filters.http.fault" not in _routes(mesh, "pricing-v1-inbound")
    assert "envoy.filters.http.fault" not in _routes(mesh, "catalog-v1-outbound")
    assert set(_statuses(mesh, "loadgen", "catalog", n=60)) == {200}  # with the fault: ~15 failures
