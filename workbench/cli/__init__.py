"""The ``workbench`` command line: one module per command group, registered here.

Exit status (``workbench.errors.ExitCode``): 0 success, 1 a check or experiment failed, 2 invalid
input (usage, experiments.yaml), 3 an experiment could not run, 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from workbench import __version__
from workbench.cli import audit, export, history, ingest, local, run, validate
from workbench.cli import doctor as doctor_cmd
from workbench.cli._common import out

# Before anything imports jsonschema (papermill and nbformat do, to run or render a notebook): it
# imports its optional IRI format checker, rfc3987-syntax (installed by jupyter-events' extras),
# which compiles an Earley grammar at import, ~3.5 s of CPU here for every such command. Nothing in
# the workbench checks the "iri" format, so the command line goes without that one checker.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]

app = typer.Typer(
    help="Mesh Workbench: what did this change do to latency, errors and security, and is it real?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


app.command("validate")(validate.validate)
app.command("doctor")(doctor_cmd.doctor_cmd)
app.add_typer(local.local_app, name="local")
app.command("ingest")(ingest.ingest)
app.add_typer(audit.audit_app, name="audit")
app.add_typer(export.export_app, name="export")
app.command("run")(run.run)
app.command("report")(run.report)
app.command("history")(history.history)
app.command("compare")(history.compare)

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
