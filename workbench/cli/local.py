"""``workbench local up | status | down``: a detached local mesh for notebooks and exploration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli._common import ExitCode, err, out

local_app = typer.Typer(help="Start, inspect and stop the embedded local mesh.", no_args_is_help=True)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="Where the mesh keeps its state (default ~/.cache/mesh-workbench/local)."
    ),
]


def _state_dir(given: Path | None) -> Path:
    from workbench.backends.local.mesh import default_state_dir

    return (given or default_state_dir()).resolve()


def _running(state_dir: Path) -> bool:
    from workbench.backends.local.mesh import LocalMesh

    if not (state_dir / "state.json").exists():
        return False
    mesh = LocalMesh.attach(state_dir)
    return any(p.alive() for p in mesh.supervisor.procs)


@local_app.command()
def up(
    mode: Annotated[
        str,
        typer.Option(help="Data plane mode: none, serveronly, both, both-mtls, ambient, ambient-waypoint."),
    ] = "both",
    topology: Annotated[Path | None, typer.Option(help="YAML file replacing the demo topology.")] = None,
    tracing: Annotated[
        str, typer.Option(help="Percent of requests traced (Envoy's tracer, span receiver), or 'off'.")
    ] = "100",
    state_dir: StateDir = None,
) -> None:
    """Start the local mesh in the background and print its services and endpoints."""
    from workbench.backends.base import BackendError
    from workbench.backends.local.layout import MODES
    from workbench.backends.local.mesh import LocalMesh, kill_stragglers
    from workbench.config.problems import ConfigError

    if mode not in MODES:
        err.print(f"--mode: must be one of {', '.join(MODES)} (got {mode!r})")
        raise typer.Exit(ExitCode.INVALID)
    try:
        sampling = None if tracing == "off" else float(tracing)
        if sampling is not None and not 0 <= sampling <= 100:
            raise ValueError
    except ValueError:
        err.print(f"--tracing: must be a percentage 0-100 or 'off' (got {tracing!r})")
        raise typer.Exit(ExitCode.INVALID) from None
    directory = _state_dir(state_dir)
    if _running(directory):
        err.print(
            f"a local mesh is already running (state in {directory}); stop it with 'workbench local down'"
        )
        raise typer.Exit(ExitCode.FAILED)
    kill_stragglers(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    try:
        mesh = LocalMesh(mode=mode, topology=topology, run_dir=directory, detached=True, tracing=sampling)  # type: ignore[arg-type]
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(ExitCode.INVALID) from None
    try:
        mesh.start()
    except (BackendError, ValueError) as exc:
        mesh.stop()
        err.print(f"local mesh did not start: {exc}", markup=False)
        raise typer.Exit(ExitCode.FAILED) from None
    except BaseException:
        mesh.stop()
        raise
    table = Table(title=f"local mesh up, mode {mode}", title_justify="left")
    for col in ("service", "versions", "split", "load target"):
        table.add_column(col)
    for svc in mesh.services():
        split = " ".join(f"{v}:{w}" for v, w in mesh.get_split(svc.name).items())
        table.add_row(svc.name, ", ".join(svc.versions), split, mesh.load_target(svc.name).urls[0])
    out.print(table)
    out.print(
        f"Prometheus: {mesh.prometheus_url()}   processes: {len(mesh.supervisor.procs)}   state: {directory}"
    )
    if sampling is not None:
        out.print(f"Traces: {sampling:g} % sampled, spans in {mesh.traces_dir} (part-*.parquet)")
    out.print("Stop it with: workbench local down")


@local_app.command()
def status(state_dir: StateDir = None) -> None:
    """Say whether every process of the local mesh runs; name and explain the ones that don't."""
    from workbench.backends.local.mesh import LocalMesh

    directory = _state_dir(state_dir)
    if not (directory / "state.json").exists():
        err.print(f"no local mesh (no state in {directory}); start one with 'workbench local up'")
        raise typer.Exit(ExitCode.FAILED)
    mesh = LocalMesh.attach(directory)
    state = json.loads((directory / "state.json").read_text())
    rows = mesh.status()
    table = Table(
        title=f"local mesh, mode {mesh.mode}, Prometheus {state['prometheus_url']}", title_justify="left"
    )
    for col in ("process", "pid", "state"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["name"], str(row["pid"]), "[green]running[/]" if row["alive"] else "[red]not running[/]"
        )
    out.print(table)
    dead = [r for r in rows if not r["alive"]]
    for row in dead:
        err.print(row["problem"], markup=False)
    if dead:
        raise typer.Exit(ExitCode.FAILED)
    out.print(f"all {len(rows)} processes running.")


@local_app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop every process of the local mesh (also after a crashed 'up')."""
    from workbench.backends.local.mesh import LocalMesh, kill_stragglers

    directory = _state_dir(state_dir)
    stopped = 0
    if (directory / "state.json").exists():
        mesh = LocalMesh.attach(directory)
        stopped = sum(p.alive() for p in mesh.supervisor.procs)
        mesh.stop()
    elif (directory / "pids.json").exists():
        from workbench.backends.local.procs import Supervisor

        sup = Supervisor(directory / "logs", detached=True)
        for proc in json.loads((directory / "pids.json").read_text()):
            sup.adopt(proc)
        stopped = sum(p.alive() for p in sup.procs)
        sup.stop_all()
    kill_stragglers(directory)
    for name in ("state.json", "pids.json"):
        (directory / name).unlink(missing_ok=True)
    out.print(f"local mesh stopped ({stopped} processes)." if stopped else "no local mesh was running.")
