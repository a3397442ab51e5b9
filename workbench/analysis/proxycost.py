"""Proxy cost, directly: each sidecar's own time per traversal, from its access log.

Every Envoy of the local mesh logs, per request, its downstream duration (first byte in to last
byte out) and its upstream round trip (first byte sent upstream to last byte back), in µs
(``backends/local/envoy.py``'s access-log format, read by ``analysis.localize``'s reader). Their
difference is the time the proxy itself spent on that traversal — filters, routing, connection
pool, TLS, copying bytes — with the callee's time taken out:

    own = duration - upstream = request path (arrival -> first byte upstream)
                              + response path (last byte from upstream -> last byte downstream)

and where Envoy's duration points allow, the parts: the request and response paths, and for a
traversal that had to open its upstream connection (it began after the request arrived) that
connection's TCP connect and TLS handshake time. A traversal Envoy answered itself (an RBAC
denial, an injected abort: no upstream) is counted apart, as a local reply.

Per proxy **role** — ``client outbound`` (a caller's sidecar, the load generator's included),
``server inbound`` (a callee's), ``gateway`` (an ingress or egress gateway, by name), ``waypoint``
(ambient-waypoint's L7 proxy, one traversal per call) — this gives
p50/p90/p99 of the own time per traversal, how many traversals a request makes, and with the
sidecars' measured CPU, vCPU per 1000 traversals/s through the proxy (the unit of Istio's
published figures) and per 1000 requests/s entering the app.

A ``node proxy`` (the ambient modes' L4 proxy) logs tunnels, not requests (one record per tunnel
over a kept-alive connection), so it has no own time per request: its row gives its CPU and memory,
and its traversals per request from the call structure (each call crosses the caller's and the
callee's node proxy: ``meta["node_proxy_traversals_per_request"]``).

The end-to-end difference between two modes is a cross-check, not the same number: a request
fans out (the demo's frontend calls catalog and reviews concurrently), so only the proxies on
its **critical path** add to its latency. ``critical_path`` links each request's traversals by
``x-request-id`` (a call starts inside the request that made it), follows at each hop the
slowest child (the one the caller waited for) and sums the proxies' own time along it. What the
end-to-end difference adds beyond that is outside any proxy's own accounting: the extra loopback
hops, the kernel, waiting to be scheduled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.analysis.localize import CLIENT, SERVING, AccessLogTail
from workbench.backends.local.envoy import ACCESS_LOG_FLUSH_S
from workbench.load import storage
from workbench.load.results import LoadResult
from workbench.stats.trials import TrialResult, one_sample

__all__ = [
    "ALL",
    "ROLES",
    "TraversalRecorder",
    "cpu_shares",
    "critical_path",
    "observer_note",
    "per_traversal",
    "point_cost",
    "role_of",
    "settled",
    "sweep_costs",
    "traversals",
]

ROLES = ("client outbound", "server inbound", "gateway", "waypoint")
NODE_PROXY = "node proxy"  # an ambient node proxy: CPU and memory, no per-request record
# the workbench's own processes by their ``kind`` label: what a real mesh does not run
OBSERVERS = {"prometheus": "Prometheus (workbench)", "procstats": "process exporter (workbench)",
             "audit": "audit exporter (workbench)"}  # fmt: skip
ALL = "all sidecars"
SLACK_S = 0.002  # one host's clock; a call starts inside (and after) the request that made it
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def role_of(service: str, direction: str) -> str:
    """A proxy's role: ``waypoint``/``node proxy`` (ambient), ``gateway`` (by name), ``client outbound``
    or ``server inbound``."""
    if direction == "waypoint":
        return "waypoint"
    if direction == "node":
        return NODE_PROXY
    name = service.lower()
    if "gateway" in name or name.startswith(("ingress", "egress")):
        return "gateway"
    return "client outbound" if direction == "outbound" else "server inbound"


def traversals(logs: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """The traversals of the requests that entered between epoch seconds ``start`` and ``end``.

    ``logs``: access-log records (``localize.read_access_logs`` / ``AccessLogTail.read``). A
    request belongs to the window when one of its records starts inside it (its later hops may
    start just after). Adds ``role``, ``request`` (an integer per x-request-id), ``forwarded``
    (the proxy sent it upstream), ``own_ms`` (duration - upstream; NaN for a local reply) and
    ``end``; drops the request-id strings (the integer links them).
    """
    if len(logs):
        logs = logs[logs["direction"] != "node"]  # tunnels, not requests (see the module docstring)
    if not len(logs):
        return _empty()
    inside = logs[(logs["start"] >= start) & (logs["start"] <= end)]
    ids = set(inside["request_id"]) - {""}
    keep = logs["request_id"].isin(ids) | ((logs["request_id"] == "") & logs.index.isin(inside.index))
    t = logs[keep].copy()
    if not len(t):
        return _empty()
    codes = pd.factorize(t["request_id"])[0]
    anonymous = (t["request_id"] == "").to_numpy()  # no x-request-id: a request of its own each
    codes[anonymous] = codes.max() + 1 + np.arange(int(anonymous.sum()))
    t["request"] = codes.astype(np.int32)
    t = t.drop(columns="request_id")
    t["role"] = [role_of(s, d) for s, d in zip(t["service"], t["direction"], strict=True)]
    upstream = t["upstream_ms"] if "upstream_ms" in t else pd.Series(math.nan, index=t.index)
    t["forwarded"] = upstream.notna() & (upstream >= 0)
    t["own_ms"] = np.where(t["forwarded"], t["duration_ms"] - upstream, np.nan)
    t["end"] = t["start"] + t["duration_ms"] / 1000.0
    return t.sort_values("start", ignore_index=True)


def _empty() -> pd.DataFrame:
    columns = ["sidecar", "service", "version", "direction", "start", "duration_ms", "status", "request",
               "role", "forwarded", "own_ms", "end"]  # fmt: skip
    return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})


# -------------------------------------------------------------------------------------------------
# Critical path per request


def _parents(t: pd.DataFrame) -> pd.Series:
    """Each traversal's parent row (the traversal whose request made it), -1 for an entry."""
    rows = t.assign(row=np.arange(len(t)))
    inbound, outbound = rows[rows["direction"].isin(SERVING)], rows[rows["direction"] == "outbound"]
    pairs = []
    if len(outbound):
        # a callee's inbound traversal <- the caller's outbound traversal to that version
        pairs.append(inbound[["row", "request", "service", "version", "start"]].merge(
            outbound[["row", "request", "destination", "dest_version", "start", "end"]],
            left_on=["request", "service", "version"], right_on=["request", "destination", "dest_version"],
            suffixes=("", "_p"))[["row", "start", "row_p", "start_p", "end"]])  # fmt: skip
        # a caller's outbound traversal <- the inbound traversal of the request it serves
        calls = outbound[outbound["service"] != CLIENT]
        pairs.append(calls[["row", "request", "service", "version", "start"]].merge(
            inbound[["row", "request", "service", "version", "start", "end"]],
            on=["request", "service", "version"], suffixes=("", "_p"),
        )[["row", "start", "row_p", "start_p", "end"]])  # fmt: skip
    else:  # serveronly, ambient-waypoint: the callee's inbound sidecar (or waypoint) sees the caller (header)
        called = inbound[inbound["caller"].isin(set(inbound["service"]))]
        pairs.append(called[["row", "request", "caller", "start"]].merge(
            inbound[["row", "request", "service", "start", "end"]],
            left_on=["request", "caller"], right_on=["request", "service"], suffixes=("", "_p"),
        )[["row", "start", "row_p", "start_p", "end"]])  # fmt: skip
    linked = pd.concat(pairs, ignore_index=True)
    inside = (linked["start"] >= linked["start_p"] - SLACK_S) & (linked["start"] <= linked["end"] + SLACK_S)
    linked = linked[inside & (linked["row"] != linked["row_p"])]
    best = linked.sort_values("start_p").groupby("row")["row_p"].last()  # the innermost container
    return best.reindex(np.arange(len(t))).fillna(-1).astype(int)


