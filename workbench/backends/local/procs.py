"""Starting, watching and stopping the local mesh's processes.

Every process gets its own log file; if one dies, ``check()`` names it with its exit status and
last log lines. ``stop_all()`` sends SIGTERM, then SIGKILL to what is left. Children of an
attached (``with``) mesh also get SIGTERM from the kernel if the Python process dies
(PR_SET_PDEATHSIG), so even a SIGKILLed notebook leaves no orphans.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from workbench.errors import BackendError
from workbench.tools import die_with_parent

_FATAL = re.compile(r"\]\[(critical|error)\]|Traceback|Error:|level=error|panic:|fatal", re.IGNORECASE)


class MeshProcessError(BackendError):
    """A process of the local mesh is not running; the message names it and why."""


PORT_FLOOR = 10000  # the planned ports come from [PORT_FLOOR, the ephemeral range's start)


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux: ip_local_port_range; else 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while choosing), from below the
    kernel's ephemeral range.

    The mesh's ports are planned before its processes bind them. A port the kernel handed out for
    ``bind(0)`` lies in the ephemeral range, which the kernel also uses as the source port of every
    outgoing connection: between planning and Envoy's bind, any client on the machine (k6, a
    scrape, a test's HTTP call) could take it, and Envoy then fails with "Address already in use"
    (seen in CI beside the Kubernetes emulator's tests). Ports below that range are never handed
    out implicitly, so only a program binding that very port could take one.
    """
    top = _ephemeral_start()
    candidates = list(range(PORT_FLOOR, top)) if top - PORT_FLOOR >= 4 * count else []
    random.SystemRandom().shuffle(candidates)
    socks: list[socket.socket] = []
    try:
        for port in candidates:
            if len(socks) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use
                s.close()
                continue
            socks.append(s)
        while len(socks) < count:  # an unusual port layout: fall back to the kernel's choice
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class Managed:
    """One started process."""

    name: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    log: Path
    create_time: float
    labels: dict[str, str] = field(default_factory=dict)  # kind, service, version, direction

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            proc = psutil.Process(self.pid)
            return (
                proc.is_running()
                and proc.status() != psutil.STATUS_ZOMBIE
                and (abs(proc.create_time() - self.create_time) < 1.0)
            )
        except psutil.Error:
            return False

    def exit_status(self) -> str:
        code = self.popen.poll() if self.popen is not None else None
        if code is None:
            return "exited"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def tail(self, lines: int = 8) -> str:
        """The log's last lines, led by its first fatal-looking lines (the cause, not the backtrace)."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 65536))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        all_lines = text.strip().splitlines()
        causes = [x for x in all_lines if _FATAL.search(x)][:2]
        picked = causes + [x for x in all_lines[-lines:] if x not in causes]
        return "\n".join(picked)

    def describe_death(self) -> str:
        tail = self.tail()
        last = f"; last log lines ({self.log}):\n{tail}" if tail else f" (log {self.log} is empty)"
        return f"{self.name} (pid {self.pid}) is not running: {self.exit_status()}{last}"

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name, "pid": self.pid, "log": str(self.log), "create_time": self.create_time,
            "labels": self.labels,
        }  # fmt: skip


class Supervisor:
    """Owns a set of processes; stops them all, newest first."""

    def __init__(self, log_dir: Path, detached: bool = False):
        self.log_dir = log_dir
        self.detached = detached
        self.procs: list[Managed] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Managed:
        """Start ``argv`` with stdout+stderr into ``<log_dir>/<name>.log``."""
        log = self.log_dir / (name.replace(" ", "_").replace("/", "_") + ".log")
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them in order
                preexec_fn=None if self.detached else die_with_parent,
                close_fds=True,
            )
        try:
            created = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            created = time.time()
        managed = Managed(name, popen, popen.pid, log, created, dict(labels or {}))
        self.procs.append(managed)
        return managed

    def adopt(self, state: dict[str, Any]) -> Managed:
        """Track a process started by another workbench process (``workbench local up``)."""
        managed = Managed(
            state["name"], None, int(state["pid"]), Path(state["log"]), float(state["create_time"]),
            dict(state.get("labels") or {}),
        )  # fmt: skip
        self.procs.append(managed)
        return managed

    def dead(self) -> list[Managed]:
        return [p for p in self.procs if not p.alive()]

    def check(self) -> None:
        """Raise MeshProcessError naming the first process that is no longer running."""
        dead = self.dead()
        if dead:
            raise MeshProcessError(dead[0].describe_death())

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM every process (newest first), wait, SIGKILL what is left, reap all."""
        for proc in reversed(self.procs):
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.alive():
                _signal(proc, signal.SIGKILL)
        for proc in self.procs:
            if proc.popen is not None:
                with suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
            else:
                _wait_gone(proc)
        self.procs.clear()


def _signal(proc: Managed, sig: signal.Signals) -> None:
    if not proc.alive():
        return
    with suppress(ProcessLookupError):
        os.kill(proc.pid, sig)


def _wait_gone(proc: Managed, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_ready(
    what: Managed, probe: Callable[[], bool], timeout: float = 20.0, supervisor: Supervisor | None = None
) -> None:
    """Poll ``probe`` until true; fail early, naming the process, if it dies meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not what.alive():
            raise MeshProcessError(what.describe_death())
        if supervisor is not None:
            supervisor.check()
        try:
            if probe():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.05)
    raise MeshProcessError(
        f"{what.name} (pid {what.pid}) did not become ready within {timeout:.0f} s; "
        f"last log lines ({what.log}):\n{what.tail()}"
    )


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: GET ``url`` answers 200."""

    def probe() -> bool:
        return requests.get(url, timeout=1.0).status_code == 200

    return probe
