"""Localization benchmark: does ``workbench.analysis.localize`` name the service that really changed,
and how fast — from traces, and from access logs, on the same trials?

    python benchmarks/localization.py [--trials 20] [--seed 7] [--rps 80]

On the local demo topology (frontend → catalog → pricing, frontend → reviews → ratings; concurrent
calls; mode both, tracing 100 %), each trial picks one random service (seeded) and one random
change to its stable version — a delay (+1 to +5 ms of service time) or an error rate (2 to 10 %)
— after a baseline window. While load runs, the changed window is judged every second by both
methods: from traces (spans read incrementally from the receiver; each visit's self time is its
spans' time not spent waiting on a child) and from the sidecars' access logs (inbound time minus
the slowest linked call), until each has named a culprit or its changed window reaches the cap.
Each method judges only requests whose records have all arrived: a request that started less than
``TRACE_SETTLE_S`` ago may still lack spans (Envoy and the apps export every second, the receiver
writes a part file every second), and one that started less than ``LOG_SETTLE_S`` ago may lack the
access-log lines of its calls (each sidecar flushes every 0.25 s). A partial trace is not a slow
one: a visit whose children have not arrived looks like all self time, and a child without its
parent starts a tree of its own; judging them would charge callers with time they did not spend.
The time to a verdict is counted from the change, so it includes that wait.
Margins: 0.5 ms or 5 % for latency (a +1 ms change must be able to clear them), 0.5 points for
errors. Prints per trial the truth and both rankings, then per method top-1 / top-2 accuracy
(Wilson intervals) and the time from the change to its verdict (goal: top-1 >= 90 % with traces),
and whether the load points were saturated (``LoadResult.saturation``, the guard load sweeps use).

The rate: 80 rps keeps this 2-core machine mostly below saturation with every span recorded (the
traced chain carries 146-174 rps, ``benchmarks/tracing_cost.py``; the benchmark's own analysis
every second shares the cores). At 150 rps the host sat at its limit and each Python service's
self-time grew with the requests in flight: a slower pricing made the frontend's own time rise
beyond its margin, and the frontend was named for pricing's change (two of 30 trials, by both
methods; top-1 with traces 83 %). On the same 30 draws of ``--seed 11``: 100 rps, 28/30 (15 trials
saturated, one reviews delay named the frontend); 80 rps, 29/30 (6 saturated, no wrong culprit).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time

import pandas as pd
import pyarrow as pa
from statsmodels.stats.proportion import proportion_confint

from workbench.analysis.localize import AccessLogTail, Localization, localize
from workbench.analysis.traces import flow_edges, hops_from_spans, traces_between
from workbench.backends.local import LocalMesh
from workbench.load.results import LoadProfile, LoadResult
from workbench.stats.compare import Margin
from workbench.traces import critical
from workbench.traces.spans import SpanTail

SERVICES = ("frontend", "catalog", "pricing", "reviews", "ratings")
LEAD_S = 3.0
TRACE_SETTLE_S = 3.0  # every span of a request that started this long ago has reached the receiver
LOG_SETTLE_S = 1.0  # every access-log line of a request that started this long ago is on disk
MARGIN = Margin(latency_ms=0.5, latency_pct=5, error_rate_pct=0.5)
METHODS = ("traces", "access logs")


def _trace_hops(table: pa.Table, lo: float, hi: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    cp = critical.analyse(table)
    part = traces_between(table, cp, lo, hi)
    cp = critical.analyse(part)
    return hops_from_spans(part, cp), flow_edges(part, cp)


def _trial(
    mesh: LocalMesh, tail: AccessLogTail, spans: SpanTail, rng: random.Random, args: argparse.Namespace
) -> dict:
    service = rng.choice(SERVICES)
    version = next(iter(mesh.topology.services[service].versions))
    before = mesh.behaviour(service, version)
    if rng.random() < 0.5:
        delta = round(rng.uniform(1, 5), 1)
        patch, undo = (
            {"service_time_ms": before.service_time_ms + delta},
            {"service_time_ms": before.service_time_ms},
        )
        what = f"+{delta:g} ms"
    else:
        rate = round(rng.uniform(0.02, 0.10), 3)
        patch, undo, what = (
            {"error_rate": rate},
            {"error_rate": before.error_rate},
            f"{100 * rate:.1f}% errors",
        )
    total = LEAD_S + args.baseline + args.cap + TRACE_SETTLE_S + 3.0
    profile = LoadProfile(rps=args.rps, connections=16, duration_s=total)
    ran: dict[str, LoadResult] = {}  # the load point, for its saturation verdict
    load = threading.Thread(target=lambda: ran.update(result=mesh.run_load("frontend", profile)), daemon=True)
    tail.skip()
    spans.skip()
    frames: list[pd.DataFrame] = []
    tables: list[pa.Table] = []
    results: dict[str, Localization | None] = dict.fromkeys(METHODS)
    waited: dict[str, float] = dict.fromkeys(METHODS, float("nan"))
    load.start()
    try:
        time.sleep(LEAD_S)  # k6 starts, connections warm up
        b0 = time.time()
        time.sleep(args.baseline)
        b1 = time.time()
        mesh.set_behaviour(service, version, **patch)
        c0 = time.time()
        time.sleep(LOG_SETTLE_S)
        base_hops = base_edges = None
        open_ = set(METHODS)  # still judging: no culprit yet, changed window below the cap
        while open_:
            t_judge = time.time()
            frames.append(tail.read())
            tables.append(spans.read())
            if "access logs" in open_:
                logs = pd.concat(frames, ignore_index=True)
                settled = t_judge - LOG_SETTLE_S
                base = logs[(logs["start"] >= b0) & (logs["start"] < b1)]
                changed = logs[(logs["start"] >= c0 + 0.05) & (logs["start"] < settled)]
                results["access logs"] = localize(base, changed, window="0.5s", margin=MARGIN)
                waited["access logs"] = time.time() - c0
                if results["access logs"].culprit is not None or settled - c0 >= args.cap:
                    open_.discard("access logs")
            settled = t_judge - TRACE_SETTLE_S
            if "traces" in open_ and settled - c0 >= 1.0:  # at least a second of whole traces
                if base_hops is None:  # b1 + TRACE_SETTLE_S has passed: the baseline's traces are whole
                    base_hops, base_edges = _trace_hops(pa.concat_tables(tables), b0, b1)
                hops, edges = _trace_hops(pa.concat_tables(tables), c0 + 0.05, settled)
                if len(hops):
                    results["traces"] = localize(
                        base_hops, hops, window="0.5s", margin=MARGIN, edges=pd.concat([base_edges, edges]),
                        evidence="traces",
                    )  # fmt: skip
                    waited["traces"] = time.time() - c0
                if (results["traces"] is not None and results["traces"].culprit is not None) or (
                    settled - c0 >= args.cap
                ):
                    open_.discard("traces")
            time.sleep(max(0.0, 1.0 - (time.time() - t_judge)))
    finally:
        mesh.set_behaviour(service, version, **undo)
        load.join()
    sat = ran["result"].saturation() if "result" in ran else None
    row = {
        "service": service, "change": what,
        "host_cpu_pct": sat.host_cpu_pct if sat else float("nan"),
        "saturated": sat.explain() if sat and sat.saturated else "",
    }  # fmt: skip
    for method, result in results.items():
        top = result.top(2) if result is not None else ["none"]
        row[method] = {
            "top2": ",".join(top),
            "verdict": (result.culprit if result else None) or "none",
            "seconds": round(waited[method], 1),
            "hit1": top[0] == service,
            "hit2": service in top,
        }
    return row


def _share(hits: int, n: int) -> str:
    lo, hi = proportion_confint(hits, n, method="wilson")
    return f"{hits}/{n} = {100 * hits / n:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rps", type=float, default=80, help="frontend load; keep it below saturation")
    ap.add_argument("--baseline", type=float, default=5.0, help="seconds of baseline per trial")
    ap.add_argument("--cap", type=float, default=8.0, help="longest changed window (s)")
    args = ap.parse_args(argv if argv is not None else (sys.argv[1:] if __name__ == "__main__" else []))
    rng = random.Random(args.seed)
    rows = []
    started = time.time()
    with LocalMesh(mode="both", tracing=100, wait_for_metrics=False) as mesh:
        tail = AccessLogTail(mesh.run_dir / "envoy")
        spans = SpanTail(mesh.traces_dir)
        mesh.run_load("frontend", LoadProfile(rps=args.rps, connections=16, duration_s=2))  # warm-up
        for i in range(args.trials):
            row = _trial(mesh, tail, spans, rng, args)
            rows.append(row)
            t, a = row["traces"], row["access logs"]
            print(
                f"trial {i + 1:2d}: {row['service']:8s} {row['change']:12s} → traces: top {t['top2']:17s} "
                f"verdict {t['verdict']:8s} {t['seconds']:4.1f} s | access logs: top {a['top2']:17s} "
                f"verdict {a['verdict']:8s} {a['seconds']:4.1f} s | host CPU {row['host_cpu_pct']:3.0f} %"
                + (" (saturated)" if row["saturated"] else ""),
                flush=True,
            )
        stats = mesh.trace_stats()
    n = len(rows)
    print(
        f"\nlocal demo topology, {args.rps:g} rps, baseline {args.baseline:g} s, "
        f"changed window ≤ {args.cap:g} s of requests whose records had all arrived "
        f"(traces {TRACE_SETTLE_S:g} s, access logs {LOG_SETTLE_S:g} s after they started), "
        f"margins {MARGIN.latency_ms:g} ms / {MARGIN.latency_pct:g} % / {MARGIN.error_rate_pct:g} pts; "
        f"receiver: {stats['written_spans']} spans written, {stats['dropped_spans']} dropped"
    )
    print(f"{'':14s}{'traces':>34s}   {'access logs':>34s}")
    for label, key in (("top-1", "hit1"), ("top-2", "hit2")):
        cells = [_share(sum(r[m][key] for r in rows), n) for m in METHODS]
        print(f"{label + ' accuracy':14s}{cells[0]:>34s}   {cells[1]:>34s}")
    for method in METHODS:
        found = [r for r in rows if r[method]["verdict"] != "none"]
        wrong = sum(r[method]["verdict"] != r["service"] for r in found)
        t = pd.Series([r[method]["seconds"] for r in found], dtype=float)
        timing = (
            f"time from change to verdict: median {t.median():.1f} s, p90 {t.quantile(0.9):.1f} s, "
            f"max {t.max():.1f} s"
            if len(t)
            else "no verdict"
        )
        delays = [r[method]["hit1"] for r in rows if r["change"].endswith("ms")]
        errors = [r[method]["hit1"] for r in rows if r["change"].endswith("errors")]
        print(
            f"{method}: a culprit named in {len(found)}/{n} trials, wrong in {wrong}; {timing}; "
            "top-1 on delays "
            f"{sum(delays)}/{len(delays)}, on errors {sum(errors)}/{len(errors)}"
        )
    cpu = pd.Series([r["host_cpu_pct"] for r in rows], dtype=float)
    busy = [r["saturated"] for r in rows if r["saturated"]]
    print(
        f"load points (the saturation guard of workbench.load): host CPU median {cpu.median():.0f} %, "
        f"max {cpu.max():.0f} % of all cores; {len(busy)} of {n} trials saturated"
        + (f" (e.g. {busy[0]}): on a saturated host a service's self-time grows with the requests in "
           "flight, so a slower callee makes its callers look slower too; lower --rps" if busy else "")
    )  # fmt: skip
    print(f"benchmark wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
