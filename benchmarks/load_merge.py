"""Merging distributed load: 50 k6 pods × 200 000 requests each, from their logs to one LoadResult.

    python benchmarks/load_merge.py [--pods 50] [--requests 200000] [--distinct 5]

Each pod's log is made by the real chunk emitter (``chunks.emitter``, run with ``sh`` over a k6 CSV
fed through its FIFO, as in the pod), with the kubelet's ``timestamps=true`` prefix on every line;
``--distinct`` different logs are cycled over the pods (generating 50 costs minutes and measures
nothing more). A fresh process then does what ``LoadRun`` does once a run completes: every pod's
log through a ``ChunkReader`` (checksums verified), every pod's CSV parsed (in parallel) and all
samples merged and sorted. Prints the wall time and the process's peak memory (RSS, imports
included) against the targets: ≤ 10 s and ≤ 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

TARGET_S, TARGET_GIB = 10.0, 2.0
HEADER = "metric_name,timestamp,metric_value,scenario,status,extra_tags,metadata"


def k6_csv(requests: int, seed: int, start_us: int) -> str:
    """A k6 CSV of ``requests`` measured requests (lognormal latencies, two versions), as k6 writes it."""
    rng = np.random.default_rng(seed)
    ts = start_us + np.cumsum(rng.integers(100, 2000, requests))
    lat = np.exp(rng.normal(np.log(12.0), 0.6, requests))
    version = np.where(rng.random(requests) < 0.5, "v1", "v2")
    status = np.where(rng.random(requests) < 0.002, 503, 200)
    rows = [HEADER, f"workbench_scenario_start,{start_us},{start_us // 1000},measure,,,"]
    columns = zip(ts.tolist(), lat.tolist(), status.tolist(), version.tolist(), strict=True)
    rows += [f"workbench_req,{t},{x:.6f},measure,{s},tagged=0&version={v}," for t, x, s, v in columns]
    rows.append(f"dropped_iterations,{int(ts[-1])},3.000000,measure,,,")
    return "\n".join(rows) + "\n"


def pod_log(csv_path: Path, work: Path, pod: str) -> str:
    """The real emitter's output for one pod, each line prefixed as the kubelet's timestamps=true does."""
    from workbench.backends.kubernetes.chunks import emitter

    work.mkdir(parents=True, exist_ok=True)
    program = f"""WORK="{work}"
{emitter(flush_s=0.2)}
wb_start new
(cat "{csv_path}" > "$WORK/samples.csv"; echo 0 > "$WORK/k6.exit"; wb_release) &
wb_pump
wait
wb_done 0
"""
    out = subprocess.run(["sh", "-c", program], capture_output=True, text=True, check=True,
                         env={**os.environ, "HOSTNAME": pod}).stdout  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return "".join(f"{now}.{i:09d}Z {line}\n" for i, line in enumerate(out.splitlines()))


def measure(paths: list[str], pods: int) -> dict[str, float]:
    """In this (fresh) process: every pod's log read, checked, parsed and merged."""
    import resource

    import pyarrow.csv  # noqa: F401  (warm: the workbench has it loaded after its first load point)

    from workbench.backends.base import LoadTarget
    from workbench.backends.kubernetes.chunks import ChunkReader
    from workbench.backends.kubernetes.loadjob import merge_pod_results, parse_pods
    from workbench.load.results import LoadProfile

    texts = [Path(p).read_text() for p in paths]
    began = time.perf_counter()
    readers = []
    for i in range(pods):
        reader = ChunkReader(f"wb-k6-bench-{i}-x")
        reader.feed(texts[i % len(texts)])
        readers.append((i, reader))
    read_s = time.perf_counter() - began
    results = parse_pods(readers)
    profile = LoadProfile(rps=10000, connections=500, duration_s=60)
    merged = merge_pod_results(results, profile, LoadTarget(("http://reviews:9080",)), "grafana/k6:1.1.0")
    total = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"requests": float(merged.count), "seconds": total, "read_s": read_s, "peak_bytes": float(peak)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--distinct", type=int, default=5)
    args = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="wb-merge-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = []
        for i in range(min(args.distinct, args.pods)):
            csv_path = root / f"pod{i}.csv"
            csv_path.write_text(k6_csv(args.requests, seed=i, start_us=1_700_000_000_000_000 + i))
            log = root / f"pod{i}.log"
            log.write_text(pod_log(csv_path, root / f"work{i}", f"wb-k6-bench-{i}-x"))
            paths.append(str(log))
        made = time.perf_counter() - t0
        size = sum(Path(p).stat().st_size for p in paths) / len(paths)
        code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import load_merge; "
                f"print(json.dumps(load_merge.measure({paths!r}, {args.pods})))")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        got = json.loads(done.stdout.strip().splitlines()[-1])
    expected = args.pods * args.requests
    gib = got["peak_bytes"] / 2**30
    per_request = size / args.requests
    print(f"logs: {args.distinct} distinct pod logs by the real emitter in {made:.1f} s, {size / 2**20:.1f} "
          f"MiB each ({per_request:.1f} bytes per request, timestamps included)")  # fmt: skip
    print(f"merged {int(got['requests']):,} requests from {args.pods} pods (expected {expected:,}): "
          f"{got['seconds']:.2f} s (reading and checking chunks {got['read_s']:.2f} s), "
          f"{got['requests'] / got['seconds'] / 1e6:.2f} M requests/s")  # fmt: skip
    print(f"peak memory of the merging process: {gib:.2f} GiB")
    met = got["seconds"] <= TARGET_S and gib <= TARGET_GIB and got["requests"] == expected
    print(
        f"against the targets: time {got['seconds'] / TARGET_S:.2f} x of {TARGET_S:g} s, "
        f"memory {gib / TARGET_GIB:.2f} x of {TARGET_GIB:g} GiB -> {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
