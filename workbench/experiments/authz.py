"""Authorization check: apply a policy and verify it with real requests from each caller.

For every ``expect`` row (caller, path, method, allowed) a few real requests are made *as the
caller* (``RequestAs.requests_as``: through the caller's own sidecar on the local mesh; on a cluster
from a short-lived Job running as the caller's ServiceAccount, joined to the mesh — one per caller
and phase, all callers at once), once before the policy is applied and once after (when the backend
says the policy has reached its proxies, ``policy_settle_s``), so the table shows that the policy
made the difference. Each answer is classified as

- ``denied``: the proxy refused it (Envoy's "RBAC: access denied", Linkerd's ``l5d-proxy-error``, a
  403 that did not come from the app, a reset by an L4 policy),
- ``error``: no answer (connection error, timeout) or a 5xx: the policy was never tested,
- ``allowed``: anything else (the request passed the policy and the app answered).

A row passes when every attempt after the policy gives the expected outcome; several attempts per
row show a flaky answer (``mixed``) instead of hiding it. The verdict is ``pass`` (severity ok)
when every row passes, else ``fail`` (severity worse) naming the rows that do not. The service's
previous policy (or none) is restored afterwards, also when the run fails.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from workbench.backends.base import Answer, Probe
from workbench.experiments.session import ExperimentResult, Session
from workbench.report.plots import COLOURS, styled

ATTEMPTS = 3  # requests per row and phase: enough to show a flaky answer, cheap enough to be instant
DATA_FILE = "authz.json"
OUTCOMES = ("allowed", "denied", "error", "mixed")
LOADGEN = "loadgen"  # the load generator's identity: a caller besides the services


def classify(answer: Answer) -> str:
    """``allowed``, ``denied`` (the proxy's denial) or ``error`` for one answer (status 0 = none)."""
    if answer.denied:
        return "denied"
    if answer.status <= 0 or answer.status >= 500:
        return "error"
    return "allowed"


def summarise(outcomes: list[str]) -> str:
    """One word for a row's attempts: the common outcome, or ``mixed`` when they differ."""
    distinct = set(outcomes)
    return outcomes[0] if len(distinct) == 1 else "mixed"


def validate(spec: Any, services: list[str]) -> None:
    """Raise ValueError naming the field when the policy's service or a caller is not in the mesh."""
    known = ", ".join(services)
    if spec.policy.service not in services:
        raise ValueError(
            f"{spec.name}: policy.service: {spec.policy.service!r} is not a service of the mesh "
            f"(services: {known})"
        )
    for i, row in enumerate(spec.expect):
        if row.caller not in services and row.caller != LOADGEN:
            raise ValueError(
                f"{spec.name}: expect[{i}].caller: {row.caller!r} is not a service of the mesh "
                f"(callers: {known} or {LOADGEN})"
            )
        if not row.path.startswith("/") or any(c.isspace() or c in "'\"\\" for c in row.path):
            raise ValueError(
                f"{spec.name}: expect[{i}].path: must start with '/' and have no spaces or quotes "
                f"(got {row.path!r})"
            )


def _observe(mesh: Any, service: str, rows: list[Any], attempts: int) -> list[dict[str, Any]]:
    """``attempts`` real requests per row, as its caller: statuses, outcomes, and any problem."""
    probes = [Probe(row.caller, row.method, row.path) for row in rows]
    out = []
    for answers in mesh.requests_as(service, probes, attempts):
        outcomes = [classify(a) for a in answers]
        problems = [a.error or f"{a.status}" for a, o in zip(answers, outcomes, strict=True) if o == "error"]
        out.append({"statuses": [a.status for a in answers], "outcomes": outcomes,
                    "observed": summarise(outcomes), "problems": problems})  # fmt: skip
    return out


def run(s: Session) -> None:
    """Observe every row, apply the policy, observe again; restore the previous policy."""
    spec, mesh = s.spec, s.backend()
    service = spec.policy.service
    validate(spec, [svc.name for svc in mesh.services()])
    previous = getattr(mesh, "policies", {}).get(service)
    data: dict[str, Any] = {
        "service": service,
        "policy": spec.policy.model_dump(),
        "previous_policy": previous.model_dump() if previous is not None else None,
        "attempts": ATTEMPTS,
        "rows": [r.model_dump() for r in spec.expect],
        "before": [],
        "after": [],
    }
    s.progress(f"authz: {len(spec.expect)} checks x {ATTEMPTS} requests before the policy")
    data["before"] = _observe(mesh, service, spec.expect, ATTEMPTS)
    s.save_json(DATA_FILE, data)
    try:
        mesh.set_policy(spec.policy)
        settle = float(getattr(mesh, "policy_settle_s", 0.0))
        s.progress(f"authz: policy applied to {service}; {len(spec.expect)} checks again" +
                   (f" after {settle:g} s for it to reach the proxies" if settle else ""))  # fmt: skip
        time.sleep(settle)
        data["after"] = _observe(mesh, service, spec.expect, ATTEMPTS)
        s.save_json(DATA_FILE, data)
    finally:
        if previous is not None:
            mesh.set_policy(previous)
        else:
            mesh.set_policy(None, service=service)


def table(data: dict[str, Any]) -> pd.DataFrame:
    """One row per check: caller, target, path, method, expected, before, after, statuses, result."""
    rows = []
    for i, row in enumerate(data["rows"]):
        before = data["before"][i] if i < len(data["before"]) else None
        after = data["after"][i] if i < len(data["after"]) else None
        expected = "allowed" if row["allowed"] else "denied"
        observed = after["observed"] if after else "not run"
        rows.append(
            {
                "caller": row["caller"],
                "target": data["service"],
                "path": row["path"],
                "method": row["method"],
                "expected": expected,
                "before": before["observed"] if before else "not run",
                "after": observed,
                "statuses_before": " ".join(map(str, before["statuses"])) if before else "",
                "statuses_after": " ".join(map(str, after["statuses"])) if after else "",
                "result": "pass" if observed == expected else "fail",
                "problems": "; ".join((after or {}).get("problems", [])),
            }
        )
    return pd.DataFrame(rows)


def _label(r: pd.Series) -> str:
    return f"{r['caller']} → {r['method']} {r['path']}"


def analyse(s: Session) -> ExperimentResult:
    """Judge the stored observations; re-runnable from the data alone."""
    spec = s.spec
    data = s.load_json(DATA_FILE)
    frame = table(data)
    failed = frame[frame["result"] == "fail"]
    changed = int((frame["before"] != frame["after"]).sum())
    policy = f"{data['service']} {data['policy']['action']} policy ({len(data['policy']['rules'])} rule(s))"
    if failed.empty:
        verdict, severity = "pass", "ok"
        headline = (
            f"{policy}: all {len(frame)} checks pass ({data['attempts']} requests each); "
            f"{changed} of {len(frame)} answers differ from before the policy"
        )
    else:
        verdict, severity = "fail", "worse"
        wrong = "; ".join(
            f"{_label(r)} expected {r['expected']}, observed {r['after']} "
            f"({r['statuses_after'] or 'no answer'})"
            for _, r in failed.iterrows()
        )
        headline = f"{policy}: {len(failed)} of {len(frame)} checks fail: {wrong}"
    figures: dict[str, Any] = {
        "checks": len(frame),
        "passed": int((frame["result"] == "pass").sum()),
        "failed": len(failed),
        "changed_by_policy": changed,
        "errors": int((frame["after"] == "error").sum() + (frame["after"] == "mixed").sum()),
    }
    checks = [
        {
            "name": _label(r),
            "verdict": r["result"],
            "severity": "ok" if r["result"] == "pass" else "worse",
            "explanation": f"{_label(r)}: expected {r['expected']}, observed {r['after']} "
            f"({r['statuses_after'] or 'no answer'}); before the policy {r['before']}",
        }
        for _, r in frame.iterrows()
    ]
    return ExperimentResult(
        spec.name, "authz", verdict, severity, headline, figures,  # type: ignore[arg-type]
        {"checks": frame}, {"data": data}, checks,
    )  # fmt: skip


_CODE = {"denied": 0.0, "error": 1.0, "mixed": 1.0, "not run": 1.0, "allowed": 2.0}
_SCALE = [
    [0.0, COLOURS["bad"]], [0.33, COLOURS["bad"]], [0.34, "#bbbbbb"], [0.66, "#bbbbbb"],
    [0.67, COLOURS["ok"]], [1.0, COLOURS["ok"]],
]  # fmt: skip


def figures(result: ExperimentResult) -> dict[str, go.Figure]:
    """The check matrix: one row per caller → method path; expected, before and after the policy."""
    frame: pd.DataFrame = result.tables["checks"]
    if frame.empty:
        return {}
    labels = [("✓ " if r["result"] == "pass" else "✗ ") + _label(r) for _, r in frame.iterrows()]
    cols = ["expected", "before", "after"]
    z = [[_CODE.get(frame.iloc[i][c], 1.0) for c in cols] for i in range(len(frame))]
    text = [
        [
            frame.iloc[i]["expected"],
            f"{frame.iloc[i]['before']}<br>{frame.iloc[i]['statuses_before']}",
            f"{frame.iloc[i]['after']}<br>{frame.iloc[i]['statuses_after']}",
        ]
        for i in range(len(frame))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=["expected", "before policy", "after policy"], y=labels, text=text,
            texttemplate="%{text}", zmin=0, zmax=2, colorscale=_SCALE, showscale=False,
            hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>", xgap=3, ygap=3,
        )
    )  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    passed = int((frame["result"] == "pass").sum())
    reading = (
        f"{passed} of {len(frame)} checks pass (green allowed, red denied, grey error/mixed; "
        "HTTP statuses of each request in the cells)"
    )
    target = frame["target"].iloc[0]
    out = styled(
        fig, f"Authorization checks on {target}: {result.verdict}", reading,
        "phase (outcome of the requests)", "caller → method path (✓ pass, ✗ fail)",
        height=180 + 60 * len(frame),
    )  # fmt: skip
    return {"matrix": out}
