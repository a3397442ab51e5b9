"""Result files of load generators as LoadResults: one module per format, and ``read_any``.

Every reader raises :class:`ResultFileError` (a ValueError) for a file it cannot read, with a
message ``<file>: <field>: <problem>`` — never a bare KeyError or a traceback's worth of pandas.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.load.formats.fortio import read_fortio
from workbench.load.formats.hey import COLUMNS as HEY_COLUMNS
from workbench.load.formats.hey import read_hey
from workbench.load.formats.k6 import head_text, read_k6, sniff_k6
from workbench.load.results import LoadResult, ResultFileError

__all__ = ["ResultFileError", "detect", "read_any", "read_fortio", "read_hey", "read_k6"]

_FORTIO_KEYS = re.compile(r'"(DurationHistogram|RequestedQPS|ActualQPS)"\s*:')


def detect(path: str | Path) -> str:
    """The format of a result file by its content: "fortio", "k6" or "hey" (nighthawk is "fortio")."""
    path = Path(path)
    head = head_text(path)
    text = head.lstrip()
    if not text:
        raise ResultFileError(path, "file", "empty file")
    if sniff_k6(head):
        return "k6"
    first = text.split("\n", 1)[0]
    if first.startswith(HEY_COLUMNS[0] + ","):
        return "hey"
    if text.startswith("{") and _FORTIO_KEYS.search(text):
        return "fortio"
    raise ResultFileError(
        path,
        "format",
        "unrecognised result file (expected fortio/nighthawk JSON, k6 CSV/JSON/summary or hey CSV)",
    )


def read_any(path: str | Path) -> LoadResult:
    """Read a result file of any supported generator, choosing the reader by content."""
    readers = {"fortio": read_fortio, "k6": read_k6, "hey": read_hey}
    return readers[detect(path)](path)
