"""``make lab``: JupyterLab on notebooks/ with the flags this kind of machine needs, URL printed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import requests

from conftest import REPO
from workbench.backends.local.procs import free_ports

pytestmark = [
    pytest.mark.slow,  # starts a Jupyter server
    pytest.mark.beside,  # measures nothing
    pytest.mark.skipif(not (REPO / ".venv" / "bin" / "jupyter").exists(), reason="no .venv (make install)"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make not installed"),
]


def test_make_lab_serves_the_notebooks_on_loopback_and_prints_the_url() -> None:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"PORT={port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(REPO / ".venv" / "jupyter-runtime-test")},
    )
    seen: list[str] = []
    url = None
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(rf"(http://127\.0\.0\.1:{port}/lab\?token=\w+)", line)
            url = found.group(1) if found else None
        assert url, "".join(seen)
        assert "open the http://127.0.0.1" in "".join(seen)
        contents = None
        for _ in range(30):  # Jupyter prints the URL a moment before it accepts connections
            try:
                contents = requests.get(url.replace("/lab?", "/api/contents?"), timeout=10)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert contents is not None and contents.status_code == 200
        names = {item["name"] for item in contents.json()["content"]}
        assert {"ab.ipynb", "canary.ipynb", "experiments.ipynb"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(REPO / ".venv" / "jupyter-runtime-test", ignore_errors=True)
