"""Bottleneck localization: whose *own* work changed between a baseline window and a later one.

A slow leaf makes every caller above it slow too, so ranking services by their latency names the
entry service, not the culprit. Each hop is therefore reduced to its **self-time**: the time a
service spends on a request minus the time it waits for its downstream calls.

Per request (preferred; the local mesh's Envoy access logs, exact to the µs): every inbound
sidecar logs the request its service served (``duration_us``: the service's total time), every
outbound sidecar logs each call the service made (the edge's time, callee included), and all
carry the same ``x-request-id``. The demo apps call their downstreams *concurrently*, so the
service waits for the slowest call only: ``self = inbound - max(child edge times)`` of the calls
linked to that request (same request id, same service and version, starting inside the inbound
interval, which also separates two visits of one request). Summing the children would charge a
parent for overlapping waits; the max is exact for one concurrent fan-out and a lower bound of
the wait for sequential calls (self-time is then overstated by the shorter calls, a constant that
cancels in a before/after comparison unless those calls change). The edge's own overhead
(network, both sidecars) stays in the caller's self-time.

Per window (a cluster: Istio's source/destination metrics through ``metrics.dialects``): requests
cannot be linked, only histograms exist, so ``self = mean(inbound) - max over callees of
mean(edge)``. With concurrent calls ``E[max(X, Y)] >= max(E[X], E[Y])``, so this overstates the
self-time by a bias that is stable while the callees' distributions are; a callee's change leaks
partly into its caller, which is why the per-request path is preferred. Quantiles are not
differenced (a difference of quantiles is not the quantile of the difference): only the mean.

Errors: a failed request *originates* at a service when none of its linked calls failed, and is
*passed on* otherwise; an Envoy-generated failure on an edge (response flags such as UF, UO, UT,
FI: the callee never answered) originates at the callee. Per window: originated = inbound errors
minus the callees' edge errors (at least 0).

Each service's per-window self-time p50 (robust to the tails of a busy host) and originated error
rate in the changed window are compared with the baseline window by ``stats.compare_tables`` (time
windows as the unit, intervals against the practical margin), at ``alpha / number of services``
(Bonferroni across services; within a service Holm's step-down across its metrics). A host-wide
slowdown (CPU contention from other processes) stretches every service at once. By default each
window first gets that window's common factor ``f``: the median over services of their ratio to
their own baseline level (the median ignores one culprit). The host stretches the work a service
did at baseline, so ``level * (f - 1)`` is taken off each service's window, not ``1 - 1/f`` of it:
time a change *adds* (a sleep, a new call) is not stretched by a busy host, and dividing it by
``f`` would shrink the culprit's increase and turn a drift of the host within a phase into a trend
of the culprit's windows (a wide interval). A service is thus judged against the others (a
difference in differences).
Services are ranked by their score, the lower confidence bound of the increase in units of the
margin (> 1 means the whole interval lies beyond the margin: ``worse``), ties by p-value. The
culprit is the top service when it is ``worse``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.load.results import error_mask
from workbench.metrics.histogram import merge
from workbench.stats.compare import Comparison, Margin, MetricResult, compare_tables
from workbench.stats.windows import STAT_COLUMNS, window_table
from workbench.units import parse_duration

__all__ = [
    "LOG_COLUMNS",
    "TIMING_COLUMNS",
    "AccessLogTail",
    "Localization",
    "ServiceChange",
    "edges_from_logs",
    "hops",
    "localize",
    "localize_spans",
    "localize_telemetry",
    "parse_lines",
    "read_access_logs",
    "sidecar_of",
    "split_at",
    "telemetry_windows",
]

CLIENT = "loadgen"  # the load generator's sidecar: a client, never a suspect
LOG_COLUMNS = [
    "sidecar",
    "service",
    "version",
    "direction",
    "start",
    "duration_ms",
    "status",
    "flags",
    "destination",
    "dest_version",
    "caller",
    "request_id",
]
# Envoy's own duration points, read too (ms; NaN where a log has no such point): the upstream round
# trip, the request path (arrival -> first byte upstream) and the response path (last byte from
# upstream -> last byte downstream); the proxy's own time = duration - upstream (analysis.proxycost).
TIMING_COLUMNS = [
    "upstream_ms",
    "request_ms",
    "response_ms",
    "new_connection",  # an upstream connection was opened for this request
    "connect_ms",  # that connection's TCP connect (repeated on every request of the connection)
    "handshake_ms",  # its TLS handshake (mTLS), NaN in plaintext
]
DURATION_FIELDS = {"upstream_ms": "upstream_us", "request_ms": "request_us", "response_ms": "response_us",
                   "connect_ms": "connect_us", "handshake_ms": "handshake_us"}  # fmt: skip
_SIDECAR = re.compile(r"^(?P<service>.+)-(?P<version>[^-]+)-(?P<direction>inbound|outbound)$")
_NODE_PROXY = re.compile(r"^(?P<node>.+)-node-proxy$")
_WAYPOINT = re.compile(r"^(?P<owner>.+)-waypoint$")
# Proxies that see a request as its callee's: inbound sidecars and (ambient-waypoint) waypoints, whose
# records name the destination version they chose. A node proxy logs tunnels (connections), not requests.
SERVING = ("inbound", "waypoint")
_CLUSTER = re.compile(r"^outbound\|(?P<service>[^|]+)\|(?P<version>[^|]*)$")


# -------------------------------------------------------------------------------------------------
# Access logs


def sidecar_of(name: str) -> dict[str, str]:
    """service, version and direction from a local-mesh proxy name: a sidecar (``catalog-v1-inbound``),
    a node proxy (``node-1-node-proxy``: direction ``node``) or a waypoint (``catalog-waypoint``:
    direction ``waypoint``; each record names the service and version it routed to)."""
    if name == f"{CLIENT}-outbound":
        return {"service": CLIENT, "version": "", "direction": "outbound"}
    m = _SIDECAR.match(name)
    if m is not None:
        return m.groupdict()
    if _NODE_PROXY.match(name):
        return {"service": "", "version": "", "direction": "node"}
    if _WAYPOINT.match(name):
        return {"service": "", "version": "", "direction": "waypoint"}
    raise ValueError(
        f"not a proxy name: {name!r} (expected <service>-<version>-inbound|outbound, <node>-node-proxy or "
        "<service>-waypoint)"
    )


def _records(lines: Sequence[str], sidecar: Mapping[str, str], name: str) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)
        outbound = sidecar["direction"] == "outbound"
        cluster = _CLUSTER.match(r.get("upstream_cluster") or "")
        service, version = sidecar["service"], sidecar["version"]
        if sidecar["direction"] == "waypoint":  # the callee's side: the service and version it chose
            service = cluster["service"] if cluster else r.get("authority") or ""
            version = cluster["version"] if cluster else r.get("version") or ""
        out.append(
            {
                "sidecar": name,
                "service": service,
                "version": version,
                "direction": sidecar["direction"],
                "start": float(r["start_time"]),
                "duration_ms": float(r.get("duration_us") or 0) / 1000.0,
                "status": int(r.get("status") or 0),
                "flags": r.get("flags") or "-",
                "destination": (cluster["service"] if cluster else r.get("authority") or "")
                if outbound
                else service,
                "dest_version": (cluster["version"] if cluster else r.get("version") or "")
                if outbound
                else version,
                "caller": r.get("caller") or "",
                "request_id": r.get("request_id") or "",
                **{column: _ms(r.get(key)) for column, key in DURATION_FIELDS.items()},
                "new_connection": _ms(r.get("cx_after_us")) >= 0,
            }
        )
    return out


def _ms(value: Any) -> float:
    """A logged µs duration in ms; NaN when Envoy had no such time point ("-", null, absent)."""
    try:
        return float(value) / 1000.0
    except (TypeError, ValueError):
        return math.nan


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=[*LOG_COLUMNS, *TIMING_COLUMNS])
    return frame.sort_values("start", ignore_index=True)


class AccessLogTail:
    """New lines of every sidecar's access log since the last read (``run_dir/envoy/*/access.log``).

    Envoy flushes its logs every ``ACCESS_LOG_FLUSH_S`` (0.25 s), so a read sees the requests that
    ended up to that long before.
    ``skip()`` starts from the logs' current end, so a run reads only its own requests.
    """

    def __init__(self, envoy_dir: str | Path, sidecars: Mapping[str, Mapping[str, str]] | None = None):
        self.envoy_dir = Path(envoy_dir)
        self.sidecars = dict(sidecars or {})
        self.offsets: dict[str, int] = {}

    def _files(self) -> dict[str, Path]:
        return {p.parent.name: p for p in sorted(self.envoy_dir.glob("*/access.log"))}

    def skip(self) -> AccessLogTail:
        """Ignore everything logged so far."""
        for name, path in self._files().items():
            self.offsets[name] = path.stat().st_size
        return self

    def read_raw(self) -> dict[str, list[str]]:
        """Complete new lines per sidecar (a partly flushed last line waits for the next read)."""
        out: dict[str, list[str]] = {}
        for name, path in self._files().items():
            with path.open("rb") as fh:
                fh.seek(self.offsets.get(name, 0))
                data = fh.read()
            end = data.rfind(b"\n") + 1
            self.offsets[name] = self.offsets.get(name, 0) + end
            lines = data[:end].decode("utf-8", "replace").splitlines()
            if lines:
                out[name] = lines
        return out

    def read(self) -> pd.DataFrame:
        """New records as a frame with :data:`LOG_COLUMNS`."""
        return parse_lines(self.read_raw(), self.sidecars)


def parse_lines(
    raw: Mapping[str, Sequence[str]], sidecars: Mapping[str, Mapping[str, str]] | None = None
) -> pd.DataFrame:
    """Access-log lines per sidecar name → one frame (:data:`LOG_COLUMNS` and
    :data:`TIMING_COLUMNS`), sorted by start."""
    records: list[dict[str, Any]] = []
    for name, lines in raw.items():
        info = (sidecars or {}).get(name) or sidecar_of(name)
        records += _records(lines, info, name)
    return _frame(records)


def read_access_logs(
    envoy_dir: str | Path, sidecars: Mapping[str, Mapping[str, str]] | None = None
) -> pd.DataFrame:
    """Every record of ``envoy_dir/<sidecar>/access.log`` (or ``access.log.gz``) as one frame."""
    import gzip

    raw: dict[str, list[str]] = {}
    for path in sorted(Path(envoy_dir).glob("*/access.log*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            raw[path.parent.name] = fh.read().splitlines()
    return parse_lines(raw, sidecars)


# -------------------------------------------------------------------------------------------------
# Per-request hops


def _failed(status: pd.Series) -> pd.Series:
    return pd.Series(error_mask(status.to_numpy()), index=status.index)


def edges_from_logs(logs: pd.DataFrame) -> pd.DataFrame:
    """One row per call between services: source, source_version, destination, version, start,
    duration_ms, status, flags, request_id. From the callers' outbound sidecars; in a mesh without
    them (``serveronly``) from the callees' inbound sidecars and the caller header."""
    out = logs[logs["direction"] == "outbound"]
    if len(out):
        edges = pd.DataFrame(
            {
                "source": out["service"],
                "source_version": out["version"],
                "destination": out["destination"],
                "version": out["dest_version"],
            }
        )
    else:
        out = logs[logs["direction"].isin(SERVING) & (logs["caller"] != "")]
        edges = pd.DataFrame(
            {
                "source": out["caller"],
                "source_version": "",
                "destination": out["service"],
                "version": out["version"],
            }
        )
    for column in ("start", "duration_ms", "status", "flags", "request_id"):
        edges[column] = out[column]
    return edges.reset_index(drop=True)


