"""Critical-path analysis at scale: 10 M spans (1 M traces) from one Parquet file.

    python benchmarks/traces_scale.py [--traces 1000000] [--seed 1]

Writes a span file of the workbench's schema (``workbench.traces.spans``) shaped like the local
mesh's traces — loadgen client → frontend server → frontend app → two concurrent calls (catalog,
reviews), each through a client and a server span to the callee's app; 10 spans per trace, random
lognormal times, ids as random hex — then, each in a fresh process so peak memory is its own:

1. pyarrow reads the whole file (``pq.read_table``): the reference time;
2. the workbench reads the columns it needs (``critical.analyse_parquet``: one at a time) and
   computes every trace's tree, clamping, critical path, self and exclusive times, per-service
   critical-path self time and the p50/p99 shares.

Prints both times, their ratio and each process's peak RSS (goals: analysis ≤ 60 s, ≤ 4 GiB,
≤ 10 × the pyarrow read).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

# span template: (parent index, service, role, peer, start offset fraction, duration fraction)
TEMPLATE = [
    (-1, "loadgen", "client", "frontend"),
    (0, "frontend", "server", ""),
    (1, "frontend", "app", ""),
    (2, "frontend", "client", "catalog"),
    (3, "catalog", "server", ""),
    (4, "catalog", "app", ""),
    (2, "frontend", "client", "reviews"),
    (6, "reviews", "server", ""),
    (7, "reviews", "app", ""),
    (8, "reviews", "client", "ratings"),
]
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_strings(raw: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    """Random bytes (n, k) → a string array of 2k hex digits each (``""`` where not ``present``),
    built from buffers."""
    n, k = raw.shape
    if present is not None:
        raw = raw[present]
    chars = np.empty((len(raw), 2 * k), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    lengths = (
        np.full(n, 2 * k, dtype=np.int32) if present is None else np.where(present, 2 * k, 0).astype(np.int32)
    )
    offsets = np.r_[0, np.cumsum(lengths, dtype=np.int64)].astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def generate(path: Path, n_traces: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    k = len(TEMPLATE)
    n = n_traces * k
    t0 = 1_700_000_000_000_000 + np.sort(rng.integers(0, 3_600_000_000, n_traces))  # an hour of traffic
    # own times (µs) of the apps, lognormal; proxies add ~150 µs per span
    own = rng.lognormal(np.log(1000), 0.5, size=(n_traces, k)).astype(np.int64)
    start = np.zeros((n_traces, k), dtype=np.int64)
    dur = np.zeros((n_traces, k), dtype=np.int64)
    # leaves first: ratings client (9), catalog app (5) ...
    dur[:, 9] = own[:, 9] // 2 + 150
    dur[:, 8] = own[:, 8] + dur[:, 9] + 20
    dur[:, 7] = dur[:, 8] + 150
    dur[:, 6] = dur[:, 7] + 150
    dur[:, 5] = own[:, 5]
    dur[:, 4] = dur[:, 5] + 150
    dur[:, 3] = dur[:, 4] + 150
    dur[:, 2] = own[:, 2] // 4 + np.maximum(dur[:, 3], dur[:, 6]) + 20
    dur[:, 1] = dur[:, 2] + 150
    dur[:, 0] = dur[:, 1] + 150
    start[:, 0] = t0
    start[:, 1] = t0 + 75
    start[:, 2] = start[:, 1] + 75
    start[:, 3] = start[:, 2] + own[:, 2] // 4
    start[:, 6] = start[:, 3] + rng.integers(0, 30, n_traces)
    start[:, 4] = start[:, 3] + 75
    start[:, 5] = start[:, 4] + 75
    start[:, 7] = start[:, 6] + 75
    start[:, 8] = start[:, 7] + 75
    start[:, 9] = start[:, 8] + own[:, 8]
    trace_raw = np.repeat(rng.integers(0, 256, size=(n_traces, 16), dtype=np.uint8), k, axis=0)
    span_raw = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    parents = np.array([p for p, *_ in TEMPLATE])
    parent_rows = (np.arange(n_traces)[:, None] * k + np.where(parents < 0, 0, parents)[None, :]).ravel()
    span_ids = _hex_strings(span_raw)
    parent_ids = _hex_strings(span_raw[parent_rows], present=np.tile(parents >= 0, n_traces))

    def tiled(values: list[str]) -> pa.Array:
        names = sorted(set(values))
        codes = np.tile(np.array([names.index(v) for v in values], dtype=np.int32), n_traces)
        return pa.DictionaryArray.from_arrays(codes, pa.array(names)).cast(pa.string())

    table = pa.table(
        {
            "trace_id": _hex_strings(trace_raw),
            "span_id": span_ids,
            "parent_id": parent_ids,
            "service": tiled([s for _, s, _, _ in TEMPLATE]),
            "version": tiled(["v1"] * k),
            "role": tiled([r for _, _, r, _ in TEMPLATE]),
            "name": tiled(
                [
                    "ingress" if r == "server" else "egress" if r == "client" else "/"
                    for _, _, r, _ in TEMPLATE
                ]
            ),
            "start_us": start.ravel(),
            "duration_us": dur.ravel(),
            "status": pa.array(np.full(n, 200, dtype=np.int32)),
            "error": pa.array(np.zeros(n, dtype=bool)),
            "upstream_cluster": tiled([f"outbound|{p}|v1" if p else "" for *_, p in TEMPLATE]),
            "peer": tiled([p for *_, p in TEMPLATE]),
            "request_id": tiled([""] * k),
        }
    )
    from workbench.traces.spans import write

    write(table, path)
    return n


CHILD_READ = """
import sys, time, resource, json
import pyarrow.parquet as pq
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
c, t = cpu(), time.perf_counter(); table = pq.read_table(sys.argv[1]); s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": s, "cpu": cpu() - c, "rows": table.num_rows, "peak_mib": peak}))
"""
CHILD_ANALYSE = """
import sys, time, resource, json
from workbench.traces.critical import analyse_parquet
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
c, t = cpu(), time.perf_counter()
cp = analyse_parquet(sys.argv[1])  # reads the columns it needs one at a time
shares = cp.shares((0.5, 0.99))
s = time.perf_counter() - t
ok = bool((cp.traces["cp_us"] == cp.traces["duration_us"]).all())
top = {b: shares[shares["band"] == b].iloc[0]["service"] for b in ("p50", "p99")}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": s, "cpu": cpu() - c, "traces": len(cp.traces), "partition_exact": ok,
                  "top": top, "peak_mib": peak}))
