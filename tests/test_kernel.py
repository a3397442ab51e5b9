"""The run's shared kernel: every notebook starts clean, a dead kernel is replaced, nothing is left."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import nbformat
import papermill as pm
import psutil
import pytest

from workbench.suite.kernel import SuiteKernel

pytestmark = [pytest.mark.slow, pytest.mark.beside]  # starts Jupyter kernels; measures nothing


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, path)
    return path


def _run(kernel: SuiteKernel, src: Path, out: Path) -> nbformat.NotebookNode:
    pm.execute_notebook(
        str(src), str(out), progress_bar=False, kernel_name="python3", **kernel.for_notebook()
    )
    return nbformat.read(out, as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_share_one_kernel_but_not_their_names(tmp_path: Path) -> None:
    first = _notebook(
        tmp_path / "first.ipynb", "import os\nleft_over = 41\nprint(os.getpid())", "os.chdir('/')"
    )
    second = _notebook(
        tmp_path / "second.ipynb",
        "import os\nprint(os.getpid(), 'left_over' in globals(), os.getcwd())",
        "import sys\nprint('workbench.experiments' in sys.modules)",
    )
    with SuiteKernel(tmp_path) as kernel:
        pid_first = int(_text(_run(kernel, first, tmp_path / "o1.ipynb")).split()[0])
        out = _run(kernel, second, tmp_path / "o2.ipynb")
        assert "ERROR" not in _text(out)  # e.g. IPython's history clashing with a reset counter
        pid, defined, cwd, preloaded = _text(out).split()
        assert int(pid) == pid_first  # the same kernel process ...
        assert defined == "False"  # ... with the first notebook's names gone
        assert cwd == str(tmp_path)  # and its working directory back
        assert preloaded == "True"  # the package was imported once, before the first notebook
        assert [c.execution_count for c in out.cells] == [1, 2]  # counted as in a fresh kernel
        sockets = Path(kernel._sockets.name)
        assert sorted(p.name for p in sockets.iterdir())  # its ipc sockets live in a private dir
    assert not psutil.pid_exists(pid_first)
    assert not sockets.exists()


def test_a_dead_kernel_is_replaced_before_the_next_notebook(tmp_path: Path) -> None:
    nb = _notebook(tmp_path / "pid.ipynb", "import os\nprint(os.getpid())")
    with SuiteKernel(tmp_path) as kernel:
        pid = int(_text(_run(kernel, nb, tmp_path / "o1.ipynb")))
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout=10)  # our child: reaped here
        new_pid = int(_text(_run(kernel, nb, tmp_path / "o2.ipynb")))
        assert new_pid != pid
    assert not psutil.pid_exists(new_pid)
