"""Span trees, clock-skew clamping, critical paths and self times — vectorized over a span table.

**Trees.** A span's parent is the span of the same trace whose ``span_id`` is its ``parent_id``.
A span with a ``parent_id`` that no span of its trace has is an **orphan** (a broken trace: the
parent was not sampled, not exported, or dropped); it is counted per trace and shown, and its
subtree stays out of the trace's critical path. A trace's **root** is its earliest span without a
parent id (else, when it has none — its root was lost — its earliest orphan, and the trace is
marked incomplete). Spans whose ancestry loops (bad input) are counted as ``cycles`` and left out.

**Clock skew.** A child that starts before its parent or ends after it (clocks of two hosts) is
clamped into its parent's interval, top-down, as Jaeger UI does; a child entirely outside its
parent is left out (``outside``). Both are counted and the clamped time is reported.

**Critical path** (Jaeger's algorithm): walk from the root's end backwards; at each span, the
child that finished last (before the current point) is critical, its whole interval is walked the
same way, and the walk continues in the parent from that child's start. Within one parent the
critical children therefore form a chain — the last-finishing child, then the last-finishing
child that ended before that one started, and so on — that does not depend on anything outside
the parent, so it is computed for every parent at once (sort siblings by end; one
``searchsorted`` per child finds its predecessor; the chains are walked in parallel). A span is on
the path when it is in its parent's chain and its parent is on the path. Its **critical-path self
time** is its (clamped) duration minus its critical children's durations; these partition the
root's interval, so they sum to the trace's end-to-end duration exactly.

**Exclusive time** (for localization): a span's duration minus the union of its children's
intervals — the time it was not waiting on any child, whether or not it is on the critical path.

Nothing here loops over traces in Python: 10 M spans take seconds (``benchmarks/traces_scale.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["ANALYSIS_COLUMNS", "CriticalPath", "analyse", "analyse_parquet"]

ANALYSIS_COLUMNS = ("trace_id", "span_id", "parent_id", "service", "start_us", "duration_us")
_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _LUT[_c] = 10 + _i
_VALID = _LUT != 255
_CHUNK = 1 << 20


def _swar(w: np.ndarray) -> np.ndarray:
    """Eight ASCII hex digits per little-endian uint64 word → their 32-bit value (as uint64),
    decoded in-register: a digit's nibble is its low 4 bits, plus 9 for a letter (bit 6 set)."""
    u = np.uint64
    v = (w & u(0x0F0F0F0F0F0F0F0F)) + u(9) * ((w >> u(6)) & u(0x0101010101010101))
    p = ((v & u(0x00FF00FF00FF00FF)) << u(4)) | ((v >> u(8)) & u(0x00FF00FF00FF00FF))  # byte pairs
    q = (p | (p >> u(8))) & u(0x0000FFFF0000FFFF)
    r = (q | (q >> u(16))) & u(0xFFFFFFFF)  # the 4 bytes, first digit pair lowest
    return r.astype(np.uint32).byteswap().astype(np.uint64)


def _chunks(t: pa.Table, name: str) -> list[pa.Array]:
    col = t.column(name)
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return chunks or [pa.array([], type=col.type)]


def _ints(t: pa.Table, name: str) -> np.ndarray:
    parts = [c.to_numpy(zero_copy_only=False).astype(np.int64, copy=False) for c in _chunks(t, name)]
    return np.concatenate(parts)


