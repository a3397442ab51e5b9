"""Calibration is tested, not assumed: false-alarm rate, power and time to roll back, by replay.

- Data: synthetic heavy-tailed latency (lognormal body, Pareto tail) under an AR(1) load factor
  with occasional bursts and 0.1 % background errors, generated here (``synthetic_run``); or any
  recorded run (``segments``, e.g. ``data/sample/``).
- Scenarios (``SCENARIOS``) make two arms of the *same* version from one run, the way real traffic
  treats them: a concurrent 50/50 split, whole windows to one arm or the other (arms measured at
  different times), errors in bursts hitting one arm at a time (a replica restarting, a pool reset),
  errors in bursts both arms share (a dependency hiccup), latency bursts in one arm (a GC pause, a
  noisy neighbour), slow drift (load and latency creeping over the run, arms at different
  windows), and a low-traffic canary (5 % of 100 rps). A judge that says ``worse`` there raises a
  false alarm.
- Known-effect replays: the candidate arm is shifted by a known amount (``with_effect``: +1 ms to
  every request, +10 % to every latency, +size points of errors); a judge that says ``worse``
  detects it.
- Time to roll back (``rollback_times``): a canary at 5 % of 1000 rps with a regression, judged as
  its data comes in by our anytime-valid canary (a look after every window), by the alpha-spending
  plan (a look every minute) and by Flagger's default analysis (a check every minute against a
  fixed limit, rollback after 5 failed checks, no baseline): the seconds of canary traffic until
  each rolls back.
- Judges (``ours``, ``canary``, ``kayenta``, ``flagger``, ``naive``, ``per_request_errors``): our
  compare(), our canary looking after every window, and what users would otherwise pick.
- Rates come with Wilson intervals (statsmodels).

Generators are vectorised (numpy over requests and burst spans), so hundreds of replays run in
seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import signal
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from workbench.stats.compare import Margin, compare, compare_tables, window_tables
from workbench.stats.interval import ConfidenceInterval
from workbench.stats.reference import kayenta_mannwhitney, naive_mannwhitney, threshold
from workbench.stats.sequential import AnytimeTest, SequentialTest
from workbench.stats.windows import window_table

Judge = Callable[[pd.DataFrame, pd.DataFrame], bool]  # True = says "worse"
Split = Callable[..., tuple[pd.DataFrame, pd.DataFrame]]  # (samples, seed=...) -> (baseline, candidate)
ERROR_STATUS = 503


def synthetic_run(
    seconds: float = 60, rps: float = 1000, seed: int = 0, median_ms: float = 2.0
) -> pd.DataFrame:
    """One arm's worth of requests: heavy tail, autocorrelated load, bursts, 0.1 % errors."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(seconds * rps)
    t = np.sort(rng.uniform(0, seconds, n))
    steps = int(seconds * 10) + 1  # the load factor moves every 100 ms
    shocks = rng.normal(0, 0.08, steps)
    bursts = rng.uniform(size=steps) < 0.01
    shocks[bursts] += rng.exponential(0.6, bursts.sum())  # a GC pause or a noisy neighbour
    shocks[0] = 0.0  # f[0] = 0, f[i] = 0.9 f[i-1] + shocks[i]
    f = signal.lfilter([1.0], [1.0, -0.9], shocks)
    body = rng.lognormal(np.log(median_ms), 0.35, n)
    tail = rng.uniform(size=n) < 0.005  # 0.5 % of requests hit a slow path with a Pareto tail
    body[tail] += median_ms * (rng.pareto(2.5, tail.sum()) + 1)
    latency = body * np.exp(f[(t * 10).astype(int)])
    ts = pd.to_datetime(1_700_000_000 + t, unit="s", utc=True)
    status = np.where(rng.uniform(size=n) < 0.001, ERROR_STATUS, 200)
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
    """Random request-level split into two concurrent arms; ``share`` of the requests go to the
    candidate (a split of one version: 0.5 for an A/B, 0.05 for a 5 % canary)."""
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


# ---------------------------------------------------------------------------------------------
# Scenarios: how real traffic treats two arms of the same version


def _seconds(samples: pd.DataFrame) -> np.ndarray:
    ts = samples["timestamp"]
    return (ts - ts.min()).dt.total_seconds().to_numpy() if len(ts) else np.zeros(0)


