"""``workbench local up | status | down`` as a user runs them, including a crashed ``up``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import WORKBENCH, processes_using, run_workbench

pytestmark = [pytest.mark.slow, pytest.mark.beside]  # processes and state files, not figures


def test_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "mesh"
    up = run_workbench("local", "up", "--mode", "serveronly", "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "local mesh up, mode serveronly" in up.stdout and "Prometheus: http://127.0.0.1:" in up.stdout
        # apps, inbound sidecars, Prometheus, the process and audit exporters, the span receiver:
        # they outlive `up`
        assert len(processes_using(state)) == 8 + 8 + 4
        assert "Traces: 100 % sampled" in up.stdout
        again = run_workbench("local", "up", "--state-dir", str(state))
        assert again.returncode == 1 and "already running" in again.stderr
        ok = run_workbench("local", "status", "--state-dir", str(state))
        assert ok.returncode == 0 and "all 20 processes running" in ok.stdout
        victim = json.loads((state / "state.json").read_text())["processes"]
        pid = next(p["pid"] for p in victim if p["name"] == "envoy reviews-v2-inbound")
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        bad = run_workbench("local", "status", "--state-dir", str(state))
        assert bad.returncode == 1
        assert f"envoy reviews-v2-inbound (pid {pid}) is not running" in bad.stderr
    finally:
        down = run_workbench("local", "down", "--state-dir", str(state))
    assert down.returncode == 0 and "local mesh stopped" in down.stdout
    assert processes_using(state) == []
    gone = run_workbench("local", "status", "--state-dir", str(state))
    assert gone.returncode == 1 and "no local mesh" in gone.stderr


def test_down_cleans_up_after_a_crashed_up(tmp_path: Path) -> None:
    state = tmp_path / "mesh"
    proc = subprocess.Popen(
        [str(WORKBENCH), "local", "up", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline and len(processes_using(state)) < 10:  # killed half-way through starting
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert processes_using(state), "expected processes left behind by the killed 'up'"
    down = run_workbench("local", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    time.sleep(0.2)
    assert processes_using(state) == []


def test_up_rejects_a_bad_mode(tmp_path: Path) -> None:
    res = run_workbench("local", "up", "--mode", "sidecars", "--state-dir", str(tmp_path))
    assert res.returncode == 2 and "--mode: must be one of none, serveronly, both, both-mtls" in res.stderr
