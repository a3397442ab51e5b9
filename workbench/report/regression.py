"""``workbench compare RUN_A RUN_B``: per experiment, stream and metric, did run B regress against A?

Runs are not concurrent, so each stream of stored load (an A/B arm, a sweep point, a canary
step's version, a protection ...) of run B is compared with the same stream of run A on time
windows, unpaired, and judged with run-to-run variation estimated from the stored repeats of the
two configurations (``workbench.stats.runs``). The experiment's own ``alpha``, ``window``,
``margins``, ``metrics`` and ``no_data`` apply (as the run used them); alpha is split over the
experiment's streams, so one experiment's chance of any false ``worse`` stays at most alpha.

An experiment that stores no load (authorization checks, the audit) is judged by its verdicts:
worse when B's is more severe than A's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from workbench.experiments.session import VERDICT_SEVERITY
from workbench.report.ci import RANK
from workbench.report.runs import StoredRun, list_runs, open_run, repeats
from workbench.stats.compare import Margin
from workbench.stats.runs import RunsComparison, compare_runs
from workbench.stats.windows import start_of, window_table

DEFAULT_METRICS = ("p50", "p90", "p99", "error_rate")
SEVERITY_RANK = {**RANK, "error": 3}


@dataclass
class ExperimentRegression:
    """One experiment of run B against run A."""

    name: str
    kind: str
    verdict: str  # worse | better | equivalent | inconclusive | not compared
    streams: dict[str, RunsComparison] = field(default_factory=dict)
    note: str = ""
    repeats_a: list[str] = field(default_factory=list)  # run ids of A's configuration
    repeats_b: list[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        """ok < inconclusive < worse, as a CI gate reads it (``report.ci.reaches``)."""
        return VERDICT_SEVERITY.get(self.verdict, "inconclusive")

    def to_frame(self) -> pd.DataFrame:
        """One row per stream and metric (empty when only verdicts were compared)."""
        frames = []
        for stream, comparison in self.streams.items():
            frame = comparison.to_frame().reset_index()
            frame.insert(0, "stream", stream)
            frames.append(frame)
        if not frames:
            return pd.DataFrame()
        out = pd.concat(frames, ignore_index=True)
        out.insert(0, "experiment", self.name)
        return out


@dataclass
class RunRegression:
    """Every experiment the two runs share."""

    a: StoredRun
    b: StoredRun
    experiments: list[ExperimentRegression]

    def to_frame(self) -> pd.DataFrame:
        frames = [e.to_frame() for e in self.experiments]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def compare_stored(
    data_root: str, run_a: str, run_b: str, only: Sequence[str] = (), metrics: Sequence[str] | None = None
) -> RunRegression:
    """Did run ``run_b`` regress against ``run_a``? (stored runs under ``data_root``; see the module)."""
    a, b = open_run(data_root, run_a), open_run(data_root, run_b)
    if a.run_id == b.run_id:
        raise ValueError(f"{run_a} and {run_b} are the same run ({a.run_id}): compare two different runs")
    everything = list_runs(data_root)
    names = [n for n in a.experiments if n in b.experiments and (not only or n in only)]
    missing = [n for n in only if n not in names]
    if missing:
        raise ValueError(f"not in both runs: {', '.join(missing)} (shared: {', '.join(names) or 'none'})")
    loaded: dict[tuple[str, str], dict[str, Any]] = {}

    def streams(run: StoredRun, name: str) -> dict[str, Any]:
        key = (run.run_id, name)
        if key not in loaded:
            loaded[key] = run.streams(name)
        return loaded[key]

    return RunRegression(a, b, [_experiment(a, b, n, everything, streams, metrics) for n in names])


def _experiment(
    a: StoredRun, b: StoredRun, name: str, everything: list[StoredRun], streams: Any,
    metrics: Sequence[str] | None,
) -> ExperimentRegression:  # fmt: skip
    ra, rb = a.result(name) or {}, b.result(name) or {}
    kind = str(rb.get("kind") or ra.get("kind") or "")
    if ra.get("status") != "ok" or rb.get("status") != "ok":
        side = "A" if ra.get("status") != "ok" else "B"
        return ExperimentRegression(
            name, kind, "not compared", note=f"the experiment did not finish in run {side}"
        )
    spec = b.spec(name) or a.spec(name)
    sa, sb = streams(a, name), streams(b, name)
    common = [s for s in sb if s in sa]
    if not common:
        return _by_verdict(name, kind, ra, rb, bool(sa or sb))
    groups = repeats(everything, name)
    key_a, key_b = a.fingerprint(name), b.fingerprint(name)
    chosen = [groups.get(key_a, [a])] + ([groups.get(key_b, [b])] if key_b != key_a else [])
    wanted = tuple(metrics or getattr(spec, "metrics", None) or DEFAULT_METRICS)
    window_s = float(getattr(spec, "window", None) or 5.0)
    m = getattr(spec, "margins", None)
    margin = Margin(m.latency_ms, m.latency_pct, m.error_rate_pct) if m is not None else Margin()
    alpha = float(getattr(spec, "alpha", None) or 0.05) / len(common)
    no_data = getattr(spec, "no_data", "inconclusive")
    only = {"A": [s for s in sa if s not in sb], "B": [s for s in sb if s not in sa]}
    unmatched = "; ".join(f"only in {side}: {', '.join(x)}" for side, x in only.items() if x)
    out = ExperimentRegression(name, kind, "equivalent", note=unmatched)
    out.repeats_a, out.repeats_b = [r.run_id for r in chosen[0]], [r.run_id for r in chosen[-1]]
    for stream in common:
        tables = [[_windows(streams(r, name).get(stream), window_s) for r in group] for group in chosen]
        tables = [[t for t in group if t is not None] for group in tables]
        out.streams[stream] = compare_runs(
            _windows(sa[stream], window_s), _windows(sb[stream], window_s), tables, wanted, window_s,
            margin, alpha, no_data,
        )  # fmt: skip
    verdicts = [c.verdict for c in out.streams.values()]
    out.verdict = next((v for v in ("worse", "inconclusive", "better") if v in verdicts), "equivalent")
    return out


def _windows(result: Any, window_s: float) -> pd.DataFrame | None:
    if result is None:
        return None
    return window_table(result, window_s, start_of(result))


def _by_verdict(
    name: str, kind: str, ra: dict[str, Any], rb: dict[str, Any], had_load: bool
) -> ExperimentRegression:
    va, vb = str(ra.get("verdict")), str(rb.get("verdict"))
    rank_a = SEVERITY_RANK.get(str(ra.get("severity")), 1)
    rank_b = SEVERITY_RANK.get(str(rb.get("severity")), 1)
    verdict = "worse" if rank_b > rank_a else "better" if rank_b < rank_a else "equivalent"
    why = "no stream of load in both runs" if had_load else "no per-request load stored"
    return ExperimentRegression(name, kind, verdict, note=f"{why}; verdicts compared: {va} (A) → {vb} (B)")
