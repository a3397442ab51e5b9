"""``workbench ingest FILE...``: read load-generator result files and print their summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from workbench.cli._common import ExitCode, out
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.load.results import LoadResult

LATENCY_COLUMNS = {"p50": "p50", "p75": "p75", "p90": "p90", "p99": "p99", "p999": "p99.9", "max": "max"}


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _rps(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "-" if math.isnan(value) else f"{value:.1f}"


def _requested(meta: dict[str, Any]) -> str:
    if meta.get("rps") is not None:
        return _rps(meta["rps"])
    return "max" if meta.get("model") == "closed" else "-"


def _row(path: Path, result: LoadResult) -> dict[str, Any]:
    """One file's summary as plain JSON values (NaN as None)."""
    meta, summary = result.meta, result.summary()
    row: dict[str, Any] = {
        "file": str(path),
        "generator": meta.get("generator"),
        "generator_version": meta.get("generator_version"),
        "model": meta.get("model"),
        "connections": meta.get("connections"),
        "rps": meta.get("rps"),
    }
    for key, value in summary.items():
        row[key] = None if math.isnan(value) else value
    row["percentiles_missing"] = meta.get("percentiles_missing") or []
    return row


def _table(rows: list[tuple[Path, LoadResult]]) -> Table:
    table = Table(title="load results (latency in ms)", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("generator")
    for col in ("conns", "rps req", "rps actual", "count", *LATENCY_COLUMNS.values(), "errors %"):
        table.add_column(col, justify="right")
    for path, result in rows:
        meta, s = result.meta, result.summary()
        conns = meta.get("connections")
        table.add_row(
            path.name,
            str(meta.get("generator") or "-"),
            "-" if conns is None else str(conns),
            _requested(meta),
            _rps(s["actual_rps"]),
            "-" if math.isnan(s["count"]) else f"{s['count']:.0f}",
            *(_ms(s[key]) for key in LATENCY_COLUMNS),
            "-" if math.isnan(s["error_pct"]) else f"{s['error_pct']:.2f}",
        )
    return table


def ingest(
    files: Annotated[
        list[Path], typer.Argument(help="fortio/nighthawk JSON, k6 CSV/JSON/summary or hey CSV files.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON instead.")] = False,
) -> None:
    """Read load-generator result files and print one summary row per file."""
    from workbench.load.formats import read_any

    results: list[tuple[Path, LoadResult]] = []
    failed = False
    for path in files:
        try:
            results.append((path, read_any(path)))
        except WorkbenchError as exc:  # a ResultFileError: file, field and problem
            typer.echo(str(exc), err=True)  # one plain line: "file: field: problem"
            failed = True
    if as_json:
        typer.echo(json.dumps([_row(path, result) for path, result in results], indent=2, default=str))
    elif results:
        out.print(_table(results))
    if failed:
        raise typer.Exit(ExitCode.INVALID)
