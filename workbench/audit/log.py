"""The release audit log: every change the workbench makes, and every release it sees, in one file.

An append-only JSON-lines file; each line is one entry in canonical JSON (sorted keys, no spaces)::

    {"action":"split","actor":"ana@lab","after":{"v1":90,"v2":10},"backend":{"type":"local",...},
     "before":{"v1":100,"v2":0},"details":{},"hash":"…","prev":"…","run_id":null,"seq":7,
     "target":"catalog","time":"2025-05-01T12:00:00.123456+00:00"}

``prev`` is the sha256 of the previous line (64 zeros for the first) and ``hash`` the sha256 of the
entry's own canonical JSON without ``hash``: a hash chain, so :meth:`AuditLog.verify` finds an
edited, deleted, inserted or reordered entry and names the first bad line. A small *head* file
beside the log (``<log>.head``: number of entries and the last hash, rewritten on every append)
lets it also notice entries cut off the end. Several processes (a notebook kernel, the runner, a
detached mesh) may append to one log: each append holds an exclusive ``flock`` and is fsync'd.

Where: ``$WORKBENCH_AUDIT_LOG``, else ``$XDG_DATA_HOME/mesh-workbench/audit.jsonl`` (default
``~/.local/share``). Values of credential-like keys (token, password, authorization, ...) and the
user:password part of URLs are replaced by ``***`` before anything is written.
"""

from __future__ import annotations

import dataclasses
import fcntl
import getpass
import hashlib
import json
import math
import os
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from workbench.errors import WorkbenchError

__all__ = [
    "ACTIONS",
    "GENESIS",
    "AuditError",
    "AuditLog",
    "VerifyResult",
    "default_path",
    "grafana_annotations",
    "parse_since",
    "scrub",
]

ACTIONS: tuple[str, ...] = (
    "release_observed",
    "split",
    "route",
    "fault",
    "policy",
    "resilience",
    "behaviour",
    "promote",
    "rollback",
    "experiment_start",
    "experiment_end",
    "workload",  # an object the workbench creates in a cluster and deletes again (load Job, probe Job)
)
GENESIS = "0" * 64
ENV_PATH = "WORKBENCH_AUDIT_LOG"
ENV_RUN_ID = "WORKBENCH_RUN_ID"  # set by `workbench run`; inherited by the notebook kernels
FIELDS = ("seq", "time", "actor", "backend", "action", "target", "before", "after", "run_id", "details",
          "prev", "hash")  # fmt: skip
