"""Suite wall time: ``workbench run experiments.yaml --quick`` (goal: at most 3 min; full run 10 min).

    python benchmarks/quick_suite.py [--full] [--config experiments.yaml]

Runs the suite once in a temporary directory (its data and reports are thrown away), as
``make test`` does, and prints the wall time of the whole command, then per experiment its
wall time, the time its session measured and its verdict. The first experiment's wall time includes
the local mesh's start (Prometheus scrapes only ~5 s after it starts); the rest of each is the
notebook around the session (kernel reset, figures, the executed notebook written, its HTML).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GOAL_S = {"quick": 180.0, "full": 600.0}


def _copy(config: Path, into: Path) -> Path:
    """The suite with its relative fortio paths made absolute, so it runs from ``into``."""
    doc = yaml.safe_load(config.read_text())
    for exp in doc["experiments"]:
        if "fortio_results" in exp:
            exp["fortio_results"] = [str((config.parent / p).resolve()) for p in exp["fortio_results"]]
    path = into / config.name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full suite instead of --quick")
    parser.add_argument("--config", type=Path, default=REPO / "experiments.yaml")
    args = parser.parse_args([] if argv is None else argv)
    workbench = Path(sys.executable).parent / "workbench"
    root = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    try:
        config = _copy(args.config.resolve(), root)
        cmd = [str(workbench), "run", str(config), "--fail-on", "never", "--reports", str(root / "reports")]
        cmd += [] if args.full else ["--quick"]
        t0, started = time.monotonic(), time.time()
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.exit(f"workbench run exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        (run_dir,) = (root / "data" / "runs").iterdir()
        kind = "full" if args.full else "quick"
        print(f"{kind} suite: {wall:.0f} s wall ({wall / 60:.2f} min; goal <= {GOAL_S[kind]:.0f} s)")
        print(f"{'experiment':<22} {'wall s':>7} {'session s':>9}  verdict")
        previous = started  # each executed notebook is written when it ends: wall = the gap between
        for name in json.loads((run_dir / "run.json").read_text())["experiments"]:
            result = json.loads((run_dir / name / "result.json").read_text())
            ended = (run_dir / f"{name}.ipynb").stat().st_mtime
            session = result.get("duration_s") or 0.0
            print(f"{name:<22} {ended - previous:>7.1f} {session:>9.1f}  {result['verdict']}")
            previous = ended
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
