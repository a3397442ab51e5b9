"""Calibration is tested, not assumed: false-alarm rate and power by replay.

- Data: synthetic heavy-tailed latency (lognormal body, Pareto tail) under an AR(1) load factor
  with occasional bursts, generated here; or any recorded run (e.g. ``data/sample/``).
- A/A replays: a run's requests are split at random into two concurrent pseudo-arms (what a
  50/50 split of one version gives); a judge that says ``worse`` there raises a false alarm.
- Known-effect replays: the candidate arm is shifted by a known amount (+1 ms to every request,
  +10 % to every latency, +0.5 points of errors); a judge that says ``worse`` detects it.
- Rates come with Wilson intervals (statsmodels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from workbench.stats.compare import Margin, compare
from workbench.stats.interval import ConfidenceInterval
from workbench.stats.reference import kayenta_mannwhitney, naive_mannwhitney, threshold
from workbench.stats.sequential import SequentialTest
from workbench.stats.windows import window_table

Judge = Callable[[pd.DataFrame, pd.DataFrame], bool]  # True = says "worse"


def synthetic_run(
    seconds: float = 60, rps: float = 1000, seed: int = 0, median_ms: float = 2.0
) -> pd.DataFrame:
    """One arm's worth of requests: heavy tail, autocorrelated load, bursts."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(seconds * rps)
    t = np.sort(rng.uniform(0, seconds, n))
    steps = int(seconds * 10) + 1  # the load factor moves every 100 ms
    f = np.zeros(steps)
    shocks = rng.normal(0, 0.08, steps)
    bursts = rng.uniform(size=steps) < 0.01
    shocks[bursts] += rng.exponential(0.6, bursts.sum())  # a GC pause or a noisy neighbour
    for i in range(1, steps):
        f[i] = 0.9 * f[i - 1] + shocks[i]
    body = rng.lognormal(np.log(median_ms), 0.35, n)
    tail = rng.uniform(size=n) < 0.005  # 0.5 % of requests hit a slow path with a Pareto tail
    body[tail] += median_ms * (rng.pareto(2.5, tail.sum()) + 1)
    latency = body * np.exp(f[(t * 10).astype(int)])
    ts = pd.to_datetime(1_700_000_000 + t, unit="s", utc=True)
    status = np.where(rng.uniform(size=n) < 0.001, 503, 200)
    return pd.DataFrame({"timestamp": ts, "latency_ms": latency, "status": status})


def segments(recorded: pd.DataFrame, seconds: float = 60) -> Callable[[int], pd.DataFrame]:
    """Replay data from a recorded run: a random ``seconds``-long stretch of it per seed."""
    t0, t1 = recorded["timestamp"].min(), recorded["timestamp"].max()
    span = max((t1 - t0).total_seconds() - seconds, 0.0)

    def data(seed: int) -> pd.DataFrame:
        start = t0 + pd.Timedelta(seconds=float(np.random.default_rng(seed).uniform(0, span)))
        part = recorded[
            (recorded["timestamp"] >= start) & (recorded["timestamp"] < start + pd.Timedelta(seconds=seconds))
        ]
        return part[["timestamp", "latency_ms", "status"]].astype({"latency_ms": float, "status": int})

    return data


