"""Shared test helpers: repository paths and the installed ``workbench`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WORKBENCH = Path(sys.executable).parent / "workbench"


def run_workbench(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(WORKBENCH), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def shared() -> Path:
    """../shared, or a clean skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the repository")
    return SHARED


def processes_using(directory: Path) -> list[psutil.Process]:
    """Running processes whose command line names a file inside ``directory``."""
    needle = str(directory) + os.sep
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if needle in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


# Kubernetes fixtures (contract API and kmock emulator), defined in tests/kube.py.
from kube import kube_api, kube_emulator  # noqa: E402, F401
