"""Calibration of the statistics against the judges users would otherwise pick: one table.

    python benchmarks/calibration.py [--replays 200] [--only synthetic|recorded]

Every judge on every scenario, on synthetic heavy-tailed bursty data and on the recorded local-mesh
A/A run (``data/sample/``): how often each says "worse". In the A/A scenarios (the same version in
both arms, ``stats.calibration.SCENARIOS``) that is a false alarm and should stay <= 5 %; in the
known-effect scenarios (concurrent 50/50, the candidate shifted) it is the power. Each cell:
the rate, with the Wilson 95 % bound that matters (upper for false alarms, lower for power).
(Speed: ``benchmarks/compare_speed.py``; canary time to roll back: ``benchmarks/time_to_rollback.py``.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.stats import calibration as cal
from workbench.stats.compare import Margin

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "local-aa-1000rps.parquet"
FINE = Margin(latency_ms=0.5, latency_pct=2.5, error_rate_pct=0.5)
ALL = ("p50", "p90", "p99", "error_rate")
EFFECTS = {  # known effects on the candidate of a concurrent 50/50 split
    "+1 ms on every request (power)": ("add_ms", 1.0),
    "+10 % latency (power)": ("scale_pct", 10.0),
    "+1 point errors (power)": ("errors_pts", 1.0),
}


def judges(baseline_p99: float) -> dict[str, cal.Judge]:
    return {
        "ours compare": cal.ours(ALL),
        "ours compare, fine margins": cal.ours(ALL, FINE),
        "ours canary anytime": cal.canary(("p50", "p99", "error_rate")),
        "ours canary alpha-spending": cal.canary_alpha_spending(5),
        "Kayenta p99 1-min": cal.kayenta("p99"),
        "Kayenta p99 10-s": cal.kayenta("p99", window=10),
        "Kayenta errors 10-s": cal.kayenta("error_rate", window=10),
        "Flagger p99": cal.flagger("p99", 1.1 * baseline_p99),
        "Flagger success": cal.flagger("error_rate", 100 - cal.FLAGGER_SUCCESS_PCT),
        "naive MWU": cal.naive(),
        "naive errors": cal.per_request_errors(),
    }


LEGEND = {
    "ours compare": "compare() on p50, p90, p99, error rate, default margins (1 ms / 5 % / 0.5 points)",
    "ours compare, fine margins": "the same with margins 0.5 ms / 2.5 % / 0.5 points",
    "ours canary anytime": "our canary (p50, p99, error rate), anytime-valid, a look after every 5-s window",
    "ours canary alpha-spending": "our canary with the alpha-spending plan, 5 equal steps, a look after each",
    "Kayenta p99 1-min": "Kayenta's Mann-Whitney classifier on per-minute p99 points (its usual interval)",
    "Kayenta p99 10-s": "the same on 10-s points",
    "Kayenta errors 10-s": "the same on 10-s error-rate points",
    "Flagger p99": "Flagger/Argo style: the candidate's p99 over the run against a fixed limit, 1.1 x the "
    "typical p99 (no baseline arm)",
    "Flagger success": "Flagger's request-success-rate: the candidate's error rate over the run against 1 %",
    "naive MWU": "one Mann-Whitney U test on all per-request latencies",
    "naive errors": "the old error-rate method: Newcombe/Fisher on pooled counts, requests independent",
}


def cell(hits: int, n: int, power: bool) -> str:
    r = cal.Rate(hits, n)
    lo, hi = r.wilson
    return f"{r.rate:.3f} ({'>=' if power else '<='}{lo if power else hi:.3f})"


def run(name: str, data_for, replays: int) -> list[dict]:
    """Rows of the table for one data source; ``data_for(rps)`` gives the replay data at a rate."""
    pool = pd.concat([data_for(1000)(seed) for seed in range(10)])  # the p99 a user knows as typical
    p99 = float(np.quantile(pool["latency_ms"], 0.99))
    rows = []
    cases = [(s.name, s.split, s.rps, None) for s in cal.SCENARIOS.values()]
    cases += [(label, cal.split_aa, 1000.0, effect) for label, effect in EFFECTS.items()]
    for scenario, split, rps, effect in cases:
        t0 = time.perf_counter()
        n = replays if effect is None else max(50, replays // 2)
        data, chosen = data_for(rps), judges(p99)
        hits = dict.fromkeys(chosen, 0)
        for i in range(n):
            a, b = split(data(100 + i), seed=200 + i)
            if effect is not None:
                b = cal.with_effect(b, *effect, seed=300 + i)
            for judge_name, judge in chosen.items():
                hits[judge_name] += bool(judge(a, b))
        row = {"data": name, "scenario": scenario, "replays": n}
        row.update({j: cell(h, n, power=effect is not None) for j, h in hits.items()})
        rows.append(row)
        print(f"[{name}: {scenario} done in {time.perf_counter() - t0:.0f} s]", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--only", choices=["synthetic", "recorded"])
    args = ap.parse_args(argv)
    rows: list[dict] = []
    if args.only != "recorded":
        synthetic = lambda rps: lambda s: cal.synthetic_run(seconds=60, rps=rps, seed=s)  # noqa: E731
        rows += run("synthetic", synthetic, args.replays)
    if args.only != "synthetic" and SAMPLE.exists():
        recorded = pd.read_parquet(SAMPLE)
        rows += run("recorded local mesh", lambda rps: cal.segments(recorded), args.replays)
    table = pd.DataFrame(rows).set_index(["data", "scenario", "replays"])
    pd.set_option("display.width", 400)
    pd.set_option("display.max_columns", 40)
    print("\nHow often each judge says 'worse': rate (Wilson 95 % bound); A/A rows should stay <= 0.05")
    print(table.to_string())
    print("\nJudges:")
    for name, what in LEGEND.items():
        print(f"  {name}: {what}")


if __name__ == "__main__":
    main()
