"""Notebook templates: stored without outputs, and they run for real under papermill."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import REPO
from workbench import config

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_and_with_a_parameters_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"


@pytest.mark.slow
@pytest.mark.beside  # a notebook over stored data: measures nothing
def test_overview_notebook_lists_the_suite(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "experiments:\n"
        "  - {name: quick-sweep, kind: loadtest, rps: [100, 200], connections: [1, 8], duration: 10s}\n"
        "  - {name: log-check, kind: audit}\n"
    )
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(
        str(REPO / "notebooks" / "experiments.ipynb"),
        str(out),
        parameters={"experiments_file": str(suite)},
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "quick-sweep" in html and "log-check" in html
    planned = config.load(suite).experiments[0].planned_seconds()
    assert planned == 2 * 2 * (10 + 5)
    assert f"planned load {planned / 60:.1f} min" in text
