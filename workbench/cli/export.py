"""``workbench export smp RUN_ID``: a stored run's load points as Service Mesh Performance documents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli._common import ExitCode, err, out

export_app = typer.Typer(help="Export stored runs in other tools' formats.", no_args_is_help=True)


@export_app.command("smp")
def smp(
    run_id: Annotated[str, typer.Argument(help="The run (a directory of data/runs/), or 'latest'.")],
    data: Annotated[Path, typer.Option(help="Where runs are stored.")] = Path("data/runs"),
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where the documents go (default: <run>/smp).")
    ] = None,
) -> None:
    """Write every stored load point of a run as an SMP PerformanceTestResult document.

    One file per point, <out>/<experiment>/<point>.smp.json, in the Service Mesh Performance
    shape (test config, result with latencies and actual QPS, mesh config with the sidecars'
    CPU and memory); what SMP has no field for is under x_mesh_workbench. Exit 0 written,
    2 no such run or no load point in it.
    """
    from workbench.load.formats.smp import export_run
    from workbench.suite.runner import resolve_run

    try:
        directory = resolve_run(run_id, data)
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    target = out_dir or directory / "smp"
    written = export_run(directory, target)
    if not written:
        err.print(f"{directory}: no stored load point to export", markup=False)
        raise typer.Exit(ExitCode.INVALID)
    for path in written:
        out.print(str(path), markup=False, soft_wrap=True)
    out.print(f"{len(written)} SMP document{'s' if len(written) != 1 else ''} in {target}", markup=False)
