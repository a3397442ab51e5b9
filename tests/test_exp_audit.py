"""The ``audit`` experiment kind: chain verdict, the changes it summarizes, its notebook."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import REPO
from workbench.audit import AuditLog
from workbench.experiments import audit, open_session


def _log(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", backend={"type": "local"})
    log.record("release_observed", "catalog/v2", None, {"service_time_ms": 4.0})
    log.record("split", "catalog", {"v1": 100, "v2": 0}, {"v1": 90, "v2": 10})
    log.record("split", "catalog", {"v1": 90, "v2": 10}, {"v1": 50, "v2": 50})
    log.record("rollback", "catalog", {"v1": 50, "v2": 50}, {"v1": 100, "v2": 0})
    return log


def _config(tmp_path: Path, log: AuditLog) -> Path:
    cfg = tmp_path / "experiments.yaml"
    cfg.write_text(f"experiments:\n  - {{name: release-audit, kind: audit, file: {log.path}}}\n")
    return cfg


def test_intact_log_is_summarized_with_weights_over_time(tmp_path: Path) -> None:
    log = _log(tmp_path)
    s = open_session(_config(tmp_path, log), "release-audit", tmp_path / "run")
    result = s.execute(audit)
    assert (result.verdict, result.severity) == ("intact", "ok")
    assert result.figures == {"entries": 4, "in_scope": 4, "count_split": 2, "count_release_observed": 1,
                              "count_rollback": 1}  # fmt: skip
    w = result.tables["weights"]
    assert list(w[w["version"] == "v2"]["weight"]) == [10.0, 50.0, 0.0]
    assert set(audit.figures(result)) == {"events", "weights"}
    replayed = open_session(_config(tmp_path, log), "release-audit", tmp_path / "run", replay=True).execute(
        audit
    )
    assert replayed.headline == result.headline


def test_tampered_log_is_worse_and_names_the_line(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["after"] = {"v1": 0, "v2": 100}  # someone rewrites history
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log.path.write_text("\n".join(lines) + "\n")
    result = open_session(_config(tmp_path, log), "release-audit", tmp_path / "run").execute(audit)
    assert (result.verdict, result.severity) == ("tampered", "worse")
    assert "line 2" in result.headline
    assert result.checks[0]["severity"] == "worse"


@pytest.mark.slow
@pytest.mark.beside  # a notebook over stored data: measures nothing
def test_notebook_runs_and_shows_the_verdict(tmp_path: Path) -> None:
    log = _log(tmp_path)
    out = tmp_path / "audit.ipynb"
    pm.execute_notebook(
        str(REPO / "notebooks" / "audit.ipynb"), str(out), cwd=str(REPO / "notebooks"), progress_bar=False,
        parameters={"config_file": str(_config(tmp_path, log)), "experiment": "release-audit",
                    "run_dir": str(tmp_path / "run")},
    )  # fmt: skip
    nb = nbformat.read(out, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "**intact**" in text and "Traffic weights after each change" in text
