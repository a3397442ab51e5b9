"""How much canary traffic each canary method needs to roll back a regression, and how often it rolls
back a healthy canary.

    python benchmarks/time_to_rollback.py [--replays 50] [--seconds 300]

A canary at 5 % of 1000 rps (50 rps on the canary) for ``--seconds``, the same heavy-tailed bursty
synthetic traffic as the calibration (median 20 ms), judged on p99 and the error rate (Flagger's two
built-in checks) as its data comes in:

- ours, anytime-valid (the canary's default): a look after every 5-s window (confidence sequence);
- ours, alpha-spending: a look every minute, alpha shared equally over the run's looks;
- Flagger's default analysis: every minute the canary's p99 against a fixed limit (1.1 x a healthy
  run's p99: no baseline) and its success rate against 99 %, rollback after 5 failed checks.

Regressions: +20 % on every latency (p99 +20 %), and separately +1 point of errors. Prints, per
method and case, the median seconds of canary traffic until rollback (inf: not within the run),
the quartiles, and how many canaries were rolled back (for the healthy canary: false rollbacks,
with a Wilson interval; they should stay <= alpha = 5 %).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from workbench.stats import calibration as cal

CASES = {"healthy (A/A)": None, "+20 % p99": ("scale_pct", 20.0), "+1 point errors": ("errors_pts", 1.0)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=300)
    args = ap.parse_args(argv)
    pilot, _ = cal.canary_pair(seed=999_999, seconds=args.seconds)
    limit = 1.1 * float(np.quantile(pilot["latency_ms"], 0.99))
    methods = {
        "ours, anytime (look every 5-s window)": cal.rollback_anytime,
        "ours, alpha-spending (look every minute)": cal.rollback_alpha_spending,
        f"Flagger (1m x 5 checks, p99 <= {limit:.1f} ms, success >= 99 %)": (
            lambda a, b: cal.rollback_flagger(a, b, p99_limit_ms=limit)
        ),
    }
    rows = []
    for case, effect in CASES.items():
        for name, judge in methods.items():
            t0 = time.perf_counter()
            times = cal.rollback_times(judge, n=args.replays, effect=effect, seed=1000, seconds=args.seconds)
            r = times.rolled_back
            lo, hi = r.wilson
            q1, q3 = np.percentile(np.minimum(times.seconds, 1e12), [25, 75])  # inf: not rolled back
            q1, q3 = (float("inf") if q >= 1e12 else q for q in (q1, q3))
            rows.append({
                "case": case, "method": name, "median s": times.median, "quartiles s": f"[{q1:g}, {q3:g}]",
                "rolled back": f"{r.hits}/{r.n}", "rate": r.rate, "wilson 95%": f"[{lo:.3f}, {hi:.3f}]",
            })  # fmt: skip
            print(f"[{case}: {name} done in {time.perf_counter() - t0:.0f} s]", flush=True)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_colwidth", 70)
    print(f"\nCanary at 5 % of 1000 rps, {args.seconds:g} s, {args.replays} replays per row")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
