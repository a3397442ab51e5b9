"""Telemetry: Prometheus queries (``prometheus``) and latency-histogram bucket math (``histogram``)."""

from __future__ import annotations

from workbench.metrics.histogram import Histogram, merge

__all__ = ["Histogram", "merge"]
