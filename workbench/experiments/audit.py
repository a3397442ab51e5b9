"""Release audit: is the audit log intact, and what changed — releases, splits, policies, experiments.

``run`` verifies the hash chain and copies the entries in scope (``since``) into the experiment's
store, so the report is re-rendered from that copy later even if the log grows; ``analyse`` tallies
them by action and target and rebuilds each service's traffic weights over time from the split
entries. Verdict: ``intact`` (ok), or ``tampered`` (worse) naming the first bad line.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from workbench.audit import AuditError, AuditLog, describe
from workbench.experiments.session import ExperimentResult, Session
from workbench.report.plots import PALETTE, styled

DATA_FILE = "audit.json"


def run(s: Session) -> None:
    """Verify the log and store the entries in scope."""
    spec = s.spec
    log = AuditLog(spec.file) if spec.file else AuditLog()
    try:
        check = log.verify()
        verdict = {"ok": check.ok, "entries": check.entries, "first_bad_line": check.first_bad_line,
                   "reason": check.reason, "warnings": list(check.warnings)}  # fmt: skip
    except AuditError as exc:  # no log yet: nothing was changed through the workbench
        verdict = {"ok": True, "entries": 0, "first_bad_line": None, "reason": "", "warnings": [str(exc)]}
    entries = log.entries(since=spec.since) if log.path.exists() else []
    s.progress(f"audit log {log.path}: {verdict['entries']} entries, {len(entries)} in scope")
    s.save_json(
        DATA_FILE, {"path": str(log.path), "since": spec.since, "verify": verdict, "entries": entries}
    )


def table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per entry: time, actor, action, target, before → after, run id."""
    rows = [
        {"time": pd.Timestamp(e["time"]), "actor": e.get("actor", ""), "action": e.get("action", ""),
         "target": e.get("target", ""), "change": f"{describe(e.get('before'))} → {describe(e.get('after'))}",
         "run_id": e.get("run_id") or ""}
        for e in entries
    ]  # fmt: skip
    cols = ["time", "actor", "action", "target", "change", "run_id"]
    return pd.DataFrame(rows, columns=cols)


def weights(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Traffic weight per service and version after every split entry (long format)."""
    rows = []
    for e in entries:
        if e.get("action") in ("split", "promote", "rollback") and isinstance(e.get("after"), dict):
            for version, weight in e["after"].items():
                if isinstance(weight, int | float):
                    rows.append({"time": pd.Timestamp(e["time"]), "service": e.get("target", ""),
                                 "version": version, "weight": float(weight)})  # fmt: skip
    return pd.DataFrame(rows, columns=["time", "service", "version", "weight"])


def analyse(s: Session) -> ExperimentResult:
    """Judge the stored copy: chain intact or not, and a summary of the changes."""
    data = s.load_json(DATA_FILE)
    check, entries = data["verify"], data["entries"]
    frame = table(entries)
    counts = (
        frame.groupby("action").size().sort_values(ascending=False) if len(frame) else pd.Series(dtype=int)
    )
    scope = f"since {data['since']}" if data.get("since") else "all"
    if check["ok"]:
        verdict, severity = "intact", "ok"
        summary = ", ".join(f"{n} {a}" for a, n in counts.items()) or "no changes"
        headline = f"{data['path']}: hash chain intact over {check['entries']} entries; {scope}: {summary}"
    else:
        verdict, severity = "tampered", "worse"
        headline = f"{data['path']}: line {check['first_bad_line']}: {check['reason']}"
    figures: dict[str, Any] = {"entries": check["entries"], "in_scope": len(entries)}
    figures.update({f"count_{a}": int(n) for a, n in counts.items()})
    checks = [{"name": "hash chain", "verdict": verdict, "severity": severity, "explanation": headline}]
    return ExperimentResult(
        s.spec.name, "audit", verdict, severity, headline, figures,  # type: ignore[arg-type]
        {"entries": frame, "weights": weights(entries)}, {"verify": check}, checks,
    )  # fmt: skip


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """Events over time by action; traffic weights per service over time."""
    out: dict[str, go.Figure] = {}
    frame = result.tables.get("entries")
    if frame is not None and len(frame):
        fig = go.Figure()
        actions = list(dict.fromkeys(frame["action"]))
        for i, action in enumerate(actions):
            rows = frame[frame["action"] == action]
            fig.add_trace(go.Scatter(x=rows["time"], y=[action] * len(rows), mode="markers", name=action,
                                     text=rows["target"] + ": " + rows["change"],
                                     marker={"color": PALETTE[i % len(PALETTE)], "size": 9}))  # fmt: skip
        busiest = frame["action"].value_counts().idxmax()
        out["events"] = styled(fig, "Audit events over time", f"{len(frame)} events; most often: {busiest}",
                               "time (UTC)", "action", height=180 + 30 * len(actions))  # fmt: skip
    w = result.tables.get("weights")
    if w is not None and len(w):
        fig = go.Figure()
        for i, ((service, version), g) in enumerate(w.groupby(["service", "version"], sort=True)):
            colour = PALETTE[i % len(PALETTE)]
            fig.add_trace(go.Scatter(x=g["time"], y=g["weight"], mode="lines+markers", line_shape="hv",
                                     name=f"{service} {version}", line={"color": colour}))  # fmt: skip
        changed = w["service"].nunique()
        out["weights"] = styled(fig, "Traffic weights after each change",
                                f"{changed} service(s) had their split changed in scope", "time (UTC)",
                                "weight (%)")  # fmt: skip
    return out