SCRUBBED = "***"
_SECRET_KEY = re.compile(
    r"token|passw(or)?d|passwd|secret|authori[sz]ation|api[-_]?key|credential|private[-_]?key|bearer", re.I
)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_BEARER = re.compile(r"\b(?P<kind>Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I)


class AuditError(WorkbenchError, ValueError):
    """Bad input to the audit log (unknown action, unreadable file), naming the field or file."""


def default_path() -> Path:
    """``$WORKBENCH_AUDIT_LOG``, else ``$XDG_DATA_HOME/mesh-workbench/audit.jsonl``."""
    given = os.environ.get(ENV_PATH)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mesh-workbench" / "audit.jsonl"


def actor() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


# ---------------------------------------------------------------------------------------------
# Canonical JSON, hashing, scrubbing


def canonical(obj: Any) -> str:
    """The one text form of an entry that is hashed and written: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON without its ``hash`` field."""
    return _sha256(canonical({k: v for k, v in entry.items() if k != "hash"}))


def _jsonable(value: Any) -> Any:
    """Plain JSON values from models, dataclasses, paths, times, sets (non-finite floats → None)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)


def scrub(value: Any) -> Any:
    """``value`` with credentials replaced by ``***``: values of credential-like keys, URL userinfo
    (``https://user:pw@host`` → ``https://***@host``) and ``Bearer``/``Basic`` header values."""
    if isinstance(value, dict):
        return {
            k: (SCRUBBED if _SECRET_KEY.search(str(k)) and v not in (None, "") else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        value = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{SCRUBBED}@", value)
        return _BEARER.sub(lambda m: f"{m['kind']} {SCRUBBED}", value)
    return value


# ---------------------------------------------------------------------------------------------
# Time filters


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | datetime | timedelta, now: datetime | None = None) -> datetime:
    """A start time from ``30m``/``1h``/``2d`` (ago) or an ISO time (UTC when no zone is given)."""
    now = now or datetime.now(UTC)
    if isinstance(text, timedelta):
        return now - text
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if m := _DURATION.match(text):
        return now - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"since: expected a duration like 30m, 1h, 2d or an ISO time like 2025-05-01T12:00 (got {text!r})"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def entry_time(entry: dict[str, Any]) -> datetime:
    """The entry's time as an aware datetime."""
    return datetime.fromisoformat(entry["time"])


# ---------------------------------------------------------------------------------------------
# Verification result


@dataclass
class VerifyResult:
    """What :meth:`AuditLog.verify` found; ``first_bad_line`` is 1-based, None when ``ok``."""

    path: Path
    ok: bool
    entries: int  # lines read (all of them, also after a bad one)
    first_bad_line: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"{self.path}: ok, {self.entries} entries, hash chain intact"
        return f"{self.path}: line {self.first_bad_line}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# The log


class AuditLog:
    """One audit log file. ``backend`` (e.g. ``{"type": "local", "context": run_dir}``) is written
    into every entry this instance records; a record's ``run_id`` defaults to ``$WORKBENCH_RUN_ID``."""

    def __init__(self, path: str | Path | None = None, backend: dict[str, Any] | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_path()
        self.backend = dict(backend or {})

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, backend={self.backend!r})"

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    # -----------------------------------------------------------------------------------------
    # Writing

    def record(
        self,
        action: str,
        target: str,
        before: Any = None,
        after: Any = None,
        *,
        run_id: str | None = None,
        backend: dict[str, Any] | None = None,
        **details: Any,
    ) -> dict[str, Any]:
        """Append one entry (chained, fsync'd, under an exclusive lock) and return it."""
        action = normalize_action(action)
        if not isinstance(target, str) or not target:
            raise AuditError(f"audit target: must be a non-empty string (got {target!r})")
        body = {
            "time": datetime.now(UTC).isoformat(),
            "actor": actor(),
            "backend": scrub(_jsonable(backend if backend is not None else self.backend)),
            "action": action,
            "target": target,
            "before": scrub(_jsonable(before)),
            "after": scrub(_jsonable(after)),
            "run_id": run_id or os.environ.get(ENV_RUN_ID) or None,
            "details": scrub(_jsonable(details)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked("a+b", fcntl.LOCK_EX) as fh:
            last = _last_line(fh)
            if last is None:
                prev, seq = GENESIS, 0
            else:
                try:
                    last_entry = json.loads(last)
                    seq = int(last_entry["seq"])
                except (ValueError, KeyError, TypeError):
                    raise AuditError(
                        f"audit log {self.path}: its last line is not a valid entry (torn write or edit); "
                        "run 'workbench audit verify' and repair it before recording more"
                    ) from None
                prev = _sha256(last)
            head = self._read_head()
            if head is not None and (
                head.get("entries") != seq or (last is not None and head.get("hash") != prev)
            ):
                body["details"]["chain_break"] = {
                    "head_entries": head.get("entries"),
                    "head_hash": head.get("hash"),
                    "log_entries": seq,
                }
            entry = {**body, "seq": seq + 1, "prev": prev}
            entry["hash"] = entry_hash(entry)
            line = canonical(entry).encode()
            fh.seek(0, os.SEEK_END)
            fh.write(line + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            self._write_head(seq + 1, _sha256(line))
        return entry

    # -----------------------------------------------------------------------------------------
    # Reading

    def entries(
        self,
        since: str | datetime | timedelta | None = None,
        until: str | datetime | None = None,
        action: str | Iterable[str] | None = None,
        run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Entries in file order, optionally from ``since`` (``1h``, ISO, datetime) up to ``until``,
        of some actions, of one run. A missing log has no entries; a line that is not JSON is skipped
        (``verify`` reports it)."""
        start = parse_since(since) if since is not None else None
        end = parse_since(until) if until is not None else None
        actions = {normalize_action(action)} if isinstance(action, str) else (
            {normalize_action(a) for a in action} if action is not None else None)  # fmt: skip
        out = []
        for _, entry in self._read():
            if entry is None:
                continue
            if actions is not None and entry.get("action") not in actions:
                continue
            if run_id is not None and entry.get("run_id") != run_id:
                continue
            if start is not None or end is not None:
                try:
                    when = entry_time(entry)
                except (KeyError, TypeError, ValueError):
                    continue
                if (start is not None and when < start) or (end is not None and when > end):
                    continue
            out.append(entry)
        return out

    def verify(self) -> VerifyResult:
        """Check every line's hash, the chain of ``prev`` hashes, sequence numbers and the head file."""
        if not self.path.exists():
            raise AuditError(f"no audit log at {self.path}")
        with self._locked("rb", fcntl.LOCK_SH) as fh:
            raw = fh.read()
            head = self._read_head()
        lines = raw.split(b"\n")
        complete = lines[:-1]  # a well-formed log ends with a newline
        n = len(complete) + (1 if lines[-1] else 0)
        result = VerifyResult(self.path, True, n)

        def bad(line: int, reason: str) -> VerifyResult:
            result.ok, result.first_bad_line, result.reason = False, line, reason
            return result

        prev = GENESIS
        for i, line in enumerate(lines, start=1):
            if i == len(lines):
                if line:
                    return bad(i, "incomplete last line (the log was cut off mid-entry)")
                break
            problem = _check_line(line, i, prev)
            if problem:
                return bad(i, problem)
            prev = _sha256(line)
        if head is None:
            if n:
                result.warnings.append(
                    f"no head file {self.head_path.name}: entries cut off the end cannot be detected"
                )
            return result
        recorded, last_hash = head.get("entries"), head.get("hash")
        if not isinstance(recorded, int):
            return bad(n + 1 if n else 1, f"head file {self.head_path} is not valid")
        if recorded > n:
            return bad(n + 1, f"truncated: the head file records {recorded} entries, the log has {n} "
                              f"(entries {n + 1}..{recorded} were removed)")  # fmt: skip
        if recorded < n:
            return bad(recorded + 1, f"the head file records {recorded} entries, the log has {n}: "
                                     "entries were appended without the workbench")  # fmt: skip
        if n and last_hash != prev:
            return bad(n, "the last entry does not match the head file's hash (the log was rewritten)")
        return result

    # -----------------------------------------------------------------------------------------
    # Internals

    @contextmanager
    def _locked(self, mode: str, how: int) -> Iterator[IO[bytes]]:
        try:
            fh = open(self.path, mode)  # noqa: SIM115 - closed below, after unlocking
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh.fileno(), how)
            yield fh  # type: ignore[misc]
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def _read(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        if not self.path.exists():
            return
        with self._locked("rb", fcntl.LOCK_SH) as fh:
            raw = fh.read()
        for i, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                yield i, None
                continue
            yield i, entry if isinstance(entry, dict) else None

    def _read_head(self) -> dict[str, Any] | None:
        try:
            head = json.loads(self.head_path.read_text())
        except (OSError, ValueError):
            return None
        return head if isinstance(head, dict) else {}

    def _write_head(self, entries: int, last_hash: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + f".{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"entries": entries, "hash": last_hash}))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.head_path)


def normalize_action(action: str) -> str:
    """``"release observed"`` / ``"release-observed"`` → ``release_observed``; AuditError if unknown."""
    name = re.sub(r"[\s-]+", "_", str(action).strip().lower())
    if name not in ACTIONS:
        raise AuditError(f"audit action: {action!r} is not one of {', '.join(ACTIONS)}")
    return name


def _last_line(fh: IO[bytes]) -> bytes | None:
    """The file's last line (without its newline), read backwards from the end; None when empty."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return None
    fh.seek(size - 1)
    if fh.read(1) != b"\n":
        raise AuditError(f"audit log {fh.name}: the last line is incomplete (a torn write); "
                         "run 'workbench audit verify' and repair it before recording more")  # fmt: skip
    pos, buf = size - 1, b""  # buf: bytes [pos, size - 1), i.e. without the final newline
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        cut = buf.rfind(b"\n")
        if cut != -1:
            return buf[cut + 1 :]
    return buf


def _check_line(line: bytes, i: int, prev: str) -> str:
    """Why line ``i`` is bad ("" when good), given the previous line's sha256."""
    if not line.strip():
        return "empty line"
    try:
        entry = json.loads(line)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(entry, dict):
        return "not a JSON object"
    missing = [f for f in FIELDS if f not in entry]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if entry_hash(entry) != entry["hash"]:
        return "its content does not match its hash: the entry was edited"
    if canonical(entry).encode() != line:
        return "not in canonical form: the line was edited (re-formatted)"
    if entry["prev"] != prev:
        seq = entry["seq"]
        if i == 1:
            return f"the first entry's prev is not {GENESIS[:8]}… (entries before it were removed; seq {seq})"
        how = (
            f"{seq - i} entr{'y' if seq - i == 1 else 'ies'} before it deleted, or entries reordered"
            if isinstance(seq, int) and seq > i
            else "an entry inserted or entries reordered"
        )
        return f"prev does not match line {i - 1} (seq {seq}, expected {i}: {how})"
    if entry["seq"] != i:
        return f"seq is {entry['seq']}, expected {i}: entries were inserted or renumbered"
    brk = entry["details"].get("chain_break") if isinstance(entry["details"], dict) else None
    if brk:
        return (f"written after the log was altered: the head recorded {brk.get('head_entries')} entries, "
                f"the log had {brk.get('log_entries')}")  # fmt: skip
    return ""


# ---------------------------------------------------------------------------------------------
# Presentation helpers


def describe(value: Any) -> str:
    """A short text of a before/after value: ``v1:90 v2:10`` for a split, compact JSON otherwise."""
    if value is None:
        return "-"
    if isinstance(value, dict) and value and all(isinstance(v, int | float) for v in value.values()):
        return " ".join(f"{k}:{v:g}" for k, v in value.items())
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def label(entry: dict[str, Any]) -> str:
    """One line for a marker or annotation: ``split catalog: v1:100 v2:0 → v1:90 v2:10``."""
    action, target = entry.get("action", ""), entry.get("target", "")
    if action in ("experiment_start", "experiment_end"):
        d = entry.get("details") or {}
        extra = d.get("verdict") or d.get("kind") or ""
        return f"{action.replace('_', ' ')} {target}" + (f" ({extra})" if extra else "")
    return f"{action} {target}: {describe(entry.get('before'))} → {describe(entry.get('after'))}"


def grafana_annotations(
    entries: Iterable[dict[str, Any]], dashboard_uid: str | None = None
) -> list[dict[str, Any]]:
    """Bodies for Grafana's ``POST /api/annotations``: ``time``/``timeEnd`` (ms), ``tags``, ``text``.

    An experiment's start and end become one region annotation; every other entry a point.
    """
    out: list[dict[str, Any]] = []
    open_runs: dict[tuple[Any, str], dict[str, Any]] = {}
    for e in entries:
        ms = int(entry_time(e).timestamp() * 1000)
        backend = e.get("backend") or {}
        tags = ["workbench", e["action"], e["target"]]
        if backend.get("type"):
            tags.append(str(backend["type"]))
        if e.get("run_id"):
            tags.append(f"run:{e['run_id']}")
        body: dict[str, Any] = {"time": ms, "timeEnd": ms, "tags": tags, "text": label(e)}
        if dashboard_uid:
            body["dashboardUID"] = dashboard_uid
        key = (e.get("run_id"), e["target"])
        if e["action"] == "experiment_start":
            open_runs[key] = body
        elif e["action"] == "experiment_end" and key in open_runs:
            start = open_runs.pop(key)
            start["timeEnd"] = ms
            start["tags"] = [*start["tags"], "experiment_end"]
            start["text"] = f"{start['text']} → {label(e)}"
            continue
        out.append(body)
    return out


def markers_for_run(
    run_id: str | None,
    start: datetime | str,
    end: datetime | str,
    targets: Iterable[str] = (),
    log: AuditLog | None = None,
) -> list[dict[str, Any]]:
    """Audit events for a figure (``time``, ``label``): the run's own entries, plus entries without a run id
    inside [start, end] on ``targets``. A missing or unreadable log gives none (figures still draw)."""
    log = log or AuditLog()
    wanted = set(targets)
    try:
        found = log.entries(since=start, until=end)
    except (AuditError, OSError):
        return []
    out = []
    for e in found:
        mine = run_id is not None and e.get("run_id") == run_id
        nearby = not e.get("run_id") and (not wanted or e.get("target") in wanted)
        if mine or nearby:
            out.append({"time": e["time"], "label": label(e), "action": e["action"]})
    return out
