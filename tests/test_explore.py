"""The JupyterLab explorer (``notebooks/explore.ipynb``) on stored runs: no mesh, no load.

The explorer's state and figures are driven through its methods (what the drop-downs call); the
notebook itself is executed headless by papermill against a stored run and its widget outputs
and figure summary are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from workbench.report.explore import Explorer
from workbench.report.runs import list_runs

SAMPLE = REPO / "data" / "sample" / "runs"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_choices_redraw_the_windows_the_distribution_and_the_comparison(tmp_path: Path) -> None:
    ex = Explorer(tmp_path, "latest", fallback=SAMPLE)  # nothing stored yet: the sample runs
    assert ex.data_root == SAMPLE and ex.run.run_id == list_runs(SAMPLE)[-1].run_id
    ex.select(experiment="catalog-ab", metric="p50", window_s=2)
    assert list(ex.streams) == ["ab v1", "ab v2"]
    shown = ex.describe()
    assert shown.loc["windows", "traces"] == 2 and shown.loc["distribution", "traces"] == 2
    assert shown.loc["comparison", "traces"] == 1 and "p50" in shown.loc["comparison", "title"]
    (label,) = ex.comparison()
    assert label == "ab v2 − ab v1"
    windows_2s = shown.loc["windows", "points"]
    ex.select(window_s=5)
    assert ex.describe().loc["windows", "points"] < windows_2s  # fewer, longer windows
    ex.select(metric="error_rate")
    assert ex.figures["windows"].layout.yaxis.title.text == "error rate (%)"
    assert ex.comparison()[label]["error_rate"].unit == "pts"
    first = list_runs(SAMPLE)[0].run_id
    ex.select(run_id=first)
    assert ex.run.run_id == first and ex.experiment == "catalog-ab"
    with pytest.raises(ValueError, match="metric must be one of"):
        ex.select(metric="p42")


def test_the_widgets_drive_the_same_state() -> None:
    ex = Explorer(SAMPLE)
    box = ex.ui()
    controls = box.children[0].children
    assert [c.description for c in controls] == ["run", "experiment", "metric", "window"]
    assert controls[1].value == "catalog-ab" and len(ex.figures["distribution"].data) == 2
    controls[2].value = "p99"
    assert ex.metric == "p99" and "p99" in ex.figures["windows"].layout.title.text
    first = list_runs(SAMPLE)[0].run_id
    controls[0].value = first
    assert ex.run.run_id == first and "p99" in ex.figures["comparison"].layout.title.text


def test_no_stored_run_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run 'workbench run' first"):
        Explorer(tmp_path)


@pytest.mark.slow
@pytest.mark.beside  # a notebook over stored data: measures nothing
def test_the_notebook_runs_headless_against_a_stored_run(tmp_path: Path) -> None:
    import papermill as pm

    out = tmp_path / "explore.ipynb"
    run_id = list_runs(SAMPLE)[0].run_id
    pm.execute_notebook(
        str(REPO / "notebooks" / "explore.ipynb"), str(out), cwd=str(REPO / "notebooks"), progress_bar=False,
        parameters={"data_root": str(SAMPLE), "run_id": run_id, "experiment": "catalog-ab", "metric": "p90"},
    )  # fmt: skip
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert any(WIDGET_VIEW in o.get("data", {}) for o in outputs), "the widgets were not displayed"
    table = next(
        o["data"]["text/html"] for o in outputs if "traces" in "".join(o.get("data", {}).get("text/html", ""))
    )
    text = "".join(table)
    assert "catalog-ab: p90 per 5 s window" in text and "p90: each stream against ab v1" in text
    assert not [o for o in outputs if o.get("output_type") == "error"]
