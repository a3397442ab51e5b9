"""``workbench audit show | verify | grafana-annotations``: read, check and export the release audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from workbench.cli._common import ExitCode, err, out

if TYPE_CHECKING:
    from workbench.audit import AuditLog

audit_app = typer.Typer(help="The release audit log: show, verify, export to Grafana.", no_args_is_help=True)

LogFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help="The audit log (default $WORKBENCH_AUDIT_LOG, else ~/.local/share/mesh-workbench/audit.jsonl).",
    ),
]
Since = Annotated[
    str | None, typer.Option("--since", help="Only entries from this time on: 30m, 1h, 2d or an ISO time.")
]


def _open(file: Path | None, must_exist: bool = True) -> AuditLog:
    """The AuditLog of --file (exit 2, naming the file, when it does not exist)."""
    from workbench.audit import AuditLog

    log = AuditLog(file)
    if must_exist and not log.path.exists():
        err.print(f"--file: no audit log at {log.path}", markup=False)
        raise typer.Exit(ExitCode.INVALID)
    return log


def _entries(file: Path | None, since: str | None) -> list[dict[str, Any]]:
    from workbench.audit import AuditError

    log = _open(file)
    try:
        return log.entries(since=since)
    except AuditError as exc:
        err.print(f"--{exc}", markup=False)
        raise typer.Exit(ExitCode.INVALID) from None


@audit_app.command()
def show(file: LogFile = None, since: Since = None) -> None:
    """A table of the entries: time, actor, action, target, before → after."""
    from workbench.audit import describe

    entries = _entries(file, since)
    table = Table(title=f"audit log {_open(file).path}: {len(entries)} entries", title_justify="left")
    for col in ("time (UTC)", "actor", "action", "target", "before → after", "run"):
        table.add_column(col, overflow="fold")
    for e in entries:
        when = str(e.get("time", ""))[:19].replace("T", " ")
        change = f"{describe(e.get('before'))} → {describe(e.get('after'))}"
        if e.get("before") is None and e.get("after") is None:  # experiment start/end: what and how
            d = e.get("details") or {}
            change = " ".join(f"{k}={d[k]}" for k in ("kind", "verdict", "status") if d.get(k))
        table.add_row(when, str(e.get("actor", "")), str(e.get("action", "")), str(e.get("target", "")),
                      change, str(e.get("run_id") or ""))  # fmt: skip
    out.print(table)


@audit_app.command()
def verify(file: LogFile = None) -> None:
    """Check the hash chain: exit 0 when intact, 1 naming the first bad line and why."""
    from workbench.audit import AuditError

    log = _open(file)
    try:
        result = log.verify()
    except AuditError as exc:
        err.print(f"--file: {exc}", markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    if not result.ok:
        err.print(f"{result.path}:{result.first_bad_line}: {result.reason}", markup=False)
        raise typer.Exit(ExitCode.FAILED)
    out.print(str(result), markup=False)


@audit_app.command("grafana-annotations")
def grafana_annotations(
    file: LogFile = None,
    since: Since = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here (default: standard output).")
    ] = None,
    dashboard_uid: Annotated[
        str | None, typer.Option("--dashboard-uid", help="Attach the annotations to this dashboard.")
    ] = None,
) -> None:
    """The entries as Grafana annotation API bodies (POST /api/annotations): a JSON list."""
    from workbench import audit

    bodies = audit.grafana_annotations(_entries(file, since), dashboard_uid=dashboard_uid)
    text = json.dumps(bodies, indent=1, ensure_ascii=False)
    if out_file is None:
        typer.echo(text)
        return
    out_file.write_text(text + "\n", encoding="utf-8")
    err.print(f"{len(bodies)} annotations written to {out_file}", markup=False)
