"""k6 samples out of a load pod through its log, without losing any: bounded, numbered, checksummed chunks.

A pod's log is the one channel every cluster gives (``GET .../pods/<pod>/log``), but the kubelet
rotates container logs at ~10 MiB and serves only the newest file, so a long or fast run printed
at the end would be cut without a word. So the pod streams its samples while k6 runs, and the
workbench reads the log while the pod runs:

- k6 writes its CSV (``--out csv``) into a FIFO, never to disk; a reader keeps the rows the
  workbench uses (``workbench_*``, ``dropped_iterations``) and ``split`` cuts them into parts of at
  most ``CHUNK_ROWS`` rows; every ``FLUSH_S`` seconds each completed part is printed as one chunk
  and deleted::

      WB-SAMPLES pod=<hostname>
      WB-CHUNK <seq> <rows> <sha256 of the gzip bytes> <tag sets, |-separated, or ->
      <the gzip bytes, base64>
      WB-CHUNK-END <seq>
      ...
      WB-DONE chunks=<n> rows=<total rows> exit=<k6 exit status, or - when unknown>

- A chunk's rows are the measured phase's, compacted by ``awk`` to numbers only —
  ``kind,timestamp_us,value,status,tag`` (kind 0 a request: latency ms and its tag set's number in
  the header's list; 1 the measured scenario's start, ms; 2 dropped iterations) — about a third of
  k6's CSV, and parsed by pyarrow as plain numbers (50 pods × 200 000 requests merge in seconds).

- ``ChunkReader`` takes the log as it grows (``GET .../log?timestamps=true&sinceTime=...`` reads;
  the overlap of successive reads is dropped by timestamp and chunk number), checks each chunk's
  checksum as it arrives, and at the end checks that chunks 0..n-1 and every row are there. A gap,
  a damaged chunk, a missing end — anything short of every sample — is a ``ChunkError`` naming
  the pod and the chunks, never a silently smaller sample.

``emitter()`` is the shell (POSIX sh, busybox: the grafana/k6 image) both load paths run: in the
Indexed Job's k6 container around k6 itself, and as a native sidecar of the k6 operator's runner pods.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from workbench.errors import BackendError

__all__ = ["CHUNK_ROWS", "FLUSH_S", "ChunkError", "ChunkReader", "emitter"]

CHUNK_ROWS = 20000  # rows per chunk: ~0.4 MB of base64, far below any log rotation size
FLUSH_S = 1  # seconds between looks for completed parts while k6 runs
SAMPLE_ROWS = r"^(metric_name|workbench_[a-z_]+|dropped_iterations),"
START, CHUNK, CHUNK_END, DONE = "WB-SAMPLES", "WB-CHUNK", "WB-CHUNK-END", "WB-DONE"


# A part of k6's CSV rows -> the chunk's numeric rows; each new tag set is appended to "$dict".
COMPACT = r"""$4 != "measure" { next }
$1 == "workbench_req" { if (!($6 in t)) { t[$6] = n++; print $6 > dict }
  print 0, $2, $3, ($5 == "" ? 0 : $5), t[$6]; next }
$1 == "workbench_scenario_start" { print 1, $2, $3, 0, 0; next }
$1 == "dropped_iterations" { print 2, $2, $3, 0, 0 }"""
KIND_REQUEST, KIND_START, KIND_DROPPED = 0, 1, 2


# Shell functions; the caller sets WORK (a writable directory) and runs, for example:
#   wb_start new; (k6 run ... --out csv=$WORK/samples.csv ...; echo $? > $WORK/k6.exit; wb_release) &
#   wb_pump; wait; wb_done "$(cat $WORK/k6.exit)"
# wb_start makes the FIFO (``new``; else it exists already) and starts its reader; wb_pump prints
# completed parts until the reader has seen the end of the CSV, then the rest; wb_release gives a
# reader whose writer never came (k6 failed before writing) its end of file; wb_done the last line.
def emitter(chunk_rows: int = CHUNK_ROWS, flush_s: float = FLUSH_S) -> str:
    """The shell functions (see above); ``chunk_rows`` bounds a chunk, ``flush_s`` paces the looks."""
    return f"""\
