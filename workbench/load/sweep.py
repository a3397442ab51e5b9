"""Load sweeps: requests per second x concurrent connections x sidecar mode, repeated.

Order: repetitions are interleaved (A B A B ...): every repetition visits every mode once, so a
slow drift of the machine spreads over all modes instead of biasing one. Each point is stored as
soon as it finishes (a crash keeps what was measured; a re-run skips stored points). Per point:
achieved vs requested rps, dropped requests, latency percentiles, errors, and the proxies' cost
(CPU cores and RSS of the sidecars, from Prometheus) per 1000 rps, like istio/tools' columns.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workbench.errors import BackendError
from workbench.load import storage
from workbench.load.results import LoadProfile, LoadResult
from workbench.metrics.prometheus import Prometheus, PrometheusError

MeshFactory = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep; ``modes`` are sidecar modes (local) or other backend variants."""

    service: str
    rps: tuple[float, ...]
    connections: tuple[int, ...]
    modes: tuple[str, ...] = ("both",)
    repetitions: int = 1
    duration_s: float = 10.0
    warmup_s: float = 2.0
    model: Literal["open", "closed"] = "open"
    path: str = "/"
    seed: int | None = None

    def points(self) -> list[Point]:
        """Every point in run order: repetition, then mode, then the rps x connections grid."""
        grid = list(itertools.product(self.rps, self.connections))
        rng = random.Random(self.seed)
        order = []
        for rep in range(self.repetitions):
            modes = list(self.modes)
            if rep % 2 == 1:  # A B, B A: neither mode always runs first after a restart
                modes.reverse()
            for mode in modes:
                cells = grid[:]
                if self.seed is not None:
                    rng.shuffle(cells)
                order += [Point(mode, rps, conns, rep) for rps, conns in cells]
        return order


@dataclass(frozen=True)
class Point:
    mode: str
    rps: float
    connections: int
    repetition: int

    @property
    def name(self) -> str:
        return f"{self.mode}_rps{self.rps:g}_c{self.connections}_rep{self.repetition}"


def run_sweep(
    spec: SweepSpec,
    mesh_factory: MeshFactory,
    store: Path,
    progress: bool = True,
    on_point: Callable[[Point, LoadResult], None] | None = None,
) -> pd.DataFrame:
    """Run every point not yet in ``store``; return the table of all stored points."""
    store.mkdir(parents=True, exist_ok=True)
    done = {p.stem for p in store.glob("*.json")}
    todo = [p for p in spec.points() if p.name not in done]
    with _progress(progress, len(spec.points()), len(spec.points()) - len(todo)) as bar:
        for mode, points in itertools.groupby(todo, key=lambda p: (p.repetition, p.mode)):
            with mesh_factory(mode[1]) as mesh:
                for point in points:
                    p = point
                    bar.describe(f"{p.mode} {p.rps:g} rps x {p.connections} conns (rep {p.repetition})")
                    result = _measure(mesh, spec, point)
                    storage.save(result, store, point.name)
                    if on_point is not None:
                        on_point(point, result)
                    bar.advance()
    return table(store)


def _measure(mesh: Any, spec: SweepSpec, point: Point) -> LoadResult:
    profile = LoadProfile(
        rps=point.rps if spec.model == "open" else None,
        connections=point.connections,
        duration_s=spec.duration_s,
        warmup_s=spec.warmup_s,
        model=spec.model,
        path=spec.path,
    )
    result = mesh.run_load(spec.service, profile)
    result.meta.update(
        {"mode": point.mode, "repetition": point.repetition, "point": point.name, "requested_rps": point.rps}
    )
    try:
        url = mesh.prometheus_url()
    except BackendError:  # a cluster without backend.prometheus_url: no proxy cost, the load still counts
        url = ""
    result.meta["proxy_cost"] = proxy_cost(url, result) if url else {}
    return result