def hops(logs: pd.DataFrame) -> pd.DataFrame:
    """One row per request a service served: ``timestamp``, service, version, request_id,
    ``total_ms`` (its inbound sidecar's time), ``downstream_ms`` (the slowest linked call),
    ``self_ms``, status, ``failed_call`` and ``originated`` (an error not explained by a failed
    call); plus one row per Envoy-generated edge failure, charged to the callee (``kind`` hop)."""
    inbound = logs[logs["direction"].isin(SERVING)].reset_index(drop=True)
    inbound = inbound.assign(end=inbound["start"] + inbound["duration_ms"] / 1000.0, row=inbound.index)
    edges = edges_from_logs(logs)
    calls = edges[(edges["source"] != CLIENT) & (edges["request_id"] != "")]
    linked = inbound[["row", "service", "version", "request_id", "start", "end"]].merge(
        calls[["source", "source_version", "request_id", "start", "duration_ms", "status"]],
        left_on=["service", "version", "request_id"],
        right_on=["source", "source_version", "request_id"],
        suffixes=("", "_call"),
    )
    if (logs["direction"] == "outbound").sum() == 0:  # callee-side edges: no caller version
        linked = inbound[["row", "service", "request_id", "start", "end"]].merge(
            calls[["source", "request_id", "start", "duration_ms", "status"]],
            left_on=["service", "request_id"],
            right_on=["source", "request_id"],
            suffixes=("", "_call"),
        )
    slack = 0.002  # clocks of one host; a call starts after, and within, the request that made it
    inside = (linked["start_call"] >= linked["start"] - slack) & (
        linked["start_call"] <= linked["end"] + slack
    )
    linked = linked[inside]
    agg = (
        linked.assign(bad=_failed(linked["status"]))
        .groupby("row")
        .agg(downstream_ms=("duration_ms", "max"), failed_call=("bad", "any"), calls=("duration_ms", "size"))
    )
    out = _hop_frame(inbound, inbound["service"])
    out["downstream_ms"] = agg["downstream_ms"].reindex(out.index).fillna(0.0)
    out["calls"] = agg["calls"].reindex(out.index).fillna(0).astype(int)
    out["failed_call"] = agg["failed_call"].reindex(out.index).fillna(False).astype(bool)
    out["self_ms"] = (out["total_ms"] - out["downstream_ms"]).clip(lower=0.0)
    out["originated"] = _failed(out["status"]) & ~out["failed_call"]
    out["kind"] = "request"
    # Envoy answered for the callee (no healthy upstream, reset, timeout, injected abort).
    generated = edges[_failed(edges["status"]) & ~edges["flags"].isin(["-", ""])]
    if len(generated):
        extra = _hop_frame(generated, generated["destination"]).assign(
            downstream_ms=0.0, calls=0, failed_call=False, self_ms=generated["duration_ms"], originated=True,
            kind="hop",
        )  # fmt: skip
        out = pd.concat([out, extra], ignore_index=True)
    return out.sort_values("timestamp", ignore_index=True)


