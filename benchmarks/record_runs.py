"""Make the run-history sample: stored runs of two "releases" of catalog, run after run.

    python benchmarks/record_runs.py [--repeats 4] [--slow 2] [--mode slices|resampled|live] [--out DIR]

``data/sample/releases/`` holds the two configurations: ``release.yaml`` (catalog v1 and v2
behave the same) and ``release-slow-catalog.yaml`` (both 2 ms slower: catalog v2's +2 ms rolled
out). ``--repeats`` runs of the first and ``--slow`` runs of the second are made, interleaved
(so a drift of the machine does not line up with a release), into ``data/sample/runs/<run-id>/``:
run.json, the A/B's load (Parquet + JSON, ``workbench.load.storage``) and its result.json — what
``workbench history``, ``workbench compare``, the tests and ``notebooks/explore.ipynb`` read.

The load comes from a real recording, ``data/sample/local-aa-1000rps.parquet`` (the local mesh at
1000 rps, catalog v1 and v2 identical at 50/50, 180 s); the slow release's runs get catalog v2's
+2 ms added to every request, and each run's verdict comes from the A/B experiment's own analysis,
replayed on its stored load:

- ``slices`` (default, into data/sample/runs/): each run is its own 12 s slice of the recording,
  30 s apart — the recording's own drift between slices is the runs' run-to-run variation (a p50
  standard deviation of about 1.2 ms at that saturating rate: larger than the +2 ms can beat with
  six runs, so ``workbench compare`` rightly says inconclusive);
- ``resampled`` (into tests/data/runs-resampled/): each run draws 6000 requests at random from the
  whole recording (its real latency distribution and error rate, placed on a 12 s timeline):
  runs that differ by sampling alone, as on a quiet machine, where the +2 ms is plainly worse;
- ``live``: each run a real ``workbench run`` on a fresh local mesh (on a quiet machine: the
  comparison needs latencies that are not dominated by other load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RELEASES = REPO / "data" / "sample" / "releases"
RECORDING = REPO / "data" / "sample" / "local-aa-1000rps.parquet"
OUT = {"slices": REPO / "data" / "sample" / "runs", "live": REPO / "data" / "sample" / "runs",
       "resampled": REPO / "tests" / "data" / "runs-resampled"}  # fmt: skip
RESAMPLED_REQUESTS = 6000
SKIP = ("*.ipynb", "progress.log", "*.tmp")
EXPERIMENT = "catalog-ab"
SLICE_S, GAP_S, ADDED_MS = 12.0, 30.0, 2.0


def live(config: str, work: Path, seed: int, out: Path) -> Path:
    """One real ``workbench run`` of ``config`` in ``work``, copied into data/sample/runs/."""
    before = set((work / "data" / "runs").glob("*")) if (work / "data" / "runs").exists() else set()
    workbench = str(Path(sys.executable).parent / "workbench")
    cmd = [
        workbench,
        "run",
        config,
        "--fail-on",
        "never",
        "--seed",
        str(seed),
        "--reports",
        str(work / "reports"),
    ]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{config}: workbench run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    (run,) = set((work / "data" / "runs").glob("*")) - before
    target = out / run.name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(*SKIP))
    return target


def from_recording(config: str, work: Path, index: int, out: Path, resampled: bool) -> Path:
    """One run made from the real recording (a slice, or requests drawn at random from all of it),
    stored and analysed as ``workbench run`` would."""
    import numpy as np

    from workbench import config as cfgmod
    from workbench.experiments import ab, open_session
    from workbench.load import storage
    from workbench.load.results import LoadResult, sample_meta
    from workbench.suite.runner import _describe_backend, report_json, tool_versions

    samples = pd.read_parquet(RECORDING)
    samples = samples.astype({"latency_ms": "float64", "status": "int64", "variant": "str"})
    start = samples["timestamp"].min() + timedelta(seconds=GAP_S * index)
    end = start + timedelta(seconds=SLICE_S)
    if resampled:
        rng = np.random.default_rng(index)
        part = samples.iloc[rng.integers(0, len(samples), RESAMPLED_REQUESTS)].reset_index(drop=True)
        offsets = np.sort(rng.uniform(0, SLICE_S, RESAMPLED_REQUESTS))
        part["timestamp"] = start + pd.to_timedelta(offsets, unit="s")
    else:
        part = samples[(samples["timestamp"] >= start) & (samples["timestamp"] < end)].reset_index(drop=True)
    slow = "slow" in config
    if slow:
        part["latency_ms"] += ADDED_MS
    run_id = f"{start:%Y%m%d-%H%M%S}-{index:04d}"
    run_dir = out / run_id
    cfg = cfgmod.load(work / config)
    run = {
        "run_id": run_id, "config": f"data/sample/releases/{config}",
        "config_text": (work / config).read_text(encoding="utf-8"), "quick": False,
        "backend": _describe_backend(cfg), "started": start.isoformat(), "finished": end.isoformat(),
        "experiments": [EXPERIMENT], "seed": index, "fail_on": "never", "versions": tool_versions(cfg),
        "source": (f"{RECORDING.name}, {RESAMPLED_REQUESTS} requests drawn at random" if resampled else
                   f"{RECORDING.name}, seconds {GAP_S * index:g}-{GAP_S * index + SLICE_S:g}")
        + (f", +{ADDED_MS:g} ms per request" if slow else ""),
    }  # fmt: skip
    run_dir.mkdir(parents=True)
    report_json(run_dir / "run.json", run)
    meta = sample_meta("k6", RECORDING.relative_to(REPO), part, start, end, SLICE_S)
    meta.update({"rps": 1000.0, "connections": 32, "model": "open", "labels": {"service": "catalog"}})
    storage.save(LoadResult(meta, part), run_dir / EXPERIMENT, "ab")
    open_session(work / config, EXPERIMENT, run_dir, replay=True).execute(ab)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4, help="runs of release.yaml")
    ap.add_argument("--slow", type=int, default=2, help="runs of release-slow-catalog.yaml")
    ap.add_argument("--mode", choices=sorted(OUT), default="slices", help="see the module docstring")
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: by mode)")
    args, _ = ap.parse_known_args(argv)
    out = args.out or OUT[args.mode]
    order = ["release.yaml"] * args.repeats
    for i in range(args.slow):  # spread the slow release's runs among the others
        order.insert(min(len(order), 1 + i * 3), "release-slow-catalog.yaml")
    if args.mode != "live" and len(order) * GAP_S > 180:
        sys.exit(
            f"the recording holds {180 / GAP_S:.0f} slices of {SLICE_S:g} s; ask for fewer runs or --live"
        )
    with tempfile.TemporaryDirectory(prefix="wb-record-runs-") as tmp:
        work = Path(tmp)
        for path in RELEASES.glob("*.yaml"):
            shutil.copy2(path, work / path.name)
        os.environ.setdefault("WORKBENCH_AUDIT_LOG", str(work / "audit.jsonl"))  # not the user's log
        for i, config in enumerate(order):
            if args.mode == "live":
                run = live(config, work, i + 1, out)
            else:
                run = from_recording(config, work, i, out, resampled=args.mode == "resampled")
            result = json.loads((run / EXPERIMENT / "result.json").read_text())
            size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
            print(
                f"{config:<28} -> {run.relative_to(REPO)} ({size / 1024:.0f} KiB): {result['headline']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
