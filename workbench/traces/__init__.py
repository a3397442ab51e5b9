"""Traces: spans as data, whatever their source, and the analyses of request flows.

- ``spans``: the one span schema (Arrow/Parquet), validation of raw records, storage, ``SpanTail``;
- readers, one per format: ``otlp`` (protobuf and JSON; also the export), ``zipkin`` (v2 JSON),
  ``jaeger`` (query API and UI JSON; also the export), ``tempo`` (HTTP API); ``query`` their HTTP;
- ``receiver``: the local mesh's span receiver (OTLP/HTTP and Zipkin on loopback → Parquet);
- ``critical``: trees, clock-skew clamping, critical paths and self times, vectorized;
- ``views``: waterfalls and critical-path shares (plotly).

Comparisons with intervals and localization live above, in ``workbench.analysis.traces``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.traces.critical import CriticalPath, analyse
    from workbench.traces.spans import SCHEMA, Intake, SpanFileError, SpanTail, read, table, write

# Lazy: the span receiver (a process of every traced local mesh) imports this package for its
# readers and spans only; ``critical`` would add pandas to its start.
_HOME = {"CriticalPath": "critical", "analyse": "critical"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        from importlib import import_module

        return getattr(import_module(f"workbench.traces.{_HOME.get(name, 'spans')}"), name)
    raise AttributeError(name)


__all__ = [
    "SCHEMA",
    "CriticalPath",
    "Intake",
    "SpanFileError",
    "SpanTail",
    "analyse",
    "read",
    "table",
    "write",
]
