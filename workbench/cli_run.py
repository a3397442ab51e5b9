"""``workbench run`` and ``workbench report``: run the experiment suite into HTML reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_COULD_NOT_RUN = 3
EXIT_INTERRUPTED = 130


def run(
    file: Annotated[Path, typer.Argument(help="The experiments file.")] = Path("experiments.yaml"),
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only this experiment (repeatable).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Short smoke-test durations (≈ a fifth).")] = False,
    reports: Annotated[Path, typer.Option(help="Where the HTML reports go.")] = Path("reports"),
    mesh_state: Annotated[
        Path | None,
        typer.Option(
            help="Use the local mesh whose state is in this directory ('workbench local up --state-dir')."
        ),
    ] = None,
) -> None:
    """Run the experiments with papermill and render HTML reports; print the index path.

    Exit status: 0 every experiment ran (whatever its verdict), 2 invalid input, 3 an experiment
    could not run (it is marked failed in the index with the reason), 130 interrupted.
    """
    from workbench import config
    from workbench.cli import EXIT_INVALID, _load_or_exit, err, out
    from workbench.runner import run_suite

    _load_or_exit(file)
    try:
        outcome = run_suite(file, only=only or (), quick=quick, reports=reports, mesh_state=mesh_state,
                            echo=lambda line: out.print(line, markup=False))  # fmt: skip
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    except config.ConfigError as exc:  # pragma: no cover - validated above
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    index = reports.resolve() / "index.html"
    for r in outcome.results:
        out.print(
            f"  {r['name']:<28} {r['verdict']:<16} {r.get('headline', '')}", markup=False, soft_wrap=True
        )
    out.print(f"report: {index}")
    if outcome.interrupted:
        err.print("interrupted: the reports show what was collected")
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.failed:
        err.print(f"could not run: {', '.join(outcome.failed)} (reasons in the index)")
        raise typer.Exit(EXIT_COULD_NOT_RUN)


def report(
    run_id: Annotated[
        str, typer.Argument(help="The run to re-render (a directory of data/runs/), or 'latest'.")
    ],
    reports: Annotated[Path, typer.Option(help="Where the HTML reports go.")] = Path("reports"),
    data: Annotated[Path, typer.Option(help="Where runs are stored.")] = Path("data/runs"),
) -> None:
    """Re-analyse a stored run and re-render its reports, without generating any load."""
    from workbench.cli import EXIT_INVALID, err, out
    from workbench.runner import rerender

    try:
        outcome = rerender(
            run_id, reports=reports, data_root=data, echo=lambda line: out.print(line, markup=False)
        )
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    out.print(f"report: {outcome.index}")
