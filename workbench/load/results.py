"""``LoadResult``: one load run point as data — its metadata and its per-request samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

SAMPLE_COLUMNS = ("timestamp", "latency_ms", "status", "variant")
QUANTILES = {"p50": 0.50, "p75": 0.75, "p90": 0.90, "p99": 0.99, "p999": 0.999}


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
    """

    meta: dict[str, Any]
    samples: pd.DataFrame

    def __post_init__(self) -> None:
        missing = [c for c in SAMPLE_COLUMNS if c not in self.samples.columns]
        if missing:
            raise ValueError(f"LoadResult samples lack columns {missing}")

    @property
    def count(self) -> int:
        return len(self.samples)

    def summary(self) -> dict[str, float]:
        """count, actual_rps, p50/p75/p90/p99/p999/max in ms (unrounded), error_pct, dropped."""
        lat = self.samples["latency_ms"].to_numpy(dtype=float)
        status = self.samples["status"].to_numpy()
        n = len(lat)
        duration = float(self.meta.get("duration_s") or 0.0)
        out: dict[str, float] = {
            "count": float(n),
            "actual_rps": n / duration if duration > 0 else float("nan"),
        }
        for name, q in QUANTILES.items():
            out[name] = float(np.quantile(lat, q)) if n else float("nan")
        out["max"] = float(lat.max()) if n else float("nan")
        out["mean"] = float(lat.mean()) if n else float("nan")
        errors = int(((status == 0) | (status >= 500)).sum())
        out["error_pct"] = 100.0 * errors / n if n else float("nan")
        out["dropped"] = float(self.meta.get("dropped_iterations", 0) or 0)
        return out

    def by_variant(self) -> dict[str, LoadResult]:
        """One LoadResult per answering version (same metadata)."""
        return {
            str(v): LoadResult({**self.meta, "variant": str(v)}, g.reset_index(drop=True))
            for v, g in self.samples.groupby("variant", sort=True)
        }