def burst_spans(
    seconds: float,
    rng: np.random.Generator,
    every_s: float = 15.0,
    lasting_s: tuple[float, float] = (2.0, 6.0),
) -> np.ndarray:
    """Burst (start, end) spans in [0, seconds): Poisson starts, one per ``every_s`` on average."""
    starts = np.sort(rng.uniform(0, seconds, rng.poisson(seconds / every_s)))
    return np.column_stack([starts, starts + rng.uniform(*lasting_s, len(starts))])


def _burst_of(t: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Index of the burst each time falls in (-1: none); spans may not overlap much, the later wins."""
    if len(spans) == 0:
        return np.full(len(t), -1)
    i = np.searchsorted(spans[:, 0], t, side="right") - 1
    inside = (i >= 0) & (t < spans[np.clip(i, 0, None), 1])
    return np.where(inside, i, -1)


def _bursts(
    samples: pd.DataFrame,
    in_b: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    per_arm: bool,
) -> pd.DataFrame:
    """``samples`` with bursts applied: ``kind`` 'errors' (5-40 % of a burst's requests fail) or
    'latency' (x1.5-3); each burst hits one arm (``per_arm``; chosen at random) or both."""
    t = _seconds(samples)
    spans = burst_spans(float(t.max()) if len(t) else 0.0, rng)
    if len(spans) == 0:
        return samples
    which = _burst_of(t, spans)
    hit_arm = rng.uniform(size=len(spans)) < 0.5  # True: the burst hits the candidate arm
    strength = rng.uniform(0.05, 0.4, len(spans)) if kind == "errors" else rng.uniform(1.5, 3.0, len(spans))
    hit = which >= 0
    if per_arm:
        hit &= hit_arm[np.clip(which, 0, None)] == in_b
    out = samples.copy()
    if kind == "errors":
        fail = hit & (rng.uniform(size=len(t)) < strength[np.clip(which, 0, None)])
        out["status"] = np.where(fail, ERROR_STATUS, out["status"].to_numpy())
    else:
        factor = np.where(hit, strength[np.clip(which, 0, None)], 1.0)
        out["latency_ms"] = out["latency_ms"].to_numpy() * factor
    return out


def _split_by(samples: pd.DataFrame, in_b: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    return samples[~in_b].reset_index(drop=True), samples[in_b].reset_index(drop=True)


def error_bursts_per_arm(samples: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """50/50 concurrent split; error bursts of 2-6 s (one per 15 s on average), each in one arm."""
    rng = np.random.default_rng(seed)
    in_b = rng.uniform(size=len(samples)) < 0.5
    return _split_by(_bursts(samples, in_b, rng, "errors", per_arm=True), in_b)


def error_bursts_shared(samples: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """50/50 concurrent split; error bursts that hit both arms at once."""
    rng = np.random.default_rng(seed)
    in_b = rng.uniform(size=len(samples)) < 0.5
    return _split_by(_bursts(samples, in_b, rng, "errors", per_arm=False), in_b)


def latency_bursts_per_arm(samples: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """50/50 concurrent split; latency bursts (x1.5-3 for 2-6 s) in one arm at a time."""
    rng = np.random.default_rng(seed)
    in_b = rng.uniform(size=len(samples)) < 0.5
    return _split_by(_bursts(samples, in_b, rng, "latency", per_arm=True), in_b)


def slow_drift(samples: pd.DataFrame, seed: int, window_s: float = 5.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Latency and error rate creep over the run (up to x1.5 or /1.5, and up to +0.3 points of
    errors, in a random direction), with whole windows going to one arm or the other: arms
    measured at different times while the system drifts."""
    rng = np.random.default_rng(seed)
    t = _seconds(samples)
    frac = t / max(float(t.max()) if len(t) else 1.0, 1e-9)
    out = samples.copy()
    out["latency_ms"] = out["latency_ms"].to_numpy() * np.exp(rng.uniform(-0.4, 0.4) * frac)
    extra = rng.uniform(0, 0.003) * (frac if rng.uniform() < 0.5 else 1 - frac)
    fail = rng.uniform(size=len(t)) < extra
    out["status"] = np.where(fail, ERROR_STATUS, out["status"].to_numpy())
    w = (t // window_s).astype(int)
    pick = rng.uniform(size=int(w.max()) + 1 if len(w) else 0) < 0.5
    return _split_by(out, pick[w] if len(w) else np.zeros(0, dtype=bool))


def low_traffic_canary(
    samples: pd.DataFrame, seed: int, rps: float = 100.0, share: float = 0.05
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 5 % canary of a service with 100 rps: the run thinned to ``rps``, ``share`` to the candidate."""
    rng = np.random.default_rng(seed)
    t = _seconds(samples)
    span = max(float(t.max()) if len(t) else 0.0, 1e-9)
    keep = rng.uniform(size=len(samples)) < min(1.0, rps * span / max(len(samples), 1))
    thin = samples[keep].reset_index(drop=True)
    return _split_by(thin, rng.uniform(size=len(thin)) < share)


@dataclass(frozen=True)
class Scenario:
    """Two arms of one version as real traffic makes them; ``rps`` of the synthetic run it needs."""

    name: str
    split: Split
    rps: float = 1000.0


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("concurrent 50/50", split_aa),
        Scenario("whole windows per arm", split_windows),
        Scenario("error bursts per arm", error_bursts_per_arm),
        Scenario("error bursts shared", error_bursts_shared),
        Scenario("latency bursts per arm", latency_bursts_per_arm),
        Scenario("slow drift", slow_drift),
        Scenario("low-traffic canary (5 % of 100 rps)", low_traffic_canary, rps=100.0),
    )
}


def with_effect(b: pd.DataFrame, kind: str, size: float, seed: int = 0) -> pd.DataFrame:
    """``b`` with a known effect: 'add_ms' (+size ms), 'scale_pct' (+size % to every latency, so to
    every percentile), 'errors_pts' (+size points of errors)."""
    out = b.copy()
    if kind == "add_ms":
        out["latency_ms"] = out["latency_ms"] + size
    elif kind == "scale_pct":
        out["latency_ms"] = out["latency_ms"] * (1 + size / 100)
    elif kind == "errors_pts":
        flip = np.random.default_rng(seed).uniform(size=len(out)) < size / 100
        out.loc[flip, "status"] = ERROR_STATUS
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
    split: Split = split_aa,
) -> Rate:
    """How often ``judge`` says worse over ``n`` replays (A/A, or with ``effect`` on the candidate).

    ``split`` makes the two arms: ``split_aa`` (concurrent, request by request), ``split_windows``
    (whole windows, arms at different times) or any scenario's split (``SCENARIOS``)."""
    hits = 0
    for i in range(n):
        a, b = split(data(seed + i), seed=10_000 + seed + i)
        if effect is not None:
            b = with_effect(b, *effect, seed=20_000 + seed + i)
        hits += bool(judge(a, b))
    return Rate(hits, n)


# ---------------------------------------------------------------------------------------------
# Judges


def ours(metrics: tuple[str, ...], margin: Margin | None = None, alpha: float = 0.05) -> Judge:
    """Our compare(): worse if any of ``metrics`` is worse."""
    return lambda a, b: compare(a, b, metrics=metrics, margin=margin, alpha=alpha).verdict == "worse"


def canary(
    metrics: tuple[str, ...] = ("p50", "p99", "error_rate"),
    margin: Margin | None = None,
    alpha: float = 0.05,
    window: float = 5.0,
) -> Judge:
    """Our canary with the anytime-valid test, looking after every window: rolled back at any look?"""

    def judge(a: pd.DataFrame, b: pd.DataFrame) -> bool:
        test = AnytimeTest(metrics=metrics, margin=margin or Margin(), alpha=alpha, window=window)
        looks = test.look_each_window(*window_tables(a, b, window, exceed=test.margin))
        return bool(looks) and looks[-1].action == "rollback"

    return judge


def canary_alpha_spending(
    looks: int = 5, metrics: tuple[str, ...] = ("p50", "p99", "error_rate"), margin: Margin | None = None
) -> Judge:
    """Our canary with the alpha-spending plan: ``looks`` equal steps, a look after each."""

    def judge(a: pd.DataFrame, b: pd.DataFrame) -> bool:
        return alpha_spending_rollback(a, b, looks, metrics, margin) is not None

    return judge


def alpha_spending_rollback(
    a: pd.DataFrame,
    b: pd.DataFrame,
    looks: int,
    metrics: tuple[str, ...] = ("p50", "p99", "error_rate"),
    margin: Margin | None = None,
) -> int | None:
    """The look (1-based) at which an alpha-spending canary of ``looks`` equal steps rolls back, or None."""
    start = min(a["timestamp"].min(), b["timestamp"].min())
    end = max(a["timestamp"].max(), b["timestamp"].max())
    test = SequentialTest(looks=looks, metrics=metrics, margin=margin or Margin())
    for k in range(1, looks + 1):
        cut = start + (end - start) * k / looks
        if test.look(a[a["timestamp"] <= cut], b[b["timestamp"] <= cut]).action == "rollback":
            return k
    return None


def kayenta(metric: str, window: float = 60.0) -> Judge:
    """Kayenta's classifier on per-``window`` points of ``metric`` (one minute: its usual interval;
    error_rate: the per-window error percentage)."""

    def judge(a: pd.DataFrame, b: pd.DataFrame) -> bool:
        origin = min(a["timestamp"].min(), b["timestamp"].min())
        wa, wb = window_table(a, window, origin), window_table(b, window, origin)
        if metric == "error_rate":
            va, vb = 100 * wa["errors"] / wa["count"], 100 * wb["errors"] / wb["count"]
        else:
            va, vb = wa[metric], wb[metric]
        return kayenta_mannwhitney(va.to_numpy(), vb.to_numpy()) == "worse"

    return judge


def flagger(metric: str, limit: float) -> Judge:
    """A fixed limit on the candidate's metric over the whole interval, no baseline (Flagger's
    request-duration check; for error_rate: the error % against a limit, its request-success-rate)."""
    if metric == "error_rate":
        return lambda a, b: threshold(100 * float(_errors(b).mean()) if len(b) else 0.0, limit) == "worse"
    q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}[metric]
    return lambda a, b: threshold(float(np.quantile(b["latency_ms"], q)), limit) == "worse"


def _errors(x: pd.DataFrame) -> pd.Series:
    status = x["status"]
    return (status <= 0) | (status >= 500)


def naive() -> Judge:
    """One Mann-Whitney U test on all per-request latencies."""
    return lambda a, b: naive_mannwhitney(a, b) == "worse"


def per_request_errors(margin_pts: float = 0.5, alpha: float = 0.05) -> Judge:
    """The old error-rate method: Newcombe's interval and Fisher's test on pooled counts, every
    request independent; worse when the interval's lower end (90 %) clears the margin."""

    def judge(a: pd.DataFrame, b: pd.DataFrame) -> bool:
        ea, eb = int(_errors(a).sum()), int(_errors(b).sum())
        lo, _ = confint_proportions_2indep(eb, len(b), ea, len(a), method="newcomb", compare="diff",
                                           alpha=2 * alpha)  # fmt: skip
        return bool(100 * lo > margin_pts)

    return judge


@dataclass(frozen=True)
class FalseAlarms:
    """A/A replays of one scenario: how often compare() called each metric (and any) worse, and how
    often the anytime-valid canary, looking after every window, rolled back."""

    per_metric: dict[str, Rate]
    any_metric: Rate
    canary: Rate


def false_alarms(
    data: Callable[[int], pd.DataFrame],
    split: Split,
    n: int = 200,
    seed: int = 0,
    metrics: tuple[str, ...] = ("p50", "p90", "p99", "error_rate"),
    margin: Margin | None = None,
    window: float = 5.0,
) -> FalseAlarms:
    """``n`` A/A replays of ``split`` on ``data``: compare() on the whole run and the canary's looks
    after every window, from one pair of window tables per replay."""
    margin = margin or Margin()
    hits = dict.fromkeys(metrics, 0)
    any_hits = canary_hits = 0
    for i in range(n):
        a, b = split(data(seed + i), seed=10_000 + seed + i)
        wa, wb = window_tables(a, b, window, exceed=margin)  # the exceedance counts: for the canary's looks
        res = compare_tables(wa, wb, metrics, window, margin)
        for r in res:
            hits[r.metric] += r.verdict == "worse"
        any_hits += res.verdict == "worse"
        looks = AnytimeTest(metrics=metrics, margin=margin, window=window).look_each_window(wa, wb)
        canary_hits += bool(looks) and looks[-1].action == "rollback"
    return FalseAlarms({m: Rate(h, n) for m, h in hits.items()}, Rate(any_hits, n), Rate(canary_hits, n))


# ---------------------------------------------------------------------------------------------
# Canaries


def canary_false_rollbacks(
    data: Callable[[int], pd.DataFrame],
    n: int = 200,
    looks: int = 5,
    metrics: tuple[str, ...] = ("p50", "p99", "error_rate"),
    seed: int = 0,
    margin: Margin | None = None,
) -> Rate:
    """A/A canaries with the alpha-spending plan, a look after each of ``looks`` equal steps: how
    often is one rolled back?"""
    hits = 0
    for i in range(n):
        a, b = split_aa(data(seed + i), seed=30_000 + seed + i)
        hits += alpha_spending_rollback(a, b, looks, metrics, margin) is not None
    return Rate(hits, n)


# ---------------------------------------------------------------------------------------------
# Time to roll back

FLAGGER_INTERVAL_S = 60.0  # Flagger's analysis.interval in its examples: 1m
FLAGGER_THRESHOLD = 5  # analysis.threshold: failed checks before rollback
FLAGGER_SUCCESS_PCT = 99.0  # the request-success-rate check's usual minimum


def canary_pair(
    seed: int, seconds: float = 300, rps: float = 1000, share: float = 0.05, median_ms: float = 20.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stable, canary) of a canary at ``share`` of ``rps`` for ``seconds``; the same version in both."""
    return split_aa(synthetic_run(seconds, rps, seed, median_ms), seed=50_000 + seed, share=share)


def _start(a: pd.DataFrame, b: pd.DataFrame) -> pd.Timestamp:
    return min(a["timestamp"].min(), b["timestamp"].min())


def rollback_anytime(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metrics: tuple[str, ...] = ("p99", "error_rate"),
    margin: Margin | None = None,
    window: float = 5.0,
) -> float:
    """Seconds of canary traffic until our anytime-valid canary (a look after every window) rolls
    back; inf when it never does."""
    test = AnytimeTest(metrics=metrics, margin=margin or Margin(), window=window)
    looks = test.look_each_window(*window_tables(a, b, window, exceed=test.margin))
    if not looks or looks[-1].action != "rollback" or looks[-1].window is None:
        return float("inf")
    return (looks[-1].window + 1) * window


def rollback_alpha_spending(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metrics: tuple[str, ...] = ("p99", "error_rate"),
    margin: Margin | None = None,
    every_s: float = 60.0,
) -> float:
    """Seconds of canary traffic until the alpha-spending canary (a look every ``every_s`` seconds,
    alpha shared equally over the run's looks) rolls back; inf when it never does."""
    start = _start(a, b)
    span = (max(a["timestamp"].max(), b["timestamp"].max()) - start).total_seconds()
    looks = max(int(span // every_s), 1)
    test = SequentialTest(looks=looks, metrics=metrics, margin=margin or Margin())
    for k in range(1, looks + 1):
        cut = start + pd.Timedelta(seconds=k * every_s)
        if test.look(a[a["timestamp"] < cut], b[b["timestamp"] < cut]).action == "rollback":
            return k * every_s
    return float("inf")


def rollback_flagger(
    a: pd.DataFrame,
    b: pd.DataFrame,
    p99_limit_ms: float,
    success_pct: float = FLAGGER_SUCCESS_PCT,
    interval_s: float = FLAGGER_INTERVAL_S,
    checks: int = FLAGGER_THRESHOLD,
) -> float:
    """Seconds of canary traffic until Flagger's analysis rolls back: every ``interval_s`` the
    canary's p99 and success rate over the last interval are checked against fixed limits (no
    baseline); a failed check counts, and ``checks`` failed checks roll back; inf when never."""
    start = _start(a, b)
    t = (b["timestamp"] - start).dt.total_seconds().to_numpy()
    lat, err = b["latency_ms"].to_numpy(), _errors(b).to_numpy()
    failed = 0
    for k in range(1, int(t.max() // interval_s) + 1 if len(t) else 1):
        inside = (t >= (k - 1) * interval_s) & (t < k * interval_s)
        if not inside.any():
            continue
        p99 = float(np.quantile(lat[inside], 0.99))
        success = 100.0 * (1.0 - float(err[inside].mean()))
        failed += threshold(p99, p99_limit_ms) == "worse" or success < success_pct
        if failed >= checks:
            return k * interval_s
    return float("inf")


@dataclass(frozen=True)
class RollbackTimes:
    """Seconds of canary traffic until rollback, one per replay (inf: not within the run)."""

    seconds: np.ndarray

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def rolled_back(self) -> Rate:
        return Rate(int(np.isfinite(self.seconds).sum()), len(self.seconds))


def rollback_times(
    judge: Callable[[pd.DataFrame, pd.DataFrame], float],
    n: int = 50,
    effect: tuple[str, float] | None = None,
    seed: int = 0,
    seconds: float = 300,
) -> RollbackTimes:
    """``judge``'s time to roll back over ``n`` canaries (5 % of 1000 rps for ``seconds``), the
    canary with ``effect`` (None: an A/A canary, where any rollback is a false one)."""
    out = []
    for i in range(n):
        a, b = canary_pair(seed + i, seconds=seconds)
        if effect is not None:
            b = with_effect(b, *effect, seed=60_000 + seed + i)
        out.append(judge(a, b))
    return RollbackTimes(np.asarray(out, dtype=float))
