"""The ``workbench`` command line.

Exit status: 0 success, 1 a check or experiment failed, 2 invalid input (usage, experiments.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from workbench import __version__, config, doctor

app = typer.Typer(
    help="Mesh Workbench: what did this change do to latency, errors and security, and is it real?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide, unwrapped tables in CI logs; the terminal's width when interactive.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)

EXIT_FAILED = 1
EXIT_INVALID = 2


def _version(value: bool) -> None:
    if value:
        out.print(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Mesh Workbench command line."""


def _load_or_exit(path: Path) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        n = len(exc.problems)
        # Plain lines, never wrapped: editors and CI parse "file:line path: message".
        typer.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(EXIT_INVALID) from None


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The experiments file.")] = Path("experiments.yaml"),
) -> None:
    """Validate an experiments file and print a summary table of its experiments."""
    cfg = _load_or_exit(file)
    backend = cfg.backend
    where = (
        f"local mesh, mode {backend.mode}"
        if backend.type == "local"
        else f"kubernetes context {backend.context or '(current)'}, mesh {backend.mesh}"
    )
    table = Table(title=f"{file}: {len(cfg.experiments)} experiments on the {where}", title_justify="left")
    for col in ("name", "kind", "target", "plan"):
        table.add_column(col, overflow="fold")
    table.add_column("load", justify="right")
    rows = config.summary_rows(cfg)
    for row in rows:
        seconds = row["load_s"]
        table.add_row(
            row["name"], row["kind"], row["target"], row["plan"], _minutes(seconds) if seconds else "-"
        )
    total = sum(row["load_s"] for row in rows)
    out.print(table)
    d = cfg.defaults
    out.print(
        f"valid. defaults: alpha {d.alpha:g}, window {d.window:g}s, margins {d.margins.latency_ms:g} ms / "
        f"{d.margins.latency_pct:g} % / {d.margins.error_rate_pct:g} pts of errors, no_data {d.no_data}. "
        f"Planned load: {_minutes(total)}."
    )


@app.command("doctor")
def doctor_cmd(
    backend: Annotated[
        str | None, typer.Option(help="local or kubernetes; default: the backend of --file, else local.")
    ] = None,
    file: Annotated[Path, typer.Option(help="experiments file to read backend settings from.")] = Path(
        "experiments.yaml"
    ),
    context: Annotated[str | None, typer.Option(help="kube context (kubernetes backend).")] = None,
    prometheus_url: Annotated[str | None, typer.Option(help="Prometheus URL (kubernetes backend).")] = None,
) -> None:
    """Check every dependency the backend needs; print versions or the exact fix."""
    settings = None
    if file.exists():
        try:
            settings = config.load(file).backend
        except config.ConfigError:
            err.print(
                f"note: {file} is invalid (see 'workbench validate {file}'); using command-line settings"
            )
    chosen = backend or (settings.type if settings else "local")
    if chosen not in ("local", "kubernetes"):
        err.print(f"--backend: must be local or kubernetes (got {chosen!r})")
        raise typer.Exit(EXIT_INVALID)
    if settings is not None and settings.type == "kubernetes":
        context = context or settings.context
        prometheus_url = prometheus_url or settings.prometheus_url
    checks = doctor.run_checks(chosen, context=context, prometheus_url=prometheus_url)  # type: ignore[arg-type]
    table = Table(title=f"workbench doctor — {chosen} backend", title_justify="left")
    for col in ("dependency", "status", "version / detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        status = "[green]found[/]" if c.ok else ("[red]missing[/]" if c.required else "[yellow]missing[/]")
        table.add_row(c.name, status, c.detail, c.fix)
    out.print(table)
    missing = [c.name for c in checks if c.required and not c.ok]
    if missing:
        err.print(f"missing for the {chosen} backend: {', '.join(missing)} (fixes above)")
        raise typer.Exit(EXIT_FAILED)
    out.print(f"everything the {chosen} backend needs is here.")


from workbench.cli_local import local_app  # noqa: E402 - registered after the shared consoles exist

app.add_typer(local_app, name="local")
from workbench.cli_ingest import ingest  # noqa: E402 - same reason

app.command("ingest")(ingest)
from workbench.cli_audit import audit_app  # noqa: E402 - same reason
from workbench.cli_run import report, run  # noqa: E402 - same reason

app.add_typer(audit_app, name="audit")

app.command("run")(run)
app.command("report")(report)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


if __name__ == "__main__":  # pragma: no cover
    app()