def _hop_frame(logs: pd.DataFrame, service: pd.Series) -> pd.DataFrame:
    """The columns every hop row has, from access-log rows answered (or failed) as ``service``."""
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(logs["start"], unit="s", utc=True),
            "service": service,
            "version": logs["version"],
            "request_id": logs["request_id"],
            "total_ms": logs["duration_ms"],
            "status": logs["status"],
        }
    )


def _samples(h: pd.DataFrame) -> pd.DataFrame:
    """A service's hops as the per-request samples ``stats.compare`` takes: self-time, and status
    503 for the errors it originated (200 otherwise, also for errors it merely passed on)."""
    return pd.DataFrame(
        {
            "timestamp": h["timestamp"],
            "latency_ms": h["self_ms"].astype(float),
            "status": np.where(h["originated"], 503, 200),
        }
    )


# -------------------------------------------------------------------------------------------------
# Ranking


@dataclass
class ServiceChange:
    """One service's change between the windows: its comparison and the score it ranks by."""

    service: str
    score: float  # lower confidence bound of the increase, in units of the margin
    verdict: str  # worse if any metric is worse, else the comparison's overall verdict
    decisive: MetricResult | None
    comparison: Comparison | None
    passed_on_errors: tuple[float, float] = (float("nan"), float("nan"))  # % baseline, changed
    note: str = ""
    raw_self_ms: tuple[float, float] = (float("nan"), float("nan"))  # median self-time, unadjusted

    def explain(self) -> str:
        """The decisive metric's sentence, naming what was measured (self-time or errors)."""
        if self.decisive is None:
            return f"{self.service}: {self.note or 'no data'}"
        if self.decisive.metric == "error_rate":
            return f"{self.service} originated errors: {self.decisive.explain()}"
        a, b = self.raw_self_ms
        raw = (
            f" (median self-time as measured: {a:.3g} → {b:.3g} ms)"
            if math.isfinite(a) and math.isfinite(b)
            else ""
        )
        return f"{self.service} self-time: {self.decisive.explain()}{raw}"


