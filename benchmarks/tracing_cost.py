"""What turning tracing on costs on the local mesh: capacity and p50, tracing off vs on (100 %).

    python benchmarks/tracing_cost.py [--reps 2] [--rps 100] [--seconds 8]

Mode both (client and server sidecars). Arms alternate (off, on, on, off, ... so drift hits both
alike); each arm is a fresh mesh: tracing off (no tracer, no receiver; apps still propagate
context) or on (Envoy's OpenTelemetry tracer on every sidecar, the apps' own spans, the loopback
receiver decoding and writing Parquet). Per arm: p50 and p99 at a fixed open-model rate below
saturation, then capacity — the rate achieved by a closed model with 32 connections — and its p50.
Prints each run, then the means and the on/off ratios (what the user pays for traces).
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from workbench.backends.local import LocalMesh
from workbench.load.results import LoadProfile


def _arm(tracing: float | None, args: argparse.Namespace) -> dict:
    with LocalMesh(mode="both", tracing=tracing, wait_for_metrics=False) as mesh:
        mesh.run_load("frontend", LoadProfile(rps=args.rps, connections=16, duration_s=2))  # warm-up
        fixed = mesh.run_load(
            "frontend", LoadProfile(rps=args.rps, connections=16, duration_s=args.seconds)
        ).summary()
        cap = mesh.run_load(
            "frontend", LoadProfile(rps=None, connections=32, duration_s=args.seconds, model="closed")
        ).summary()
        lost = 0
        if tracing is not None:
            time.sleep(2.5)
            stats = mesh.trace_stats()
            lost = stats["dropped_spans"]
    return {
        "tracing": "on" if tracing is not None else "off",
        "p50_ms": fixed["p50"],
        "p99_ms": fixed["p99"],
        "capacity_rps": cap["actual_rps"],
        "p50_at_capacity_ms": cap["p50"],
        "errors_pct": cap["error_pct"],
        "dropped_spans": lost,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rps", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args(argv if argv is not None else (sys.argv[1:] if __name__ == "__main__" else []))
    rows = []
    started = time.time()
    for rep in range(args.reps):
        for tracing in (None, 100.0) if rep % 2 == 0 else (100.0, None):
            row = _arm(tracing, args)
            rows.append(row)
            print(
                f"rep {rep + 1} tracing {row['tracing']:3s}: p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms at {args.rps:g} rps; capacity {row['capacity_rps']:.0f} rps "
                f"(p50 {row['p50_at_capacity_ms']:.2f} "
                f"ms, {row['errors_pct']:.2f} % errors); spans dropped {row['dropped_spans']}",
                flush=True,
            )
    frame = pd.DataFrame(rows).groupby("tracing").mean(numeric_only=True)
    off, on = frame.loc["off"], frame.loc["on"]
    print(f"\nmode both, {args.reps} rep(s) per arm, {args.seconds:g} s per point")
    print(frame.round(2).to_string())
    print(
        f"tracing on / off: p50 at {args.rps:g} rps x{on['p50_ms'] / off['p50_ms']:.2f} "
        f"({on['p50_ms'] - off['p50_ms']:+.2f} ms), p99 x{on['p99_ms'] / off['p99_ms']:.2f}, "
        f"capacity x{on['capacity_rps'] / off['capacity_rps']:.2f} "
        f"({on['capacity_rps'] - off['capacity_rps']:+.0f} rps), p50 at capacity "
        f"x{on['p50_at_capacity_ms'] / off['p50_at_capacity_ms']:.2f}"
    )
    print(f"benchmark wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
