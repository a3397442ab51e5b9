"""Local mesh lifecycle: start/stop leaves nothing behind, deaths are named, modes say their limits.

Kept apart from test_local_mesh.py so its long-lived meshes are stopped before these start.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import processes_using
from workbench.backends.base import BackendError
from workbench.backends.local import LocalMesh, MeshProcessError, procs
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


@pytest.mark.beside  # statuses and errors, not figures
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


@pytest.mark.beside  # processes and ports, not figures
@pytest.mark.parametrize(
    ("modes", "times"),
    [(("both",), 5), pytest.param(("ambient", "ambient-waypoint"), 10, marks=pytest.mark.lane2)],
)
def test_up_down_repeatedly_leaves_no_process_and_no_port(modes: tuple[str, ...], times: int) -> None:
    for i in range(times):
        m = LocalMesh(mode=modes[i % len(modes)], wait_for_metrics=False)  # type: ignore[arg-type]
        m.start()
        ports = [sc.listen_port for sc in m.layout.sidecars] + [sc.admin_port for sc in m.layout.sidecars]
        ports += [p for sc in m.layout.sidecars for p in sc.ports.values()]  # node proxies' capture ports
        ports += [a.port for vs in m.layout.apps.values() for a in vs.values()] + [m.layout.prometheus_port]
        run_dir = m.run_dir
        m.stop()
        assert processes_using(run_dir) == []
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert not listening & set(ports)
        assert not run_dir.exists()


def test_planned_ports_are_free_and_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ports the kernel hands out as source ports of outgoing connections (the ephemeral range) could
    be taken between planning and binding; the planned ones lie below it, distinct and free."""
    top = procs._ephemeral_start()
    ports = procs.free_ports(60)
    assert len(set(ports)) == 60 and all(procs.PORT_FLOOR <= p < top for p in ports), (top, ports)
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(("127.0.0.1", ports[0]))  # free when planned, so it binds; now it is taken
        # a range of 40 ports that holds the taken one: 8 are chosen, never the taken one
        monkeypatch.setattr(procs, "PORT_FLOOR", ports[0])
        monkeypatch.setattr(procs, "_ephemeral_start", lambda: ports[0] + 40)
        for _ in range(5):
            chosen = procs.free_ports(8)
            assert ports[0] not in chosen and all(ports[0] < p < ports[0] + 40 for p in chosen), chosen
    finally:
        held.close()


def test_topology_file_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "topo.yaml"
    bad.write_text("services:\n  web:\n    calls: [db]\n    versions:\n      v1: {service_time_ms: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_topology(bad)
    lines = [str(p) for p in info.value.problems]
    assert f"{bad}:5 services.web.versions.v1.service_time_ms: must be >= 0 (got -1)" in lines
    assert load_topology().entry() == "frontend"


def _active_targets(mesh: LocalMesh, expected: int | None = None) -> int:
    """Prometheus' active scrape targets (waiting up to 10 s for ``expected``: after a reload,
    discovery hands the scrape manager its targets on a tick)."""
    import requests

    deadline = time.monotonic() + 10
    while True:
        data = requests.get(f"{mesh.prometheus_url()}/api/v1/targets", params={"state": "active"}, timeout=5)
        found = len(data.json()["data"]["activeTargets"])
        if expected is None or found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_quiet_pauses_the_workbench_scraping_and_telemetry_off_runs_none_of_it() -> None:
    """The workbench's own observers must not eat what a measurement measures: ``quiet()`` stops
    Prometheus scraping for the block (also on error), a mesh without telemetry never starts them."""
    with LocalMesh(mode="serveronly", wait_for_metrics=True) as m:
        scraped = _active_targets(m)
        assert scraped >= 10  # apps, sidecars, the process and audit exporters
        with pytest.raises(RuntimeError, match="inside"), m.quiet():
            assert _active_targets(m, 0) == 0
            raise RuntimeError("inside")
        assert _active_targets(m, scraped) == scraped
    with LocalMesh(mode="serveronly", telemetry=False) as m:
        kinds = {p.labels.get("kind") for p in m.supervisor.procs}
        assert kinds == {"app", "envoy"}
        with pytest.raises(BackendError, match="without the workbench's Prometheus"):
            m.prometheus_url()
        result = m.run_load("pricing", LoadProfile(rps=50, connections=2, duration_s=2))
        host = result.meta["host"]
        assert 0 < host["host_cpu_pct"] <= 100 and host["loadgen_cpu_cores"] > 0
        assert set(host["process_cores"]) == {p.name for p in m.supervisor.procs}
        assert result.meta["proxy_cost"]["cpu_cores_server"] > 0  # measured without Prometheus
        with m.quiet():  # nothing to pause
            pass