def critical_path(t: pd.DataFrame) -> pd.DataFrame:
    """Per request: the proxies' own time on its critical path and how many traversals it made.

    Columns: ``request``, ``start`` (its entry), ``proxy_ms`` (own time summed along the path
    of slowest children from the entry; a local reply counts whole), ``traversals_critical``,
    ``traversals`` (all of the request's), ``own_total_ms`` (all its traversals' own time).
    """
    if not len(t):
        return pd.DataFrame(columns=["request", "start", "proxy_ms", "traversals_critical", "traversals",
                                     "own_total_ms"])  # fmt: skip
    t = t.reset_index(drop=True)
    parent = _parents(t).to_numpy()
    cost = np.where(t["forwarded"], t["own_ms"], t["duration_ms"]).astype(float)
    cost = np.nan_to_num(cost, nan=0.0)
    duration = t["duration_ms"].to_numpy(float)
    has_parent = parent >= 0
    child, par = np.flatnonzero(has_parent), parent[has_parent]
    # the child each parent waited for: its slowest
    order = np.lexsort((duration[child], par))
    last = np.r_[par[order][1:] != par[order][:-1], True]
    slowest = pd.Series(child[order][last], index=par[order][last])
    crit, hops = cost.copy(), np.ones(len(t))
    for _ in range(64):  # as deep as the call graph; stops when nothing changes
        new_crit, new_hops = cost.copy(), np.ones(len(t))
        new_crit[slowest.index] += crit[slowest.to_numpy()]
        new_hops[slowest.index] += hops[slowest.to_numpy()]
        if np.allclose(new_crit, crit) and np.array_equal(new_hops, hops):
            break
        crit, hops = new_crit, new_hops
    roots = t.assign(proxy_ms=crit, traversals_critical=hops)[~has_parent]
    entry = roots.sort_values(["request", "start"]).groupby("request", as_index=False).first()
    per = t.groupby("request").agg(traversals=("start", "size"), own_total_ms=("own_ms", "sum"))
    out = entry[["request", "start", "proxy_ms", "traversals_critical"]].merge(per, on="request")
    out["traversals_critical"] = out["traversals_critical"].astype(int)
    return out


