"""``workbench validate``: check an experiments file and summarize what it would run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli._common import load_or_exit, minutes, out


def validate(
    file: Annotated[Path, typer.Argument(help="The experiments file.")] = Path("experiments.yaml"),
) -> None:
    """Validate an experiments file and print a summary table of its experiments."""
    from workbench import config

    cfg = load_or_exit(file)
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