@dataclass
class Localization:
    """Services ranked by how much their own work got worse; the culprit and why."""

    ranking: list[ServiceChange]
    method: str
    culprit: str | None
    explanation: str
    upstream: dict[str, list[str]] = field(default_factory=dict)  # service -> services that call it
    evidence: str = ""  # what the self-times came from: traces, access logs or telemetry

    def to_frame(self) -> pd.DataFrame:
        """One row per service, best suspect first."""
        rows = []
        for rank, c in enumerate(self.ranking, 1):
            d = c.decisive
            rows.append(
                {
                    "rank": rank,
                    "service": c.service,
                    "score": c.score,
                    "verdict": c.verdict,
                    "metric": d.metric if d else "",
                    "baseline": d.baseline if d else np.nan,
                    "changed": d.candidate if d else np.nan,
                    "estimate": d.estimate if d else np.nan,
                    "ci_low": d.ci.low if d else np.nan,
                    "ci_high": d.ci.high if d else np.nan,
                    "margin": d.margin if d else np.nan,
                    "unit": d.unit if d else "",
                    "pvalue": d.pvalue if d else np.nan,
                    "raw_self_ms_baseline": c.raw_self_ms[0],
                    "raw_self_ms_changed": c.raw_self_ms[1],
                    "passed_on_errors_pct": c.passed_on_errors[1],
                    "culprit": c.service == self.culprit,
                    "explanation": c.explain(),
                }
            )
        return pd.DataFrame(rows).set_index("rank") if rows else pd.DataFrame()

    def top(self, k: int = 1) -> list[str]:
        return [c.service for c in self.ranking[:k]]


