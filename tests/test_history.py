"""History and regressions on stored runs (no load): ``workbench compare`` and ``workbench history``.

Two stored-run samples, both four runs of catalog's A/B in one release (``release.yaml``: v1 and v2
identical) and two of a release where both carry catalog v2's +2 ms (``release-slow-catalog.yaml``),
made by ``benchmarks/record_runs.py`` from a real local-mesh recording (1000 rps, 180 s):
``tests/data/runs-resampled/`` draws each run's requests at random from the whole recording (runs
that differ by sampling alone, as on a quiet machine); ``data/sample/runs/`` cuts each run from its
own slice of the recording, whose drift makes runs differ as much as the +2 ms.
"""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_workbench
from workbench.report import browser
from workbench.report.history import history_frame, write_history
from workbench.report.regression import compare_stored
from workbench.report.runs import RunNotFound, list_runs, open_run
from workbench.stats.runs import UNKNOWN

SAMPLE = REPO / "data" / "sample" / "runs"
QUIET = REPO / "tests" / "data" / "runs-resampled"


def _releases(root: Path = QUIET) -> tuple[list[str], list[str]]:
    runs = list_runs(root)
    slow = [r.run_id for r in runs if "slow-catalog" in str(r.config.backend.topology)]
    plain = [r.run_id for r in runs if r.run_id not in slow]
    assert len(plain) >= 3 and len(slow) >= 2, (plain, slow)
    return plain, slow


def test_two_runs_of_the_same_configuration_are_not_worse() -> None:
    plain, _ = _releases()
    for a, b in itertools.pairwise(plain):
        (e,) = compare_stored(str(QUIET), a, b).experiments
        assert e.name == "catalog-ab" and set(e.streams) == {"ab v1", "ab v2"}
        assert e.verdict != "worse", [r.explain() for c in e.streams.values() for r in c]
        assert e.repeats_a == e.repeats_b == plain  # every run of the configuration is a repeat
        p50 = e.streams["ab v1"]["p50"]
        assert p50.spread.known and p50.spread.runs == len(plain)


def test_the_release_with_catalog_v2s_2_ms_is_worse() -> None:
    plain, slow = _releases()
    (e,) = compare_stored(str(QUIET), plain[-1], slow[0]).experiments
    assert e.verdict == "worse", [r.explain() for c in e.streams.values() for r in c]
    assert e.repeats_a == plain and e.repeats_b == slow
    for stream in ("ab v1", "ab v2"):
        p50 = e.streams[stream]["p50"]
        assert p50.verdict == "worse" and p50.ci.low > p50.margin, p50.explain()
        assert 1.0 < p50.estimate < 3.0  # the +2 ms
        assert p50.spread.df == (len(plain) - 1) + (len(slow) - 1)
    (back,) = compare_stored(str(QUIET), slow[0], plain[-1]).experiments
    assert back.streams["ab v1"]["p50"].verdict == "better" and back.verdict != "worse"


def test_runs_that_drift_as_much_as_the_effect_are_inconclusive_not_worse() -> None:
    """Slices of one recording at a saturating rate drift by about as much as the +2 ms: the
    windows of two runs can still differ "significantly", the runs cannot tell."""
    plain, slow = _releases(SAMPLE)
    (e,) = compare_stored(str(SAMPLE), plain[-1], slow[0]).experiments
    p50 = e.streams["ab v1"]["p50"]
    assert p50.spread.sd > 0.5 and p50.verdict == "inconclusive", p50.explain()
    assert p50.windows.ci.low > p50.margin  # the windows alone would call it worse
    for a, b in itertools.pairwise(plain):
        (same,) = compare_stored(str(SAMPLE), a, b).experiments
        assert same.verdict != "worse"


def test_one_run_per_side_is_inconclusive(tmp_path: Path) -> None:
    plain, slow = _releases()
    for run_id in (plain[0], slow[0]):
        shutil.copytree(QUIET / run_id, tmp_path / run_id)
    (e,) = compare_stored(str(tmp_path), plain[0], slow[0], only=["catalog-ab"]).experiments
    assert e.verdict == "inconclusive"
    p50 = e.streams["ab v1"]["p50"]
    assert p50.note == UNKNOWN and not p50.ci.finite
    assert p50.windows.verdict == "worse"  # what the windows alone would claim
    assert f"{UNKNOWN}: inconclusive" in p50.explain()


def _cli(*args: str) -> Any:
    """``workbench ARGS`` in this process (the commands' imports are paid once, not per call)."""
    from typer.testing import CliRunner

    from workbench.cli import app

    return CliRunner().invoke(app, list(args))


def test_compare_command_gates_on_fail_on(tmp_path: Path) -> None:
    plain, slow = _releases()
    same = _cli("compare", plain[0], plain[1], "--data", str(QUIET))
    assert same.exit_code == 0, same.output
    assert "regressed: none" in same.output
    worse = _cli("compare", plain[-1], slow[0], "--data", str(QUIET), "--experiment", "catalog-ab")
    assert worse.exit_code == 1, worse.output
    assert (
        "regressed: catalog-ab" in worse.output and "--fail-on worse: catalog-ab reached it" in worse.output
    )
    assert re.search(r"p50 .* \+\d\.\d+ ms \[\+\d\.\d+, \+\d\.\d+\] .*worse", worse.output), worse.output
    for run_id in (plain[0], slow[0]):
        shutil.copytree(QUIET / run_id, tmp_path / run_id)
    alone = ["compare", plain[0], slow[0], "--data", str(tmp_path)]
    undecided = _cli(*alone)
    assert undecided.exit_code == 0 and UNKNOWN in undecided.output
    assert _cli(*alone, "--fail-on", "inconclusive").exit_code == 1
    missing = _cli("compare", "nope", "latest", "--data", str(QUIET))
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output
    assert _cli("compare", plain[0], "latest", "--data", str(QUIET), "--fail-on", "sometimes").exit_code == 2
    assert _cli("compare", "latest", "latest", "--data", str(QUIET)).exit_code == 2  # the same run twice


def test_latest_and_latest_n_name_stored_runs() -> None:
    runs = list_runs(SAMPLE)
    assert open_run(SAMPLE, "latest").run_id == runs[-1].run_id
    assert open_run(SAMPLE, "latest~1").run_id == runs[-2].run_id
    with pytest.raises(RunNotFound):
        open_run(SAMPLE, f"latest~{len(runs)}")


def test_history_lists_every_runs_figures_with_intervals_and_draws_them(tmp_path: Path) -> None:
    frame = history_frame(list_runs(SAMPLE), "catalog-ab")
    deltas = frame[frame["figure"] == "delta_p50"]
    assert len(deltas) == len(list_runs(SAMPLE)) and deltas["ci_low"].notna().all()
    page = write_history(tmp_path, SAMPLE)
    text = page.read_text()
    assert len(browser.FIGURE_DIV.findall(text)) >= 2  # a chart per unit and experiment
    assert "<script src=" not in text and "Δp50" in text
    proc = run_workbench(
        "history", "--experiment", "catalog-ab", "--data", str(SAMPLE), "--reports", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "catalog-ab (6 runs)" in proc.stdout and "Δp50" in proc.stdout and " ms [" in proc.stdout
    assert f"history: {page}" in proc.stdout.replace("\n", "")
    assert run_workbench("history", "--experiment", "nope", "--data", str(SAMPLE)).returncode == 2