"""


def _child(code: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv if argv is not None else (sys.argv[1:] if __name__ == "__main__" else []))
    with tempfile.TemporaryDirectory(prefix="traces-scale-") as tmp:
        path = Path(tmp) / "spans.parquet"
        t = time.perf_counter()
        n = generate(path, args.traces, args.seed)
        print(f"generated {n:,} spans ({args.traces:,} traces) in {time.perf_counter() - t:.1f} s; "
              f"file {path.stat().st_size / 2**20:.0f} MiB")  # fmt: skip
        read = _child(CHILD_READ, path)
        done = _child(CHILD_ANALYSE, path)
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"pyarrow read_table (all columns): {read['seconds']:.2f} s ({read['cpu']:.2f} s CPU), "
        f"peak {read['peak_mib']:.0f} MiB"
    )
    print(
        "critical-path analysis (read + trees + clamping + paths + self times + shares): "
        f"{done['seconds']:.2f} s ({done['cpu']:.2f} s CPU), "
        f"peak {done['peak_mib']:.0f} MiB, {done['traces']:,} traces; "
        f"self times sum to each trace's duration: {done['partition_exact']}; top at p50/p99: {done['top']}"
    )
    ratio = done["seconds"] / read["seconds"]
    print(f"CPU time ratio analysis / pyarrow read: {done['cpu'] / max(read['cpu'], 1e-9):.1f} x")
    print(f"ratio analysis / pyarrow read: {ratio:.1f} x (goal <= 10 x); "
          f"time {'within' if done['seconds'] <= 60 else 'OVER'} 60 s; "
          f"memory {'within' if done['peak_mib'] <= 4096 else 'OVER'} 4 GiB")  # fmt: skip


if __name__ == "__main__":
    main()
