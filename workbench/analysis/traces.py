"""Request flows from traces: per-service hops for localization, the flow graph's edges, and
baseline-vs-changed critical-path self time with intervals.

Spans come as a ``workbench.traces.spans`` table and its ``critical.analyse`` result (rows aligned).

**Visits.** A service's *visit* in a request starts at its entry span — a span whose parent belongs
to another service (or that has none): the server sidecar's span, or the app's own span where no
sidecar is in front — and holds the entry span's descendants of the same service (its app span,
its client sidecars' spans of the calls it made). A visit's **self time** is the sum of its spans'
exclusive times (each span's duration minus the union of its children's intervals): exactly the
time the request spent in that service's proxies and code while it waited on no other service —
the trace form of the access-log estimate (inbound time minus the slowest call), without its
approximations (sequential calls, calls linked by time).

**Errors** originate in a visit that failed while none of its calls did; a client span that failed
without any child span (the callee never answered: no healthy upstream, reset, injected abort)
charges the callee, as the access-log method does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.stats.compare import Margin, compare_tables
from workbench.stats.windows import window_table
from workbench.traces.critical import CriticalPath
from workbench.units import parse_duration

__all__ = [
    "EXTERNAL",
    "compare_critical_path",
    "flow_edges",
    "hops_from_spans",
    "per_request",
    "traces_between",
]

HOP_COLUMNS = ["timestamp", "service", "version", "request_id", "total_ms", "status", "downstream_ms",
               "calls", "failed_call", "self_ms", "originated", "kind"]  # fmt: skip
EXTERNAL = "loadgen"  # the caller of a root span that no client span of ours represents


def traces_between(spans: pa.Table, cp: CriticalPath, start_s: float, end_s: float) -> pa.Table:
    """The spans of the traces whose root started in [start, end] (epoch s): whole traces, so a
    request that straddles the boundary is not cut into orphans."""
    t = cp.traces
    chosen = ((t["root"] >= 0) & (t["start_us"] >= start_s * 1e6) & (t["start_us"] <= end_s * 1e6)).to_numpy()
    return spans.filter(pa.array(chosen[cp.trace]))


def _frame(spans: pa.Table | pd.DataFrame, cp: CriticalPath) -> pd.DataFrame:
    df = spans.to_pandas() if isinstance(spans, pa.Table) else spans.reset_index(drop=True)
    df = df.assign(
        row=np.arange(len(df)), parent_row=cp.parent, depth=cp.depth, on_path=cp.on_path,
        cp_self_us=cp.self_us, excl_us=cp.exclusive_us, cstart=cp.start_us, cend=cp.end_us,
        trace_row=cp.trace, in_tree=cp.in_tree,
    )  # fmt: skip
    df["failed"] = (df["status"] >= 500) | df["error"].astype(bool)
    return df


def _visits(df: pd.DataFrame) -> np.ndarray:
    """Per span, the row of its visit's entry span (see the module docstring); -1 off any tree."""
    parent = df["parent_row"].to_numpy()
    service = df["service"].to_numpy()
    depth = df["depth"].to_numpy()
    visit = np.full(len(df), -1, dtype=np.int64)
    top = depth == 0
    visit[top] = np.flatnonzero(top)
    for d in range(1, int(depth.max(initial=0)) + 1):
        rows = np.flatnonzero(depth == d)
        p = parent[rows]
        same = service[rows] == service[p]
        visit[rows] = np.where(same, visit[p], rows)
    return visit


