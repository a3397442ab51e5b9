"""Latency histograms: bucket math for generators and telemetry that only report buckets.

fortio (``DurationHistogram.Data``), nighthawk's fortio-format output and Prometheus ``_bucket``
series give counts per latency bucket, not per-request samples. A :class:`Histogram` holds such
buckets in milliseconds and answers the questions the statistics need — count, mean, quantiles —
without ever averaging percentiles: histograms are combined by adding counts (:func:`merge`).

Quantile convention (:meth:`Histogram.quantile`): Prometheus ``histogram_quantile``. The rank
``q * count`` selects the first bucket whose cumulative count reaches it, and the value is linearly
interpolated inside that bucket, i.e. the bucket's observations are assumed uniformly spread over
it. This is also fortio's ``CalcPercentile`` everywhere except inside the lowest bucket, where
fortio starts the ramp at rank 1 (it treats the minimum as one observation); on the fortio 1.3.1
fixtures both agree with the files' own percentiles to 1e-15 s. When the exact minimum/maximum are
known, the bucket edges are clipped to them (fortio's first bucket already starts at the minimum
and its last ends at the maximum). A rank that falls in an open ``+Inf`` bucket answers that
bucket's lower edge (Prometheus' choice) unless the exact maximum is known.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Histogram", "merge"]

TO_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001}
_REL_TOL = 1e-9  # float slack when checking edges and exact min/max against buckets


def _floats(values: Iterable[Any], name: str) -> np.ndarray:
    try:
        arr = np.asarray(list(values), dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat list of numbers")
    return arr


def _slack(*values: float) -> float:
    finite = [abs(v) for v in values if math.isfinite(v)]
    return _REL_TOL * max([1.0, *finite])


@dataclass(frozen=True, eq=False)
class Histogram:
    """Latency buckets in ms with their counts; optionally the exact min, max and sum (ms).

    Buckets are ``[lower[i], upper[i]]``, sorted and non-overlapping (``upper[i] <= lower[i+1]``);
    gaps between buckets hold no observations and zero-width buckets are point masses (nighthawk
    writes its minimum that way). Only the last upper edge may be ``inf``. Counts may be
    fractional after re-binning (:func:`merge`).
    """

    lower: np.ndarray
    upper: np.ndarray
    counts: np.ndarray
    min: float | None = None
    max: float | None = None
    sum: float | None = None

    def __post_init__(self) -> None:
        lower = _floats(self.lower, "lower edges")
        upper = _floats(self.upper, "upper edges")
        counts = _floats(self.counts, "counts")
        if not len(lower) == len(upper) == len(counts):
            raise ValueError(
                f"lower edges, upper edges and counts differ in length ({len(lower)}, {len(upper)}, "
                f"{len(counts)})"
            )
        if np.isnan(lower).any() or np.isinf(lower).any() or np.isnan(upper).any():
            raise ValueError("bucket edges must be numbers (lower edges finite)")
        if np.isinf(upper[:-1]).any() or (len(upper) and upper[-1] == -np.inf):
            raise ValueError("only the last bucket may be open-ended (+Inf)")
        if (~np.isfinite(counts)).any() or (counts < 0).any():
            raise ValueError("counts must be finite and >= 0")
        if (upper < lower).any():
            i = int(np.argmax(upper < lower))
            raise ValueError(f"bucket {i}: upper edge {upper[i]:g} below lower edge {lower[i]:g}")
        if (upper[:-1] > lower[1:]).any():
            i = int(np.argmax(upper[:-1] > lower[1:]))
            raise ValueError(
                f"buckets {i} and {i + 1} overlap or are unsorted ([{lower[i]:g}, {upper[i]:g}] then "
                f"[{lower[i + 1]:g}, {upper[i + 1]:g}])"
            )
        for name in ("min", "max", "sum"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"{name} must be a finite number (got {value})")
                object.__setattr__(self, name, value)
        for name, arr in (("lower", lower), ("upper", upper), ("counts", counts)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        self._check_extremes()

    def _check_extremes(self) -> None:
        """The exact min/max must lie in the first/last non-empty bucket."""
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} exceeds max {self.max:g}")
        full = np.flatnonzero(self.counts > 0)
        if not len(full):
            return
        first, last = int(full[0]), int(full[-1])
        if self.min is not None:
            lo, hi = self.lower[first], self.upper[first]
            if not lo - _slack(lo) <= self.min <= hi + _slack(hi):
                raise ValueError(f"min {self.min:g} lies outside the first non-empty bucket [{lo:g}, {hi:g}]")
        if self.max is not None:
            lo, hi = self.lower[last], self.upper[last]
            if not lo - _slack(lo) <= self.max <= hi + _slack(hi):
                raise ValueError(f"max {self.max:g} lies outside the last non-empty bucket [{lo:g}, {hi:g}]")

    # -- constructors -------------------------------------------------------------------------------

    @classmethod
    def from_edges(
        cls,
        edges: Sequence[float],
        counts: Sequence[float],
        *,
        min: float | None = None,
        max: float | None = None,
        sum: float | None = None,
    ) -> Histogram:
        """Contiguous buckets from ``n + 1`` increasing edges (ms) and ``n`` counts."""
        e = _floats(edges, "edges")
        if len(e) != len(counts) + 1:
            raise ValueError(f"{len(e)} edges need {len(e) - 1} counts (got {len(counts)})")
        return cls(e[:-1], e[1:], counts, min=min, max=max, sum=sum)

    @classmethod
    def from_samples(cls, values_ms: Sequence[float], edges: Sequence[float]) -> Histogram:
        """Bin per-request latencies (ms) into contiguous buckets, keeping exact min, max and sum."""
        values = _floats(values_ms, "samples")
        e = _floats(edges, "edges")
        if len(values) and (values.min() < e[0] or values.max() > e[-1]):
            raise ValueError(f"samples span [{values.min():g}, {values.max():g}] beyond the edges")
        counts, _ = np.histogram(values, bins=e)
        if not len(values):
            return cls.from_edges(e, counts)
        return cls.from_edges(e, counts, min=values.min(), max=values.max(), sum=values.sum())

    @classmethod
    def from_prometheus_buckets(
        cls, le_values: Sequence[float | str], cumulative_counts: Sequence[float], unit: str = "s"
    ) -> Histogram:
        """Buckets from Prometheus ``le`` upper bounds and their cumulative counts (incl. ``+Inf``).

        ``unit`` is the unit of ``le`` ("s", "ms" or "us"); the lowest bucket starts at 0 (latencies
        are not negative). Like Prometheus, tiny decreases in the cumulative counts (float error of
        ``rate()``) are ironed out; real decreases are an error.
        """
        if unit not in TO_MS:
            raise ValueError(f"unit must be one of {', '.join(TO_MS)} (got {unit!r})")
        le = _floats(le_values, "le")  # float("+Inf") parses the exposition format's spelling
        cum = _floats(cumulative_counts, "cumulative counts")
        if len(le) != len(cum) or not len(le):
            raise ValueError(f"need as many cumulative counts as le bounds (got {len(le)} and {len(cum)})")
        order = np.argsort(le, kind="stable")
        le, cum = le[order], cum[order]
        if le[-1] != np.inf:
            raise ValueError("missing the le=+Inf bucket (it carries the total count)")
        if (np.diff(le) == 0).any():
            raise ValueError("duplicate le bounds")
        if le[0] <= 0:
            raise ValueError(f"le bounds must be > 0 for latencies (got {le[0]:g})")
        drops = np.maximum.accumulate(cum) - cum
        if (drops > _slack(float(np.abs(cum).max()))).any():
            raise ValueError("cumulative counts decrease with le (not cumulative bucket counts?)")
        cum = np.maximum.accumulate(cum)
        edges = np.concatenate([[0.0], le]) * TO_MS[unit]
        return cls.from_edges(edges, np.diff(np.concatenate([[0.0], cum])))

    @classmethod
    def from_fortio_data(cls, data: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> Histogram:
        """From fortio's histogram ``Data`` (``Start``/``End``/``Count``, seconds).

        ``data`` is the ``Data`` list, or the whole ``DurationHistogram`` object, whose ``Min``,
        ``Max`` and ``Sum`` then become the exact min, max and sum. Counts may be numeric strings
        (nighthawk writes uint64 that way); ``Percent`` is ignored (it follows from the counts).
        """
        extremes: dict[str, float | None] = {"min": None, "max": None, "sum": None}
        if isinstance(data, Mapping):
            for key in extremes:
                value = data.get(key.capitalize())
                try:
                    extremes[key] = None if value is None else 1000.0 * float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{key.capitalize()}: expected a number, got {value!r}") from None
            buckets = data.get("Data")
        else:
            buckets = data
        if not buckets:
            raise ValueError("empty histogram (no buckets)")
        rows = []
        for i, bucket in enumerate(buckets):
            if not isinstance(bucket, Mapping):
                raise ValueError(f"bucket {i}: expected an object with Start, End and Count")
            row = []
            for key in ("Start", "End", "Count"):
                value = bucket.get(key)
                try:
                    row.append(float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"bucket {i}: {key}: expected a number, got {value!r:.40}") from None
            rows.append(tuple(row))
        start, end, count = (np.array(col) for col in zip(*rows, strict=True))
        return cls(start * 1000.0, end * 1000.0, count, **extremes)

    # -- answers ------------------------------------------------------------------------------------

    @property
    def count(self) -> float:
        """Number of observations (a float: re-binned counts may be fractional)."""
        return float(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:
        """``(n, 2)`` array of ``[lower, upper]`` per bucket (ms)."""
        return np.column_stack([self.lower, self.upper])

    def _clipped(self) -> tuple[np.ndarray, np.ndarray]:
        """Bucket edges clipped to the exact min/max where known."""
        lo = self.min if self.min is not None else -np.inf
        hi = self.max if self.max is not None else np.inf
        return np.clip(self.lower, lo, hi), np.clip(self.upper, lo, hi)

    @property
    def mean(self) -> float:
        """Exact mean when the sum is known, else the count-weighted bucket mid-points (NaN if open)."""
        n = self.count
        if n <= 0:
            return float("nan")
        if self.sum is not None:
            return self.sum / n
        lower, upper = self._clipped()
        full = self.counts > 0
        if np.isinf(upper[full]).any():
            return float("nan")  # an occupied +Inf bucket has no mid-point
        mid = (lower[full] + upper[full]) / 2
        return float((mid * self.counts[full]).sum() / n)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in ms by in-bucket linear interpolation (see module docstring)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1] (got {q})")
        n = self.count
        if n <= 0:
            return float("nan")
        lower, upper = self._clipped()
        full = np.flatnonzero(self.counts > 0)
        if q == 0.0:
            return float(lower[full[0]])
        cum = np.cumsum(self.counts)
        rank = q * n
        b = min(int(np.searchsorted(cum, rank, side="left")), int(full[-1]))
        below = cum[b - 1] if b else 0.0
        lo, hi = lower[b], upper[b]
        if math.isinf(hi):
            return float(lo)
        fraction = min(max((rank - below) / self.counts[b], 0.0), 1.0)
        return float(lo + (hi - lo) * fraction)

    def bucket_of(self, value: float) -> tuple[float, float]:
        """``(lower, upper)`` of the bucket holding ``value`` (the last one when on a shared edge)."""
        i = int(np.searchsorted(self.lower, value, side="right")) - 1
        if i < 0 or value > self.upper[i]:
            raise ValueError(f"{value:g} lies in no bucket")
        return float(self.lower[i]), float(self.upper[i])

    # -- comparison and storage ---------------------------------------------------------------------

    def same_buckets(self, other: Histogram) -> bool:
        """Whether both histograms have exactly the same bucket edges."""
        return np.array_equal(self.lower, other.lower) and np.array_equal(self.upper, other.upper)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self.same_buckets(other)
            and np.array_equal(self.counts, other.counts)
            and (self.min, self.max, self.sum) == (other.min, other.max, other.sum)
        )

    def __repr__(self) -> str:
        return (
            f"Histogram({len(self.counts)} buckets, count={self.count:g}, "
            f"range=[{self.lower[0] if len(self.lower) else float('nan'):g}, "
            f"{self.upper[-1] if len(self.upper) else float('nan'):g}] ms)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats (``inf`` possible in ``upper``); inverse of :meth:`from_dict`."""
        return {
            "unit": "ms",
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "counts": self.counts.tolist(),
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        """The histogram :meth:`to_dict` described."""
        if data.get("unit", "ms") != "ms":
            raise ValueError(f"histogram unit must be ms (got {data.get('unit')!r})")
        extremes = (data.get("min"), data.get("max"), data.get("sum"))
        return cls(data["lower"], data["upper"], data["counts"], *extremes)


def _union_layout(hists: Sequence[Histogram]) -> tuple[np.ndarray, np.ndarray]:
    """Target buckets: the elementary intervals between all edges that some input covers, plus the
    inputs' zero-width (point) buckets."""
    points = np.unique(np.concatenate([np.concatenate([h.lower, h.upper]) for h in hists]))
    lo, hi = points[:-1], points[1:]
    covered = np.zeros(len(lo), dtype=bool)
    for h in hists:
        for a, b in zip(h.lower, h.upper, strict=True):
            if b > a:
                covered |= (lo >= a) & (hi <= b)
    pts = np.unique(np.concatenate([h.lower[h.lower == h.upper] for h in hists]))
    lower = np.concatenate([lo[covered], pts])
    upper = np.concatenate([hi[covered], pts])
    order = np.lexsort((upper, lower))
    return lower[order], upper[order]


def _rebin(h: Histogram, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``h``'s counts spread over the target buckets in proportion to overlap width."""
    out = np.zeros(len(lower))
    for a, b, c in zip(h.lower, h.upper, h.counts, strict=True):
        if a == b:
            out[(lower == a) & (upper == a)] += c
            continue
        inside = (lower >= a) & (upper <= b) & (upper > lower)
        if math.isinf(b):
            if inside.sum() > 1 and c > 0:
                raise ValueError(
                    f"cannot re-bin: the open bucket [{a:g}, +Inf) holds {c:g} observations and would "
                    "have to be split at finite edges of another histogram"
                )
            out[inside] += c
            continue
        out[inside] += c * (upper[inside] - lower[inside]) / (b - a)
    return out


def _combined(values: list[float | None], how: Any) -> float | None:
    return None if any(v is None for v in values) else float(how(values))


def merge(*hists: Histogram) -> Histogram:
    """One histogram of all observations: counts added bucket by bucket.

    Identical bucket layouts (e.g. the same Prometheus metric) add exactly. Different layouts
    (fortio's first/last buckets end at each run's min/max; nighthawk's come from percentiles) are
    first re-binned onto the union of all edges: each bucket's count is spread over the finer
    buckets it covers in proportion to their width — the same uniform-within-bucket assumption
    the quantile interpolation makes, so no input's quantiles move. An occupied ``+Inf`` bucket
    cannot be split and raises ValueError. Exact min/max/sum survive only when every input has them.
    """
    if not hists:
        raise ValueError("merge needs at least one histogram")
    first = hists[0]
    if all(first.same_buckets(h) for h in hists[1:]):
        lower, upper = first.lower, first.upper
        counts = np.sum([h.counts for h in hists], axis=0)
    else:
        lower, upper = _union_layout(hists)
        counts = np.sum([_rebin(h, lower, upper) for h in hists], axis=0)
    return Histogram(
        lower,
        upper,
        counts,
        min=_combined([h.min for h in hists], min),
        max=_combined([h.max for h in hists], max),
        sum=_combined([h.sum for h in hists], math.fsum),
    )
