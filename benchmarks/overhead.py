"""Overhead figures a team can trust: an A/A mesh comparison, and repeated runs of the default one.

    python benchmarks/overhead.py [--aa-runs 20] [--repeats 3] [--skip-aa] [--skip-repeats]

1. **A/A**: the same mode (``both``) as both arms, each trial on a fresh mesh without the
   workbench's telemetry, interleaved trials as ``mesh_compare`` runs them, analysed by the same
   ``trial_rows`` (trials as the replicates, intervals against the default margins). A method a
   team can trust says ``worse`` rarely: must hold, not ``worse`` in >= 19 of 20 runs.
2. **Repeated runs**: the default suite's ``sidecar-overhead`` (experiments.yaml) run ``--repeats``
   times in full, as ``workbench run`` runs it. Each run's interval must cover the median of the
   runs' estimates — for the headline's own time per traversal and for the end-to-end Δp50 —
   which the old window-pooled intervals did not (three runs whose intervals excluded each
   other's estimates).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.backends.local import LocalMesh
from workbench.experiments import mesh_compare, open_session
from workbench.load.sweep import SweepSpec, iter_results, run_sweep
from workbench.stats.compare import Margin

REPO = Path(__file__).resolve().parents[1]
AA_MODE = "both"


def aa_run(store: Path, rps: float, trials: int, duration: float, seed: int) -> pd.DataFrame:
    """One A/A comparison: arms A and B are both fresh ``both`` meshes; the overhead rows."""
    spec = SweepSpec(service="frontend", rps=(rps,), connections=(16,), modes=("A", "B"), repetitions=trials,
                     duration_s=duration, warmup_s=1.0, seed=seed)  # fmt: skip
    run_sweep(spec, lambda arm: LocalMesh(mode=AA_MODE, telemetry=False, wait_for_metrics=False), store,
              progress=False)  # fmt: skip
    arms: dict[tuple[str, int], list] = defaultdict(list)
    for result in iter_results(store):
        arms[(str(result.meta["mode"]), int(result.meta["connections"]))].append(result)
    points = mesh_compare.trial_points(dict(arms))
    return pd.DataFrame(mesh_compare.trial_rows(points, "A", ["A", "B"], Margin(), alpha=0.05))


def aa(runs: int, rps: float, trials: int, duration: float) -> None:
    rows = []
    for i in range(runs):
        store = Path(tempfile.mkdtemp(prefix="aa-"))
        try:
            t0 = time.monotonic()
            frame = aa_run(store, rps, trials, duration, seed=i)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        verdicts = dict(zip(frame["metric"], frame["verdict"], strict=True))
        p50 = frame[frame["metric"] == "p50"].iloc[0]
        rows.append({"run": i + 1, **{f"{m} verdict": v for m, v in verdicts.items()},
                     "Δp50 ms": p50["estimate"], "ci": f"[{p50['ci_low']:+.2f}, {p50['ci_high']:+.2f}]",
                     "worse": "worse" in verdicts.values(), "seconds": time.monotonic() - t0})  # fmt: skip
        print(f"A/A {i + 1}/{runs}: {verdicts}", flush=True)
    table = pd.DataFrame(rows)
    print(
        f"\nA/A mesh comparison ({AA_MODE} vs {AA_MODE}, fresh meshes, {trials} interleaved trials per "
        f"arm, {rps:g} rps x 16 connections, {duration:g} s points):"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    not_worse = int((~table["worse"]).sum())
    print(f"not worse in {not_worse} of {runs} runs (must hold: >= {runs - max(1, runs // 20)} of {runs})")


def repeats(n: int) -> None:
    config = REPO / "experiments.yaml"
    results = []
    for i in range(n):
        run_dir = Path(tempfile.mkdtemp(prefix="overhead-run-"))
        try:
            s = open_session(config, "sidecar-overhead", run_dir=run_dir)
            try:
                t0 = time.monotonic()
                result = s.execute(mesh_compare)
            finally:
                s.close()
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        print(
            f"run {i + 1}/{n} ({time.monotonic() - t0:.0f} s): {result.verdict}: {result.headline}",
            flush=True,
        )
        results.append(result)
    mode = mesh_compare.slowest(list(results[0].details["arms"]))
    conns = max(int(k.rsplit("_c", 1)[1]) for k in results[0].figures if k.startswith(f"delta_p50_{mode}_c")
                and not k.endswith("_ci"))  # fmt: skip
    figures = {"own time per traversal p50 (µs)": f"own_p50_us_{mode}",
               f"end-to-end Δp50 (ms) at {conns} connections": f"delta_p50_{mode}_c{conns}"}  # fmt: skip
    for name, key in figures.items():
        estimates = [float(r.figures.get(key, np.nan)) for r in results]
        median = float(np.median(estimates))
        rows = []
        for i, r in enumerate(results):
            lo, hi = r.figures.get(f"{key}_ci") or [np.nan, np.nan]
            rows.append({"run": i + 1, "verdict": r.verdict, "estimate": estimates[i], "ci_low": lo,
                         "ci_high": hi, "covers the median": bool(lo <= median <= hi)})  # fmt: skip
        table = pd.DataFrame(rows)
        print(f"\n{mode}: {name}; median of the {n} estimates {median:.3f}")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"each interval covers the median: {bool(table['covers the median'].all())} "
              f"({int(table['covers the median'].sum())} of {n})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--aa-runs", type=int, default=20)
    ap.add_argument("--aa-rps", type=float, default=100.0, help="well below saturation of the demo chain")
    ap.add_argument("--aa-trials", type=int, default=3)
    ap.add_argument("--aa-duration", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3, help="full runs of the default sidecar-overhead")
    ap.add_argument("--skip-aa", action="store_true")
    ap.add_argument("--skip-repeats", action="store_true")
    args = ap.parse_args([] if argv is None and __name__ != "__main__" else argv)
    if not args.skip_repeats:
        repeats(args.repeats)
    if not args.skip_aa:
        aa(args.aa_runs, args.aa_rps, args.aa_trials, args.aa_duration)


if __name__ == "__main__":
    main()
