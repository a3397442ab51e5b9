"""``workbench history`` and ``workbench compare``: stored runs across time, and regressions between two."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli._common import ExitCode, err, out

FAIL_ON = ("worse", "inconclusive", "never")


def history(
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="Only this experiment (a name in the runs).")
    ] = None,
    data: Annotated[Path, typer.Option(help="Where runs are stored.")] = Path("data/runs"),
    reports: Annotated[Path, typer.Option(help="Where history.html goes.")] = Path("reports"),
) -> None:
    """Each experiment's verdict and headline figures across the stored runs; writes reports/history.html.

    The page shows every experiment (the runner rewrites it after each run); --experiment narrows
    the tables printed here.

    Exit status: 0, 2 no stored run (or none of --experiment).
    """
    from rich.table import Table

    from workbench.report import history as hist
    from workbench.report.runs import list_runs

    runs = list_runs(data)
    frame = hist.history_frame(runs, experiment)
    if not len(frame):
        what = f"no run of experiment {experiment!r}" if experiment else "no stored run"
        err.print(f"{what} in {data.resolve()}", markup=False)
        raise typer.Exit(ExitCode.INVALID)
    for name in dict.fromkeys(frame["experiment"]):
        t = hist.table(frame, name)
        grid = Table(title=f"{name} ({len(t)} runs)", title_justify="left")
        grid.add_column("run", no_wrap=True, min_width=20)
        for col in t.columns:
            grid.add_column(str(col), justify="left" if col in ("verdict", "quick") else "right")
        for run_id, row in t.iterrows():
            grid.add_row(str(run_id), *[str(v) if v == v else "" for v in row.tolist()])
        out.print(grid)
    page = hist.write_history(reports, data)  # the page always shows every experiment
    out.print(f"history: {page.resolve()}")


def compare(
    run_a: Annotated[str, typer.Argument(help="The earlier run (e.g. the last release's), or latest~N.")],
    run_b: Annotated[str, typer.Argument(help="The run to judge against it, or 'latest'.")],
    experiment: Annotated[
        list[str] | None, typer.Option("--experiment", help="Only this experiment (repeatable).")
    ] = None,
    data: Annotated[Path, typer.Option(help="Where runs are stored.")] = Path("data/runs"),
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Exit 1 when an experiment's verdict reaches this: worse (B regressed), inconclusive "
            "(also when it could not be decided), never.",
        ),
    ] = "worse",
) -> None:
    """Did run B regress against run A? Per experiment, stream of load and metric.

    Runs are not concurrent: windows are compared unpaired, and run-to-run variation is estimated
    from stored repeats of the same configuration; with one run per side the verdict is
    "inconclusive: one run per side, run-to-run variation unknown". Exit status: 0 no experiment
    reached --fail-on, 1 one did, 2 no such run or experiment.
    """
    if fail_on not in FAIL_ON:
        err.print(f"--fail-on: must be one of {', '.join(FAIL_ON)} (got {fail_on!r})")
        raise typer.Exit(ExitCode.INVALID)
    from workbench.report.ci import reaches
    from workbench.report.regression import compare_stored
    from workbench.report.runs import RunNotFound

    try:
        result = compare_stored(str(data), run_a, run_b, only=experiment or ())
    except (RunNotFound, ValueError) as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    out.print(f"B {result.b.run_id} against A {result.a.run_id}", markup=False)
    for e in result.experiments:
        for line in _lines(e):
            out.print(line, markup=False, soft_wrap=True)
    gated = [e.name for e in result.experiments if reaches(e.severity, fail_on)]  # type: ignore[arg-type]
    worse = [e.name for e in result.experiments if e.verdict == "worse"]
    out.print(f"\nregressed: {', '.join(worse) or 'none'}", markup=False)
    if gated:
        err.print(f"--fail-on {fail_on}: {', '.join(gated)} reached it", markup=False)
        raise typer.Exit(ExitCode.FAILED)


def _lines(e: Any) -> list[str]:
    """One experiment of ``workbench compare``: its verdict, the repeats used, a line per metric."""
    from workbench.report import numbers

    lines = [f"\n{e.name} ({e.kind}): {e.verdict}" + (f" — {e.note}" if e.note else "")]
    if e.streams:
        lines.append(
            f"  repeats of A's configuration: {', '.join(e.repeats_a)}; of B's: {', '.join(e.repeats_b)}"
        )
    for stream, comparison in e.streams.items():
        for r in comparison:
            diff, level = ("pts", "pct") if r.unit == "pts" else ("ms", "ms")
            runs = numbers.interval(r.estimate, r.ci.low, r.ci.high, diff) if r.ci.finite else ""
            alone = numbers.interval(r.windows.estimate, r.windows.ci.low, r.windows.ci.high, diff)
            a, b = numbers.value(r.baseline, level), numbers.value(r.candidate, level)
            note = f" ({r.note})" if r.note else ""
            lines.append(
                f"  {stream:<22} {r.metric:<10} {a:>9} → {b:>9}  {runs:<26} "
                f"windows alone {alone:<26} {r.verdict}{note}"
            )
    return lines