def _score(r: MetricResult) -> float:
    lo = r.ci.low
    if not math.isfinite(lo) or not r.margin:
        return -math.inf
    return lo / r.margin


def _change(service: str, comp: Comparison | None, note: str = "") -> ServiceChange:
    if comp is None or not comp.results:
        return ServiceChange(service, -math.inf, "inconclusive", None, None, note=note or "no data")
    results = list(comp)
    worse = [r for r in results if r.verdict == "worse"]
    decisive = max(worse or results, key=lambda r: (_score(r), -(r.pvalue if math.isfinite(r.pvalue) else 1)))
    score = max(_score(r) for r in results)
    verdict = "worse" if worse else comp.verdict
    return ServiceChange(service, score, verdict, decisive, comp, note=note)


def _ancestors(service: str, upstream: Mapping[str, list[str]]) -> list[str]:
    seen: list[str] = []
    todo = list(upstream.get(service, []))
    while todo:
        s = todo.pop(0)
        if s not in seen and s != CLIENT:
            seen.append(s)
            todo += upstream.get(s, [])
    return seen


def _rank(
    changes: list[ServiceChange], method: str, upstream: dict[str, list[str]], evidence: str = ""
) -> Localization:
    def key(c: ServiceChange) -> tuple[float, float]:
        p = c.decisive.pvalue if c.decisive is not None and math.isfinite(c.decisive.pvalue) else 1.0
        return (-c.score if math.isfinite(c.score) else math.inf, p)

    ranking = sorted(changes, key=key)
    top = ranking[0] if ranking else None
    if top is None or top.verdict != "worse" or top.decisive is None:
        best = f" (closest: {top.explain()})" if top is not None and top.decisive is not None else ""
        return Localization(
            ranking,
            method,
            None,
            f"No service's own time or originated errors changed beyond the margin{best}.",
            upstream,
            evidence,
        )
    errors = top.decisive.metric == "error_rate"
    what = "originates the new errors" if errors else "is the bottleneck: its own time grew"
    a, b = top.raw_self_ms
    raw = (
        f" (median self-time as measured: {a:.3g} → {b:.3g} ms)"
        if not errors and math.isfinite(a) and math.isfinite(b)
        else ""
    )
    text = f"{top.service} {what} — {top.decisive.explain()}{raw}."
    callers = _ancestors(top.service, upstream)
    passing = [s for s in callers if next((c.verdict for c in ranking if c.service == s), "") != "worse"]
    if passing:
        thing = "the errors" if errors else "the delay"
        one = len(passing) == 1
        text += (
            f" {', '.join(passing)} only pass{'es' if one else ''} {thing} on: "
            f"{'its' if one else 'their'} own {'errors' if errors else 'time'} stayed within the margin."
        )
    others = [c.service for c in ranking[1:] if c.verdict == "worse"]
    if others:
        text += f" Also worse: {', '.join(others)}."
    return Localization(ranking, method, top.service, text, upstream, evidence)


