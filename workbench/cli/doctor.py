"""``workbench doctor``: every dependency a backend needs, with versions or the exact fix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli._common import ExitCode, err, out


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
    from workbench import config
    from workbench.suite import doctor

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
        raise typer.Exit(ExitCode.INVALID)
    namespace = None
    if settings is not None and settings.type == "kubernetes":
        context = context or settings.context
        prometheus_url = prometheus_url or settings.prometheus_url
        namespace = settings.namespace
    checks = doctor.run_checks(chosen, context=context, prometheus_url=prometheus_url,  # type: ignore[arg-type]
                               namespace=namespace)  # fmt: skip
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
        raise typer.Exit(ExitCode.FAILED)
    out.print(f"everything the {chosen} backend needs is here.")
