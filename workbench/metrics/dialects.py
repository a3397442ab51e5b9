"""Per-window traffic from mesh telemetry: requests, errors and latency histograms in one tidy frame.

Every mesh exports the same three facts under different names — a request counter, a failure
signal and a latency histogram — so each telemetry *dialect* below is just the metric names, the
labels that say who called whom, and which requests count as failures:

============ ======================================== ============================================
dialect      metrics                                  edge labels (source → destination, version)
============ ======================================== ============================================
``istio``    ``istio_requests_total``,                ``source_workload`` → ``destination_service_
             ``istio_request_duration_milliseconds``  name`` (or ``destination_workload``),
             (errors: ``response_code`` 5xx or 0)     ``destination_version``; ``reporter``
                                                      destination (inbound) or source (outbound)
``linkerd``  ``response_total``,                      inbound: ``client_id``'s service account →
             ``response_latency_ms``                  ``app`` (or ``deployment``), ``version``;
             (errors: ``classification="failure"``)   outbound: ``deployment`` → ``dst_service``,
                                                      version from ``dst_deployment``
``envoy``    ``envoy_cluster_upstream_rq_total``,     the local mesh: outbound sidecars' clusters
             ``envoy_cluster_upstream_rq_xx`` (5xx),  ``outbound|<service>|<version>`` (or Istio's
             ``envoy_cluster_upstream_rq_time``       ``outbound|<port>|<subset>|<host>``), source
                                                      the ``service`` label; inbound: ``local_app``
``consul``   the Envoy metrics above with Consul's    ``consul_source_service`` (or
             stats tags                               ``local_cluster``) → ``consul_destination_
                                                      service``, ``consul_destination_service_
                                                      subset``; inbound: ``local_app``
``istio-``   Istio's metrics as an ambient waypoint     as ``istio``; ``reporter="waypoint"`` (one
``ambient``  reports them                             report per request, in both views)
============ ======================================== ============================================

Istio's ambient node proxy, ztunnel, sees connections, not requests: it exports ``istio_tcp_*``
(connections opened and closed, bytes sent and received) with Istio's edge labels, reported by the
destination's ztunnel (``reporter="destination"``; some releases and guides say ``ztunnel``, both
are read). :func:`l4_windows` reads them per window and edge — connections opened, closed, failed
(closed with a ``response_flags`` other than ``-``), bytes each way — the L4 picture of a namespace
without a waypoint, where there is no request count or latency to read.

:func:`windows` asks Prometheus for ``increase(...[W])`` evaluated every W seconds, so each value
covers exactly one window ``(t - W, t]`` and windows are aligned to multiples of W since the epoch
(arms queried separately still pair up). One row per window and edge: ``time`` (window start,
UTC), ``dialect``, ``view``, ``source``, ``destination``, ``version``, ``requests``, ``errors``,
``rps``, ``error_rate`` and ``histogram`` (a :class:`Histogram` in ms, the window's latency
buckets). :func:`arm` turns the rows of one arm into the per-window histograms ``stats.compare``
takes; :func:`arm_counts` gives its per-window requests and errors; :func:`arm_windows` both in
one frame (time, requests, errors, histogram), which ``stats`` also takes — error_rate included.

Range queries are cut into chunks of at most :data:`MAX_POINTS` evaluation steps, Prometheus'
limit per series (a longer one fails with "exceeded maximum resolution"); transient failures are
retried by :class:`Prometheus` (connection errors, timeouts, 5xx) a bounded number of times.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd

from workbench.metrics.histogram import Histogram, merge
from workbench.metrics.prometheus import Prometheus

__all__ = [
    "COLUMNS",
    "DIALECTS",
    "L4_COLUMNS",
    "MAX_POINTS",
    "Dialect",
    "View",
    "arm",
    "arm_counts",
    "arm_windows",
    "l4_windows",
    "query_range_chunked",
    "windows",
]

MAX_POINTS = 11_000  # Prometheus rejects range queries with more points per series
COLUMNS = [
    "time", "dialect", "view", "source", "destination", "version",
    "requests", "errors", "rps", "error_rate", "histogram",
]  # fmt: skip
KEY = ["source", "destination", "version"]
ViewName = Literal["inbound", "outbound"]


# -------------------------------------------------------------------------------------------------
# Dialects


def _first_segment(value: str) -> str:
    """``productpage.shop.serviceaccount.identity.linkerd.cluster.local`` → ``productpage``."""
    return value.split(".", 1)[0]


_LOCAL_CLUSTER = re.compile(r"^outbound\|(?P<destination>[^|]+)\|(?P<version>[^|]*)$")
_ISTIO_CLUSTER = re.compile(r"^outbound\|\d*\|(?P<version>[^|]*)\|(?P<host>[^|]+)$")


def _envoy_cluster(labels: Mapping[str, str]) -> dict[str, str]:
    """Destination and version from an outbound Envoy cluster name (local mesh or Istio style)."""
    name = labels.get("envoy_cluster_name", "")
    if m := _ISTIO_CLUSTER.match(name):
        return {"destination": m["host"].split(".", 1)[0], "version": m["version"]}
    if m := _LOCAL_CLUSTER.match(name):
        return {"destination": m["destination"], "version": m["version"]}
    return {}


@dataclass(frozen=True)
class View:
    """Which series one side of the mesh reports, and where source/destination/version come from.

    ``columns`` maps each of source, destination and version to candidate labels, the first
    non-empty one wins; ``transform`` maps a value (e.g. a TLS identity to its service account);
    ``parse`` derives columns from the labels (e.g. an Envoy cluster name) and overrides the rest.
    """

    matchers: str
    columns: Mapping[str, tuple[str, ...]]
    transform: Mapping[str, Callable[[str], str]] = field(default_factory=dict)
    parse: Callable[[Mapping[str, str]], dict[str, str]] | None = None
    parse_labels: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        """Every label the queries group by."""
        out = [label for candidates in self.columns.values() for label in candidates]
        return list(dict.fromkeys([*out, *self.parse_labels]))


@dataclass(frozen=True)
class Dialect:
    """One telemetry dialect: metric names, failure matcher, histogram unit, inbound/outbound views."""

    name: str
    requests: str  # counter of requests
    errors: str  # counter of failed requests (``requests`` or another counter) ...
    error_matchers: str  # ... restricted by these matchers
    buckets: str  # latency histogram ``_bucket`` series
    unit: str  # of its ``le`` bounds
    views: Mapping[str, View]
    default_view: ViewName = "inbound"


_ENVOY_RQ = (
    "envoy_cluster_upstream_rq_total",
    "envoy_cluster_upstream_rq_xx",
    'envoy_response_code_class="5"',
    "envoy_cluster_upstream_rq_time_bucket",
    "ms",
)

DIALECTS: dict[str, Dialect] = {
    "istio": Dialect(
        "istio",
        "istio_requests_total",
        "istio_requests_total",
        'response_code=~"5..|0"',  # 0: no response at all (reset, timeout)
        "istio_request_duration_milliseconds_bucket",
        "ms",
        {
            "inbound": View(
                'reporter="destination"',
                {
                    "source": ("source_workload",),
                    "destination": ("destination_service_name", "destination_workload"),
                    "version": ("destination_version",),
                },
            ),
            "outbound": View(
                'reporter="source"',
                {
                    "source": ("source_workload",),
                    "destination": ("destination_service_name", "destination_workload"),
                    "version": ("destination_version",),
                },
            ),
        },
    ),
    "linkerd": Dialect(
        "linkerd",
        "response_total",
        "response_total",
        'classification="failure"',
        "response_latency_ms_bucket",
        "ms",
        {
            "inbound": View(
                'direction="inbound"',
                {
                    "source": ("client_id",),
                    "destination": ("app", "deployment"),
                    "version": ("version", "deployment"),
                },
                transform={"source": _first_segment},
            ),
            "outbound": View(
                'direction="outbound"',
                {
                    "source": ("deployment",),
                    "destination": ("dst_service", "dst_deployment"),
                    "version": ("dst_version", "dst_deployment"),
                },
            ),
        },
    ),
    "envoy": Dialect(
        "envoy",
        *_ENVOY_RQ,
        {
            "inbound": View(
                'direction="inbound", envoy_cluster_name="local_app"',
                {"source": (), "destination": ("service",), "version": ("version",)},
            ),
            "outbound": View(
                'envoy_cluster_name=~"outbound\\\\|.+"',
                {"source": ("service",), "destination": (), "version": ()},
                parse=_envoy_cluster,
                parse_labels=("envoy_cluster_name",),
            ),
        },
        default_view="outbound",
    ),
    "consul": Dialect(
        "consul",
        *_ENVOY_RQ,
        {
            "inbound": View(
                'envoy_cluster_name="local_app"',
                {
                    "source": (),
                    "destination": ("consul_source_service", "local_cluster"),
                    "version": ("version",),
                },
            ),
            "outbound": View(
                'consul_destination_service!=""',
                {
                    "source": ("consul_source_service", "local_cluster"),
                    "destination": ("consul_destination_service",),
                    "version": ("consul_destination_service_subset",),
                },
            ),
        },
        default_view="outbound",
    ),
    "istio-ambient": Dialect(
        "istio-ambient",
        "istio_requests_total",
        "istio_requests_total",
        'response_code=~"5..|0"',
        "istio_request_duration_milliseconds_bucket",
        "ms",
        dict.fromkeys(
            ("inbound", "outbound"),
            View(
                'reporter="waypoint"',
                {
                    "source": ("source_workload",),
                    "destination": ("destination_service_name", "destination_workload"),
                    "version": ("destination_version",),
                },
            ),
        ),
    ),
}


# -------------------------------------------------------------------------------------------------
# Chunked range queries


def _unix(t: float | datetime | pd.Timestamp) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _whole_seconds(step_s: float) -> int:
    if step_s < 1 or not float(step_s).is_integer():
        raise ValueError(f"step must be a whole number of seconds >= 1 (got {step_s:g})")
    return int(step_s)


def query_range_chunked(
    prom: Prometheus,
    promql: str,
    start: float | datetime,
    end: float | datetime,
    step_s: float,
    max_points: int = MAX_POINTS,
) -> pd.DataFrame:
    """``prom.query_range`` from ``start`` to ``end``, cut into queries of at most ``max_points`` steps.

    Evaluation times are ``start`` (rounded up to a whole second) plus multiples of ``step_s``
    (whole seconds: the client sends whole-second bounds), so the chunks' points neither overlap
    nor leave gaps and the concatenated frame equals one unlimited query.
    """
    step = _whole_seconds(step_s)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1 (got {max_points})")
    first, last = math.ceil(_unix(start)), _unix(end)
    if last < first:
        raise ValueError(f"range ends before it starts ({start} > {end})")
    n = int((last - first) // step) + 1
    frames = []
    for k in range(0, n, max_points):
        lo = first + k * step
        hi = first + (min(k + max_points, n) - 1) * step
        frames.append(prom.query_range(promql, lo, hi, step))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["timestamp", "value"])
    return pd.concat(frames, ignore_index=True)


# -------------------------------------------------------------------------------------------------
# Per-window frames


def _selector(metric: str, *matchers: str) -> str:
    body = ", ".join(m.strip() for m in matchers if m and m.strip())
    return f"{metric}{{{body}}}" if body else metric


def _queries(dialect: Dialect, view: View, window_s: int, matchers: str) -> dict[str, str]:
    """The three PromQL queries: requests, errors and histogram buckets per window and edge."""
    by = ", ".join(view.labels)
    rng = f"[{window_s}s]"
    return {
        "requests": f"sum by ({by}) (increase({_selector(dialect.requests, view.matchers, matchers)}{rng}))",
        "errors": (
            f"sum by ({by}) (increase("
            f"{_selector(dialect.errors, view.matchers, dialect.error_matchers, matchers)}{rng}))"
        ),
        "buckets": (
            f"sum by ({', '.join([*view.labels, 'le'])}) "
            f"(increase({_selector(dialect.buckets, view.matchers, matchers)}{rng}))"
        ),
    }


def _keyed(frame: pd.DataFrame, view: View, window_s: int) -> pd.DataFrame:
    """Rows with ``time`` (window start) and source/destination/version from the view's labels."""
    if not len(frame):
        return pd.DataFrame(columns=["time", *KEY, "le", "value"])
    frame = frame.copy()
    for label in [*view.labels, "le"]:
        if label not in frame.columns:
            frame[label] = ""
        frame[label] = frame[label].fillna("").astype(str)
    out = pd.DataFrame({"time": frame["timestamp"] - pd.Timedelta(seconds=window_s)})
    for column in KEY:
        values = pd.Series("", index=frame.index, dtype=object)
        for label in reversed(view.columns.get(column, ())):
            values = frame[label].where(frame[label] != "", values)
        if column in view.transform:
            values = values.map(view.transform[column])
        out[column] = values.astype(str)
    if view.parse is not None:
        parsed = [view.parse(dict(zip(view.parse_labels, row, strict=True)))
                  for row in frame[list(view.parse_labels)].itertuples(index=False)]  # fmt: skip
        for column in KEY:
            out[column] = [p.get(column, v) for p, v in zip(parsed, out[column], strict=True)]
    # A version read from a workload name ("reviews-v2") loses its service prefix.
    out["version"] = [
        v[len(d) + 1 :] if d and v.startswith(d + "-") else v
        for d, v in zip(out["destination"], out["version"], strict=True)
    ]
    out["le"] = frame["le"].to_numpy()
    out["value"] = frame["value"].to_numpy(dtype=float)
    return out