def _upstream(edges: pd.DataFrame) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for (src, dst), _ in edges.groupby(["source", "destination"], sort=True):
        out.setdefault(str(dst), []).append(str(src))
    return out


def localize(
    baseline: pd.DataFrame,
    changed: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("p50", "error_rate"),
    window: str | float = "0.5s",
    margin: Margin | None = None,
    alpha: float = 0.05,
    edges: pd.DataFrame | None = None,
    common_mode: bool = True,
    evidence: str = "access logs",
) -> Localization:
    """Rank services by the change of their self-time and originated errors, per request.

    ``baseline`` and ``changed``: the :func:`hops` of each window (or raw access-log frames,
    converted here), or hops from traces (``analysis.traces.hops_from_spans``, with
    ``evidence="traces"``; :func:`localize_spans` does both). ``edges`` (:func:`edges_from_logs`,
    or ``analysis.traces.flow_edges``) names who calls whom, for the sentence that says which
    callers only pass the change on; taken from the logs when given raw.

    ``common_mode``: a busy host (other processes, CPU contention) stretches every service's
    self-time at once, which is not any one service's doing. Each window's common factor ``f`` is
    the median over services of their ratio to their own baseline level; each service's window
    statistic loses ``level * (f - 1)``, the stretch of its baseline work (see the module
    docstring), so a service is judged against the others (a difference in differences). With one
    culprit among several services the median ignores it; the estimates stay in ms on the
    baseline's scale (the table also gives the median self-times as measured).
    """
    if "self_ms" not in baseline.columns:
        edges = edges if edges is not None else edges_from_logs(pd.concat([baseline, changed]))
        baseline, changed = hops(baseline), hops(changed)
    services = sorted(set(baseline["service"]) | set(changed["service"]))
    if not services:
        raise ValueError("no requests in either window: nothing to localize")
    window_s = parse_duration(window)
    starts = [x["timestamp"].min() for x in (baseline, changed) if len(x)]
    origin = pd.Timestamp(min(starts))
    tables = {}
    for service in services:
        a, b = baseline[baseline["service"] == service], changed[changed["service"] == service]
        tables[service] = (
            window_table(_samples(a), window_s, origin) if len(a) else None,
            window_table(_samples(b), window_s, origin) if len(b) else None,
        )
    latency = [m for m in metrics if m != "error_rate"]
    if common_mode and len(services) >= 3:
        tables = _common_mode(tables, latency)
    per_service_alpha = alpha / len(services)
    changes = []
    for service in services:
        wa, wb = tables[service]
        if wa is None or wb is None:
            missing = "baseline" if wa is None else "changed"
            changes.append(_change(service, None, f"no requests in the {missing} window"))
            continue
        comp = compare_tables(wa, wb, metrics, window_s, margin, per_service_alpha, paired=False)
        change = _change(service, comp)
        a, b = baseline[baseline["service"] == service], changed[changed["service"] == service]
        passed = [100.0 * float((h["status"].pipe(_failed) & h["failed_call"]).mean()) for h in (a, b)]
        change.passed_on_errors = (passed[0], passed[1])
        change.raw_self_ms = (float(a["self_ms"].median()), float(b["self_ms"].median()))
        changes.append(change)
    how = (
        "traces (exact parent/child): self = the service's span time not spent waiting on a child"
        if evidence == "traces"
        else "Envoy access logs: self = inbound time - slowest linked call"
    )
    method = (
        f"per request from {how}; "
        f"windows of {window_s:g} s{'; common-mode slowdown removed' if common_mode else ''}; "
        "ranked by the lower confidence bound of the increase / margin"
    )
    return _rank(changes, method, _upstream(edges) if edges is not None else {}, evidence)


