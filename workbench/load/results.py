"""``LoadResult``: one load run point as data — its metadata and its per-request samples or histogram.

Error definition (``summary()["error_pct"]``): a request is an error when it got a 5xx answer or
none at all — status 0 (k6, hey) or -1 (fortio's socket error). This is the success rate Istio's
dashboards, Flagger and Argo Rollouts use (non-5xx = success): a 4xx is the client's doing, and
denials are what authorization experiments measure, separately. Non-numeric codes in
``status_counts`` count as errors except gRPC health ``SERVING`` (fortio grpc runs).

Saturation (``saturation()``): a point measured on a saturated machine measures queueing for CPU,
not what was meant. A point is *saturated* when the host's CPU over all cores was >= 85 %
(``meta["host"]["host_cpu_pct"]``, recorded by the local load runs), the achieved rate fell below
99 % of the requested one, or more than 1 % of the planned iterations were dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.metrics.histogram import Histogram

SAMPLE_COLUMNS = ("timestamp", "latency_ms", "status", "variant")
QUANTILES = {"p50": 0.50, "p75": 0.75, "p90": 0.90, "p99": 0.99, "p999": 0.999}
OK_STATUS_NAMES = frozenset({"SERVING"})


class ResultFileError(WorkbenchError, ValueError):
    """A result file that cannot be read; the message is ``<file>: <field>: <problem>``."""

    def __init__(self, path: str | Path, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{self.path}: {field}: {problem}")


def empty_samples() -> pd.DataFrame:
    """A sample frame with no rows and the standard columns and dtypes."""
    return pd.DataFrame(
        {
            "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
            "latency_ms": pd.Series([], dtype="float64"),
            "status": pd.Series([], dtype="int64"),
            "variant": pd.Series([], dtype="str"),
        }
    )


def error_mask(status: Any) -> np.ndarray:
    """Per-request error flags for numeric status codes: 5xx or no answer (<= 0). The one
    definition every summary, window table and comparison uses (see the module docstring)."""
    codes = np.asarray(status, dtype=float)
    return (codes <= 0) | (codes >= 500)


def is_error_status(code: int | str) -> bool:
    """Whether a status code (int or its string) counts as an error (see module docstring)."""
    text = str(code).strip()
    try:
        value = int(text)
    except ValueError:
        return text not in OK_STATUS_NAMES
    return bool(error_mask(value))


def sample_meta(
    generator: str, path: Path, samples: pd.DataFrame, start: Any, end: Any, duration_s: float | None
) -> dict[str, Any]:
    """The standard metadata of a per-request result file whose tool records no settings."""
    counts = samples["status"].value_counts().sort_index()
    return {
        "generator": generator,
        "generator_version": None,
        "model": None,
        "rps": None,
        "actual_rps": len(samples) / duration_s if duration_s else None,
        "connections": None,
        "duration_s": duration_s,
        "start": start,
        "end": end,
        "labels": None,
        "target": None,
        "status_counts": {str(code): int(n) for code, n in counts.items()},
        "requests_total": len(samples),
        "source_file": str(path),
    }


def status_error_counts(status_counts: Mapping[str, int | float]) -> tuple[float, float]:
    """(errors, total) from ``{code: count}``."""
    total = float(sum(status_counts.values()))
    errors = float(sum(n for code, n in status_counts.items() if is_error_status(code)))
    return errors, total


def _nan() -> float:
    return float("nan")


SATURATED_HOST_CPU_PCT = 85.0  # host CPU over all cores at or above this: saturated
SATURATED_ACHIEVED_PCT = 99.0  # achieved below this share of the requested rate: saturated
SATURATED_DROPPED_PCT = 1.0  # more than this share of planned iterations dropped: saturated


@dataclass(frozen=True)
class Saturation:
    """Whether a load point was saturated, and why (see the module docstring).

    ``host_cpu_pct``: busy share of all cores; ``loadgen_cpu_cores``: the load generator's own
    CPU (1.0 = one core); ``achieved_pct`` of the requested rate; ``dropped_pct`` of the planned
    iterations. NaN where the point did not record it (a closed model has no requested rate).
    """

    saturated: bool
    reasons: tuple[str, ...]
    host_cpu_pct: float
    loadgen_cpu_cores: float
    achieved_pct: float
    dropped_pct: float

    def explain(self) -> str:
        """``saturated: host CPU 91 % >= 85 %; ...`` or ``not saturated (host CPU 40 %, ...)``."""
        if self.saturated:
            return "saturated: " + "; ".join(self.reasons)
        parts = []
        if math.isfinite(self.host_cpu_pct):
            parts.append(f"host CPU {self.host_cpu_pct:.0f} %")
        if math.isfinite(self.achieved_pct):
            parts.append(f"achieved {self.achieved_pct:.1f} % of the requested rate")
        if math.isfinite(self.dropped_pct):
            parts.append(f"{self.dropped_pct:.2g} % dropped")
        return "not saturated" + (f" ({', '.join(parts)})" if parts else "")

    def to_dict(self) -> dict[str, Any]:
        return {"saturated": self.saturated, "reasons": list(self.reasons), "host_cpu_pct": self.host_cpu_pct,
                "loadgen_cpu_cores": self.loadgen_cpu_cores, "achieved_pct": self.achieved_pct,
                "dropped_pct": self.dropped_pct}  # fmt: skip


@dataclass(frozen=True)
class LoadProfile:
    """What load to generate: rate (open model) or connections only (closed model)."""

    rps: float | None
    connections: int
    duration_s: float
    warmup_s: float = 0.0
    model: Literal["open", "closed"] = "open"
    path: str = "/"
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    # Share of requests (0-100) that carry ``tagged_headers`` (header/cookie A/B routes).
    tagged_percent: float = 0.0
    tagged_headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    seed: int | None = None  # the generator's random choices (target URL, tagged share)

    def __post_init__(self) -> None:
        if self.model == "open" and (self.rps is None or self.rps <= 0):
            raise ValueError("open model needs rps > 0")
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1 (got {self.connections})")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("duration must be > 0 and warm-up >= 0")
        if not 0 <= self.tagged_percent <= 100:
            raise ValueError(f"tagged_percent must be between 0 and 100 (got {self.tagged_percent})")


@dataclass
class LoadResult:
    """Metadata of a run point and its measured (warm-up excluded) per-request samples.

    ``samples`` columns: ``timestamp`` (datetime64[ns, UTC], when the response ended),
    ``latency_ms`` (float), ``status`` (int HTTP code, 0 = no response), ``variant`` (str: the
    version that answered, from its response header, or "" when unknown).

    Generators that report only a histogram (fortio, nighthawk, Prometheus) give ``histogram``
    and an empty ``samples`` frame (``empty_samples()``); percentiles a generator computed itself
    go in ``meta["percentiles_ms"]`` ({"p50": ..., "p999": ...}) and its own min/max/mean in
    ``meta["stats_ms"]``.
    """

    meta: dict[str, Any]
    samples: pd.DataFrame
    histogram: Histogram | None = None

    def __post_init__(self) -> None:
        missing = [c for c in SAMPLE_COLUMNS if c not in self.samples.columns]
        if missing:
            raise ValueError(f"LoadResult samples lack columns {missing}")

    @classmethod
    def from_histogram(cls, meta: dict[str, Any], histogram: Histogram | None) -> LoadResult:
        """A result without per-request samples."""
        return cls(meta, empty_samples(), histogram)

    @property
    def count(self) -> int:
        """Requests measured: samples, else the histogram's count, else ``meta["requests_total"]``."""
        if len(self.samples):
            return len(self.samples)
        if self.histogram is not None:
            return round(self.histogram.count)
        return int(self.meta.get("requests_total") or 0)

    def summary(self) -> dict[str, float]:
        """count, actual_rps, min/p50/p75/p90/p99/p999/max/mean in ms (unrounded), error_pct, dropped.

        From the samples when there are any; otherwise each latency figure comes from the
        generator's own numbers (``meta["percentiles_ms"]``, ``meta["stats_ms"]``) when it
        reported them, else from the histogram by interpolation, else NaN — never invented.
        """
        out = self._from_samples() if len(self.samples) else self._from_reports()
        out["dropped"] = float(self.meta.get("dropped_iterations", self.meta.get("dropped", 0)) or 0)
        return out

    def _from_samples(self) -> dict[str, float]:
        lat = self.samples["latency_ms"].to_numpy(dtype=float)
        n = len(lat)
        duration = float(self.meta.get("duration_s") or 0.0)
        out: dict[str, float] = {"count": float(n), "actual_rps": n / duration if duration > 0 else _nan()}
        out["min"] = float(lat.min())
        for name, q in QUANTILES.items():
            out[name] = float(np.quantile(lat, q))
        out["max"] = float(lat.max())
        out["mean"] = float(lat.mean())
        errors = int(error_mask(self.samples["status"].to_numpy()).sum())
        out["error_pct"] = 100.0 * errors / n
        return out

    def _from_reports(self) -> dict[str, float]:
        meta = self.meta
        n = float(self.count)
        duration = float(meta.get("duration_s") or 0.0)
        reported_rps = meta.get("actual_rps")
        if reported_rps is not None:
            actual_rps = float(reported_rps)
        else:
            actual_rps = n / duration if duration > 0 and n else _nan()
        out: dict[str, float] = {"count": n, "actual_rps": actual_rps}
        for name in ("min", *QUANTILES, "max", "mean"):
            value = self._reported_latency(name)
            out[name] = _nan() if value is None else value
        out["error_pct"] = self._reported_error_pct(n)
        return out

    def _reported_latency(self, name: str) -> float | None:
        """A latency figure the generator reported, else the histogram's, else None (unknown)."""
        reported = {**(self.meta.get("stats_ms") or {}), **(self.meta.get("percentiles_ms") or {})}
        if reported.get(name) is not None:
            return float(reported[name])
        hist = self.histogram
        if hist is None or hist.count <= 0:
            return None
        if name in ("min", "max"):
            return getattr(hist, name)  # exact or None: bucket edges only bound them
        return hist.mean if name == "mean" else hist.quantile(QUANTILES[name])

    def _reported_error_pct(self, n: float) -> float:
        counts = self.meta.get("status_counts")
        if counts:
            errors, total = status_error_counts(counts)
            return 100.0 * errors / total if total else _nan()
        errors = self.meta.get("error_count")
        if errors is not None and n:
            return 100.0 * float(errors) / n
        return _nan()

    def saturation(self) -> Saturation:
        """Was this point saturated (host CPU, achieved vs requested rate, dropped iterations)?"""
        meta, summary = self.meta, self.summary()
        host = meta.get("host") or {}
        cpu = float(host.get("host_cpu_pct", math.nan) if host.get("host_cpu_pct") is not None else math.nan)
        loadgen = host.get("loadgen_cpu_cores")
        requested = meta.get("requested_rps") or meta.get("rps")
        duration = float(meta.get("duration_s") or 0.0)
        achieved = 100.0 * summary["actual_rps"] / float(requested) if requested else math.nan
        planned = float(requested or 0.0) * duration
        dropped = 100.0 * summary["dropped"] / planned if planned else math.nan
        reasons = []
        if cpu >= SATURATED_HOST_CPU_PCT:
            reasons.append(f"host CPU {cpu:.0f} % >= {SATURATED_HOST_CPU_PCT:g} % of all cores")
        if achieved < SATURATED_ACHIEVED_PCT:
            reasons.append(f"achieved {achieved:.1f} % of the requested {float(requested):g} rps "
                           f"(< {SATURATED_ACHIEVED_PCT:g} %)")  # fmt: skip
        if dropped > SATURATED_DROPPED_PCT:
            reasons.append(f"{dropped:.1f} % of planned iterations dropped (> {SATURATED_DROPPED_PCT:g} %)")
        generator = float(loadgen) if loadgen is not None else math.nan
        return Saturation(bool(reasons), tuple(reasons), cpu, generator, achieved, dropped)

    def by_variant(self) -> dict[str, LoadResult]:
        """One LoadResult per answering version (same metadata)."""
        return {
            str(v): LoadResult({**self.meta, "variant": str(v)}, g.reset_index(drop=True))
            for v, g in self.samples.groupby("variant", sort=True)
        }