def _histograms(buckets: pd.DataFrame, unit: str) -> pd.Series:
    """One Histogram per (time, source, destination, version) from summed cumulative buckets."""
    names = ["time", *KEY]
    if not len(buckets):
        return pd.Series(dtype=object, index=pd.MultiIndex.from_tuples([], names=names))
    summed = buckets.groupby(["time", *KEY, "le"], sort=False)["value"].sum().reset_index()
    out = {}
    for key, group in summed.groupby(["time", *KEY], sort=False):
        out[key] = Histogram.from_prometheus_buckets(group["le"].tolist(), group["value"].tolist(), unit=unit)
    return pd.Series(
        list(out.values()), dtype=object, index=pd.MultiIndex.from_tuples(list(out), names=names)
    )


def windows(
    prom: Prometheus | str,
    dialect: str | Dialect,
    start: float | datetime,
    end: float | datetime,
    window_s: float = 5,
    *,
    view: ViewName | None = None,
    matchers: str = "",
    max_points: int = MAX_POINTS,
) -> pd.DataFrame:
    """Per-window requests, errors and latency histogram per edge; see the module docstring.

    ``prom``: a :class:`Prometheus` or its URL. ``dialect``: a name in :data:`DIALECTS` or a
    :class:`Dialect`. Only whole windows inside ``[start, end]`` are returned, aligned to multiples
    of ``window_s`` (whole seconds, at least the scrape interval) since the epoch. ``view``:
    ``inbound`` (what the destination's sidecar saw: Istio reporter=destination) or ``outbound``
    (the caller's sidecar); the dialect's default when None. ``matchers`` narrows every query,
    e.g. ``'destination_service_namespace="shop"'``. Rows are sorted by time and edge.
    """
    client = Prometheus(prom) if isinstance(prom, str) else prom
    if isinstance(dialect, str) and dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r} (choose from {', '.join(DIALECTS)})")
    d = DIALECTS[dialect] if isinstance(dialect, str) else dialect
    view_name = view or d.default_view
    if view_name not in d.views:
        raise ValueError(f"dialect {d.name} has no view {view_name!r} (choose from {', '.join(d.views)})")
    v = d.views[view_name]
    w = _whole_seconds(window_s)
    first_end = math.ceil((_unix(start) + w) / w) * w  # the first window (first_end - w, first_end]
    last_end = math.floor(_unix(end) / w) * w
    if last_end < first_end:
        return pd.DataFrame(columns=COLUMNS)

    frames = {
        what: _keyed(query_range_chunked(client, q, first_end, last_end, w, max_points), v, w)
        for what, q in _queries(d, v, w, matchers).items()
    }
    counts = {
        what: frames[what].groupby(["time", *KEY], sort=False)["value"].sum().astype(float)
        for what in ("requests", "errors")
    }
    hists = _histograms(frames["buckets"], d.unit)
    index = counts["requests"].index.union(hists.index)
    if not len(index):
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame(index=index)
    out["requests"] = counts["requests"].reindex(index).fillna(0.0)
    out["errors"] = counts["errors"].reindex(index).fillna(0.0)
    out["histogram"] = [_or_empty(h) for h in hists.reindex(index)]
    out = out.reset_index()
    out.columns = ["time", *KEY, *out.columns[4:]]
    out["dialect"], out["view"] = d.name, view_name
    out["rps"] = out["requests"] / w
    with np.errstate(invalid="ignore", divide="ignore"):
        out["error_rate"] = np.where(out["requests"] > 0, out["errors"] / out["requests"], np.nan)
    return out[COLUMNS].sort_values(["time", *KEY], ignore_index=True)