# -------------------------------------------------------------------------------------------------
# One load point


def point_cost(
    t: pd.DataFrame,
    requests: int,
    seconds: float,
    process_cores: Mapping[str, float] | None = None,
    process_rss_mib: Mapping[str, float] | None = None,
    node_proxy_per_request: float | None = None,
) -> pd.DataFrame:
    """Per role (and ``all sidecars``): own time per traversal and what the proxies cost.

    ``requests``: the requests the load generator measured in the point (``seconds`` long), for
    CPU per 1000 requests/s (traversals per request count the requests the logs link);
    ``process_cores``: CPU cores per mesh process over the point (``meta["host"]
    ["process_cores"]``, Envoy processes named ``envoy <sidecar>``); ``process_rss_mib`` likewise.
    Columns: role, traversals, per_request, local_replies, own_p50_us/p90/p99, request_p50_us,
    response_p50_us, new_connection_pct, connect_p50_us, handshake_p50_us, sidecars, cpu_cores,
    vcpu_per_1000_traversals (per 1000 traversals/s through one proxy: Istio's published unit),
    vcpu_per_1000_rps (all the role's sidecars per 1000 requests/s entering), rss_mib_per_proxy.
    The ambient modes' node proxies (processes ``envoy <node>-node-proxy``) add a ``node proxy`` row
    (no own time: they log tunnels) with ``node_proxy_per_request`` traversals per request.
    """
    cores = dict(process_cores or {})
    rss = dict(process_rss_mib or {})
    entered = int(t["request"].nunique()) if len(t) else 0  # the requests these traversals belong to
    rows = []
    groups = [(role, t[t["role"] == role]) for role in ROLES if (t["role"] == role).any()]
    nodes = sorted(n for n in cores if n.endswith("-node-proxy"))
    if len(groups) > 1 or not (groups or nodes):
        groups.append((ALL, t))
    for role, g in groups:
        fw = g[g["forwarded"]] if len(g) else g
        new = fw[fw["new_connection"].astype(bool)] if "new_connection" in fw and len(fw) else fw.iloc[:0]
        names = sorted(set(g["sidecar"])) if len(g) else []
        role_cores = [cores[f"envoy {n}"] for n in names if f"envoy {n}" in cores]
        role_rss = [rss[f"envoy {n}"] for n in names if f"envoy {n}" in rss]
        cpu = float(sum(role_cores)) if role_cores else math.nan
        per_s = len(fw) / seconds if seconds > 0 else math.nan
        row: dict[str, Any] = {
            "role": role,
            "traversals": len(fw),
            "per_request": len(g) / entered if entered else math.nan,
            "local_replies": int(len(g) - len(fw)),
        }
        for name, q in QUANTILES.items():
            row[f"own_{name}_us"] = _q(fw, "own_ms", q)
        row["request_p50_us"] = _q(fw, "request_ms", 0.5)
        row["response_p50_us"] = _q(fw, "response_ms", 0.5)
        row["new_connection_pct"] = 100.0 * len(new) / len(fw) if len(fw) else math.nan
        row["connect_p50_us"] = _q(new, "connect_ms", 0.5)
        row["handshake_p50_us"] = _q(new, "handshake_ms", 0.5)
        row["sidecars"] = len(names)
        row["cpu_cores"] = cpu
        # per proxy: the role's CPU over its traversals/s; Istio: vCPU per 1000 rps through a proxy
        row["vcpu_per_1000_traversals"] = cpu / (per_s / 1000) if per_s else math.nan
        row["vcpu_per_1000_rps"] = cpu / (requests / seconds / 1000) if requests and seconds else math.nan
        row["rss_mib_per_proxy"] = float(np.mean(role_rss)) if role_rss else math.nan
        rows.append(row)
    if nodes:
        rows.append(_node_proxy_row(nodes, cores, rss, requests, seconds, node_proxy_per_request))
    return pd.DataFrame(rows)