wb_chunk() {{
  rm -f "$WORK/tags"
  awk -F, -v OFS=, -v dict="$WORK/tags" '{COMPACT}' "$1" > "$WORK/chunk.csv"
  rows=$(wc -l < "$WORK/chunk.csv")
  tags=$(tr '\n' '|' < "$WORK/tags" 2>/dev/null | sed 's/|$//')
  gzip -c "$WORK/chunk.csv" > "$WORK/chunk.gz"
  sum=$(sha256sum "$WORK/chunk.gz" | cut -d ' ' -f 1)
  echo "{CHUNK} $wb_seq $rows $sum ${{tags:--}}"
  base64 "$WORK/chunk.gz"
  echo "{CHUNK_END} $wb_seq"
  wb_seq=$((wb_seq + 1))
  wb_rows=$((wb_rows + rows))
  rm -f "$1" "$WORK/chunk.gz" "$WORK/chunk.csv" "$WORK/tags"
}}
wb_parts() {{  # $1 = all: every part; else all but the newest (split may still be writing it)
  set -- "$1" $(ls "$WORK"/part.* 2>/dev/null)
  all="$1"; shift
  while [ "$#" -gt 0 ]; do
    if [ "$#" -eq 1 ] && [ "$all" != all ]; then break; fi
    wb_chunk "$1"
    shift
  done
}}
wb_start() {{
  wb_seq=0; wb_rows=0
  echo "{START} pod=${{HOSTNAME:-unknown}}"
  rm -f "$WORK"/part.* "$WORK/reader.done"
  if [ "$1" = new ]; then rm -f "$WORK/samples.csv"; mkfifo "$WORK/samples.csv"; fi
  (grep -E '{SAMPLE_ROWS}' < "$WORK/samples.csv" | split -l {chunk_rows} -a 6 - "$WORK/part."; \\
   touch "$WORK/reader.done") &
}}
wb_pump() {{
  while [ ! -f "$WORK/reader.done" ]; do
    wb_parts some
    sleep {flush_s:g}
  done
  wb_parts all
}}
wb_release() {{
  exec 3<>"$WORK/samples.csv"
  exec 3>&-
}}
wb_done() {{
  echo "{DONE} chunks=$wb_seq rows=$wb_rows exit=${{1:--}}"
}}
"""


_CHUNK = re.compile(r"^(\d+) (\d+) ([0-9a-f]{64}) (\S+)$")
_DONE = re.compile(r"^chunks=(\d+) rows=(\d+) exit=(-|\d+)$")
_LINE_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT[\d:.]+Z) ")


def _markers(text: str) -> Iterator[tuple[int, int, str, str]]:
    """(line start, line end, marker, the rest) of each protocol line in ``text``: found with
    ``str.find`` — "WB-" cannot occur in base64, so only the markers (and foreign lines naming
    them) are looked at, not the ~35 000 base64 lines of a large pod's log."""
    pos = text.find("WB-")
    while pos >= 0:
        line_start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        prefix = text[line_start:pos]
        if prefix == "" or (prefix.endswith("Z ") and " " not in prefix[:-1]):  # bare, or after a timestamp
            word, _, rest = text[pos:end].rstrip("\r").partition(" ")
            if word in (START, CHUNK, CHUNK_END, DONE):
                yield line_start, end + 1, word, rest.strip()
        pos = text.find("WB-", end)


class ChunkError(BackendError):
    """A load pod's samples are incomplete or damaged; names the pod and what is missing."""