def split_aa(samples: pd.DataFrame, seed: int, share: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random request-level split into two concurrent arms (a 50/50 split of one version)."""
    mask = np.random.default_rng(seed).uniform(size=len(samples)) < share
    return samples[~mask].reset_index(drop=True), samples[mask].reset_index(drop=True)


def split_windows(
    samples: pd.DataFrame, seed: int, window_s: float = 5.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A/A at different times: whole windows go to one arm or the other at random, so each arm
    has its own bursts (as when two versions are measured one after the other)."""
    w = ((samples["timestamp"] - samples["timestamp"].min()).dt.total_seconds() // window_s).astype(int)
    pick = np.random.default_rng(seed).uniform(size=int(w.max()) + 1) < 0.5
    mask = pick[w.to_numpy()]
    return samples[~mask].reset_index(drop=True), samples[mask].reset_index(drop=True)


def with_effect(b: pd.DataFrame, kind: str, size: float, seed: int = 0) -> pd.DataFrame:
    """``b`` with a known effect: 'add_ms' (+size ms), 'scale_pct' (+size %), 'errors_pts'."""
    out = b.copy()
    if kind == "add_ms":
        out["latency_ms"] = out["latency_ms"] + size
    elif kind == "scale_pct":
        out["latency_ms"] = out["latency_ms"] * (1 + size / 100)
    elif kind == "errors_pts":
        flip = np.random.default_rng(seed).uniform(size=len(out)) < size / 100
        out.loc[flip, "status"] = 503
    else:
        raise ValueError(f"unknown effect kind {kind!r}")
    return out


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    @property
    def wilson(self) -> ConfidenceInterval:
        lo, hi = proportion_confint(self.hits, self.n, alpha=0.05, method="wilson")
        return ConfidenceInterval(float(lo), float(hi))


def replay(
    data: Callable[[int], pd.DataFrame],
    judge: Judge,
    n: int = 200,
    effect: tuple[str, float] | None = None,
    seed: int = 0,
    split: Callable[..., tuple[pd.DataFrame, pd.DataFrame]] = split_aa,
) -> Rate:
    """How often ``judge`` says worse over ``n`` replays (A/A, or with ``effect`` on the candidate).

    ``split`` makes the two arms: ``split_aa`` (concurrent, request by request) or
    ``split_windows`` (whole windows, arms at different times)."""
    hits = 0
    for i in range(n):
        a, b = split(data(seed + i), seed=10_000 + seed + i)
        if effect is not None:
            b = with_effect(b, *effect, seed=20_000 + seed + i)
        hits += bool(judge(a, b))
    return Rate(hits, n)


def ours(metrics: tuple[str, ...], margin: Margin | None = None, alpha: float = 0.05) -> Judge:
    """Our compare(): worse if any of ``metrics`` is worse."""
    return lambda a, b: compare(a, b, metrics=metrics, margin=margin, alpha=alpha).verdict == "worse"


def kayenta(metric: str, window: float = 60.0) -> Judge:
    """Kayenta's classifier on per-minute points of ``metric`` (its usual interval)."""

    def judge(a: pd.DataFrame, b: pd.DataFrame) -> bool:
        origin = min(a["timestamp"].min(), b["timestamp"].min())
        wa, wb = window_table(a, window, origin), window_table(b, window, origin)
        return kayenta_mannwhitney(wa[metric].to_numpy(), wb[metric].to_numpy()) == "worse"

    return judge


def flagger(metric: str, limit: float) -> Judge:
    """A fixed limit on the candidate's metric over the whole interval (Flagger's request-duration)."""
    q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}[metric]
    return lambda a, b: threshold(float(np.quantile(b["latency_ms"], q)), limit) == "worse"


def naive() -> Judge:
    return lambda a, b: naive_mannwhitney(a, b) == "worse"


def canary_false_rollbacks(
    data: Callable[[int], pd.DataFrame],
    n: int = 200,
    looks: int = 5,
    metrics: tuple[str, ...] = ("p50", "p99", "error_rate"),
    seed: int = 0,
    margin: Margin | None = None,
) -> Rate:
    """A/A canaries with a look after each of ``looks`` equal steps: how often is one rolled back?"""
    hits = 0
    for i in range(n):
        a, b = split_aa(data(seed + i), seed=30_000 + seed + i)
        end = max(a["timestamp"].max(), b["timestamp"].max())
        start = min(a["timestamp"].min(), b["timestamp"].min())
        test = SequentialTest(looks=looks, metrics=metrics, margin=margin or Margin())
        for k in range(1, looks + 1):
            cut = start + (end - start) * k / looks
            decision = test.look(a[a["timestamp"] <= cut], b[b["timestamp"] <= cut])
            if decision.action == "rollback":
                hits += 1
                break
    return Rate(hits, n)
