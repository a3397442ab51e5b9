"""Per-window histogram input with request and error counts (telemetry such as Prometheus)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.metrics.dialects import arm_windows
from workbench.metrics.histogram import Histogram
from workbench.stats.compare import compare
from workbench.stats.windows import window_table

T0 = pd.Timestamp("2024-05-01T10:00:00Z")
EDGES = [0, 5, 10, 25, 50, 100, 250]


def _hist(median_ms: float, n: int = 400) -> Histogram:
    values = np.exp(np.log(median_ms) + 0.3 * np.linspace(-2, 2, n))
    return Histogram.from_samples(values.tolist(), EDGES)


def _frame(errors_per_window: int, n_windows: int = 12, requests: int = 400) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": [T0 + pd.Timedelta(seconds=5 * k) for k in range(n_windows)],
            "requests": float(requests),
            "errors": float(errors_per_window),
            "histogram": [_hist(20.0, requests) for _ in range(n_windows)],
        }
    )


def test_histogram_pairs_keep_zero_errors_and_triples_carry_them() -> None:
    h = _hist(20.0)
    pairs = window_table([(T0, h), (T0 + pd.Timedelta(seconds=5), h)], 5.0, T0)
    assert pairs["errors"].tolist() == [0.0, 0.0] and pairs["count"].tolist() == [400.0, 400.0]
    triples = window_table([(T0, h, 8), (T0 + pd.Timedelta(seconds=5), h, 2)], 5.0, T0)
    assert triples["errors"].tolist() == [8.0, 2.0]
    assert triples["p50"].tolist() == pairs["p50"].tolist()


def test_frame_with_counts_gives_requests_and_errors() -> None:
    frame = _frame(errors_per_window=20, n_windows=3, requests=400)
    frame.loc[1, "requests"] = 450.0  # the counter saw requests the histogram did not
    table = window_table(frame, 5.0, T0)
    assert table["count"].tolist() == [400.0, 450.0, 400.0]
    assert table["errors"].tolist() == [20.0, 20.0, 20.0]
    # two rows in one window are merged: counts added
    two = window_table(
        frame.assign(time=[T0, T0 + pd.Timedelta(seconds=1), T0 + pd.Timedelta(seconds=5)]), 5.0, T0
    )
    assert two["count"].tolist() == [850.0, 400.0] and two["errors"].tolist() == [40.0, 20.0]
    # a DatetimeIndex instead of a time column works too
    assert window_table(frame.set_index("time"), 5.0, T0).equals(table)


def test_error_rate_from_telemetry_windows() -> None:
    base, bad = _frame(errors_per_window=2), _frame(errors_per_window=80)  # 0.5 % vs 20 %
    result = compare(base, bad, metrics=("p50", "error_rate"), window=5.0)
    assert result["error_rate"].verdict == "worse"
    assert result["error_rate"].estimate == pytest.approx(19.5)
    assert result["p50"].verdict == "equivalent"  # identical latency histograms
    same = compare(base, _frame(errors_per_window=2), metrics=("error_rate",), window=5.0)
    assert same["error_rate"].verdict == "equivalent"


def test_bad_counts_are_named() -> None:
    with pytest.raises(ValueError, match="more errors than requests"):
        window_table(_frame(errors_per_window=500, n_windows=1), 5.0, T0)
    with pytest.raises(ValueError, match="'errors' must not be negative"):
        window_table(_frame(errors_per_window=-1, n_windows=1), 5.0, T0)
    with pytest.raises(ValueError, match="Histogram objects"):
        window_table(_frame(2, 1).assign(histogram=[1.0]), 5.0, T0)
    with pytest.raises(ValueError, match=r"\(timestamp, Histogram, errors\)"):
        window_table([(T0,)], 5.0, T0)


def test_arm_windows_merges_edges_of_a_dialect_frame() -> None:
    h = _hist(20.0, 100)
    rows = [
        {"time": T0, "source": s, "destination": "reviews", "version": "v1", "requests": 100.0, "rps": 20.0,
         "errors": e, "histogram": h}
        for s, e in (("a", 1.0), ("b", 3.0))
    ]  # fmt: skip
    rows.append({**rows[0], "version": "v3", "errors": 0.0})
    out = arm_windows(pd.DataFrame(rows), destination="reviews", version="v1")
    assert list(out.columns) == ["time", "requests", "errors", "histogram"]
    assert out[["requests", "errors"]].to_dict("records") == [{"requests": 200.0, "errors": 4.0}]
    assert out["histogram"].iloc[0].count == pytest.approx(200.0)
    assert window_table(out, 5.0, T0)["errors"].tolist() == [4.0]
    assert arm_windows(pd.DataFrame(rows), version="v9").empty
