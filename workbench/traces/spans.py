"""Spans as data: one Arrow/Parquet table, whatever the source (Envoy, the demo apps, Jaeger, Tempo).

Every reader (``otlp``, ``zipkin``, ``jaeger``, ``tempo``) turns its format into *raw* records
(plain dicts with the columns below, possibly incomplete) and :func:`table` turns those into the
one schema, refusing nothing silently: a record without a trace id, span id, start or duration is
dropped and counted by reason (:class:`Intake`), ids are normalised to lowercase hex (trace ids
padded to 32 digits, span ids to 16, so a 64-bit Zipkin trace id matches its 128-bit form).

Columns (``SCHEMA``):

- ``trace_id`` (32 hex), ``span_id`` (16 hex), ``parent_id`` (16 hex, ``""`` for a root);
- ``service``, ``version``; ``role``: ``client`` (a client sidecar's span of a call it made),
  ``server`` (a server sidecar's span of a request it received) or ``app`` (the application's own
  span); ``name`` (the operation);
- ``start_us`` (epoch µs), ``duration_us`` (µs);
- ``status`` (HTTP status, 0 when unknown), ``error`` (the span failed);
- ``upstream_cluster`` (a client sidecar's cluster, ``outbound|<service>|<version>`` locally),
  ``peer`` (the called service, for client spans), ``request_id`` (``x-request-id``).

Stored per run as Parquet (``write``/``read``); the local mesh's receiver writes part files
(``part-*.parquet``) that :class:`SpanTail` reads incrementally, as ``AccessLogTail`` does logs.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.errors import WorkbenchError

__all__ = [
    "COLUMNS",
    "ROLES",
    "SCHEMA",
    "Intake",
    "SpanFileError",
    "SpanTail",
    "empty",
    "read",
    "table",
    "write",
]

SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_id", pa.string()),
        ("service", pa.string()),
        ("version", pa.string()),
        ("role", pa.string()),
        ("name", pa.string()),
        ("start_us", pa.int64()),
        ("duration_us", pa.int64()),
        ("status", pa.int32()),
        ("error", pa.bool_()),
        ("upstream_cluster", pa.string()),
        ("peer", pa.string()),
        ("request_id", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
REQUIRED = ("trace_id", "span_id", "start_us", "duration_us")
ROLES = ("client", "server", "app")
_HEX = re.compile(r"^[0-9a-f]+$")
_CLUSTER = re.compile(r"^outbound\|(?P<service>[^|]+)\|(?P<version>[^|]*)$")


class SpanFileError(WorkbenchError):
    """A span file or API answer that cannot be read at all (the message names it and why)."""


@dataclass
class Intake:
    """What reading spans kept and dropped, by reason: reported with every analysis, never silent."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> spans
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def merge(self, other: Intake) -> Intake:
        out = Intake(self.kept + other.kept, self.dropped + other.dropped, [*self.notes, *other.notes])
        return out

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def explain(self) -> str:
        if not self.dropped and not self.notes:
            return f"{self.kept} spans read, none dropped"
        parts = [f"{n} {reason}" for reason, n in sorted(self.dropped.items())]
        text = f"{self.kept} spans read; dropped {self.n_dropped}" + (
            f" ({', '.join(parts)})" if parts else ""
        )
        return text + "".join(f"; {n}" for n in self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(self.dropped), "notes": list(self.notes)}


