"""Local mesh lifecycle: start/stop leaves nothing behind, deaths are named, modes say their limits.

Kept apart from test_local_mesh.py so its long-lived meshes are stopped before these start.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import processes_using
from workbench.backends.base import BackendError
from workbench.backends.local import LocalMesh, MeshProcessError
from workbench.backends.local.topology import load_topology
from workbench.config import ConfigError, Policy, PolicyRule
from workbench.load.results import LoadProfile

pytestmark = pytest.mark.slow


def test_killing_a_sidecar_under_load_fails_fast_naming_it() -> None:
    with LocalMesh(mode="both", wait_for_metrics=False) as m:
        victim = next(p for p in m.supervisor.procs if p.name == "envoy catalog-v1-inbound")
        threading.Timer(1.5, os.kill, (victim.pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(MeshProcessError) as info:
            m.run_load("catalog", LoadProfile(rps=200, connections=4, duration_s=30))
        elapsed = time.monotonic() - t0
        assert elapsed < 8, elapsed
        assert "envoy catalog-v1-inbound" in str(info.value) and "SIGKILL" in str(info.value)
        assert not [p for p in psutil.Process().children(recursive=True) if "k6" in p.name()]
        with pytest.raises(MeshProcessError, match="catalog-v1-inbound"):
            m.check()
        run_dir = m.run_dir
    assert processes_using(run_dir) == []


def test_modes_without_client_sidecars_say_what_they_cannot_do() -> None:
    with LocalMesh(mode="serveronly", wait_for_metrics=False) as m:
        with pytest.raises(BackendError, match="need a client-side sidecar, and mode 'serveronly' has none"):
            m.set_split("catalog", {"v1": 50, "v2": 50})
        versions = Counter(m.request_as("frontend", "catalog").headers["x-version"] for _ in range(60))
        assert set(versions) == {"v1", "v2"}  # plain round robin across versions, as kube-proxy
        m.set_policy(Policy(service="ratings", rules=[PolicyRule(sources=["reviews"])]))
        assert m.request_as("reviews", "ratings").status_code == 200
        assert m.request_as("frontend", "ratings").status_code == 403
    with LocalMesh(mode="none", wait_for_metrics=False) as m:
        assert m.request_as("loadgen", "frontend").status_code == 200
        with pytest.raises(BackendError, match="mode 'none' has none"):
            m.set_policy(Policy(service="ratings", rules=[PolicyRule(sources=["reviews"])]))


def test_up_down_five_times_leaves_no_process_and_no_port() -> None:
    for _ in range(5):
        m = LocalMesh(mode="both", wait_for_metrics=False)
        m.start()
        ports = [sc.listen_port for sc in m.layout.sidecars] + [sc.admin_port for sc in m.layout.sidecars]
        ports += [a.port for vs in m.layout.apps.values() for a in vs.values()] + [m.layout.prometheus_port]
        run_dir = m.run_dir
        m.stop()
        assert processes_using(run_dir) == []
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert not listening & set(ports)
        assert not run_dir.exists()


def test_topology_file_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "topo.yaml"
    bad.write_text("services:\n  web:\n    calls: [db]\n    versions:\n      v1: {service_time_ms: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_topology(bad)
    lines = [str(p) for p in info.value.problems]
    assert f"{bad}:5 services.web.versions.v1.service_time_ms: must be >= 0 (got -1)" in lines
    assert load_topology().entry() == "frontend"
