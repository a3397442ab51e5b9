"""``workbench validate``: check an experiments file and summarize what it would run.

Besides the schema, every experiment's needs (``config.capabilities``) are checked against what the
backend declares (``backends.capabilities``): the file's ``backend:``, or ``--backend``/``--mesh``/
``--mode`` to check it for another one — without reaching a cluster or starting a mesh. With
``mesh: auto`` only the cluster backend's own features are known here; the mesh's are checked when
``workbench run`` starts, after detecting it and before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli._common import ExitCode, load_or_exit, minutes, out

BACKENDS = ("local", "kubernetes")
MESHES = ("auto", "istio", "linkerd", "consul", "gateway-api")
MODES = ("none", "serveronly", "both", "both-mtls", "ambient", "ambient-waypoint")


def validate(
    file: Annotated[Path, typer.Argument(help="The experiments file.")] = Path("experiments.yaml"),
    backend: Annotated[
        str | None,
        typer.Option(
            help="Check the experiments for this backend (local or kubernetes) instead of the file's."
        ),
    ] = None,
    mesh: Annotated[
        str | None,
        typer.Option(help="With a cluster: the mesh to check for (istio, linkerd, consul, gateway-api)."),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="With the local mesh: the sidecar mode to check for.")
    ] = None,
) -> None:
    """Validate an experiments file, check each experiment against what the backend can do, and print
    a summary table. Exit 2 when the file is invalid or an experiment needs a missing feature."""
    from workbench import config
    from workbench.config.capabilities import capability_problems, offer_for

    for name, value, allowed in (("--backend", backend, BACKENDS), ("--mesh", mesh, MESHES),
                                 ("--mode", mode, MODES)):  # fmt: skip
        if value is not None and value not in allowed:
            typer.echo(f"{name}: must be one of {', '.join(allowed)} (got {value!r})", err=True)
            raise typer.Exit(ExitCode.INVALID)
    cfg = load_or_exit(file)
    kind = backend or cfg.backend.type
    offer = offer_for(cfg.backend, type=kind, mesh=mesh if kind == "kubernetes" else None,
                      mode=mode if kind == "local" else None)  # fmt: skip
    problems = capability_problems(cfg, offer, kind, str(file), file.read_text(encoding="utf-8"))
    if problems:
        typer.echo(f"{file}: {len(problems)} experiment need(s) {offer.name} cannot meet", err=True)
        for problem in problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(ExitCode.INVALID)
    b = cfg.backend
    if kind == "local":
        where = f"local mesh, mode {mode or getattr(b, 'mode', 'both')}"
    else:
        chosen = mesh or getattr(b, "mesh", "auto")
        where = f"kubernetes context {getattr(b, 'context', None) or '(current)'}, mesh {chosen}"
    table = Table(title=f"{file}: {len(cfg.experiments)} experiments on the {where}", title_justify="left")
    for col in ("name", "kind", "target", "plan"):
        table.add_column(col, overflow="fold")
    table.add_column("load", justify="right")
    rows = config.summary_rows(cfg)
    for row in rows:
        seconds = row["load_s"]
        table.add_row(
            row["name"], row["kind"], row["target"], row["plan"], minutes(seconds) if seconds else "-"
        )
    total = sum(row["load_s"] for row in rows)
    out.print(table)
    d = cfg.defaults
    out.print(
        f"valid. defaults: alpha {d.alpha:g}, window {d.window:g}s, margins {d.margins.latency_ms:g} ms / "
        f"{d.margins.latency_pct:g} % / {d.margins.error_rate_pct:g} pts of errors, no_data {d.no_data}. "
        f"Planned load: {minutes(total)}."
    )
    if kind == "kubernetes" and (mesh or getattr(b, "mesh", "auto")) == "auto":
        out.print(
            "mesh auto: the mesh's own features are checked when 'workbench run' starts (after detecting "
            "it, before anything is written); give --mesh to check them now."
        )