def hops_from_spans(spans: pa.Table | pd.DataFrame, cp: CriticalPath) -> pd.DataFrame:
    """One row per visit (the shape ``analysis.localize.hops`` gives from access logs): timestamp,
    service, version, request_id, total_ms, downstream_ms, calls, failed_call, self_ms, status,
    originated, kind; plus one ``hop`` row per client span that failed without an answer."""
    df = _frame(spans, cp)
    if df.empty:
        return pd.DataFrame(columns=HOP_COLUMNS)
    df["visit"] = _visits(df)
    df = df[df["visit"] >= 0]
    entries = df[df["row"] == df["visit"]].set_index("row")
    # calls: the entry spans of other services' visits whose parent lies in this visit
    parent_visit = df.set_index("row")["visit"]
    callees = entries[entries["parent_row"] >= 0]
    calls = pd.DataFrame(
        {
            "visit": parent_visit.reindex(callees["parent_row"].to_numpy()).to_numpy(),
            "dur": (callees["cend"] - callees["cstart"]).to_numpy() / 1000.0,
            "failed": callees["failed"].to_numpy(),
        }
    )
    # a client span without children: the call got no answer from the callee
    has_child = np.zeros(len(cp.parent), dtype=bool)
    has_child[cp.parent[cp.parent >= 0]] = True
    unanswered = df[(df["role"] == "client") & ~has_child[df["row"].to_numpy()]]
    calls = pd.concat(
        [
            calls,
            pd.DataFrame(
                {
                    "visit": unanswered["visit"].to_numpy(),
                    "dur": (unanswered["cend"] - unanswered["cstart"]).to_numpy() / 1000.0,
                    "failed": unanswered["failed"].to_numpy(),
                }
            ),
        ],
        ignore_index=True,
    )
    agg = calls.groupby("visit").agg(
        downstream_ms=("dur", "max"), calls=("dur", "size"), failed_call=("failed", "any")
    )
    self_us = df.groupby("visit")["excl_us"].sum()
    out = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(entries["cstart"], unit="us", utc=True),
            "service": entries["service"],
            "version": entries["version"],
            "request_id": entries["request_id"],
            "total_ms": (entries["cend"] - entries["cstart"]) / 1000.0,
            "status": entries["status"].astype(int),
        }
    )
    out["downstream_ms"] = agg["downstream_ms"].reindex(out.index).fillna(0.0)
    out["calls"] = agg["calls"].reindex(out.index).fillna(0).astype(int)
    out["failed_call"] = agg["failed_call"].reindex(out.index).fillna(False).astype(bool)
    out["self_ms"] = self_us.reindex(out.index).fillna(0).to_numpy() / 1000.0
    failed = entries["failed"].reindex(out.index)
    out["status"] = np.where(failed & (out["status"] < 500), 500, out["status"])
    out["originated"] = failed & ~out["failed_call"]
    out["kind"] = "request"
    out = out[out["service"] != EXTERNAL]
    lost = unanswered[unanswered["failed"]]
    if len(lost):
        extra = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(lost["cstart"], unit="us", utc=True),
                "service": lost["peer"].where(lost["peer"] != "", "unknown"),
                "version": "",
                "request_id": lost["request_id"],
                "total_ms": (lost["cend"] - lost["cstart"]) / 1000.0,
                "status": lost["status"].where(lost["status"] >= 500, 503).astype(int),
                "downstream_ms": 0.0, "calls": 0, "failed_call": False,
                "self_ms": (lost["cend"] - lost["cstart"]) / 1000.0, "originated": True, "kind": "hop",
            }
        )  # fmt: skip
        out = pd.concat([out, extra], ignore_index=True)
    return out.sort_values("timestamp", ignore_index=True)