def localize_spans(baseline: Any, changed: Any, **options: Any) -> Localization:
    """:func:`localize` from two span tables (``workbench.traces.spans``): each window's traces are
    analysed (``traces.critical``), reduced to per-visit self times and originated errors
    (``analysis.traces.hops_from_spans``) and ranked; ``evidence`` is ``traces``."""
    from workbench.analysis.traces import flow_edges, hops_from_spans
    from workbench.traces.critical import analyse

    cps = [analyse(x) for x in (baseline, changed)]
    h = [hops_from_spans(x, cp) for x, cp in zip((baseline, changed), cps, strict=True)]
    edges = pd.concat([flow_edges(x, cp) for x, cp in zip((baseline, changed), cps, strict=True)])
    return localize(h[0], h[1], edges=edges, evidence="traces", **options)


def _common_mode(
    tables: dict[str, tuple[pd.DataFrame | None, pd.DataFrame | None]], metrics: Sequence[str]
) -> dict[str, tuple[pd.DataFrame | None, pd.DataFrame | None]]:
    """Take each window's host-wide stretch off each service's latency statistics: its baseline
    level times (the window's common factor - 1), the factor being the median over services of
    their ratio to their own baseline level (see ``localize``); each arm's windows get their own
    factors."""
    out = {
        s: (None if wa is None else wa.copy(), None if wb is None else wb.copy())
        for s, (wa, wb) in tables.items()
    }
    for metric in metrics:
        levels = {}
        for service, (wa, _) in tables.items():
            if wa is not None and len(wa) and wa[metric].notna().any():
                level = float(np.nanmedian(wa[metric]))
                if math.isfinite(level) and level > 0:
                    levels[service] = level
        if len(levels) < 3:
            continue
        for arm in (0, 1):
            ratios = {
                s: tables[s][arm][metric] / lv for s, lv in levels.items() if tables[s][arm] is not None
            }
            if len(ratios) < 3:
                continue
            stretch = pd.DataFrame(ratios).median(axis=1, skipna=True) - 1.0
            for service, lv in levels.items():
                w = out[service][arm]
                if w is not None:
                    w[metric] = w[metric] - lv * stretch.reindex(w.index).fillna(0.0)
    return out


# -------------------------------------------------------------------------------------------------
# Per-window telemetry (a cluster's Prometheus)


def _service_of(name: str, services: set[str]) -> str:
    """``catalog-v1`` (a workload) → ``catalog`` when that is a known service."""
    if name in services:
        return name
    for s in sorted(services, key=len, reverse=True):
        if name.startswith(s + "-"):
            return s
    return name