L4_COLUMNS = [
    "time", "source", "destination", "version", "opened", "closed", "failed", "sent_bytes", "received_bytes",
]  # fmt: skip
ZTUNNEL = 'reporter=~"destination|ztunnel"'
_L4_EDGE = View(ZTUNNEL, {
    "source": ("source_workload",),
    "destination": ("destination_service_name", "destination_workload"),
    "version": ("destination_version",),
})  # fmt: skip
_L4 = {
    "opened": "istio_tcp_connections_opened_total",
    "closed": "istio_tcp_connections_closed_total",
    "sent_bytes": "istio_tcp_sent_bytes_total",
    "received_bytes": "istio_tcp_received_bytes_total",
}


def l4_windows(
    prom: Prometheus | str,
    start: float | datetime,
    end: float | datetime,
    window_s: float = 5,
    *,
    matchers: str = "",
    max_points: int = MAX_POINTS,
) -> pd.DataFrame:
    """Per-window L4 traffic per edge from ztunnel's ``istio_tcp_*`` (see the module docstring).

    Columns ``L4_COLUMNS``: connections ``opened``, ``closed`` and ``failed`` (closed with response
    flags, e.g. ``UF`` upstream connection failure), ``sent_bytes`` and ``received_bytes``, per
    whole window aligned as in :func:`windows`. ``matchers`` narrows every query.
    """
    client = Prometheus(prom) if isinstance(prom, str) else prom
    w = _whole_seconds(window_s)
    first_end = math.ceil((_unix(start) + w) / w) * w
    last_end = math.floor(_unix(end) / w) * w
    if last_end < first_end:
        return pd.DataFrame(columns=L4_COLUMNS)
    by = ", ".join(_L4_EDGE.labels)
    queries = {what: _selector(metric, ZTUNNEL, matchers) for what, metric in _L4.items()}
    queries["failed"] = _selector(_L4["closed"], ZTUNNEL, 'response_flags!~"-|"', matchers)
    counts = {}
    for what, selector in queries.items():
        promql = f"sum by ({by}) (increase({selector}[{w}s]))"
        frame = _keyed(query_range_chunked(client, promql, first_end, last_end, w, max_points), _L4_EDGE, w)
        counts[what] = frame.groupby(["time", *KEY], sort=False)["value"].sum().astype(float)
    index = counts["opened"].index
    for series in counts.values():
        index = index.union(series.index)
    if not len(index):
        return pd.DataFrame(columns=L4_COLUMNS)
    out = pd.DataFrame(
        {what: series.reindex(index).fillna(0.0) for what, series in counts.items()}, index=index
    )
    out = out.reset_index()
    out.columns = ["time", *KEY, *out.columns[4:]]
    return out[L4_COLUMNS].sort_values(["time", *KEY], ignore_index=True)


