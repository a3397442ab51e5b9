"""Shared test helpers: repository paths and the installed ``workbench`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WORKBENCH = Path(sys.executable).parent / "workbench"


def run_workbench(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(WORKBENCH), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
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


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM interrupts like Ctrl-C, so fixtures stop what they started: make test stops the
    lanes beside its slow tier with SIGTERM when it is interrupted (a background job ignores
    SIGINT)."""
    signal.signal(signal.SIGTERM, _interrupted)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The executed notebooks (nbval) belong to the slow tier: they start a kernel and a mesh."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


# Kubernetes fixtures (contract API and kmock emulator), defined in tests/kube.py.
from kube import api, kube_api, kube_emulator, writer  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def _isolated_audit_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test (and every process it starts) writes audit entries to a temporary log, never to
    the user's ~/.local/share/mesh-workbench/audit.jsonl."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    old = os.environ.get("WORKBENCH_AUDIT_LOG")
    os.environ["WORKBENCH_AUDIT_LOG"] = str(path)
    yield path
    if old is None:
        os.environ.pop("WORKBENCH_AUDIT_LOG", None)
    else:
        os.environ["WORKBENCH_AUDIT_LOG"] = old


# The default suite's quick run, shared by the slow tests that read a real run (tests/suite_run.py).
from suite_run import quick_run, reported  # noqa: E402, F401
