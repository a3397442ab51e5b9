"""How long a run's pages take to open in Chromium from disk, and how big they are.

    python benchmarks/report_open.py [--run REPORTS/RUN_ID] [--repeat 3]

Opens the run's index and every report (default: ``reports/latest``, what ``make demo`` made) in
headless Chromium, ``--repeat`` times each, and prints per page: its size, the median time from
navigation to every figure drawn, and the figures drawn. The targets: each page opens in < 3 s and
a report stays <= 6 MB; the last lines give the slowest and the largest as ratios of them.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from workbench.report.browser import Chromium, run_pages

REPO = Path(__file__).resolve().parents[1]
OPEN_TARGET_S = 3.0
SIZE_LIMIT = 6 * 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(REPO / "reports" / "latest"), help="a run's reports folder")
    ap.add_argument("--repeat", type=int, default=3)
    args, _ = ap.parse_known_args(argv)  # benchmarks/run.py passes its own arguments on
    pages = run_pages(Path(args.run))
    if not pages:
        raise SystemExit(f"{args.run}: no pages (run 'make demo' or 'workbench run' first)")
    slowest, largest = 0.0, 0
    with Chromium() as browser:
        print(f"Chromium {browser.version}, {Path(args.run).resolve().name}, median of {args.repeat} opens")
        for page in pages:
            times, drawn = [], 0
            for _ in range(args.repeat):
                check = browser.check(page)
                times.append(check.open_s)
                drawn = check.figures_drawn
            median = statistics.median(times)
            size = page.stat().st_size
            slowest, largest = max(slowest, median), max(largest, size)
            print(f"  {page.name:<28} {size / 2**20:5.2f} MiB  {median:5.2f} s  {drawn:>2} figures")
    print(f"slowest page: {slowest:.2f} s = {slowest / OPEN_TARGET_S:.2f} x the {OPEN_TARGET_S:g} s target")
    print(f"largest page: {largest / 2**20:.2f} MiB = {largest / SIZE_LIMIT:.2f} x the 6 MiB limit")


if __name__ == "__main__":
    main()
