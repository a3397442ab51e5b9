"""``workbench run`` and ``workbench report``: run the experiment suite into HTML reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli._common import ExitCode, err, load_or_exit, out

FAIL_ON = ("worse", "inconclusive", "never")


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
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Exit 1 when a verdict reaches this: worse (a worse A/B, a rolled-back canary, a failed "
            "authz check), inconclusive (also when one could not decide), never (report only).",
        ),
    ] = "worse",
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for every random choice (trial order, generated traffic); recorded."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what would run and (on a cluster) the objects it would write."),
    ] = False,
) -> None:
    """Run the experiments with papermill and render HTML reports; print the index path.

    Next to the reports: reports/<run-id>/summary.json and junit.xml. Exit status: 0 no verdict
    reached --fail-on, 1 one did, 2 invalid input (the file, an option), 3 an experiment could not
    run (a dependency missing, the backend unreachable: marked failed in the index with the
    reason; the others still run), 130 interrupted.
    """
    if fail_on not in FAIL_ON:
        err.print(f"--fail-on: must be one of {', '.join(FAIL_ON)} (got {fail_on!r})")
        raise typer.Exit(ExitCode.INVALID)
    cfg = load_or_exit(file)
    try:
        selected = cfg.select(only or ())
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    if dry_run:
        _dry_run(cfg, selected, file)
        return
    from workbench import config  # the suite's imports (papermill, plotly, scipy) take seconds
    from workbench.report import ci
    from workbench.suite.runner import run_suite

    try:
        outcome = run_suite(file, only=only or (), quick=quick, reports=reports, mesh_state=mesh_state,
                            echo=lambda line: out.print(line, markup=False), fail_on=fail_on,  # type: ignore[arg-type]
                            seed=seed)  # fmt: skip
    except config.ConfigError as exc:  # the file was valid: an experiment the backend cannot run
        err.print(str(exc), markup=False)
        err.print("nothing was run or written; change what each line says, or leave those experiments "
                  "out with --only", markup=False)  # fmt: skip
        raise typer.Exit(ExitCode.INVALID) from None
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    index = reports.resolve() / "index.html"
    for r in outcome.results:
        out.print(
            f"  {r['name']:<28} {r['verdict']:<16} {r.get('headline', '')}", markup=False, soft_wrap=True
        )
    out.print(f"summary: {reports.resolve() / outcome.run_id / 'summary.json'}")
    out.print(f"report: {index}")
    if outcome.interrupted:
        err.print("interrupted: the reports show what was collected")
        raise typer.Exit(ExitCode.INTERRUPTED)
    status = ci.exit_status(outcome.results, fail_on)  # type: ignore[arg-type]
    if status == ExitCode.COULD_NOT_RUN:
        err.print(f"could not run: {', '.join(outcome.failed)} (reasons in the index)")
    elif status == ExitCode.FAILED:
        gated = [r["name"] for r in outcome.results if ci.reaches(str(r.get("severity")), fail_on)]  # type: ignore[arg-type]
        err.print(f"--fail-on {fail_on}: {', '.join(gated)} reached it")
    raise typer.Exit(status)


def _dry_run(cfg: object, selected: list[Any], file: Path) -> None:
    from workbench.errors import BackendError
    from workbench.suite.dryrun import plan_run

    try:
        plan_run(cfg, selected, lambda line: out.print(line, markup=False, soft_wrap=True), str(file),  # type: ignore[arg-type]
                 file.read_text(encoding="utf-8"))  # fmt: skip
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    except BackendError as exc:
        err.print(f"dry run: {exc}", markup=False)
        raise typer.Exit(ExitCode.COULD_NOT_RUN) from None


def report(
    run_id: Annotated[
        str, typer.Argument(help="The run to re-render (a directory of data/runs/), or 'latest'.")
    ],
    reports: Annotated[Path, typer.Option(help="Where the HTML reports go.")] = Path("reports"),
    data: Annotated[Path, typer.Option(help="Where runs are stored.")] = Path("data/runs"),
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also print the index and every report to reports/<run-id>/pdf/.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Open every page in headless Chromium: each figure drawn, no console error, no request "
            "leaving the page; screenshots in reports/<run-id>/screenshots/. Exit 1 on a problem.",
        ),
    ] = False,
    render: Annotated[
        bool,
        typer.Option(help="Re-analyse and re-render first; --no-render prints or checks the HTML as it is."),
    ] = True,
) -> None:
    """Re-analyse a stored run and re-render its reports, without generating any load.

    --pdf and --check use Debian's Chromium and chromium-driver ('apt-get install -y chromium
    chromium-driver'). Exit status: 0, 1 a page failed --check, 2 no such run, 3 Chromium missing.
    """
    if render:
        from workbench.suite.runner import rerender

        try:
            outcome = rerender(
                run_id, reports=reports, data_root=data, echo=lambda line: out.print(line, markup=False)
            )
        except FileNotFoundError as exc:
            err.print(str(exc), markup=False)
            raise typer.Exit(ExitCode.INVALID) from None
        run_id = outcome.run_id
        out.print(f"report: {outcome.index}")
    if pdf or check:
        _in_chromium(run_id, reports, data, pdf, check)


def _in_chromium(run_id: str, reports: Path, data: Path, pdf: bool, check: bool) -> None:
    from workbench.report import browser
    from workbench.report.runs import RunNotFound, open_run

    try:
        run = open_run(data, run_id)
    except RunNotFound as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.INVALID) from None
    run_reports = reports / run.run_id
    if not (run_reports / "index.html").exists():
        err.print(f"{run_reports}: no rendered reports (run 'workbench report {run.run_id}' first)")
        raise typer.Exit(ExitCode.INVALID)
    failed = False
    try:
        with browser.Chromium() as chromium:
            if check:
                for c in browser.check_run(run_reports, run.path, chromium):
                    problems = "; ".join(c.problems) or "ok"
                    out.print(f"  {c.page.name:<32} {c.figures_drawn:>2} figures  {c.open_s:5.2f} s  "
                              f"{c.size_bytes / 1e6:5.1f} MB  {problems}", markup=False)  # fmt: skip
                    failed |= not c.ok
                out.print(f"screenshots: {run_reports / browser.SCREENSHOTS}")
            if pdf:
                printed = browser.print_run(run_reports, chromium)
                out.print(f"pdf: {len(printed)} file(s) in {run_reports / browser.PDF_DIR}")
    except browser.BrowserError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.COULD_NOT_RUN) from None
    if failed:
        err.print("--check: a page has problems (above)")
        raise typer.Exit(ExitCode.FAILED)
