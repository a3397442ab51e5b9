"""What every command module shares: the consoles, the exit statuses, loading experiments.yaml.

Command modules import from here and from the layers below; nothing imports the command modules
except ``workbench.cli`` (the app), so the CLI has no import cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from workbench.errors import ExitCode

if TYPE_CHECKING:
    from workbench.config import Config

__all__ = ["ExitCode", "err", "load_or_exit", "minutes", "out"]

# Wide, unwrapped tables in CI logs; the terminal's width when interactive.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def load_or_exit(path: Path) -> Config:
    """The validated experiments file, or every problem as ``file:line path: message`` and exit 2."""
    from workbench import config  # pydantic models: only for the commands that read the file

    try:
        return config.load(path)
    except config.ConfigError as exc:
        n = len(exc.problems)
        # Plain lines, never wrapped: editors and CI parse "file:line path: message".
        typer.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(ExitCode.INVALID) from None


def minutes(seconds: float) -> str:
    """``90`` -> ``1.5 min``, ``40`` -> ``40 s``."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