def _node_proxy_row(
    names: list[str], cores: Mapping[str, float], rss: Mapping[str, float], requests: int, seconds: float,
    per_request: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The node proxies' row of ``point_cost``: CPU and memory; traversals from the call structure."""
    cpu = float(sum(cores[n] for n in names))
    rate = requests / seconds if requests and seconds else math.nan
    per = float(per_request) if per_request else math.nan
    held = [rss[n] for n in names if n in rss]
    traversals = round(per * requests) if math.isfinite(per) else 0
    row: dict[str, Any] = {"role": NODE_PROXY, "traversals": traversals, "per_request": per}
    row["local_replies"] = 0
    row.update({f"own_{q}_us": math.nan for q in QUANTILES})
    row.update(request_p50_us=math.nan, response_p50_us=math.nan, new_connection_pct=math.nan,
               connect_p50_us=math.nan, handshake_p50_us=math.nan, sidecars=len(names), cpu_cores=cpu,
               vcpu_per_1000_traversals=cpu / (per * rate / 1000) if math.isfinite(per * rate) else math.nan,
               vcpu_per_1000_rps=cpu / (rate / 1000) if math.isfinite(rate) else math.nan,
               rss_mib_per_proxy=float(np.mean(held)) if held else math.nan)  # fmt: skip
    return row


def _q(frame: pd.DataFrame, column: str, q: float) -> float:
    """A quantile of a ms column, in µs (NaN when the column is missing or empty)."""
    if column not in frame or not len(frame):
        return math.nan
    values = frame[column].to_numpy(float)
    values = values[np.isfinite(values)]
    return float(np.quantile(values, q) * 1000.0) if len(values) else math.nan


# -------------------------------------------------------------------------------------------------
# Recording and reading the traversals of sweep points

TRAVERSALS_DIR = "traversals"
FLUSH_S = ACCESS_LOG_FLUSH_S + 0.25  # the sidecars' access-log flush interval, and a margin
SETTLE_LIMIT_S = 10.0  # the longest ``settled`` waits for a point's late records


class TraversalRecorder:
    """The sweep hooks that keep each point's traversals: ``before(mesh, point)`` marks where the
    proxies' access logs end, ``__call__(mesh, point, result)`` (after the load, logs flushed)
    reads what was added and stores the measured phase's traversals as
    ``<directory>/<point>.parquet``. A mesh without access logs (no sidecars) stores none."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._tails: dict[Path, AccessLogTail] = {}

    def _tail(self, mesh: Any) -> AccessLogTail | None:
        run_dir = getattr(mesh, "run_dir", None)
        if run_dir is None or not (Path(run_dir) / "envoy").is_dir():
            return None
        key = Path(run_dir)
        if key not in self._tails:
            self._tails[key] = AccessLogTail(key / "envoy")
        return self._tails[key]

    def before(self, mesh: Any, point: Any) -> None:
        tail = self._tail(mesh)
        if tail is not None:
            tail.skip()

    def __call__(self, mesh: Any, point: Any, result: LoadResult) -> None:
        tail = self._tail(mesh)
        if tail is None:
            return
        start, end = measured_window(result)
        # k6 has exited, so every request has ended; its last records reach the file within a
        # flush interval of now, which on a busy machine can be well after ``end``
        time.sleep(max(FLUSH_S, end + FLUSH_S - time.time()))
        found = traversals(settled(tail, end), start, end)
        self.directory.mkdir(parents=True, exist_ok=True)
        found.to_parquet(self.directory / f"{point.name}.parquet", index=False)


def settled(tail: AccessLogTail, end: float, limit_s: float = SETTLE_LIMIT_S) -> pd.DataFrame:
    """Every record the sidecars log for requests that started by epoch second ``end``.

    Call it a flush interval after the load generator exited. A request's last record (its entry
    proxy's, written when the response has left) and Envoy's flush can still lag on a busy machine
    (a point once counted 4.993 client-outbound traversals per request where every request makes
    5: ~4 records of 3,010 were read too early), so this reads again every flush interval until a
    read brings no record that started by ``end`` (later records are other traffic), for at most
    ``limit_s`` seconds.
    """
    frames = [tail.read()]
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(FLUSH_S)
        more = tail.read()
        frames.append(more)
        if not len(more) or not (more["start"] <= end).any():
            break
    full = [f for f in frames if len(f)]
    return pd.concat(full, ignore_index=True) if full else frames[0]


def measured_window(result: LoadResult) -> tuple[float, float]:
    """(start, end) epoch seconds of a point's measured phase (warm-up excluded)."""
    start = pd.Timestamp(result.meta["start"]).timestamp()
    return start, start + float(result.meta.get("duration_s") or 0.0)


def load_traversals(directory: Path, point: str) -> pd.DataFrame | None:
    """A point's stored traversals, or None when none were recorded."""
    path = directory / f"{point}.parquet"
    return pd.read_parquet(path) if path.exists() else None


def sweep_costs(store: Path, directory: Path) -> pd.DataFrame:
    """One row per stored sweep point and role: the point's settings, whether it was saturated,
    ``point_cost``'s columns, and the critical path's proxy time per request (p50, mean) with
    the traversals on it; points without recorded traversals are left out."""
    rows = []
    for path in sorted(store.glob("*.json")):
        result = storage.load(path)
        t = load_traversals(directory, path.stem)
        if t is None or not (len(t) or meta_has_node_proxies(result.meta)):
            continue
        meta, summary = result.meta, result.summary()
        host = meta.get("host") or {}
        seconds = float(meta.get("duration_s") or 0.0)
        cost = point_cost(t, int(summary["count"]), seconds, host.get("process_cores"),
                          meta.get("process_rss_mib"),
                          meta.get("node_proxy_traversals_per_request"))  # fmt: skip
        crit = critical_path(t)
        sat = result.saturation()
        cost = cost.assign(
            point=path.stem, mode=meta.get("mode"), rps=meta.get("requested_rps") or meta.get("rps"),
            connections=meta.get("connections"), repetition=meta.get("repetition", 0),
            saturated=sat.saturated, saturation=sat.explain(), e2e_p50_ms=summary["p50"],
            critical_p50_ms=float(crit["proxy_ms"].median()) if len(crit) else math.nan,
            critical_mean_ms=float(crit["proxy_ms"].mean()) if len(crit) else math.nan,
            critical_traversals=float(crit["traversals_critical"].median()) if len(crit) else math.nan,
        )  # fmt: skip
        rows.append(cost)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def meta_has_node_proxies(meta: Mapping[str, Any]) -> bool:
    """Whether a point ran through ambient node proxies (they log tunnels, so it may have no
    per-request traversal and still a node proxy row)."""
    return bool(meta.get("node_proxy_traversals_per_request"))


def per_traversal(costs: pd.DataFrame, role: str = ALL, confidence: float = 0.95) -> TrialResult:
    """The own time per traversal (p50, µs) of one mode and connection count over its trials:
    one value per trial, a t interval over trials (``stats.trials.one_sample``). ``costs``: the
    ``sweep_costs`` rows of that mode and count; with one role only, its rows stand for all."""
    rows = costs[costs["role"] == role]
    if not len(rows):
        rows = costs[costs["role"] != ALL]
    return one_sample(rows["own_p50_us"].to_numpy(float), confidence=confidence)


def cpu_shares(result: LoadResult, on_path: set[str]) -> dict[str, float]:
    """Who used the host's CPU during a point, in % of all cores: the workbench's own processes
    (Prometheus, the process exporter, the audit exporter: absent when telemetry is off), the load
    generator, the sidecars that carried the point's traffic (``on_path``: sidecar names), the idle
    sidecars, the apps, and everything else on the host (other meshes, other users)."""
    host = result.meta.get("host") or {}
    cores = float(host.get("cores") or 0) or math.nan
    per = dict(host.get("process_cores") or {})
    kinds = {
        name: (labels or {}).get("kind", "") for name, labels in (result.meta.get("processes") or {}).items()
    }
    groups = dict.fromkeys(OBSERVERS.values(), 0.0)
    groups["load generator (k6)"] = float(host.get("loadgen_cpu_cores") or 0.0)
    groups.update({"sidecars on the path": 0.0, "idle sidecars": 0.0, "apps": 0.0})
    for name, used in per.items():
        kind = kinds.get(name, "")
        if kind == "envoy":
            key = "sidecars on the path" if name.removeprefix("envoy ") in on_path else "idle sidecars"
        else:
            key = OBSERVERS.get(kind, "apps")
        groups[key] += float(used)
    busy = float(host.get("host_cpu_pct", math.nan)) / 100.0 * cores
    groups["rest of the host"] = max(0.0, busy - sum(groups.values())) if math.isfinite(busy) else math.nan
    out = {k: 100.0 * v / cores for k, v in groups.items()}
    for kind, label in OBSERVERS.items():
        if kind not in kinds.values():
            out[label] = math.nan  # not running (telemetry off)
    return out


def observer_note(result: LoadResult) -> str:
    """One line for a point's progress: the workbench's own processes' share of the host's CPU (or
    that none ran), and the rest of the host's."""
    shares = cpu_shares(result, set())
    own = {k: v for k, v in shares.items() if k in OBSERVERS.values() and math.isfinite(v)}
    text = ("workbench's own processes " + ", ".join(f"{k.split(' (')[0]} {v:.1f} %" for k, v in own.items())
            if own else "no workbench process in this mesh")  # fmt: skip
    rest = shares.get("rest of the host", math.nan)
    return text + (f"; rest of the host {rest:.1f} % of all cores" if math.isfinite(rest) else "")


# -------------------------------------------------------------------------------------------------
# Over trials, and the sentences a report leads with


def over_trials(
    costs: pd.DataFrame, by: tuple[str, ...] = ("mode", "connections"), alpha: float = 0.05,
    replicate: str = "trial",
) -> pd.DataFrame:  # fmt: skip
    """Per group ``by`` (mode and connection count; a sweep adds rps) and sidecar role, over the
    unsaturated trials (points): the own time per traversal (p50 with its interval over trials;
    p90, p99), its paths, new connections, CPU per 1000 rps, memory, traversals per request and
    the critical path (means over trials; traversals per request and on the critical path over
    every trial, saturated or not). ``costs``: ``sweep_costs`` rows. ``replicate`` names the
    replicate in notes ("trial" of a comparison, "repetition" of a sweep)."""
    if costs.empty:
        return pd.DataFrame()
    rows = []
    means = ["own_p90_us", "own_p99_us", "request_p50_us", "response_p50_us", "new_connection_pct",
             "connect_p50_us", "handshake_p50_us", "vcpu_per_1000_traversals", "vcpu_per_1000_rps",
             "rss_mib_per_proxy", "critical_p50_ms"]  # fmt: skip
    structure = ["per_request", "critical_traversals"]  # counts saturation does not change: every trial
    for key, g in costs.groupby([*by, "role"], sort=False):
        ok = g[~g["saturated"]]
        row: dict[str, Any] = {**dict(zip([*by, "role"], key, strict=True)), "trials": len(ok),
                               "saturated_trials": int(g["saturated"].sum()), "own_p50_us": math.nan,
                               "own_p50_ci_low": math.nan, "own_p50_ci_high": math.nan,
                               "own_p50_note": ""}  # fmt: skip
        if row["role"] == NODE_PROXY:
            row["own_p50_note"] = "no own time per request: a node proxy logs tunnels (L4)"
        elif len(ok):
            res = per_traversal(ok, str(row["role"]), 1 - alpha)
            note = (
                res.note
                if replicate == "trial" or res.ci.finite
                else f"no interval (one {replicate} per point)"
            )
            row.update(own_p50_us=res.estimate, own_p50_ci_low=res.ci.low, own_p50_ci_high=res.ci.high,
                       own_p50_note=note)  # fmt: skip
        for column in means:
            row[column] = float(ok[column].mean()) if len(ok) else math.nan
        for column in structure:
            row[column] = float(g[column].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def overall(group: pd.DataFrame) -> pd.Series | None:
    """The ``all sidecars`` row of one group's ``over_trials`` rows (its only role's row when it
    has one role), or None when nothing was measured."""
    rows = group[group["role"] == ALL] if len(group) else group
    rows = rows if len(rows) else group
    if not len(rows) or not np.isfinite(rows.iloc[0]["own_p50_us"]):
        return None
    return rows.iloc[0]


def us_text(row: pd.Series) -> str:
    """``95 µs [80, 110]`` or ``95 µs (no interval (one trial per mode))``."""
    text = f"{row['own_p50_us']:.0f} µs"
    if np.isfinite(row["own_p50_ci_low"]) and np.isfinite(row["own_p50_ci_high"]):
        return text + f" [{row['own_p50_ci_low']:.0f}, {row['own_p50_ci_high']:.0f}]"
    return text + (f" ({row['own_p50_note']})" if row.get("own_p50_note") else "")


def sentence(group: pd.DataFrame, where: str, replicate: str = "trial") -> str:
    """ "each sidecar traversal adds N µs p50 [interval] of the proxy's own time (where, ...)" for
    one group's ``over_trials`` rows; empty when it has no sidecar traversals. In the ambient modes
    the proxies are node proxies and waypoints, not sidecars: "each proxy traversal adds"."""
    top = overall(group)
    if top is None:
        return ""
    modes = group["mode"].astype(str) if "mode" in group.columns else pd.Series(dtype=str)
    noun = "proxy" if modes.str.startswith("ambient").any() else "sidecar"
    roles = group[(group["role"] != ALL) & np.isfinite(group["own_p50_us"].astype(float))]  # not node proxies
    parts = (
        ", ".join(f"{r['role']} {r['own_p50_us']:.0f} µs" for _, r in roles.iterrows())
        if len(roles) > 1
        else ""
    )
    trials = int(top["trials"])
    return (f"each {noun} traversal adds {us_text(top)} p50 of the proxy's own time ({where}, "
            f"{top['per_request']:.0f} traversals per request{'; ' + parts if parts else ''}; "
            f"{trials} {replicate}{'s' if trials != 1 else ''})")  # fmt: skip


def agreement(group: pd.DataFrame, base_group: pd.DataFrame, delta_p50: pd.Series, base: str) -> str:
    """How the direct figure and the end-to-end Δp50 (``estimate``, ``ci_low``, ``ci_high``, ms)
    agree: the sidecars' own time on a request's critical path in ``group`` minus that in
    ``base_group`` (none: no sidecar, no proxy time) against the Δp50 and its interval."""

    def crit(rows: pd.DataFrame) -> tuple[float, float]:
        top = overall(rows) if len(rows) else None
        if top is None:
            return 0.0, 0.0
        return float(top["critical_p50_ms"]), float(top["critical_traversals"])

    (cr, hops), (cb, hops_b) = crit(group), crit(base_group)
    estimate = float(delta_p50["estimate"])
    if not (np.isfinite(cr) and np.isfinite(cb) and np.isfinite(estimate)):
        return ""
    direct = cr - cb
    text = (f"the sidecars' own time on a request's critical path ({hops - hops_b:.0f} traversals more than "
            f"{base}) adds {direct:.2f} ms")  # fmt: skip
    low, high = float(delta_p50["ci_low"]), float(delta_p50["ci_high"])
    if np.isfinite(low) and low <= direct <= high:
        return text + ", inside the end-to-end interval: the two agree"
    if estimate > 0:
        share, rest = 100 * direct / estimate, estimate - direct
        return (text + f", {share:.0f} % of the end-to-end Δp50; the other {rest:.2f} ms is outside the "
                "proxies' own accounting (loopback hops, kernel, scheduling)")  # fmt: skip
    return text