@dataclass
class ChunkReader:
    """One pod's samples, reassembled from its log as it grows; see the module docstring.

    Reads are scanned in bulk (regular expressions over the whole text, not a Python loop per
    line): a 200 000-request pod's log is ~35 000 lines.
    """

    pod: str
    chunks: dict[int, bytes] = field(default_factory=dict)  # seq -> gzip bytes (checksum verified)
    rows: dict[int, int] = field(default_factory=dict)
    tags: dict[int, list[str]] = field(default_factory=dict)  # seq -> the chunk's tag sets, in number order
    done: tuple[int, int, int | None] | None = None  # (chunks, rows, exit status)
    started: bool = False
    last_timestamp: str = ""  # the newest log line taken (RFC 3339 with nanoseconds)
    _pending: str = ""  # text from the start of a chunk whose end has not arrived yet

    def since_time(self) -> str:
        """``sinceTime`` for the next read: the newest line's second (the API takes whole seconds)."""
        return self.last_timestamp.split(".")[0].rstrip("Z") + "Z" if self.last_timestamp else ""

    def feed(self, text: str, timestamps: bool = True) -> None:
        """Take a log read (lines prefixed with their RFC 3339 timestamp when ``timestamps``); lines
        at or before the newest already taken are the overlap of successive reads and are skipped."""
        if text and not text.endswith("\n"):
            text += "\n"  # a read ends with a whole line
        if timestamps:
            text = self._new_lines(text)
        text = self._pending + text
        self._pending = ""
        opened: tuple[int, int, str, str, int, int] | None = None  # seq, rows, digest, tags, header, body
        for begin, end, kind, rest in _markers(text):
            if kind == CHUNK:
                if opened is not None:
                    raise ChunkError(
                        f"pod {self.pod}: chunk {opened[0]} of its samples is cut off (no end line)"
                    )
                head = _CHUNK.match(rest)
                if head is None:
                    raise ChunkError(f"pod {self.pod}: a chunk header of its samples is damaged: {rest!r}")
                found = (int(head.group(1)), int(head.group(2)), head.group(3), head.group(4))
                opened = (*found, begin, end)
            elif kind == CHUNK_END:
                if opened is None or rest != str(opened[0]):
                    continue  # the end of a chunk whose start came in an earlier read (already taken)
                self._close(*opened[:4], text[opened[5] : begin], timestamps)
                opened = None
            elif kind == START:
                self.started = True
            elif (done := _DONE.match(rest)) is not None:
                exit_status = None if done.group(3) == "-" else int(done.group(3))
                self.done = (int(done.group(1)), int(done.group(2)), exit_status)
        if opened is not None:  # keep the unfinished chunk for the next read
            self._pending = text[opened[4] :]

    def _new_lines(self, text: str) -> str:
        """``text`` without the lines already taken (the overlap of reads); remembers the newest time."""
        last = _key(self.last_timestamp) if self.last_timestamp else None
        start = 0
        while last is not None and start < len(text):
            m = _LINE_STAMP.match(text, start)
            end = text.find("\n", start)
            end = len(text) if end < 0 else end + 1
            if m is not None and _key(m.group(1)) > last:
                break
            start = end
        text = text[start:]
        tail = text.rstrip("\n")
        m = _LINE_STAMP.match(tail, tail.rfind("\n") + 1)
        if m is not None:
            self.last_timestamp = m.group(1)
        return text

    def _close(self, seq: int, rows: int, digest: str, tags: str, body: str, timestamps: bool) -> None:
        if seq in self.chunks:
            return  # read twice (overlapping reads): the first copy was verified
        lines = body.split("\n")
        if timestamps:  # "<time> <base64>": the base64 alphabet has no space
            lines = [ln[ln.find(" ") + 1 :] for ln in lines]
        try:
            data = binascii.a2b_base64("".join(lines).strip(), strict_mode=True)
        except binascii.Error as exc:
            raise ChunkError(f"pod {self.pod}: chunk {seq} of its samples is damaged ({exc})") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ChunkError(
                f"pod {self.pod}: chunk {seq} of its samples fails its checksum (the log was altered or cut)"
            )
        self.chunks[seq] = data
        self.rows[seq] = rows
        self.tags[seq] = [] if tags == "-" else tags.split("|")

    def missing(self) -> list[int]:
        """Chunk numbers not (yet) received, up to the announced count (or the highest seen)."""
        top = self.done[0] if self.done else (max(self.chunks) + 1 if self.chunks else 0)
        return [i for i in range(top) if i not in self.chunks]

    def payload(self) -> list[tuple[int, list[str], bytes]]:
        """Every chunk in order as (rows, tag sets, numeric CSV rows); ChunkError when incomplete."""
        where = f"pod {self.pod}"
        if self.done is None:
            got = f"chunks {_ranges(sorted(self.chunks))}" if self.chunks else "no chunk"
            raise ChunkError(
                f"{where}: its log ends before the last chunk of its samples (got {got}; the pod was "
                "stopped, or its log was rotated or cut): the load point is incomplete"
            )
        n, total, _ = self.done
        gaps = self.missing()
        if gaps:
            raise ChunkError(
                f"{where}: chunks {_ranges(gaps)} of its {n} sample chunks are missing from its log (rotated "
                "by the kubelet before they were read?): the load point is incomplete"
            )
        extra = sorted(set(self.chunks) - set(range(n)))
        if extra:
            raise ChunkError(f"{where}: chunks {_ranges(extra)} are beyond the {n} it announced")
        if sum(self.rows.values()) != total:
            raise ChunkError(f"{where}: {sum(self.rows.values())} sample rows arrived, {total} announced")
        return [(self.rows[i], self.tags[i], zlib.decompress(self.chunks[i], wbits=47)) for i in range(n)]

    @property
    def exit_status(self) -> int | None:
        return self.done[2] if self.done else None


def _key(stamp: str) -> tuple[str, str]:
    """Sort key of an RFC 3339 timestamp: (seconds, fraction right-padded) compare as strings."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2, 5, 7-8``."""
    out: list[str] = []
    for n in numbers:
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
