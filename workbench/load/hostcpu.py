"""CPU over a load point: the whole host's, the load generator's and each watched process's.

A latency difference measured on a saturated host is queueing for CPU, not the cost of what was
measured, so every load point records how busy the machine was. A background thread samples
``psutil.cpu_times()`` (all cores; niced work counts as free, see ``_busy_total``) and each
watched process's user+system CPU time every ``interval_s``; :meth:`CpuSampler.usage` then gives,
for any interval inside the sampled span (the load point's measured phase, in epoch seconds), the
host's utilisation over all cores and the cores each process used, by linear interpolation
between samples. Reading ``/proc`` a few times a second costs far less than the CPU it measures.

A process that exits keeps its last sampled CPU time (the tail after the last sample is lost,
at most ``interval_s`` of it).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

__all__ = ["CpuSampler", "CpuUsage"]


@dataclass(frozen=True)
class CpuUsage:
    """CPU over an interval: ``host_pct`` (busy share of all cores, 0-100), the number of
    ``cores``, and ``processes``: cores used by each watched process (1.0 = one full core)."""

    host_pct: float
    cores: int
    seconds: float
    processes: dict[str, float] = field(default_factory=dict)

    def share_pct(self, name: str) -> float:
        """A process's share of the whole host, in % of all cores."""
        return 100.0 * self.processes.get(name, math.nan) / self.cores if self.cores else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"host_cpu_pct": self.host_pct, "cores": self.cores, "seconds": self.seconds,
                "process_cores": dict(self.processes)}  # fmt: skip


def _busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) seconds of all cores. Idle and iowait are not busy, and neither is niced work:
    it yields to the measurement (the kernel gives a nice-19 process ~1.5 % against a normal one),
    so a background job that soaks up idle time at low priority does not saturate the host. Guest
    time is already inside user time on Linux and is not counted twice."""
    fields = times._fields
    total = sum(float(getattr(times, f)) for f in fields if f not in ("guest", "guest_nice"))
    free = sum(float(getattr(times, f, 0.0)) for f in ("idle", "iowait", "nice"))
    return total - free, total


class CpuSampler:
    """Samples host and process CPU in a thread; use as a context manager around a load point."""

    def __init__(self, processes: Mapping[str, int] | None = None, interval_s: float = 0.2):
        self.interval_s = interval_s
        self._procs: dict[str, psutil.Process] = {}
        self._last: dict[str, float] = {}
        self._rows: list[tuple[float, float, float, dict[str, float]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for name, pid in (processes or {}).items():
            self.watch(name, pid)

    def watch(self, name: str, pid: int) -> None:
        """Also sample process ``pid`` under ``name`` (e.g. the load generator once started)."""
        try:
            proc = psutil.Process(pid)
            with self._lock:
                self._procs[name] = proc
                self._last[name] = _cpu(proc)
        except psutil.Error:
            return

    def _sample(self) -> None:
        busy, total = _busy_total(psutil.cpu_times())
        with self._lock:
            procs = dict(self._procs)
        values = {}
        for name, proc in procs.items():
            try:
                values[name] = _cpu(proc)
            except psutil.Error:  # exited: keep its last reading
                values[name] = self._last.get(name, math.nan)
        with self._lock:
            self._last.update(values)
            self._rows.append((time.time(), busy, total, values))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()

    def usage(self, start: float, end: float) -> CpuUsage:
        """Host utilisation and cores per process between epoch seconds ``start`` and ``end``
        (clipped to the sampled span); NaN when fewer than two samples cover it."""
        with self._lock:
            rows = list(self._rows)
        cores = psutil.cpu_count() or 1
        if len(rows) < 2:
            return CpuUsage(math.nan, cores, 0.0)
        t = np.array([r[0] for r in rows])
        start, end = max(start, t[0]), min(end, t[-1])
        if end - start <= 0:
            return CpuUsage(math.nan, cores, 0.0)
        busy = np.interp([start, end], t, [r[1] for r in rows])
        total = np.interp([start, end], t, [r[2] for r in rows])
        host = 100.0 * (busy[1] - busy[0]) / (total[1] - total[0]) if total[1] > total[0] else math.nan
        host = min(max(host, 0.0), 100.0) if math.isfinite(host) else host  # rounding: 100.00000000018 %
        names = {n for r in rows for n in r[3]}
        out = {}
        for name in sorted(names):
            ts = [(r[0], r[3][name]) for r in rows if math.isfinite(r[3].get(name, math.nan))]
            if len(ts) < 2:
                continue
            tt, cc = np.array([x[0] for x in ts]), np.array([x[1] for x in ts])
            lo, hi = max(start, tt[0]), min(end, tt[-1])
            if hi - lo <= 0:
                continue
            c = np.interp([lo, hi], tt, cc)
            out[name] = float((c[1] - c[0]) / (hi - lo))
        return CpuUsage(float(host), cores, float(end - start), out)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)
