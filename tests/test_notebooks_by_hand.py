"""An analyst's Run All: a notebook with its default parameters works with no editing.

It attaches to the mesh of ``workbench local up`` when one runs, else starts one and stops it in its
last cell. The defaults point at the repository's experiments.yaml, so the run lands in the
repository's data/runs/ (git-ignored); the test removes it afterwards.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import REPO, processes_using, run_workbench

pytestmark = [pytest.mark.slow, pytest.mark.beside]  # verdicts and processes, not figures


def _run_all(tmp_path: Path, name: str) -> tuple[dict, Path]:
    out = tmp_path / name
    runs = REPO / "data" / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    try:
        pm.execute_notebook(str(REPO / "notebooks" / "authz.ipynb"), str(out), cwd=str(REPO / "notebooks"),
                            progress_bar=False)  # fmt: skip
        (run_dir,) = set(runs.iterdir()) - before
        result = json.loads((run_dir / "ratings-authz" / "result.json").read_text())
    finally:
        for new in set(runs.iterdir()) - before if runs.exists() else ():
            shutil.rmtree(new, ignore_errors=True)
    return result, out


def test_run_all_attaches_to_local_up_or_starts_and_stops_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the kernel inherits it: our own `local up` state
    state = cache / "mesh-workbench" / "local"
    up = run_workbench("local", "up", env={"XDG_CACHE_HOME": str(cache)})
    assert up.returncode == 0, up.stderr
    try:
        ours = {p.pid for p in processes_using(state)}
        result, out = _run_all(tmp_path, "attached.ipynb")
        assert result["verdict"] == "pass", result["headline"]
        assert {p.pid for p in processes_using(state)} == ours  # attached: nothing started, nothing stopped
        text = json.dumps([c.get("outputs", []) for c in nbformat.read(out, as_version=4).cells])
        assert "starting a local mesh" not in text
    finally:
        run_workbench("local", "down", env={"XDG_CACHE_HOME": str(cache)})
    meshes_before = set(Path(tempfile.gettempdir()).glob("workbench-mesh-*"))
    result, out = _run_all(tmp_path, "own.ipynb")
    assert result["verdict"] == "pass", result["headline"]
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(out, as_version=4).cells])
    assert "starting a local mesh (mode both)" in text
    started = set(Path(tempfile.gettempdir()).glob("workbench-mesh-*")) - meshes_before
    assert not [d for d in started if processes_using(d)]  # its last cell stopped what it started