def _ids(t: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_ids64` chunk by chunk (no copy of the whole column)."""
    parts = [_ids64(c) for c in _chunks(t, name)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _ids64(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 value, present) of 16-hex-digit ids (``""`` → absent), straight from Arrow buffers."""
    n = len(arr)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(pa.string())
    if not (pa.types.is_large_string(arr.type) or pa.types.is_string(arr.type)):
        arr = arr.cast(pa.string())
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    bufs = arr.buffers()
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=width)[arr.offset : arr.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    present = lengths > 0
    values = np.zeros(n, dtype=np.uint64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if np.all((lengths == 0) | (lengths == 16)):
        raw = data[offsets[0] : offsets[-1]]
        valid = all(bool(_VALID[raw[lo : lo + 16 * _CHUNK]].all()) for lo in range(0, len(raw), 16 * _CHUNK))
        if valid:
            words = raw.view("<u8").reshape(-1, 2)  # 8 ASCII hex digits per word
            values[present] = (_swar(words[:, 0]) << np.uint64(32)) | _swar(words[:, 1])
            return values, present
    # ids of other lengths or not hex (spans not normalised by spans.table): exact, row by row
    for i, text in enumerate(arr.to_pylist()):
        if text:
            try:
                values[i] = (
                    int(text, 16) & 0xFFFFFFFFFFFFFFFF if len(text) <= 16 else hash(text) & (2**63 - 1)
                )
            except ValueError:
                values[i] = hash(text) & (2**63 - 1)
    return values, present


def _codes(t: pa.Table, name: str) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (int32, -1 for null) and the distinct values, by hashing in Arrow."""
    col = t.column(name)
    if pa.types.is_dictionary(col.type):  # Parquet's dictionaries may differ by chunk: unify them
        col = col.unify_dictionaries() if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])
    else:
        col = pc.dictionary_encode(col)
        col = col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])
    chunks = col.chunks or [pa.array([], type=pa.dictionary(pa.int32(), pa.string()))]
    codes = np.concatenate(
        [c.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False) for c in chunks]
    )
    return codes, chunks[0].dictionary.to_pylist()


@dataclass
class CriticalPath:
    """Per span: tree, clamped interval, critical-path membership and self times; per trace: root,
    end-to-end duration and data quality; per trace and service: critical-path self time.

    Span arrays are aligned with the input table's rows. ``traces`` has one row per trace
    (``trace_id``, ``root`` row, ``service`` of the root, ``start_us``, ``duration_us`` end to end,
    ``spans``, ``orphans``, ``clamped``, ``outside``, ``cp_us`` the sum of critical-path self
    times, ``complete``). ``by_service``: ``trace`` (row of ``traces``), ``service``, ``self_us``.
    """

    trace: np.ndarray  # trace code per span (row of ``traces``)
    parent: np.ndarray  # parent row, -1 when none (root, orphan, duplicate, in a cycle)
    depth: np.ndarray  # 0 for roots and orphans, -1 when not in any tree (cycle, duplicate)
    start_us: np.ndarray  # clamped into the parent
    end_us: np.ndarray
    on_path: np.ndarray
    self_us: np.ndarray  # critical-path self time (0 off the path)
    exclusive_us: np.ndarray  # duration minus the union of the children's intervals
    in_tree: np.ndarray  # in its trace root's tree (not an orphan's subtree, not clamped away)
    service: np.ndarray  # service code per span
    services: list[str]
    traces: pd.DataFrame
    by_service: pd.DataFrame
    quality: dict[str, int] = field(default_factory=dict)

    def explain_quality(self) -> str:
        """One sentence on broken traces and clock skew (what was counted, clamped, left out)."""
        q = self.quality
        n = len(self.traces)
        parts = [f"{n} traces, {q.get('spans', 0)} spans"]
        if q.get("orphans"):
            parts.append(
                f"{q['orphans']} orphan spans (parent not found) in {q['broken_traces']} broken traces, "
                "left off their critical paths"
            )
        if q.get("rootless_traces"):
            parts.append(f"{q['rootless_traces']} traces without a root span (incomplete)")
        if q.get("clamped"):
            parts.append(
                f"{q['clamped']} spans clamped into their parent for clock skew "
                f"({q['clamped_us'] / 1000:.3g} ms in total, at most {q['max_clamped_us'] / 1000:.3g} ms)"
            )
        if q.get("outside"):
            parts.append(f"{q['outside']} spans entirely outside their parent left out")
        if q.get("duplicates"):
            parts.append(f"{q['duplicates']} duplicate span ids ignored")
        if q.get("cycles"):
            parts.append(f"{q['cycles']} spans in parent cycles ignored")
        if len(parts) == 1:
            parts.append("no orphans, no clock skew")
        return "; ".join(parts) + "."

    def shares(self, quantiles: tuple[float, ...] = (0.5, 0.99), complete_only: bool = True) -> pd.DataFrame:
        """Per service and latency band: its mean share of the end-to-end latency on the critical
        path, and its mean critical-path self time (ms), over the traces in the band.

        The band of p50 holds the traces whose end-to-end duration lies between the 45th and 55th
        percentiles; of any q ≥ 0.9 the traces at or above the q-quantile (the tail; at least 5
        traces); of other q, those within ±5 points (at least the 5 nearest). Shares of one band
        sum to 1.
        """
        t = self.traces[self.traces["complete"]] if complete_only else self.traces
        t = t[t["duration_us"] > 0]
        if t.empty:
            return pd.DataFrame(columns=["band", "service", "share", "self_ms", "traces", "e2e_ms"])
        d = t["duration_us"].to_numpy(dtype=float)
        rows = []
        bs = self.by_service
        for q in quantiles:
            if q >= 0.9:
                cut = np.quantile(d, q)
                chosen = t.index[d >= cut]
                if len(chosen) < 5:
                    chosen = t.index[np.argsort(d)[-5:]]
            else:
                lo, hi = np.quantile(d, max(0.0, q - 0.05)), np.quantile(d, min(1.0, q + 0.05))
                chosen = t.index[(d >= lo) & (d <= hi)]
                if len(chosen) < min(5, len(d)):  # few traces: the ones nearest the quantile
                    chosen = t.index[
                        np.argsort(np.abs(d - np.quantile(d, q)), kind="stable")[: min(5, len(d))]
                    ]
            part = bs[bs["trace"].isin(chosen)]
            e2e = self.traces.loc[chosen, "duration_us"].astype(float)
            share = part["self_us"] / e2e.reindex(part["trace"]).to_numpy()
            per = pd.DataFrame(
                {"service": part["service"], "share": share, "self_ms": part["self_us"] / 1000.0}
            ).groupby("service").sum() / len(chosen)
            label = f"p{100 * q:g}"
            for service, r in per.iterrows():
                rows.append(
                    {"band": label, "service": service, "share": r["share"], "self_ms": r["self_ms"],
                     "traces": len(chosen), "e2e_ms": float(e2e.mean()) / 1000.0}
                )  # fmt: skip
        return pd.DataFrame(rows).sort_values(["band", "share"], ascending=[True, False], ignore_index=True)

    def path_of(self, trace_row: int) -> np.ndarray:
        """Rows of the spans on one trace's critical path, in start order."""
        rows = np.flatnonzero((self.trace == trace_row) & self.on_path)
        return rows[np.argsort(self.start_us[rows], kind="stable")]


def analyse(spans: pa.Table | pd.DataFrame) -> CriticalPath:
    """Trees, clamping, critical paths and self times of every trace in ``spans`` (see the module
    docstring). Needs the columns :data:`ANALYSIS_COLUMNS`; ValueError names a missing one."""
    if isinstance(spans, pd.DataFrame):
        spans = pa.Table.from_pandas(spans, preserve_index=False)
    missing = [c for c in ANALYSIS_COLUMNS if c not in spans.column_names]
    if missing:
        raise ValueError(
            f"spans lack the column(s) {', '.join(missing)} (need {', '.join(ANALYSIS_COLUMNS)})"
        )
    return _analyse(lambda name: spans.select([name]))


def analyse_parquet(path: str | Path) -> CriticalPath:
    """:func:`analyse` of a Parquet span file, read one column at a time and each column dropped
    once it is reduced to numbers, so the file's strings are never all in memory at once."""
    import pyarrow.parquet as pq

    missing = [c for c in ANALYSIS_COLUMNS if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{path}: no span table: missing column(s) {', '.join(missing)}")
    f = pq.ParquetFile(path, read_dictionary=["service"])
    return _analyse(lambda name: f.read(columns=[name]))


def _analyse(column: Any) -> CriticalPath:
    """The analysis, from ``column(name)`` → a one-column table (read when asked, then dropped)."""
    start = _ints(column("start_us"), "start_us")
    n = len(start)
    dur = np.maximum(_ints(column("duration_us"), "duration_us"), 0)
    end = start + dur
    trace, trace_ids = _codes(column("trace_id"), "trace_id")
    service, services = _codes(column("service"), "service")
    sid, _ = _ids(column("span_id"), "span_id")
    pid, has_parent = _ids(column("parent_id"), "parent_id")
    quality: dict[str, int] = {"spans": n}

    parent, duplicate = _link(trace, sid, pid, has_parent)
    del sid, pid
    quality["duplicates"] = int(duplicate.sum())
    orphan = has_parent & (parent < 0) & ~duplicate
    quality["orphans"] = int(orphan.sum())

    depth, levels = _levels(parent, ~duplicate)
    quality["cycles"] = int(((depth < 0) & ~duplicate).sum())

    # Clamp top-down into the parent's clamped interval; drop children entirely outside it.
    cs, ce = start.copy(), end.copy()
    kept = depth >= 0
    clamped_by = np.zeros(n, dtype=np.int64)
    for rows in levels[1:]:
        p = parent[rows]
        ok = kept[p]
        ps, pe = cs[p], ce[p]
        outside = (start[rows] > pe) | (end[rows] < ps)
        kept[rows] = ok & ~outside
        ns, ne = np.clip(start[rows], ps, pe), np.clip(end[rows], ps, pe)
        clamped_by[rows] = (ns - start[rows]) + (end[rows] - ne)
        cs[rows], ce[rows] = ns, ne
    clamped = kept & (clamped_by > 0)
    quality["clamped"] = int(clamped.sum())
    quality["clamped_us"] = int(clamped_by[clamped].sum())
    quality["max_clamped_us"] = int(clamped_by[clamped].max()) if clamped.any() else 0
    del clamped_by, end
    quality["outside"] = int(((depth > 0) & ~kept & kept[np.maximum(parent, 0)]).sum())

    # Roots: per trace the earliest span without a parent id (else the earliest orphan).
    n_traces = len(trace_ids)
    top = kept & (depth == 0)
    true_root = top & ~has_parent
    root = np.full(n_traces, -1, dtype=np.int64)
    for candidates in (top & ~true_root, true_root):  # true roots replace orphans
        rows = np.flatnonzero(candidates)
        rows = rows[np.lexsort((-dur[rows], start[rows], trace[rows]))]  # by trace: earliest, longest
        first = np.unique(trace[rows], return_index=True)[1]
        root[trace[rows[first]]] = rows[first]
    has_true_root = np.zeros(n_traces, dtype=bool)
    has_true_root[trace[true_root]] = True
    quality["rootless_traces"] = int((~has_true_root & (root >= 0)).sum())

    # In the root's tree: top-down from the roots.
    in_tree = np.zeros(n, dtype=bool)
    in_tree[root[root >= 0]] = True
    for rows in levels[1:]:
        in_tree[rows] = kept[rows] & in_tree[parent[rows]]

    child = kept & (parent >= 0)
    chain = _chains(np.flatnonzero(child), parent, cs, ce)
    on_path = np.zeros(n, dtype=bool)
    on_path[root[root >= 0]] = True
    for rows in levels[1:]:
        on_path[rows] = chain[rows] & on_path[parent[rows]] & kept[rows]
    cdur = ce - cs
    crit = np.flatnonzero(on_path & (parent >= 0))
    covered = np.bincount(parent[crit], weights=cdur[crit], minlength=n).astype(np.int64)
    self_us = np.where(on_path, cdur - covered, 0)
    exclusive = cdur - _union_of_children(np.flatnonzero(child), parent, cs, ce, n)
    exclusive = np.where(kept, exclusive, 0)

    # Per trace
    valid = root >= 0
    r = np.where(valid, root, 0)
    counts = np.bincount(trace, minlength=n_traces)
    orphans_t = np.bincount(trace[orphan], minlength=n_traces)
    traces = pd.DataFrame(
        {
            "trace_id": trace_ids,
            "root": np.where(valid, root, -1),
            "service": np.asarray(services, dtype=object)[service[r]] if n else [],
            "start_us": np.where(valid, start[r], 0),
            "duration_us": np.where(valid, cdur[r], 0),
            "spans": counts,
            "orphans": orphans_t,
            "clamped": np.bincount(trace[clamped], minlength=n_traces),
            "outside": np.bincount(trace[(depth > 0) & ~kept], minlength=n_traces),
            "cp_us": np.bincount(trace[on_path], weights=self_us[on_path], minlength=n_traces).astype(
                np.int64
            ),
            "complete": valid & has_true_root & (orphans_t == 0),
        }
    )
    quality["broken_traces"] = int((orphans_t > 0).sum())
    quality["traces"] = n_traces

    # Per trace and service, on the path
    rows = np.flatnonzero(on_path)
    n_services = max(len(services), 1)
    key = trace[rows].astype(np.int64) * n_services + np.maximum(service[rows], 0)
    uniq, inv = np.unique(key, return_inverse=True)
    totals = np.bincount(inv, weights=self_us[rows]).astype(np.int64)
    by_service = pd.DataFrame(
        {
            "trace": uniq // n_services,
            "service": pd.Categorical.from_codes(uniq % n_services, categories=services or ["unknown"]),
            "self_us": totals,
        }
    )
    return CriticalPath(
        trace, parent, depth, cs, ce, on_path, self_us, exclusive, in_tree, service, services, traces,
        by_service, quality,
    )  # fmt: skip


def _link(
    trace: np.ndarray, sid: np.ndarray, pid: np.ndarray, has_parent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Parent row of every span (-1: none found) and which spans repeat an earlier (trace, span id)."""
    n = len(sid)
    parent = np.full(n, -1, dtype=np.int32)
    duplicate = np.zeros(n, dtype=bool)
    if n == 0:
        return parent, duplicate
    order = np.argsort(sid)
    sorted_ids = sid[order]
    if not np.any(sorted_ids[1:] == sorted_ids[:-1]):  # span ids unique across the table: one search
        rows = np.flatnonzero(has_parent)
        asked = pid[rows]
        by_id = np.argsort(asked)  # sorted needles: searchsorted walks the ids once, cache-friendly
        rows, asked = rows[by_id], asked[by_id]
        pos = np.minimum(np.searchsorted(sorted_ids, asked), n - 1)
        found = sorted_ids[pos] == asked
        cand = order[pos]
        same = found & (trace[cand] == trace[rows]) & (cand != rows)
        parent[rows[same]] = cand[same]
        return parent, duplicate
    # Some span ids repeat (across traces, or within one: bad input): key on (trace, span id).
    frame = pd.DataFrame({"trace": trace, "sid": sid, "row": np.arange(n)})
    first = frame.drop_duplicates(["trace", "sid"], keep="first")
    duplicate[np.setdiff1d(np.arange(n), first["row"].to_numpy())] = True
    rows = np.flatnonzero(has_parent & ~duplicate)
    asked = pd.DataFrame({"trace": trace[rows], "sid": pid[rows], "child": rows})
    hit = asked.merge(first, on=["trace", "sid"], how="inner")
    hit = hit[hit["row"] != hit["child"]]
    parent[hit["child"].to_numpy()] = hit["row"].to_numpy()
    return parent, duplicate


def _levels(parent: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Depth of every span (-1 when unreachable: a cycle or unusable) and the rows of each level."""
    n = len(parent)
    depth = np.full(n, -1, dtype=np.int32)
    level = np.flatnonzero(usable & (parent < 0))
    depth[level] = 0
    levels = [level]
    rest = np.flatnonzero(usable & (parent >= 0))
    k = 0
    while len(rest):
        ready = depth[parent[rest]] == k
        if not ready.any():
            break  # what is left hangs off a cycle
        k += 1
        level = rest[ready]
        depth[level] = k
        levels.append(level)
        rest = rest[~ready]
    return depth, levels


def _group_keys(
    rows: np.ndarray, parent: np.ndarray, cs: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, int]:
    """``parent * M + (value - parent start)``: sorts children by parent, then by ``value``."""
    p = parent[rows].astype(np.int64)
    rel = values[rows] - cs[p]
    m = int(rel.max()) + 1 if len(rel) else 1
    if len(p) and int(p.max()) * m > 2**62:
        raise ValueError("spans too long to analyse together (parent index × duration overflows 64 bits)")
    return p * m + rel, m


def _chains(rows: np.ndarray, parent: np.ndarray, cs: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """Which child spans are critical in their parent (see the module docstring)."""
    n = len(parent)
    chain = np.zeros(n, dtype=bool)
    if len(rows) == 0:
        return chain
    key_end, m = _group_keys(rows, parent, cs, ce)
    # by key; among equal ends the later row first, so the last one taken is the first span (Jaeger UI)
    order = len(rows) - 1 - np.argsort(key_end[::-1], kind="stable")
    srows, skeys = rows[order], key_end[order]
    sparent = parent[srows].astype(np.int64)
    # predecessor: the sibling with the latest end <= this child's start, sorted before it
    qkey = sparent * m + (cs[srows] - cs[sparent])
    pos = np.searchsorted(skeys, qkey, side="right") - 1
    pos = np.minimum(pos, np.arange(len(srows)) - 1)
    ok = pos >= 0
    ok[ok] = sparent[pos[ok]] == sparent[ok]
    pred = np.where(ok, pos, -1)
    last = np.flatnonzero(np.r_[sparent[1:] != sparent[:-1], True])  # each parent's last-finishing child
    cur = last
    marked = np.zeros(len(srows), dtype=bool)
    while len(cur):
        marked[cur] = True
        cur = pred[cur]
        cur = cur[cur >= 0]
        cur = cur[~marked[cur]]
    chain[srows[marked]] = True
    return chain


def _union_of_children(
    rows: np.ndarray, parent: np.ndarray, cs: np.ndarray, ce: np.ndarray, n: int
) -> np.ndarray:
    """Per span, the length of the union of its children's (clamped) intervals."""
    if len(rows) == 0:
        return np.zeros(n, dtype=np.int64)
    key_start, m = _group_keys(rows, parent, cs, cs)
    order = np.argsort(key_start, kind="stable")
    srows = rows[order]
    p = parent[srows].astype(np.int64)
    rel_s, rel_e = cs[srows] - cs[p], ce[srows] - cs[p]
    m = max(m, int(rel_e.max()) + 1)
    running = np.maximum.accumulate(p * m + rel_e)  # per parent: latest end so far
    prev = np.r_[-1, running[:-1]] - p * m
    prev = np.where(np.r_[True, p[1:] != p[:-1]], -1, prev)  # first child of a parent: nothing before
    add = np.maximum(0, rel_e - np.maximum(rel_s, prev))
    return np.bincount(p, weights=add, minlength=n).astype(np.int64)
