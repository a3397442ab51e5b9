"""compare(): windows as the unit, verdicts against margins, error counts, no-data policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from workbench.metrics.histogram import Histogram
from workbench.stats import Margin, compare
from workbench.stats.boundaries import FixedSample
from workbench.stats.compare import decide
from workbench.stats.estimates import Estimate
from workbench.stats.windows import window_table


def _arms(
    seed: int,
    seconds: int = 60,
    rps: int = 400,
    shift_ms: float = 0.0,
    err_b: float = 0.0,
    scale: float = 1.0,
):
    """Two arms live at the same time: both see the same bursty (AR(1)) load factor, as under a split.
    The candidate (second) arm: latency x ``scale`` + ``shift_ms``, errors on ``err_b`` of requests."""
    rng = np.random.default_rng(seed)
    steps = seconds * 4
    f = np.zeros(steps)
    for i in range(1, steps):
        f[i] = 0.8 * f[i - 1] + rng.normal(0, 0.12)
    arms = []
    for arm in range(2):
        n = seconds * rps
        t = np.sort(rng.uniform(0, seconds, n))
        lat = rng.lognormal(np.log(2.0), 0.45, n) * np.exp(f[(t * 4).astype(int)])
        status = np.full(n, 200)
        if arm == 1:
            lat = lat * scale + shift_ms
            status[rng.uniform(size=n) < err_b] = 503
        ts = pd.to_datetime(1_700_000_000 + t, unit="s", utc=True)
        arms.append(pd.DataFrame({"timestamp": ts, "latency_ms": lat, "status": status}))
    return arms


def test_window_quantiles_are_numpys_per_window() -> None:
    a, _ = _arms(1, seconds=12)
    origin = a["timestamp"].min()
    table = window_table(a, 5.0, origin)
    w = ((a["timestamp"] - origin).dt.total_seconds() // 5).astype(int)
    for window, group in a.groupby(w):
        row = table.loc[window]
        assert row["count"] == len(group)
        # float32 precision by design (windows.py): 1e-7 relative
        assert row["p99"] == pytest.approx(np.quantile(group["latency_ms"], 0.99), rel=1e-6)
        assert row["p50"] == pytest.approx(np.median(group["latency_ms"]), rel=1e-6)
        assert row["mean"] == pytest.approx(group["latency_ms"].mean(), rel=1e-12)


def test_known_effect_is_worse_and_the_interval_covers_it() -> None:
    a, b = _arms(7, shift_ms=3.0)
    res = compare(a, b, metrics=("p50", "p90", "error_rate"))
    assert res.paired
    p50 = res["p50"]
    assert p50.verdict == "worse" and p50.ci.low < 3.0 < p50.ci.high
    assert p50.explain().startswith("p50 rose 3") and p50.explain().endswith("worse")
    assert res["error_rate"].verdict == "equivalent"
    assert res.verdict == "worse"
    frame = res.to_frame()
    assert list(frame.index) == ["p50", "p90", "error_rate"]
    assert (frame["pvalue_adjusted"] >= frame["pvalue"] - 1e-12).all()


def test_aa_rarely_says_worse() -> None:
    worse = sum(compare(*_arms(seed), metrics=("p50", "p99")).verdict == "worse" for seed in range(100, 160))
    lo, _ = proportion_confint(worse, 60, alpha=0.05, method="wilson")
    assert lo <= 0.05, f"A/A said worse {worse}/60 times"


def test_error_rate_is_window_clustered_and_never_narrower_than_newcombe() -> None:
    a, b = _arms(3, err_b=0.02)
    r = compare(a, b, metrics=("error_rate",))["error_rate"]
    ea, na = int((a["status"] >= 500).sum()), len(a)
    eb, nb = int((b["status"] >= 500).sum()), len(b)
    assert r.estimate == pytest.approx(100 * (eb / nb - ea / na)) and r.unit == "pts"
    # By hand: per-window residuals of each arm's ratio estimator, paired, t with n - 1 df at the
    # one-sided level alpha (one metric: Holm = the test itself), AR(1)-inflated.
    wa, wb = (window_table(x, 5.0, min(a["timestamp"].min(), b["timestamp"].min())) for x in (a, b))
    ra = (wa["errors"] - ea / na * wa["count"]) / wa["count"].mean()
    rb = (wb["errors"] - eb / nb * wb["count"]) / wb["count"].mean()
    z = (rb - ra).to_numpy()
    rho = min(max(np.corrcoef(z[:-1], z[1:])[0, 1], 0.0), 0.9)
    se = z.std(ddof=1) / np.sqrt(len(z)) * np.sqrt((1 + rho) / (1 - rho))
    half = 100 * se * t_dist.ppf(0.95, len(z) - 1)
    lo, hi = confint_proportions_2indep(eb, nb, ea, na, method="newcomb", compare="diff", alpha=0.1)
    assert r.ci == pytest.approx((min(r.estimate - half, 100 * lo), max(r.estimate + half, 100 * hi)))
    assert r.ci.low <= 100 * lo and r.ci.high >= 100 * hi  # never narrower than per request
    assert r.confidence == pytest.approx(0.9) and "window-clustered" in r.method
    assert r.verdict == "worse" and r.pvalue < 1e-6 and r.pvalue_adjusted == r.pvalue
    assert "error rate rose" in r.explain() and "between-window variance" in r.explain()


def test_rare_errors_fall_back_to_the_per_request_score_interval() -> None:
    """No errors at all: the windows' variance is 0, the interval is Newcombe's, not [0, 0]."""
    a, b = _arms(4, seconds=30)
    r = compare(a, b, metrics=("error_rate", "p50"))["error_rate"]
    lo, hi = confint_proportions_2indep(0, len(b), 0, len(a), method="newcomb", compare="diff",
                                        alpha=2 * 0.05 / 2)  # fmt: skip
    assert r.estimate == 0 and r.ci == pytest.approx((100 * lo, 100 * hi))
    assert r.ci.low < 0 < r.ci.high and "score interval decides" in r.method
    assert "per-request score interval" in r.explain()


def test_error_bursts_in_one_arm_are_not_called_worse() -> None:
    """A/A with error bursts hitting one arm at a time (500 rps per arm, 60 s, default margins): the
    old per-request test (Newcombe/Fisher on pooled counts) cries wolf; windows as the unit do not,
    neither compare() nor the canary looking after every window (the slow tests: 200 replays)."""
    from workbench.stats import calibration as cal

    data = lambda seed: cal.synthetic_run(seconds=60, rps=1000, seed=seed)  # noqa: E731
    old = cal.replay(data, cal.per_request_errors(), n=30, seed=70, split=cal.error_bursts_per_arm)
    ours = cal.false_alarms(data, cal.error_bursts_per_arm, n=30, seed=70)
    assert old.rate >= 0.2, old  # the bursts are real: a per-request test sees them as a difference
    assert ours.per_metric["error_rate"].hits <= 1 and ours.canary.hits <= 1, ours


@pytest.mark.parametrize(
    ("policy", "verdict"), [("fail", "worse"), ("pass", "equivalent"), ("inconclusive", "inconclusive")]
)
def test_no_traffic_follows_the_no_data_policy(policy: str, verdict: str) -> None:
    a, b = _arms(5, seconds=20)
    empty = b.iloc[0:0]
    res = compare(a, empty, no_data=policy)  # type: ignore[arg-type]
    assert {r.verdict for r in res} == {verdict}
    assert "no traffic in the candidate arm" in res["error_rate"].explain()


def test_margin_in_percent_of_the_baseline() -> None:
    assert Margin(latency_ms=1, latency_pct=5).latency(100.0) == 5.0
    assert Margin(latency_ms=1, latency_pct=5).latency(4.0) == 1.0


def test_arms_at_different_times_are_compared_unpaired() -> None:
    a, b = _arms(11, seconds=30)
    b = b.assign(timestamp=b["timestamp"] + pd.Timedelta("10min"))
    res = compare(a, b, metrics=("p50",))
    assert not res.paired and "Welch" in res["p50"].method


def test_per_window_histograms_agree_with_samples() -> None:
    a, b = _arms(13, shift_ms=3.0)
    edges = np.concatenate([[0], np.geomspace(0.05, 200, 400)])

    def per_window(df: pd.DataFrame) -> pd.Series:
        w = df["timestamp"].dt.floor("1s")
        return pd.Series(
            {t: Histogram.from_samples(g["latency_ms"].to_numpy(), edges) for t, g in df.groupby(w)}
        )

    from_hist = compare(per_window(a), per_window(b), metrics=("p50",))["p50"]
    from_samples = compare(a, b, metrics=("p50",))["p50"]
    assert from_hist.verdict == from_samples.verdict == "worse"
    assert from_hist.estimate == pytest.approx(from_samples.estimate, rel=0.05)


def test_bad_arguments_are_clear() -> None:
    a, b = _arms(1, seconds=10)
    with pytest.raises(ValueError, match="unknown metrics"):
        compare(a, b, metrics=("p42",))
    with pytest.raises(ValueError, match="alpha must be between"):
        compare(a, b, alpha=0.7)
    with pytest.raises(ValueError, match="samples need columns"):
        compare(a.drop(columns="status"), b)


def test_holm_matches_statsmodels(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from statsmodels.stats.multitest import multipletests

    # multipletests runs gc.collect() on every call (~0.3 s each in a full test process)
    monkeypatch.setattr(gc, "collect", lambda *args: 0)

    from workbench.stats.multiple import holm

    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(size=rng.integers(1, 8)) ** 3
        assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_holm_levels_match_statsmodels_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from statsmodels.stats.multitest import multipletests

    from workbench.stats.multiple import holm_levels

    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.uniform(size=rng.integers(1, 8)) ** 4
        rejected, level = holm_levels(p, 0.05)
        assert rejected.tolist() == multipletests(p, alpha=0.05, method="holm")[0].tolist()
        # the level each was decided at agrees with its decision
        assert ((p <= level) | ~rejected).all() and (rejected | (p > level)).all()


def _estimate(metric: str, est: float, se: float) -> Estimate:
    return Estimate(metric, est, se, 30.0, 10.0, 10.0 + est, 31, "test")


def test_holm_step_down_decides_and_intervals_agree() -> None:
    """Two metrics each beyond the margin with one-sided p of about 0.02 and 0.04: Bonferroni (alpha/2
    each) calls only the first worse, Holm's step-down both; each interval at its decided level."""
    margin = Margin(latency_ms=1.0, latency_pct=0.0)
    t30 = t_dist(30)
    found = {"p50": _estimate("p50", 1 + t30.isf(0.02), 1.0), "p99": _estimate("p99", 1 + t30.isf(0.04), 1.0)}
    res = decide(found, margin, 0.05, FixedSample(), "inconclusive")
    assert res["p50"].pvalue == pytest.approx(0.02) and res["p99"].pvalue == pytest.approx(0.04)
    assert [res[m].verdict for m in ("p50", "p99")] == ["worse", "worse"]
    assert res["p50"].pvalue_adjusted == pytest.approx(0.04) and res["p99"].pvalue_adjusted == pytest.approx(
        0.04
    )
    assert res["p50"].confidence == pytest.approx(1 - 2 * 0.025) and res["p99"].confidence == pytest.approx(
        0.9
    )
    for r in res.values():
        assert r.ci.low > r.margin  # the interval says what decided
    # Bonferroni at alpha / 2 would not have called p99 worse: its interval at 1 - alpha reaches the margin
    assert found["p99"].interval(0.025, FixedSample()).low < 1.0
    # with a third metric far from worse, p50 (p = 0.01 <= alpha / 3) is rejected first, then p99
    # (0.04 > alpha / 2) stops the step-down: p99 and the third are decided at alpha / 2
    found["p50"] = _estimate("p50", 1 + t30.isf(0.01), 1.0)
    found["mean"] = _estimate("mean", 0.0, 0.1)
    res = decide(found, margin, 0.05, FixedSample(), "inconclusive")
    assert res["p50"].verdict == "worse" and res["p50"].confidence == pytest.approx(1 - 2 * 0.05 / 3)
    assert res["p99"].verdict == "inconclusive" and res["p99"].ci.low < 1.0 < res["p99"].ci.high
    assert res["p99"].confidence == pytest.approx(1 - 2 * 0.025) and res["p99"].pvalue_adjusted > 0.05
    assert res["mean"].verdict == "equivalent" and res["mean"].confidence == pytest.approx(1 - 2 * 0.025)


