"""The quick suite's pages in a real browser (headless Chromium) and printed to PDF.

Reads the run of the ``quick_run`` fixture (tests/suite_run.py; shared with tests/test_run.py):
every page opens from disk with every figure drawn (counted against the executed notebook's
figures), no console error and no request leaving the page; screenshots are kept under the run's
reports folder. A mutated copy of a report (a figure removed, an external ``<script src>`` added)
must be flagged. ``workbench report --pdf`` prints every page; the first page of each PDF, rendered
by pdftoppm, must not be blank.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from suite_run import Reported, Run
from workbench.report import browser

pytestmark = pytest.mark.slow

MAX_REPORT_BYTES = 6 * 2**20
FIGURE = re.compile(r'<div\b[^>]*\bclass="plotly-graph-div"[^>]*></div>\s*<script\b.*?</script>', re.S)
EXTERNAL = '<script src="https://cdn.example.com/plotly.min.js"></script>'


@pytest.fixture(scope="module")
def chromium() -> browser.Chromium:
    with browser.Chromium() as b:
        yield b


@pytest.fixture(scope="module")
def checks(quick_run: Run, reported: Reported) -> list[dict]:
    assert reported.proc.returncode == 0, reported.proc.stdout + reported.proc.stderr
    found = json.loads((quick_run.reports / quick_run.run_id / browser.CHECK_FILE).read_text())
    for c in found:
        problems = "; ".join(c["problems"]) or "ok"
        print(
            f"{c['page']:<28} {c['figures_drawn']:>2}/{c['figures_expected']} figures "
            f"{c['open_s']:5.2f} s {c['size_bytes'] / 2**20:5.2f} MiB {problems}"
        )
    return found


def test_every_page_draws_every_figure_without_errors_or_network(quick_run: Run, checks: list) -> None:
    names = json.loads((quick_run.data / "run.json").read_text())["experiments"]
    run_reports = quick_run.reports / quick_run.run_id
    assert {Path(c["page"]).stem for c in checks} == {"index", *names}
    for c in checks:
        assert not c["problems"] and not c["console_errors"] and not c["external_requests"], c
        if c["page"] != "index.html":
            expected = browser.notebook_figures(quick_run.data / Path(c["page"]).with_suffix(".ipynb").name)
            assert expected >= 1 and c["figures_drawn"] == expected == c["figures_expected"], c["page"]
        assert c["size_bytes"] <= MAX_REPORT_BYTES, (c["page"], c["size_bytes"])
        shot = run_reports / browser.SCREENSHOTS / c["screenshot"]
        assert shot.stat().st_size > 10_000, shot


def _mutated(report: Path, tmp: Path, change: str) -> Path:
    text = report.read_text(encoding="utf-8")
    if change == "remove a figure":
        figure = FIGURE.search(text)  # the plot's container and the script that draws it
        assert figure is not None
        text = text[: figure.start()] + text[figure.end() :]
    else:
        text = text.replace(
            "<head>", '<head><script src="https://cdn.example.com/plotly.min.js"></script>', 1
        )
    copy = tmp / f"{change.replace(' ', '-')}-{report.name}"
    copy.write_text(text, encoding="utf-8")
    return copy


@pytest.mark.parametrize("change", ["remove a figure", "add an external script"])
def test_the_checker_flags_a_mutated_report(
    quick_run: Run, chromium: browser.Chromium, tmp_path: Path, change: str
) -> None:
    report = quick_run.reports / quick_run.run_id / "catalog-v2-ab.html"
    expected = browser.notebook_figures(quick_run.data / "catalog-v2-ab.ipynb")
    assert chromium.check(report, expected_figures=expected).ok
    bad = chromium.check(_mutated(report, tmp_path, change), expected_figures=expected)
    print(f"{change}: {bad.problems}")
    assert not bad.ok
    if change == "remove a figure":
        assert bad.figures_drawn == expected - 1
        assert f"{expected - 1} of {expected} figures drawn" in bad.problems[0]
    else:
        assert bad.external_requests == ["https://cdn.example.com/plotly.min.js"]
        assert "request leaving the page: https://cdn.example.com/plotly.min.js" in bad.problems


def _first_page_ink(pdf: Path, out: Path) -> float:
    """Render the PDF's first page to PNG with pdftoppm; the share of pixels that are not white."""
    from PIL import Image

    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    pixels = np.asarray(Image.open(out.with_suffix(".png")).convert("L"))
    return float((pixels < 235).mean())


def test_report_pdf_prints_the_index_and_every_report(
    quick_run: Run, reported: Reported, tmp_path: Path
) -> None:
    """``workbench report RUN --no-render --pdf --check``: one Chromium checks and prints every page."""
    assert reported.proc.returncode == 0, reported.proc.stdout + reported.proc.stderr
    assert "index.html" in reported.proc.stdout and "screenshots:" in reported.proc.stdout
    pdf_dir = quick_run.reports / quick_run.run_id / "pdf"
    pages = {p.stem for p in (quick_run.reports / quick_run.run_id).glob("*.html")}
    assert {p.stem for p in pdf_dir.glob("*.pdf")} == pages
    for pdf in sorted(pdf_dir.glob("*.pdf")):
        assert pdf.read_bytes()[:5] == b"%PDF-"
        ink = _first_page_ink(pdf, tmp_path / pdf.stem)
        print(f"{pdf.name}: {pdf.stat().st_size / 1024:.0f} KiB, first page {ink:.1%} ink")
        assert ink > 0.01, f"{pdf.name}: first page is blank"
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    with browser.Chromium() as b:
        b.pdf(blank, tmp_path / "blank.pdf")
    assert _first_page_ink(tmp_path / "blank.pdf", tmp_path / "blank") < 0.001  # the check can fail


def test_chromium_stops_with_its_block_also_on_an_error() -> None:
    import psutil

    def ours() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True) if "chrom" in p.name()}

    before = ours()
    with pytest.raises(RuntimeError), browser.Chromium():
        assert ours() - before  # chromedriver and chromium run inside the block
        raise RuntimeError("boom")
    assert not {p for p in ours() - before if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"}


def test_history_page_draws_in_the_browser(quick_run: Run, chromium: browser.Chromium) -> None:
    page = quick_run.reports / "history.html"
    assert page.exists()
    check = chromium.check(
        page, screenshot=quick_run.reports / quick_run.run_id / "screenshots" / "history.png"
    )
    assert check.ok and check.figures_drawn >= 1, check.problems
