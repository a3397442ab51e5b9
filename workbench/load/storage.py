"""Store LoadResults as files: ``<name>.parquet`` (samples) + ``<name>.json`` (meta, histogram).

The pair reads back losslessly: Parquet keeps the sample dtypes (tz-aware nanosecond timestamps,
categoricals, the index), and the JSON tags what JSON has no type for — datetimes, dates,
timedeltas, paths, tuples, non-finite floats, dicts with non-string keys — so ``load(save(r))``
gives equal meta, frame and histogram. The JSON is written last and is what :func:`list_results`
finds, so a half-written result is never listed. Aware datetimes keep their UTC offset (a zone
name such as Europe/Berlin comes back as its fixed offset, the same instant).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd

from workbench.load.results import LoadResult, ResultFileError
from workbench.metrics.histogram import Histogram

__all__ = ["FORMAT", "list_results", "load", "save"]

FORMAT = "mesh-workbench/load-result"
FORMAT_VERSION = 1
_TAGS = ("__datetime__", "__timestamp__", "__date__", "__timedelta__", "__float__", "__path__")
_TAGS += ("__tuple__", "__items__")


def _encode(value: Any, where: str) -> Any:
    """A JSON-able, tagged form of ``value``; TypeError naming ``where`` for unstorable types."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return _encode(value.item(), where)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, pd.Timestamp):
        return {"__timestamp__": value.isoformat()}
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, date):
        return {"__date__": value.isoformat()}
    if isinstance(value, timedelta):
        return {"__timedelta__": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, PurePath):
        return {"__path__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        looks_tagged = len(value) == 1 and next(iter(value)) in _TAGS
        if all(isinstance(k, str) for k in value) and not looks_tagged:
            return {k: _encode(v, f"{where}.{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, where), _encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    raise TypeError(f"{where}: cannot store a {type(value).__name__} ({value!r:.60})")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "__datetime__": datetime.fromisoformat,
    "__timestamp__": pd.Timestamp,
    "__date__": date.fromisoformat,
    "__timedelta__": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "__float__": float,
    "__path__": Path,
    "__tuple__": lambda v: tuple(_decode(x) for x in v),
    "__items__": lambda v: {_decode(k): _decode(x) for k, x in v},
}


def _decode(value: Any) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key in _DECODERS:
                return _DECODERS[key](inner)
        return {k: _decode(v) for k, v in value.items()}
    return value


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(result: LoadResult, directory: str | Path, name: str) -> Path:
    """Write ``<name>.parquet`` and ``<name>.json`` into ``directory``; return the JSON's path."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"result name must be a plain file name (got {name!r})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parquet, manifest = directory / f"{name}.parquet", directory / f"{name}.json"
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "samples": parquet.name,
        "object_columns": [
            str(c) for c, t in result.samples.dtypes.items() if pd.api.types.is_object_dtype(t)
        ],
        "meta": _encode(dict(result.meta), "meta"),
        "histogram": None if result.histogram is None else _encode(result.histogram.to_dict(), "histogram"),
    }
    text = json.dumps(document, indent=2, allow_nan=False)
    _atomic_write(parquet, lambda p: result.samples.to_parquet(p, engine="pyarrow"))
    _atomic_write(manifest, lambda p: p.write_text(text + "\n"))
    return manifest


def _manifest_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        return path
    if path.suffix == ".parquet":
        return path.with_suffix(".json")
    return path.with_name(path.name + ".json")


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultFileError(path, "file", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(path, "file", f"cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ResultFileError(path, "JSON", f"invalid or truncated JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ResultFileError(path, "format", f"not a stored load result (expected format {FORMAT!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ResultFileError(
            path, "format_version", f"version {document.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    return document


def load(path: str | Path) -> LoadResult:
    """The LoadResult stored at ``path`` (the ``.json``, the ``.parquet`` or the name without suffix)."""
    manifest = _manifest_path(path)
    document = _read_manifest(manifest)
    parquet = manifest.parent / str(document.get("samples") or "")
    try:
        samples = pd.read_parquet(parquet, engine="pyarrow")
    except (OSError, ValueError) as exc:
        raise ResultFileError(manifest, "samples", f"cannot read {parquet.name} ({exc})") from None
    for column in document.get("object_columns") or []:  # pandas 3 reads strings back as "str"
        if column in samples.columns:
            samples[column] = samples[column].astype(object)
    meta = _decode(document.get("meta") or {})
    histogram = None
    if document.get("histogram") is not None:
        try:
            histogram = Histogram.from_dict(_decode(document["histogram"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFileError(manifest, "histogram", str(exc)) from None
    try:
        return LoadResult(meta, samples, histogram)
    except ValueError as exc:
        raise ResultFileError(manifest, "samples", str(exc)) from None


def list_results(directory: str | Path) -> list[Path]:
    """The stored results (their JSON paths) in ``directory``, sorted by name."""
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            _read_manifest(path)
        except ResultFileError:
            continue
        found.append(path)
    return found