def proxy_cost(prometheus_url: str, result: LoadResult) -> dict[str, float]:
    """Sidecar CPU cores and RSS over the measured phase, and cores per 1000 achieved rps.

    Reads the local mesh's process exporter (``workbench_process_*``; a cluster's Prometheus has none:
    empty then). Keys: ``cpu_cores`` and
    ``rss_mib`` (all sidecars), ``*_client`` (the load generator's sidecar), ``*_server``
    (the target's inbound sidecars), and ``cpu_mcores_per_1000rps``. Empty when not available.
    """
    start, end = pd.Timestamp(result.meta["start"]), pd.Timestamp(result.meta["end"])
    window = max(2, int((end - start).total_seconds()))
    at = end.timestamp()
    prom = Prometheus(prometheus_url, timeout_s=10)
    service = result.meta.get("service", "")
    selectors = {
        "": 'kind="envoy"',
        "_client": 'kind="envoy",service="loadgen"',
        "_server": f'kind="envoy",direction="inbound",service="{service}"',
    }
    out: dict[str, float] = {}
    try:
        for suffix, sel in selectors.items():
            cpu_q = f"sum(rate(workbench_process_cpu_seconds_total{{{sel}}}[{window}s]))"
            rss_q = f"sum(avg_over_time(workbench_process_resident_memory_bytes{{{sel}}}[{window}s]))"
            cores, rss = prom.scalar(cpu_q, at), prom.scalar(rss_q, at)
            out[f"cpu_cores{suffix}"] = cores
            out[f"rss_mib{suffix}"] = rss / 2**20
    except PrometheusError:
        return {}
    achieved = result.summary()["actual_rps"]
    out["cpu_mcores_per_1000rps"] = 1000 * out["cpu_cores"] / (achieved / 1000) if achieved else float("nan")
    return out


def table(store: Path) -> pd.DataFrame:
    """One row per stored point: settings, achieved rps, drops, percentiles (ms), errors, proxy cost."""
    rows = []
    for path in sorted(store.glob("*.json")):
        result = storage.load(path)
        meta, summary = result.meta, result.summary()
        requested = meta.get("requested_rps") or meta.get("rps")
        planned = (requested or 0) * float(meta.get("duration_s") or 0)
        row = {
            "mode": meta.get("mode"),
            "rps": requested,
            "connections": meta.get("connections"),
            "repetition": meta.get("repetition", 0),
            "achieved_rps": summary["actual_rps"],
            "achieved_pct": 100 * summary["actual_rps"] / requested if requested else float("nan"),
            "dropped_pct": 100 * summary["dropped"] / planned if planned else 0.0,
            **{k: summary[k] for k in ("p50", "p75", "p90", "p99", "p999", "max", "error_pct")},
            **meta.get("proxy_cost", {}),
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["mode", "connections", "rps", "repetition"]).reset_index(drop=True)
    return frame


def knee(points: pd.DataFrame, slo_p99_ms: float, min_achieved_pct: float = 99.0) -> pd.DataFrame:
    """Per mode and connections: the highest rps whose p99 is within the SLO and achieved >= 99 %.

    Repetitions are combined by their median; a rate counts only if every lower rate passed too
    (a saturated system does not recover at a higher rate).
    """
    med = points.groupby(["mode", "connections", "rps"], as_index=False)[["p99", "achieved_pct"]].median()
    rows = []
    for (mode, conns), g in med.groupby(["mode", "connections"]):
        best = float("nan")
        for _, r in g.sort_values("rps").iterrows():
            if r["p99"] <= slo_p99_ms and r["achieved_pct"] >= min_achieved_pct:
                best = r["rps"]
            else:
                break
        rows.append({"mode": mode, "connections": conns, "knee_rps": best, "slo_p99_ms": slo_p99_ms})
    return pd.DataFrame(rows)


def by_connections(points: pd.DataFrame, rps: float | None = None) -> pd.DataFrame:
    """Latency vs concurrent connections per mode (median over repetitions), at one rate."""
    chosen = points if rps is None else points[np.isclose(points["rps"], rps)]
    cols = ["p50", "p90", "p99", "achieved_rps"]
    return chosen.groupby(["mode", "connections"], as_index=False)[cols].median()


class _Bar:
    def __init__(self, progress: Progress | None, task: Any):
        self.progress, self.task = progress, task

    def describe(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)


@contextmanager
def _progress(enabled: bool, total: int, completed: int) -> Iterator[_Bar]:
    """A rich progress bar over the sweep's points (or a silent stand-in)."""
    if not enabled:
        yield _Bar(None, None)
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        yield _Bar(bar, bar.add_task("sweep", total=total, completed=completed))


def iter_results(store: Path) -> Iterator[LoadResult]:
    """Every stored point, loaded."""
    for path in sorted(store.glob("*.json")):
        yield storage.load(path)
