"""Speed and memory of compare() on large arms, against np.sort of the same values in the same run.

    python benchmarks/compare_speed.py [--samples 10000000] [--repeat 3]

Two arms of ``--samples`` requests each over 10 minutes (5-s windows: 120 per arm), heavy enough
that selection matters. Prints the best-of-``--repeat`` time of np.sort on the 2 x samples
latencies and of compare() (p50, p90, p99, error rate: every window's quantiles, the statistics,
Holm), their ratio (goal: compare() <= 1.0 x np.sort), and the peak memory compare() allocates on
top of its inputs (tracemalloc, which sees numpy's buffers) and the process' peak resident size.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import pandas as pd

from workbench.stats.compare import compare


def arms(n: int, seed: int = 0) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        t = np.sort(rng.uniform(0, 600, n))
        out.append(pd.DataFrame({
            "timestamp": pd.to_datetime(1_700_000_000 + t, unit="s", utc=True),
            "latency_ms": rng.lognormal(np.log(2), 0.4, n),
            "status": np.where(rng.uniform(size=n) < 0.001, 503, 200).astype(np.int16),
        }))  # fmt: skip
    return out


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000_000, help="requests per arm")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    a, b = arms(args.samples)
    values = np.concatenate([a["latency_ms"].to_numpy(), b["latency_ms"].to_numpy()])
    sort_s = best_of(args.repeat, lambda: np.sort(values))
    compare_s = best_of(args.repeat, lambda: compare(a, b))
    tracemalloc.start()
    result = compare(a, b)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    inputs = sum(x.memory_usage(deep=True).sum() for x in (a, b)) / 2**20
    print(f"compare() on {args.samples:,} samples per arm ({len(result.windows['a'])} windows per arm)")
    print(f"np.sort of {len(values):,} values: {sort_s:.3f} s   compare(): {compare_s:.3f} s   "
          f"ratio {compare_s / sort_s:.2f}x (goal <= 1.0x)")  # fmt: skip
    print(f"peak memory allocated by compare(): {peak / 2**20:.0f} MiB (inputs: {inputs:.0f} MiB); "
          f"process peak RSS {rss:.0f} MiB")  # fmt: skip
    print(result.to_frame()[["estimate", "ci_low", "ci_high", "verdict"]].to_string())


if __name__ == "__main__":
    main()