_EMPTY = Histogram.from_prometheus_buckets([float("inf")], [0.0], unit="ms")


def _or_empty(h: object) -> Histogram:
    """A window with requests but no histogram series gets an empty (zero-count) histogram."""
    return h if isinstance(h, Histogram) else _EMPTY


# -------------------------------------------------------------------------------------------------
# One arm for the statistics


def _select(frame: pd.DataFrame, filters: Mapping[str, str | None]) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for column, value in filters.items():
        if value is not None:
            mask &= frame[column] == value
    return frame[mask]


def arm(
    frame: pd.DataFrame,
    *,
    source: str | None = None,
    destination: str | None = None,
    version: str | None = None,
) -> pd.Series:
    """One arm's per-window histograms (index: window start), the rows matching the filters merged by
    adding counts — the per-window input ``stats.compare`` takes (e.g. ``version="v2"``)."""
    rows = _select(frame, {"source": source, "destination": destination, "version": version})
    merged = {
        t: merge(*group.tolist()) if len(group) > 1 else group.iloc[0]
        for t, group in rows.groupby("time", sort=True)["histogram"]
    }
    return pd.Series(merged, dtype=object, index=pd.DatetimeIndex(list(merged), name="time"))


def arm_counts(
    frame: pd.DataFrame,
    *,
    source: str | None = None,
    destination: str | None = None,
    version: str | None = None,
) -> pd.DataFrame:
    """One arm's per-window ``requests``, ``errors``, ``rps`` and ``error_rate`` (index: window start)."""
    rows = _select(frame, {"source": source, "destination": destination, "version": version})
    out = rows.groupby("time", sort=True)[["requests", "errors", "rps"]].sum()
    out["error_rate"] = (out["errors"] / out["requests"]).where(out["requests"] > 0)
    return out


def arm_windows(
    frame: pd.DataFrame,
    *,
    source: str | None = None,
    destination: str | None = None,
    version: str | None = None,
) -> pd.DataFrame:
    """One arm's per-window ``time``, ``requests``, ``errors`` and merged ``histogram`` — the
    per-window input ``stats.compare``/``stats.windows`` take, with counts so error_rate works."""
    hists = arm(frame, source=source, destination=destination, version=version)
    counts = arm_counts(frame, source=source, destination=destination, version=version)
    out = pd.DataFrame(
        {
            "time": pd.DatetimeIndex(hists.index),
            "requests": counts["requests"].reindex(hists.index).fillna(0.0).to_numpy(float),
            "errors": counts["errors"].reindex(hists.index).fillna(0.0).to_numpy(float),
            "histogram": hists.to_numpy(dtype=object),
        }
    )
    return out.reset_index(drop=True)