def flow_edges(spans: pa.Table | pd.DataFrame, cp: CriticalPath) -> pd.DataFrame:
    """One row per (source, destination, version): requests, errors, p50_ms, p99_ms as the caller
    saw the call, and ``cp_ms`` (the calls' total time on critical paths, divided by the number of
    traces: the mean time per request that the edge holds up the response)."""
    df = _frame(spans, cp)
    cols = ["source", "destination", "version", "requests", "errors", "p50_ms", "p99_ms", "cp_ms"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["visit"] = _visits(df)
    entries = df[(df["row"] == df["visit"]) & (df["service"] != EXTERNAL)]
    by_row = df.set_index("row")
    p = entries["parent_row"].to_numpy()
    has_parent = p >= 0
    src = np.where(has_parent, by_row["service"].reindex(np.maximum(p, 0)).to_numpy(), EXTERNAL)
    # the caller-side span: the parent when it is a client span, else the entry span itself
    caller_role = np.where(has_parent, by_row["role"].reindex(np.maximum(p, 0)).to_numpy(), "")
    side = np.where(has_parent & (caller_role == "client"), p, entries["row"].to_numpy())
    s = by_row.reindex(side)
    frame = pd.DataFrame(
        {
            "source": src,
            "destination": entries["service"].to_numpy(),
            "version": entries["version"].to_numpy(),
            "ms": ((s["cend"] - s["cstart"]) / 1000.0).to_numpy(),
            "failed": s["failed"].to_numpy(),
            "cp": np.where(s["on_path"].to_numpy(), (s["cend"] - s["cstart"]).to_numpy() / 1000.0, 0.0),
        }
    )
    n_traces = max(int((cp.traces["root"] >= 0).sum()), 1)
    out = (
        frame.groupby(["source", "destination", "version"], sort=True)
        .agg(
            requests=("ms", "size"),
            errors=("failed", "sum"),
            p50_ms=("ms", lambda x: float(np.quantile(x, 0.5))),
            p99_ms=("ms", lambda x: float(np.quantile(x, 0.99))),
            cp_ms=("cp", "sum"),
        )
        .reset_index()
    )
    out["cp_ms"] = out["cp_ms"] / n_traces
    return out[cols]


def per_request(cp: CriticalPath, services: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per complete trace: ``timestamp`` (root start), ``e2e_ms`` and each service's
    critical-path self time in ms (0 when the service was not on the path)."""
    t = cp.traces[cp.traces["complete"]]
    wide = (
        cp.by_service[cp.by_service["trace"].isin(t.index)]
        .pivot_table(index="trace", columns="service", values="self_us", aggfunc="sum", observed=True)
        .reindex(t.index)
        .fillna(0.0)
        / 1000.0
    )
    if services is not None:
        wide = wide.reindex(columns=list(services), fill_value=0.0)
    wide.columns = [str(c) for c in wide.columns]
    out = pd.DataFrame(
        {"timestamp": pd.to_datetime(t["start_us"], unit="us", utc=True), "e2e_ms": t["duration_us"] / 1000.0}
    )
    return pd.concat([out, wide], axis=1).reset_index(drop=True)


def compare_critical_path(
    baseline: CriticalPath,
    changed: CriticalPath,
    window: str | float = "1s",
    margin: Margin | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Which service's critical-path self time changed: per service (and end to end) the mean per
    request in each window, compared between the two runs with ``stats.compare_tables`` (windows
    as the unit, the interval against the margin) at ``alpha / (services + 1)``.

    The services' means add up to the end-to-end mean, so the estimates say how the change of the
    end-to-end latency splits over the services. One row per service: baseline_ms, changed_ms,
    estimate, ci_low, ci_high, margin, verdict, pvalue, explanation; ordered by the estimate.
    """
    window_s = parse_duration(window)
    services = sorted(set(baseline.services) | set(changed.services))
    a, b = per_request(baseline, services), per_request(changed, services)
    if a.empty or b.empty:
        raise ValueError("critical-path comparison needs complete traces in both runs")
    origin = min(a["timestamp"].min(), b["timestamp"].min())
    rows = []
    columns = [*services, "e2e_ms"]
    level = alpha / len(columns)
    for column in columns:
        if not (a[column].any() or b[column].any()):
            continue  # never on a critical path: nothing to compare
        wa, wb = (
            window_table(
                pd.DataFrame({"timestamp": x["timestamp"], "latency_ms": x[column], "status": 200}),
                window_s,
                origin,
            )
            for x in (a, b)
        )
        r = compare_tables(wa, wb, ("mean",), window_s, margin, level, paired=False)["mean"]
        name = "end to end" if column == "e2e_ms" else column
        rows.append(
            {
                "service": name, "baseline_ms": r.baseline, "changed_ms": r.candidate, "estimate": r.estimate,
                "ci_low": r.ci.low, "ci_high": r.ci.high, "margin": r.margin, "verdict": r.verdict,
                "pvalue": r.pvalue, "windows": r.n_windows, "explanation": f"{name}: {r.explain()}",
            }
        )  # fmt: skip
    out = pd.DataFrame(rows)
    e2e = out[out["service"] == "end to end"]
    return pd.concat([out[out["service"] != "end to end"].sort_values("estimate", ascending=False), e2e],
                     ignore_index=True)  # fmt: skip
