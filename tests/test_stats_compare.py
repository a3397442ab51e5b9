"""compare(): windows as the unit, verdicts against margins, error counts, no-data policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from workbench.metrics.histogram import Histogram
from workbench.stats import Margin, compare
from workbench.stats.windows import window_table


def _arms(seed: int, seconds: int = 60, rps: int = 400, shift_ms: float = 0.0, err_b: float = 0.0):
    """Two arms live at the same time: both see the same bursty (AR(1)) load factor, as under a split."""
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
            lat = lat + shift_ms
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


def test_error_rate_uses_newcombe_and_fisher() -> None:
    a, b = _arms(3, err_b=0.02)
    r = compare(a, b, metrics=("error_rate",))["error_rate"]
    ea, na = int((a["status"] >= 500).sum()), len(a)
    eb, nb = int((b["status"] >= 500).sum()), len(b)
    lo, hi = confint_proportions_2indep(eb, nb, ea, na, method="newcomb", compare="diff", alpha=0.1)
    assert r.ci == pytest.approx((100 * lo, 100 * hi))
    assert r.estimate == pytest.approx(100 * (eb / nb - ea / na)) and r.unit == "pts"
    assert r.verdict == "worse" and r.pvalue < 1e-6
    assert "error rate rose" in r.explain()


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
