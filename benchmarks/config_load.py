"""How long validating experiments.yaml takes, and how long the CLI takes to answer.

Prints: experiments per file, median load() time, time per experiment, and the wall time of
`workbench validate` (interpreter start + imports + validation), median of repeated runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workbench import config

REPO = Path(__file__).resolve().parents[1]


def _suite(copies: int) -> str:
    base = (REPO / "experiments.yaml").read_text()
    head, body = base.split("experiments:\n", 1)
    blocks = body.split("\n  - name: ")
    out = [head, "experiments:\n"]
    for i in range(copies):
        for j, block in enumerate(blocks):
            text = block if j == 0 else "  - name: " + block
            out.append(text.replace("name: ", f"name: c{i}-", 1).rstrip("\n") + "\n")
    return "".join(out)


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    print("config validation")
    print(f"{'experiments':>12} {'load() ms':>10} {'us/experiment':>14}")
    for copies in (1, 10, 100):
        text = _suite(copies)
        n = len(config.loads(text).experiments)
        t = _median_seconds(lambda text=text: config.loads(text), repeat=5)
        print(f"{n:>12} {t * 1e3:>10.1f} {t / n * 1e6:>14.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "experiments.yaml"
        path.write_text(_suite(1))
        cli = Path(sys.executable).parent / "workbench"
        t = _median_seconds(
            lambda: subprocess.run([str(cli), "validate", str(path)], capture_output=True, check=True),
            repeat=5,
        )
        print(f"workbench validate (CLI wall time, median of 5): {t * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
