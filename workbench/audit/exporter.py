"""The audit log as Prometheus metrics, so Grafana can draw releases and splits next to latency.

- ``workbench_release_info{service, version}`` 1 per live version (latest ``release_observed``
  entries: a release with ``after`` set is live, one with ``after: null`` has gone)
- ``workbench_traffic_weight{service, version}`` the current split in % (latest ``split``,
  ``promote`` or ``rollback`` entry per service)
- ``workbench_audit_events_total{action}`` entries per action (every action, 0 when none yet)

With ``--backend-context`` (what the local mesh passes: its run directory) release and weight
come only from that backend's entries; the event counts cover the whole log. The log is read
incrementally at each scrape (a log that shrank is re-read from the start).

Run as ``python -m workbench.audit.exporter LOG PORT [--backend-context CTX]``; the local mesh
starts it beside Prometheus, and on a cluster it can run anywhere Prometheus can scrape.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from workbench.audit import ACTIONS

METRICS = ("workbench_release_info", "workbench_traffic_weight", "workbench_audit_events_total")
WEIGHT_ACTIONS = ("split", "promote", "rollback")


class AuditState:
    """Live releases, current weights and counts per action, folded from audit entries in order."""

    def __init__(self, backend_context: str | None = None) -> None:
        self.backend_context = backend_context.rstrip("/") if backend_context else None  # "dir/" == "dir"
        self.releases: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (service, version)
        self.weights: dict[str, dict[str, float]] = {}  # service -> version -> weight
        self.counts: Counter[str] = Counter()

    def add(self, entry: dict[str, Any]) -> None:
        """Fold one entry in."""
        action = entry.get("action")
        if not isinstance(action, str):
            return
        self.counts[action] += 1
        backend = entry.get("backend") or {}
        if self.backend_context is not None and backend.get("context") != self.backend_context:
            return
        target = str(entry.get("target", ""))
        after, before = entry.get("after"), entry.get("before")
        if action == "release_observed":
            details = entry.get("details") or {}
            version = _version(after) or _version(before)
            if version is None:
                return
            key = (f"{backend.get('context')}/{details.get('deployment') or target}", version)
            if details.get("deployment"):  # a Deployment has one version at a time
                key = (key[0], "")
            if isinstance(after, dict) and _version(after):
                self.releases[key] = (target, str(after["version"]))
            else:
                self.releases.pop(key, None)
        elif action in WEIGHT_ACTIONS and isinstance(after, dict):
            weights = {str(v): float(w) for v, w in after.items() if isinstance(w, int | float)}
            if weights:
                old = self.weights.get(target, {})
                self.weights[target] = {**{v: 0.0 for v in old}, **weights}


def _version(value: Any) -> str | None:
    return str(value["version"]) if isinstance(value, dict) and value.get("version") else None


class AuditCollector:
    """A prometheus_client collector over an audit log file, read incrementally."""

    def __init__(self, path: Path, backend_context: str | None = None) -> None:
        self.path = path
        self.backend_context = backend_context
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.state = AuditState(self.backend_context)
        self._offset = 0

    def _update(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            self._reset()
            return
        if size < self._offset:
            self._reset()
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        end = data.rfind(b"\n") + 1  # only whole lines; a line being written waits for the next scrape
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.state.add(entry)
        self._offset += end

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            self._update()
            state = self.state
            info = GaugeMetricFamily(
                "workbench_release_info",
                "1 per live version (release_observed)",
                labels=["service", "version"],
            )
            for service, version in sorted(set(state.releases.values())):
                info.add_metric([service, version], 1.0)
            weight = GaugeMetricFamily(
                "workbench_traffic_weight", "Current traffic split, percent", labels=["service", "version"]
            )
            for service, split in sorted(state.weights.items()):
                for version, w in sorted(split.items()):
                    weight.add_metric([service, version], w)
            events = CounterMetricFamily("workbench_audit_events", "Audit log entries", labels=["action"])
            for action in sorted({*ACTIONS, *state.counts}):
                events.add_metric([action], float(state.counts.get(action, 0)))
        yield info
        yield weight
        yield events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.audit.exporter", description=__doc__)
    parser.add_argument("log", type=Path, help="the audit log (JSON lines)")
    parser.add_argument("port", type=int, help="port to serve /metrics on")
    parser.add_argument("--addr", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--backend-context", default=None, help="only this backend's releases and splits")
    args = parser.parse_args(argv)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AuditCollector(args.log, args.backend_context))
    start_http_server(args.port, addr=args.addr, registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
