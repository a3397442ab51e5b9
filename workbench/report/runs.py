"""Stored runs, read back: what ``workbench run`` left in ``data/runs/<run-id>/``.

A run directory holds ``run.json`` (id, start, the experiments file's text, --quick, tool
versions), and per experiment ``<name>/result.json`` (verdict and key figures) and its load
results (``workbench.load.storage``: Parquet + JSON). History and ``workbench compare`` read runs
from here; nothing is re-measured.

Two runs are *repeats* of one experiment when its configuration is the same: the experiment's
entry (with the suite's defaults and --quick applied), the backend, and the versions of Envoy,
k6 and Prometheus (``StoredRun.fingerprint``). Repeats are what run-to-run variation is
estimated from (``workbench.stats.runs``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
SYSTEM_TOOLS = ("envoy", "k6", "prometheus")  # part of what is measured; the workbench's own is not


class RunNotFound(WorkbenchError, LookupError):
    """No such stored run; the message names the directory searched and the runs there."""


@dataclass
class StoredRun:
    """One run directory, read lazily."""

    path: Path
    run: dict[str, Any] = field(repr=False)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def started(self) -> datetime | None:
        try:
            return datetime.fromisoformat(str(self.run.get("started")))
        except ValueError:
            return None

    @property
    def quick(self) -> bool:
        return bool(self.run.get("quick"))

    @property
    def experiments(self) -> list[str]:
        return [str(n) for n in self.run.get("experiments") or []]

    def result(self, name: str) -> dict[str, Any] | None:
        """The experiment's ``result.json`` (None when it has none)."""
        try:
            return json.loads((self.path / name / RESULT_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @cached_property
    def config(self) -> Any:
        """The validated experiments file the run used (from its stored text), or None."""
        from workbench import config

        text = self.run.get("config_text")
        if not text:
            return None
        try:
            return config.loads(text, source=f"{self.run_id}/{RUN_FILE}")
        except config.ConfigError:
            return None

    def spec(self, name: str) -> Any:
        """The experiment's spec as it ran (--quick shortening applied), or None."""
        from workbench.experiments.session import quick_spec

        if self.config is None:
            return None
        try:
            spec = self.config.get(name)
        except (KeyError, ValueError):
            return None
        return quick_spec(spec) if self.quick else spec

    def fingerprint(self, name: str) -> str | None:
        """What makes two runs of experiment ``name`` repeats of one configuration (see module)."""
        spec = self.spec(name)
        if spec is None:
            return None
        versions = self.run.get("versions") or {}
        doc = {
            "spec": spec.model_dump(mode="json", exclude={"description"}),
            "backend": self.config.backend.model_dump(mode="json"),
            "quick": self.quick,
            "tools": {k: versions.get(k) for k in SYSTEM_TOOLS},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def streams(self, name: str) -> dict[str, Any]:
        """The experiment's stored load, one LoadResult per stream: each stored result (in its
        folder or below, e.g. a sweep's ``points/``), split by answering version when it holds
        several (``ab v1``, ``ab v2``; ``step-2 v3``)."""
        from workbench.load import storage

        out: dict[str, Any] = {}
        top = self.path / name
        folders = [top, *sorted(p for p in top.rglob("*") if p.is_dir())] if top.is_dir() else []
        for path in [r for folder in folders for r in storage.list_results(folder)]:
            try:
                result = storage.load(path)
            except WorkbenchError:
                continue
            if len(result.samples) == 0:
                continue
            stream = path.relative_to(top).with_suffix("").as_posix()  # e.g. points/both_rps100_c8_rep0
            variants = result.by_variant() if "variant" in result.samples.columns else {}
            if len(variants) > 1:
                out.update({f"{stream} {v or '(no answer)'}": r for v, r in variants.items()})
            else:
                out[stream] = result
        return out


def list_runs(data_root: str | Path) -> list[StoredRun]:
    """Every stored run under ``data_root``, oldest first (run ids sort by time)."""
    root = Path(data_root)
    runs = []
    for path in sorted(root.glob(f"*/{RUN_FILE}")):
        try:
            runs.append(StoredRun(path.parent, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError):
            continue
    return runs


def open_run(data_root: str | Path, run_id: str) -> StoredRun:
    """The stored run ``run_id`` (``latest``: the newest; ``latest~1``: the one before ...)."""
    runs = list_runs(data_root)
    if run_id == "latest" or run_id.startswith("latest~"):
        tail = run_id.partition("~")[2]
        back = 0 if run_id == "latest" else int(tail) if tail.isdigit() else -1
        if back < 0 or back >= len(runs):
            raise RunNotFound(f"{run_id}: {len(runs)} stored run(s) in {Path(data_root).resolve()}")
        return runs[-1 - back]
    for run in runs:
        if run.run_id == run_id:
            return run
    known = ", ".join(r.run_id for r in runs[-5:]) or "none"
    raise RunNotFound(f"no run {run_id!r} in {Path(data_root).resolve()} (newest: {known})")


def repeats(runs: list[StoredRun], name: str) -> dict[str, list[StoredRun]]:
    """The runs of experiment ``name`` grouped by configuration (fingerprint -> runs, oldest first);
    only runs where the experiment finished (status ok) count."""
    groups: dict[str, list[StoredRun]] = {}
    for run in runs:
        result = run.result(name)
        if result is None or result.get("status") != "ok":
            continue
        key = run.fingerprint(name)
        if key is not None:
            groups.setdefault(key, []).append(run)
    return groups
