"""Process CPU and memory of the local mesh's processes, as Prometheus metrics.

Envoy reports no CPU of its own, yet proxy cost (cores and RSS per 1000 rps, as istio/tools'
``cpu_mili_avg_*`` / ``mem_Mi_avg_*``) is half of the mesh-overhead question. This small process
reads the mesh's process list (``pids.json``) at every scrape and exports, per process:

- ``workbench_process_cpu_seconds_total{process, kind, service, version, direction, role}``
  (``role`` of an Envoy: ``sidecar``, ``node proxy`` or ``waypoint``)
- ``workbench_process_resident_memory_bytes{...}``

Run as ``python -m workbench.backends.local.procstats PIDS.json PORT``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LABELS = ("process", "kind", "service", "version", "direction", "role")


class ProcessCollector:
    """A prometheus_client collector over the processes listed in a JSON file."""

    def __init__(self, pids_file: Path):
        self.pids_file = pids_file
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def _entries(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            return []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cpu = CounterMetricFamily("workbench_process_cpu_seconds", "CPU time (user+system)", labels=LABELS)
        rss = GaugeMetricFamily("workbench_process_resident_memory_bytes", "Resident set size", labels=LABELS)
        for entry in self._entries():
            key = (int(entry["pid"]), float(entry["create_time"]))
            proc = self._procs.get(key)
            try:
                if proc is None:
                    proc = self._procs[key] = psutil.Process(key[0])
                if abs(proc.create_time() - key[1]) > 1.0:  # the pid was reused by someone else
                    continue
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info().rss
            except psutil.Error:
                continue
            lab = entry.get("labels", {})
            values = [entry["name"], *(str(lab.get(k, "")) for k in LABELS[1:])]
            cpu.add_metric(values, times.user + times.system)
            rss.add_metric(values, float(mem))
        yield cpu
        yield rss


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m workbench.backends.local.procstats PIDS.json PORT")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ProcessCollector(Path(argv[0])))
    start_http_server(int(argv[1]), addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
