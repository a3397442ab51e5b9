"""Localization benchmark: does ``workbench.analysis.localize`` name the service that really changed,
and how fast?

    python benchmarks/localization.py [--trials 20] [--seed 7] [--rps 150]

On the local demo topology (frontend → catalog → pricing, frontend → reviews → ratings; concurrent
calls), each trial picks one random service (seeded) and one random change to its stable version —
a delay (+2 to +10 ms of service time) or an error rate (2 to 10 %) — after a baseline window.
While load runs, the changed window is judged every second from the sidecars' access logs (read
incrementally), from 3 s after the change on, until the top-ranked service is ``worse`` or the
window reaches its cap. Prints per trial the truth and the ranking, then top-1 / top-2 accuracy
(with Wilson intervals) and the time from the change to the verdict (goal: top-1 >= 90 %).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time

import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from workbench.analysis.localize import AccessLogTail, localize
from workbench.backends.local import LocalMesh
from workbench.load.results import LoadProfile

SERVICES = ("frontend", "catalog", "pricing", "reviews", "ratings")
LEAD_S = 3.0


def _trial(mesh: LocalMesh, tail: AccessLogTail, rng: random.Random, args: argparse.Namespace) -> dict:
    service = rng.choice(SERVICES)
    version = next(iter(mesh.topology.services[service].versions))
    before = mesh.behaviour(service, version)
    if rng.random() < 0.5:
        delta = round(rng.uniform(2, 10), 1)
        patch, undo, what = (
            {"service_time_ms": before.service_time_ms + delta},
            {"service_time_ms": before.service_time_ms},
            f"+{delta:g} ms",
        )
    else:
        rate = round(rng.uniform(0.02, 0.10), 3)
        patch, undo, what = (
            {"error_rate": rate},
            {"error_rate": before.error_rate},
            f"{100 * rate:.1f}% errors",
        )
    total = LEAD_S + args.baseline + args.cap + 1.5
    load = threading.Thread(
        target=mesh.run_load,
        daemon=True,
        args=("frontend", LoadProfile(rps=args.rps, connections=16, duration_s=total)),
    )
    tail.skip()
    frames: list[pd.DataFrame] = []
    load.start()
    try:
        time.sleep(LEAD_S)  # k6 starts, connections warm up
        b0 = time.time()
        time.sleep(args.baseline)
        b1 = time.time()
        mesh.set_behaviour(service, version, **patch)
        c0 = time.time()
        time.sleep(3.0)
        result, waited = None, 0.0
        while True:
            frames.append(tail.read())
            logs = pd.concat(frames, ignore_index=True)
            base = logs[(logs["start"] >= b0) & (logs["start"] < b1)]
            changed = logs[logs["start"] >= c0 + 0.05]
            t_judge = time.time()
            result = localize(base, changed, window="0.5s")
            waited = time.time() - c0
            if result.culprit is not None or waited >= args.cap:
                break
            time.sleep(max(0.0, 1.0 - (time.time() - t_judge)))
    finally:
        mesh.set_behaviour(service, version, **undo)
        load.join()
    top = result.top(2)
    return {
        "service": service,
        "change": what,
        "top1": top[0],
        "top2": ",".join(top),
        "verdict": result.culprit or "none",
        "seconds": round(waited, 1),
        "hit1": top[0] == service,
        "hit2": service in top,
    }


def _share(hits: int, n: int) -> str:
    lo, hi = proportion_confint(hits, n, method="wilson")
    return f"{hits}/{n} = {100 * hits / n:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rps", type=float, default=150)
    ap.add_argument("--baseline", type=float, default=5.0, help="seconds of baseline per trial")
    ap.add_argument("--cap", type=float, default=8.0, help="longest changed window (s)")
    args = ap.parse_args(argv if argv is not None else (sys.argv[1:] if __name__ == "__main__" else []))
    rng = random.Random(args.seed)
    rows = []
    started = time.time()
    with LocalMesh(mode="both", wait_for_metrics=False) as mesh:
        tail = AccessLogTail(mesh.run_dir / "envoy")
        mesh.run_load("frontend", LoadProfile(rps=args.rps, connections=16, duration_s=2))  # warm-up
        for i in range(args.trials):
            row = _trial(mesh, tail, rng, args)
            rows.append(row)
            print(
                f"trial {i + 1:2d}: {row['service']:8s} {row['change']:12s} → top {row['top2']:17s} "
                f"verdict {row['verdict']:8s} after {row['seconds']:4.1f} s",
                flush=True,
            )
    frame = pd.DataFrame(rows)
    n = len(frame)
    found = frame[frame["verdict"] != "none"]
    print(
        f"\nlocal demo topology, {args.rps:g} rps, baseline {args.baseline:g} s, "
        f"changed window ≤ {args.cap:g} s"
    )
    print(f"top-1 accuracy: {_share(int(frame['hit1'].sum()), n)}")
    print(f"top-2 accuracy: {_share(int(frame['hit2'].sum()), n)}")
    print(
        f"verdict (a culprit named) in {len(found)}/{n} trials; named the wrong service in "
        f"{int((found['verdict'] != found['service']).sum())}"
    )
    t = found["seconds"]
    if len(t):
        print(
            f"time from change to verdict: median {t.median():.1f} s, "
            f"p90 {t.quantile(0.9):.1f} s, max {t.max():.1f} s"
        )
    print(
        f"by kind: delays {frame[frame['change'].str.endswith('ms')]['hit1'].mean():.0%} top-1, "
        f"errors {frame[frame['change'].str.endswith('errors')]['hit1'].mean():.0%} top-1"
    )
    print(f"benchmark wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