def _hex_id(value: Any, digits: int) -> str | None:
    """Lowercase hex of ``digits`` (left-padded), or None when not a valid id (empty, all zero)."""
    if value is None:
        return None
    text = bytes(value).hex() if isinstance(value, bytes | bytearray) else str(value).strip().lower()
    if not text or not _HEX.match(text) or len(text) > digits:
        return None
    if set(text) == {"0"}:
        return None  # the W3C / OTLP "invalid" id
    return text.rjust(digits, "0")


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def table(records: Iterable[Mapping[str, Any]], intake: Intake | None = None) -> tuple[pa.Table, Intake]:
    """Raw span records → a table of ``SCHEMA``; invalid records are dropped and counted in ``intake``.

    A record needs ``trace_id``, ``span_id``, ``start_us`` and ``duration_us``; a negative duration
    is invalid; a ``parent_id`` that is not a valid id makes the span a root (counted as a note-free
    fix: an empty or all-zero parent is how the formats say "no parent").
    """
    intake = intake or Intake()
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for r in records:
        missing = [k for k in REQUIRED if r.get(k) in (None, "")]
        if missing:
            intake.drop(f"missing {missing[0]}")
            continue
        trace_id, span_id = _hex_id(r["trace_id"], 32), _hex_id(r["span_id"], 16)
        if trace_id is None:
            intake.drop("invalid trace_id")
            continue
        if span_id is None:
            intake.drop("invalid span_id")
            continue
        start, duration = _int(r["start_us"]), _int(r["duration_us"])
        if start is None:
            intake.drop("invalid start_us")
            continue
        if duration is None or duration < 0:
            intake.drop("invalid duration_us")
            continue
        role = str(r.get("role") or "app")
        if role not in ROLES:
            intake.drop("invalid role")
            continue
        cluster = str(r.get("upstream_cluster") or "")
        peer = str(r.get("peer") or "")
        if not peer and role == "client":
            m = _CLUSTER.match(cluster)
            peer = m["service"] if m else ""
        cols["trace_id"].append(trace_id)
        cols["span_id"].append(span_id)
        cols["parent_id"].append(_hex_id(r.get("parent_id"), 16) or "")
        cols["service"].append(str(r.get("service") or "unknown"))
        cols["version"].append(str(r.get("version") or ""))
        cols["role"].append(role)
        cols["name"].append(str(r.get("name") or ""))
        cols["start_us"].append(start)
        cols["duration_us"].append(duration)
        cols["status"].append(_int(r.get("status")) or 0)
        cols["error"].append(bool(r.get("error")))
        cols["upstream_cluster"].append(cluster)
        cols["peer"].append(peer)
        cols["request_id"].append(str(r.get("request_id") or ""))
        intake.kept += 1
    return pa.table(cols, schema=SCHEMA), intake


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def write(spans: pa.Table, path: str | Path) -> Path:
    """Write ``spans`` as one Parquet file, atomically (a temp file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(spans.select(list(COLUMNS)).cast(SCHEMA), tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read(path: str | Path) -> pa.Table:
    """Spans from one Parquet file or every ``*.parquet`` of a directory (``SCHEMA``).

    SpanFileError names the file and the columns it lacks when it is not a span table.
    """
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        return empty()
    parts = []
    for f in files:
        try:
            t = pq.read_table(f)
        except FileNotFoundError:
            raise SpanFileError(f"{f}: no such span file") from None
        except (OSError, pa.ArrowInvalid) as exc:
            raise SpanFileError(f"{f}: not a Parquet span file ({exc})") from None
        missing = [c for c in COLUMNS if c not in t.column_names]
        if missing:
            raise SpanFileError(f"{f}: not a span table: missing column(s) {', '.join(missing)}")
        try:
            parts.append(t.select(list(COLUMNS)).cast(SCHEMA))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SpanFileError(f"{f}: a column has the wrong type ({exc})") from None
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


class SpanTail:
    """Span part files the local mesh's receiver wrote since the last read (``<dir>/part-*.parquet``).

    The receiver writes a part file about every second (atomically), so a read sees spans that
    ended up to ~1 s (plus Envoy's own export interval) earlier. ``skip()`` starts after the
    files present now, so a run reads only its own spans.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.seen: set[str] = set()

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def skip(self) -> SpanTail:
        self.seen.update(p.name for p in self._files())
        return self

    def read(self) -> pa.Table:
        new = [p for p in self._files() if p.name not in self.seen]
        parts = []
        for p in new:
            parts.append(read(p))
            self.seen.add(p.name)
        if not parts:
            return empty()
        return pa.concat_tables(parts)
