"""Histogram bucket math against hand-computed numbers, and a property test against exact quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.metrics.histogram import Histogram, merge


@pytest.fixture
def hist() -> Histogram:
    """100 observations: 10 in [0, 10], 30 in [10, 20], 60 in [20, 40] (cumulative 10, 40, 100)."""
    return Histogram.from_edges([0, 10, 20, 40], [10, 30, 60])


def test_interpolates_linearly_inside_the_bucket(hist: Histogram) -> None:
    assert hist.count == 100
    assert hist.quantile(0.25) == pytest.approx(15.0)  # rank 25: 10 + (25 - 10) / 30 * 10
    assert hist.quantile(0.50) == pytest.approx(20 + 20 * 10 / 60)  # rank 50: 23.33
    assert hist.quantile(0.40) == pytest.approx(20.0)  # rank 40 ends bucket [10, 20]
    assert hist.quantile(0.99) == pytest.approx(20 + 20 * 59 / 60)


def test_first_and_last_bucket(hist: Histogram) -> None:
    assert hist.quantile(0.05) == pytest.approx(5.0)  # rank 5 of 10 in [0, 10]
    assert hist.quantile(0.0) == 0.0
    assert hist.quantile(1.0) == 40.0
    exact = Histogram.from_edges([0, 10, 20, 40], [10, 30, 60], min=2.0, max=35.0)
    assert exact.quantile(0.05) == pytest.approx(2 + 0.5 * 8)  # first bucket starts at the true min
    assert exact.quantile(0.0) == 2.0 and exact.quantile(1.0) == 35.0
    assert exact.quantile(0.99) == pytest.approx(20 + 15 * 59 / 60)  # last bucket ends at the true max


def test_empty_buckets_and_gaps_are_skipped() -> None:
    gappy = Histogram([0, 5, 30], [1, 10, 40], [0, 4, 4])  # [0,1] empty, nothing in (10, 30)
    assert gappy.quantile(0.0) == 5.0
    assert gappy.quantile(0.5) == pytest.approx(10.0)
    assert gappy.quantile(0.75) == pytest.approx(35.0)


def test_count_mean_and_validation(hist: Histogram) -> None:
    assert hist.mean == pytest.approx((10 * 5 + 30 * 15 + 60 * 30) / 100)  # bucket mid-points
    with_sum = Histogram.from_edges([0, 10], [4], sum=12.0)
    assert with_sum.mean == 3.0
    empty = Histogram.from_edges([0, 10], [0])
    assert math.isnan(empty.quantile(0.5)) and math.isnan(empty.mean)
    with pytest.raises(ValueError, match="within"):
        hist.quantile(1.5)
    with pytest.raises(ValueError, match="overlap"):
        Histogram([0, 5], [10, 20], [1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        Histogram.from_edges([0, 1], [-1])
    with pytest.raises(ValueError, match="min"):
        Histogram.from_edges([0, 10, 20], [0, 5], min=3.0)  # the first occupied bucket is [10, 20]


def test_merge_adds_counts_and_is_not_averaging_percentiles() -> None:
    edges = [0, 10, 20, 100]
    fast = Histogram.from_edges(edges, [90, 10, 0])
    slow = Histogram.from_edges(edges, [0, 10, 90])
    merged = merge(fast, slow)
    assert merged.counts.tolist() == [90, 20, 90]
    assert merged.quantile(0.5) == pytest.approx(15.0)  # rank 100: 10 + (100 - 90) / 20 * 10
    assert merged.quantile(0.99) == pytest.approx(20 + 80 * 88 / 90)
    assert fast.quantile(0.5) == pytest.approx(50 / 9)
    assert slow.quantile(0.5) == pytest.approx(20 + 80 * 40 / 90)
    averaged = (fast.quantile(0.5) + slow.quantile(0.5)) / 2  # the wrong way: 30.56 ms
    assert averaged == pytest.approx(30.5556, abs=1e-4) and abs(averaged - merged.quantile(0.5)) > 15
    averaged_p99 = (fast.quantile(0.99) + slow.quantile(0.99)) / 2  # 19 and 99.1: 59.1 vs 98.2 merged
    assert abs(averaged_p99 - merged.quantile(0.99)) > 39


def test_merge_equals_binning_all_samples_at_once() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.gamma(2.0, 3.0, 500), rng.gamma(5.0, 2.0, 300)
    edges = np.linspace(0, 80, 41)
    merged = merge(Histogram.from_samples(a, edges), Histogram.from_samples(b, edges))
    together = Histogram.from_samples(np.concatenate([a, b]), edges)
    assert merged.counts.tolist() == together.counts.tolist()
    assert merged.min == together.min and merged.max == together.max
    assert merged.sum == pytest.approx(together.sum)
    for q in (0.5, 0.9, 0.99):
        assert merged.quantile(q) == pytest.approx(together.quantile(q))


def test_merge_rebins_different_buckets_onto_the_union_of_edges() -> None:
    a = Histogram.from_edges([0, 10, 20], [10, 10])
    b = Histogram.from_edges([0, 5, 20], [5, 15])
    merged = merge(a, b)
    assert merged.edges.tolist() == [[0, 5], [5, 10], [10, 20]]
    # a's [0, 10] splits 5 + 5; b's [5, 20] splits 15 * 5/15 = 5 and 15 * 10/15 = 10.
    assert merged.counts.tolist() == [10, 10, 20] and merged.count == 40
    # Uniform spreading keeps each input's own quantiles: a alone, re-binned, answers the same.
    rebinned_a = merge(a, Histogram.from_edges([0, 5, 20], [0, 0]))
    for q in (0.1, 0.3, 0.5, 0.8):
        assert rebinned_a.quantile(q) == pytest.approx(a.quantile(q))
    assert merged.min is None  # exact extremes only when every input has them


def test_merge_keeps_point_buckets_and_refuses_to_split_an_occupied_inf_bucket() -> None:
    point = Histogram([2, 2], [2, 4], [1, 3], min=2.0, max=4.0)  # nighthawk-style point at the min
    other = Histogram.from_edges([2, 3, 4], [2, 2], min=2.0, max=4.0)
    merged = merge(point, other)
    assert merged.count == 8 and merged.edges.tolist() == [[2, 2], [2, 3], [3, 4]]
    assert merged.counts.tolist() == [1, 1.5 + 2, 1.5 + 2]
    coarse = Histogram.from_prometheus_buckets([0.1, "+Inf"], [8, 10], unit="s")
    fine = Histogram.from_prometheus_buckets([0.1, 0.5, "+Inf"], [8, 9, 10], unit="s")
    with pytest.raises(ValueError, match="open bucket"):
        merge(coarse, fine)
    same = merge(coarse, coarse)
    assert same.counts.tolist() == [16, 4]


def test_prometheus_cumulative_buckets_including_inf() -> None:
    h = Histogram.from_prometheus_buckets(["0.025", "0.005", "+Inf", "0.01", "0.05"], [9, 2, 10, 6, 10])
    assert h.edges.tolist() == [[0, 5], [5, 10], [10, 25], [25, 50], [50, math.inf]]
    assert h.counts.tolist() == [2, 4, 3, 1, 0]
    assert h.quantile(0.5) == pytest.approx(8.75)  # histogram_quantile(0.5) = 0.00875 s
    assert h.quantile(0.95) == pytest.approx(37.5)
    assert h.quantile(0.1) == pytest.approx(2.5)  # rank 1 of 2 in the lowest bucket, which starts at 0
    tail = Histogram.from_prometheus_buckets([0.5, 1, 5, math.inf], [2, 5, 8, 10], unit="ms")
    assert tail.quantile(0.9) == 5.0  # rank 9 lies in +Inf: the bucket's lower edge, as Prometheus
    assert math.isnan(tail.mean)
    with pytest.raises(ValueError, match=r"\+Inf"):
        Histogram.from_prometheus_buckets([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="decrease"):
        Histogram.from_prometheus_buckets([0.1, 0.2, "+Inf"], [5, 3, 6])
    with pytest.raises(ValueError, match="unit"):
        Histogram.from_prometheus_buckets([0.1, "+Inf"], [1, 1], unit="minutes")
    jitter = Histogram.from_prometheus_buckets([0.1, 0.2, "+Inf"], [5.0, 4.999999999999999, 6.0])
    assert jitter.counts.tolist() == [5, 0, 1]  # rate() float noise is ironed out


def test_from_fortio_data_keeps_gaps_and_exact_extremes() -> None:
    data = {
        "Count": 10,
        "Min": 0.0005,
        "Max": 0.0042,
        "Sum": 0.0175,
        "Data": [
            {"Start": 0.0005, "End": 0.001, "Percent": 30, "Count": 3},
            {"Start": 0.001, "End": 0.002, "Percent": 80, "Count": 5},
            {"Start": 0.003, "End": 0.0042, "Percent": 100, "Count": "2"},
        ],
    }
    h = Histogram.from_fortio_data(data)
    assert h.count == 10 and (h.min, h.max) == (0.5, 4.2) and h.mean == pytest.approx(1.75)
    assert h.quantile(0.5) == pytest.approx(1.4) and h.quantile(0.9) == pytest.approx(3.6)
    assert Histogram.from_fortio_data(data["Data"]).min is None
    with pytest.raises(ValueError, match="empty histogram"):
        Histogram.from_fortio_data([])
    with pytest.raises(ValueError, match="bucket 0: Count: expected a number, got None"):
        Histogram.from_fortio_data([{"Start": 0.1, "End": 0.2}])


def test_dict_round_trip_and_equality(hist: Histogram) -> None:
    h = Histogram.from_prometheus_buckets([0.1, "+Inf"], [3, 4])
    assert Histogram.from_dict(h.to_dict()) == h
    assert Histogram.from_dict(hist.to_dict()) == hist and hist != h


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=300),
    inner=st.lists(st.floats(1, 999, allow_nan=False), max_size=12, unique=True),
    q=st.floats(0, 1),
    exact_extremes=st.booleans(),
)
def test_quantile_lies_in_the_bucket_of_the_exact_sample_quantile(
    samples: list[float], inner: list[float], q: float, exact_extremes: bool
) -> None:
    edges = np.unique([0.0, *inner, 1000.0])
    binned = Histogram.from_samples(samples, edges)
    h = binned if exact_extremes else Histogram.from_edges(edges, binned.counts)
    exact = float(np.quantile(samples, q, method="inverted_cdf"))  # the ceil(q n)-th smallest
    i = min(int(np.searchsorted(edges, exact, side="right")) - 1, len(edges) - 2)  # np.histogram's bin
    value = h.quantile(q)
    tol = 1e-9 * max(1.0, edges[i + 1])
    assert edges[i] - tol <= value <= edges[i + 1] + tol