POWER_CASES = [
    ("p50", Margin(latency_ms=0.5, latency_pct=0.0), {"shift_ms": 1.0}),
    ("p99", Margin(latency_ms=0.0, latency_pct=2.5), {"scale": 1.10}),
    ("error_rate", Margin(error_rate_pct=0.5), {"err_b": 0.01}),
]
POWER_IDS = ["p50+1ms@0.5ms", "p99+10%@2.5%", "errors+1pt@0.5pt"]


def _power(metric: str, margin: Margin, effect: dict, seeds: range) -> float:
    """How often ``compare`` calls a known effect worse: 400 rps per arm for 60 s, concurrent arms."""
    said = [compare(*_arms(s, **effect), metrics=(metric,), margin=margin)[metric].verdict for s in seeds]
    return said.count("worse") / len(said)


@pytest.mark.slow
@pytest.mark.parametrize(("metric", "margin", "effect"), POWER_CASES, ids=POWER_IDS)
def test_power_at_400_rps_per_arm(metric: str, margin: Margin, effect: dict) -> None:
    power = _power(metric, margin, effect, range(1000, 1200))
    assert power >= 0.9, (metric, power)


def test_power_quick() -> None:
    """Fast tier: the same three claims, 25 replays each."""
    for metric, margin, effect in POWER_CASES:
        power = _power(metric, margin, effect, range(2000, 2025))
        assert power >= 0.9, (metric, power)
