"""Calibration of the statistics against the judges users would otherwise pick, and speed.

    python benchmarks/calibration.py [--replays 200] [--skip-speed]

Prints, for synthetic heavy-tailed bursty data (i) and the recorded local-mesh A/A run (ii):
how often each judge says "worse" in A/A replays (false alarms; should be <= 5 %) and with known
effects (power), with Wilson 95 % intervals. Then compare() on 10 M samples per arm against
np.sort of the same 20 M values (goal <= 3x).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.stats import calibration as cal
from workbench.stats.compare import Margin, compare

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "local-aa-1000rps.parquet"
FINE = Margin(latency_ms=0.5, latency_pct=2.5, error_rate_pct=0.25)
SCENARIOS = {
    "A/A, concurrent split (false alarm)": None,
    "A/A, window split (false alarm)": "windows",
    "+1 ms on every request": ("add_ms", 1.0),
    "+10 % latency": ("scale_pct", 10.0),
    "+0.5 pts errors": ("errors_pts", 0.5),
}


def judges(baseline_p99: float) -> dict[str, cal.Judge]:
    return {
        "ours (p50,p90,p99,errors; default margins)": cal.ours(("p50", "p90", "p99", "error_rate")),
        "ours (finer margins 0.5 ms / 2.5 % / 0.25 pts)": cal.ours(("p50", "p90", "p99", "error_rate"), FINE),
        "Kayenta MWU, 1-min points, p99": cal.kayenta("p99"),
        "Kayenta MWU, 10-s points, p99": cal.kayenta("p99", window=10),
        f"Flagger threshold p99 <= {1.1 * baseline_p99:.2f} ms": cal.flagger("p99", 1.1 * baseline_p99),
        "naive per-request Mann-Whitney": cal.naive(),
    }


def run(name: str, data, replays: int) -> list[dict]:
    base = data(0)
    p99 = float(np.quantile(base["latency_ms"], 0.99))
    rows = []
    for scenario, effect in SCENARIOS.items():
        n = replays if effect in (None, "windows") else max(50, replays // 2)
        hits = dict.fromkeys(judges(p99), 0)
        for i in range(n):
            split = cal.split_windows if effect == "windows" else cal.split_aa
            a, b = split(data(100 + i), seed=200 + i)
            if isinstance(effect, tuple):
                b = cal.with_effect(b, *effect, seed=300 + i)
            for judge_name, judge in judges(p99).items():
                hits[judge_name] += bool(judge(a, b))
        for judge_name, h in hits.items():
            r = cal.Rate(h, n)
            lo, hi = r.wilson
            rows.append({"data": name, "scenario": scenario, "judge": judge_name, "says worse": f"{h}/{n}",
                         "rate": r.rate, "wilson 95%": f"[{lo:.3f}, {hi:.3f}]"})  # fmt: skip
        print(f"[{name}: {scenario} done]", flush=True)
    return rows


def speed() -> None:
    print("\nSpeed: compare() on 10 M samples per arm vs np.sort of the 20 M values")
    rng = np.random.default_rng(0)
    n = 10_000_000
    arms = []
    for _ in range(2):
        t = np.sort(rng.uniform(0, 600, n))
        arms.append(pd.DataFrame({
            "timestamp": pd.to_datetime(1_700_000_000 + t, unit="s", utc=True),
            "latency_ms": rng.lognormal(np.log(2), 0.4, n),
            "status": np.full(n, 200, dtype=np.int16),
        }))  # fmt: skip
    values = np.concatenate([a["latency_ms"].to_numpy() for a in arms])
    t0 = time.perf_counter()
    np.sort(values)
    sort_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compare(arms[0], arms[1])
    compare_s = time.perf_counter() - t0
    ratio = compare_s / sort_s
    print(f"np.sort 20 M: {sort_s:.2f} s   compare(): {compare_s:.2f} s   ratio {ratio:.2f}x (goal <= 3x)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    rows = run("synthetic", lambda s: cal.synthetic_run(seconds=60, rps=1000, seed=s), args.replays)
    if SAMPLE.exists():
        rows += run("recorded local mesh", cal.segments(pd.read_parquet(SAMPLE)), args.replays)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_colwidth", 60)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not args.skip_speed:
        speed()


if __name__ == "__main__":
    main()
