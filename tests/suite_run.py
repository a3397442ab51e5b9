"""One ``workbench run --quick`` of the default suite, shared by the slow tests that read a real run.

The ``quick_run`` session fixture (registered in conftest.py) runs it once, ~3 min on the local
mesh; tests/test_run.py checks the run and its artifacts, tests/test_browser.py opens its pages
in Chromium and prints them. The ``reported`` fixture re-renders, checks and prints the run once
(``workbench report RUN --pdf --check``), for both.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from conftest import REPO, SHARED, run_workbench

# meshes of this test process (make test gives each lane its own TMPDIR), not of a lane beside it
MESH_MARK = str(Path(tempfile.gettempdir()) / "workbench-mesh-")


def mesh_processes() -> set[int]:
    pids = set()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if MESH_MARK in " ".join(proc.info["cmdline"] or []):
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def suite_copy(tmp: Path) -> Path:
    """The default suite in a temp dir, fortio paths made absolute (dropped without ../shared)."""
    doc = yaml.safe_load((REPO / "experiments.yaml").read_text())
    kept = []
    for exp in doc["experiments"]:
        if "fortio_results" in exp:
            if not SHARED.is_dir():
                continue
            exp["fortio_results"] = [str((REPO / p).resolve()) for p in exp["fortio_results"]]
        kept.append(exp)
    doc["experiments"] = kept
    path = tmp / "experiments.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``workbench ARGS`` in ``cwd``, with its own cache (the local mesh's state) there."""
    return run_workbench(*args, env={"XDG_CACHE_HOME": str(cwd / "cache")}, cwd=cwd, timeout=timeout)


class Run:
    def __init__(self, root: Path, proc: subprocess.CompletedProcess, seconds: float, before: set[int]):
        self.root, self.proc, self.seconds, self.mesh_before = root, proc, seconds, before
        self.reports = root / "reports"
        runs = sorted((root / "data" / "runs").iterdir())
        assert len(runs) == 1, runs
        self.data = runs[0]
        self.run_id = self.data.name

    def result(self, name: str) -> dict[str, Any]:
        return json.loads((self.data / name / "result.json").read_text())


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("suite")
    config = suite_copy(root)
    before = mesh_processes()
    t0 = time.monotonic()
    proc = run_cli("run", str(config), "--quick", "--seed", "7", "--reports", str(root / "reports"), cwd=root)
    seconds = time.monotonic() - t0
    print(f"workbench run --quick: {seconds:.0f} s\n{proc.stdout}\n{proc.stderr}")
    return Run(root, proc, seconds, before)


class Reported:
    """One ``workbench report RUN --pdf --check`` of the quick run, after one report was deleted:
    every report re-rendered from stored data, every page checked in one headless Chromium (its
    findings in the run's browser-check.json, screenshots beside) and printed to PDF."""

    def __init__(
        self,
        proc: subprocess.CompletedProcess,
        seconds: float,
        verdicts_before: dict[str, str],
        removed: Path,
    ):
        self.proc, self.seconds, self.verdicts_before, self.removed = proc, seconds, verdicts_before, removed


@pytest.fixture(scope="session")
def reported(quick_run: Run) -> Reported:
    names = json.loads((quick_run.data / "run.json").read_text())["experiments"]
    before = {n: quick_run.result(n)["verdict"] for n in names}
    removed = quick_run.reports / quick_run.run_id / "catalog-v2-ab.html"
    removed.unlink()
    args = ["--reports", str(quick_run.reports), "--data", str(quick_run.data.parent)]
    t0 = time.monotonic()
    proc = run_cli("report", quick_run.run_id, "--pdf", "--check", *args, cwd=quick_run.root)
    seconds = time.monotonic() - t0
    print(f"workbench report --pdf --check: {seconds:.0f} s")
    return Reported(proc, seconds, before, removed)