def telemetry_windows(
    inbound: pd.DataFrame, outbound: pd.DataFrame, window_s: float
) -> dict[str, pd.DataFrame]:
    """Per service a window table (``stats`` layout) of self-time means and originated errors.

    ``inbound``/``outbound``: :func:`workbench.metrics.dialects.windows` frames of the two views
    (Istio reporter=destination/source, or the local mesh's envoy dialect). See the module
    docstring for the estimator and its bias under concurrent fan-out.
    """
    services = set(inbound["destination"].astype(str))
    out: dict[str, pd.DataFrame] = {}
    edges = outbound.assign(source=[_service_of(str(s), services) for s in outbound["source"]])
    origin = min(inbound["time"].min(), edges["time"].min()) if len(edges) else inbound["time"].min()
    for service, rows in inbound.groupby("destination", sort=True):
        table = {}
        children = edges[edges["source"] == service]
        for t, group in rows.groupby("time", sort=True):
            h = merge(*group["histogram"]) if len(group) > 1 else group["histogram"].iloc[0]
            requests, errors = float(group["requests"].sum()), float(group["errors"].sum())
            if requests <= 0 or h.count <= 0:
                continue
            now = children[children["time"] == t]
            child_mean, child_errors = 0.0, 0.0
            for _, calls in now.groupby("destination"):
                hc = merge(*calls["histogram"]) if len(calls) > 1 else calls["histogram"].iloc[0]
                if hc.count > 0 and math.isfinite(hc.mean):
                    child_mean = max(child_mean, hc.mean)
                child_errors += float(calls["errors"].sum())
            row = dict.fromkeys(STAT_COLUMNS, np.nan)
            row.update(
                count=requests,
                errors=min(requests, max(0.0, errors - child_errors)),
                mean=max(0.0, h.mean - child_mean),
            )
            table[int((t - origin).total_seconds() // window_s)] = row
        frame = pd.DataFrame.from_dict(table, orient="index", columns=STAT_COLUMNS)
        frame.index.name = "window"
        out[str(service)] = frame
    return out


def localize_telemetry(
    baseline: tuple[pd.DataFrame, pd.DataFrame],
    changed: tuple[pd.DataFrame, pd.DataFrame],
    window_s: float,
    *,
    margin: Margin | None = None,
    alpha: float = 0.05,
) -> Localization:
    """Rank services from per-window telemetry: ``(inbound, outbound)`` dialect frames per window.

    Only the self-time mean and originated errors are compared (see the module docstring).
    """
    both_in = pd.concat([baseline[0], changed[0]], ignore_index=True)
    both_out = pd.concat([baseline[1], changed[1]], ignore_index=True)
    cut = changed[0]["time"].min()
    tables = telemetry_windows(both_in, both_out, window_s)
    origin = min(both_in["time"].min(), both_out["time"].min()) if len(both_out) else both_in["time"].min()
    cut_w = int((cut - origin).total_seconds() // window_s)
    if not tables:
        raise ValueError("no inbound telemetry in either window: nothing to localize")
    changes = []
    for service, table in tables.items():
        a, b = table[table.index < cut_w], table[table.index >= cut_w]
        comp = compare_tables(
            a, b, ("mean", "error_rate"), window_s, margin, alpha / len(tables), paired=False
        )
        changes.append(_change(service, comp))
    services = set(tables)
    edges = both_out.assign(source=[_service_of(str(s), services) for s in both_out["source"]])
    method = (
        "per window from Prometheus histograms: self = mean inbound time - max over callees of the mean "
        f"edge time; {window_s:g} s windows; ranked by the lower confidence bound of the increase / margin"
    )
    return _rank(changes, method, _upstream(edges), "telemetry")


def split_at(
    frame: pd.DataFrame, at: pd.Timestamp | float, column: str = "timestamp"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows before and from ``at`` (a time, or epoch seconds for an access-log ``start``)."""
    return frame[frame[column] < at], frame[frame[column] >= at]
