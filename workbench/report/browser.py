"""Reports in a real browser: headless Chromium checks each page, screenshots it, prints it to PDF.

A report is only as good as what a reader's browser makes of it, so each page is opened from
disk in Debian's Chromium (driven through Debian's ``chromium-driver``, the WebDriver of that
very build) and checked as a reader would see it:

- every plotly figure is drawn (an SVG inside each plot; the count is compared with the figures
  the executed notebook holds, so a figure missing from the page is caught too);
- the console shows no error (an exception, a failed load);
- no request leaves the page: every request the page makes is seen through the DevTools
  protocol's Network events, and any that is not ``file:``, ``data:``, ``blob:`` or ``about:``
  is named (and blocked, so nothing ever reaches the network);
- a full-page screenshot is written next to the page, for CI to keep.

Why Selenium and Debian's chromium-driver rather than Playwright: Debian ships the browser and
its driver as one version, so they always match; Playwright drives a Chromium revision of its own
(``playwright install`` downloads it, which this kind of machine cannot do) and only promises to
work with that one.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

APT_COMMAND = "apt-get install -y chromium chromium-driver poppler-utils"
# The flags this kind of machine needs: no sandbox as root, no GPU, and none of Chromium's own
# background traffic (component updates, sync, field trials) — which is also checked, not trusted.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
FIGURE_DIV = re.compile(r'<div\b[^>]*\bclass="plotly-graph-div"')  # attributes in either order
WINDOW = (1280, 1000)
PAPER_IN, MARGIN_IN, PRINT_SCALE = (8.27, 11.69), 0.4, 0.75  # A4; the page is laid out 956 px wide
DRAW_TIMEOUT_S = 30.0
# Counts a page's plotly figures and those drawn (an SVG inside the plot: Plotly.newPlot ran).
COUNT_FIGURES_JS = """
const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
const drawn = divs.filter(d => d._fullLayout && d.querySelector('svg.main-svg'));
return [divs.length, drawn.length, typeof window.Plotly];
"""


class BrowserError(WorkbenchError):
    """Chromium or its driver is missing or failed; the message says which and what to do."""


def find_chromium() -> tuple[Path, Path]:
    """Debian's Chromium and chromium-driver, or a BrowserError with the command that installs them."""
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise BrowserError(f"{missing} not found: run '{APT_COMMAND}' (as root), then try again")
    return Path(browser), Path(driver)


def notebook_figures(notebook: Path) -> int:
    """The plotly figures an executed notebook shows (one ``plotly-graph-div`` per figure output)."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    total = 0
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            text = (output.get("data") or {}).get("text/html", "")
            total += len(FIGURE_DIV.findall("".join(text) if isinstance(text, list) else text))
    return total


@dataclass
class PageCheck:
    """What Chromium made of one page."""

    page: Path
    figures_on_page: int  # plot containers in the page
    figures_drawn: int  # of them, drawn (an SVG inside)
    figures_expected: int | None  # the executed notebook's figures (None: not known, e.g. the index)
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    open_s: float = float("nan")  # from navigation to every figure drawn
    size_bytes: int = 0
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        """Each thing a reader would notice, one sentence each (empty: the page is fine)."""
        found = []
        expected = self.figures_on_page if self.figures_expected is None else self.figures_expected
        if self.figures_drawn != expected:
            found.append(
                f"{self.figures_drawn} of {expected} figures drawn"
                + (f" ({self.figures_on_page} on the page)" if self.figures_on_page != expected else "")
            )
        found += [f"console error: {e}" for e in self.console_errors]
        found += [f"request leaving the page: {u}" for u in self.external_requests]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "page": self.page.name, "figures_expected": self.figures_expected,
            "figures_on_page": self.figures_on_page, "figures_drawn": self.figures_drawn,
            "console_errors": self.console_errors, "external_requests": self.external_requests,
            "open_s": round(self.open_s, 3), "size_bytes": self.size_bytes,
            "screenshot": self.screenshot.name if self.screenshot else None, "problems": self.problems,
        }  # fmt: skip


class Chromium:
    """One headless Chromium (a fresh profile in a temporary directory) for many pages.

    Use as a context manager: the browser and its driver stop on leaving, also on an error or
    Ctrl-C, and the profile directory is removed.
    """

    def __init__(self, window: tuple[int, int] = WINDOW):
        self.window = window
        self._driver: Any = None
        self._profile: str | None = None

    def __enter__(self) -> Chromium:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = find_chromium()
        self._profile = tempfile.mkdtemp(prefix="wb-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(browser)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                     f"--window-size={self.window[0]},{self.window[1]}"):  # fmt: skip
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
        service = Service(executable_path=str(driver), log_output=subprocess.DEVNULL)
        try:
            self._driver = webdriver.Chrome(service=service, options=options)
        except Exception as exc:
            self._cleanup()
            raise BrowserError(f"Chromium did not start ({browser}, {driver}): {exc}".strip()) from None
        self._driver.set_page_load_timeout(60)
        self._driver.execute_cdp_cmd("Network.enable", {})
        self._driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # the driver is gone already: make sure its browser is too
                _kill_tree(getattr(driver.service, "process", None))
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    @property
    def driver(self) -> Any:
        if self._driver is None:
            raise BrowserError("Chromium is not running (use 'with Chromium() as browser:')")
        return self._driver

    @property
    def version(self) -> str:
        return str(self.driver.capabilities.get("browserVersion", "?"))

    def open(self, page: Path) -> float:
        """Load ``page`` from disk and wait until its figures are drawn; return the seconds it took."""
        self._drain_logs()
        t0 = time.perf_counter()
        self.driver.get(Path(page).resolve().as_uri())
        deadline = t0 + DRAW_TIMEOUT_S
        while True:
            on_page, drawn, _ = self.driver.execute_script(COUNT_FIGURES_JS)
            if drawn >= on_page or time.perf_counter() > deadline:
                return time.perf_counter() - t0
            time.sleep(0.05)

    def check(
        self, page: Path, screenshot: Path | None = None, expected_figures: int | None = None
    ) -> PageCheck:
        """Open ``page`` and check it (see the module docstring); write its screenshot if asked."""
        page = Path(page)
        seconds = self.open(page)
        on_page, drawn, _ = self.driver.execute_script(COUNT_FIGURES_JS)
        time.sleep(0.2)  # late console messages and requests (a script that runs after load)
        errors, requests = self._page_events()
        result = PageCheck(page, int(on_page), int(drawn), expected_figures, errors, requests, seconds,
                           page.stat().st_size)  # fmt: skip
        if screenshot is not None:
            result.screenshot = self.screenshot(screenshot)
        return result

    def screenshot(self, target: Path) -> Path:
        """A PNG of the whole page as loaded (not just the window)."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height = max(int(size["width"]), self.window[0]), min(int(size["height"]), 30_000)
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "fromSurface": True,
             "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
        )  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target

    def pdf(self, page: Path, target: Path) -> Path:
        """Print ``page`` to an A4 PDF with its backgrounds, as a reader would: laid out at the
        paper's width (so figures fit), figures drawn before printing."""
        width_px = round((PAPER_IN[0] - 2 * MARGIN_IN) * 96 / PRINT_SCALE)
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width_px, "height": self.window[1], "deviceScaleFactor": 1, "mobile": False},
        )
        try:
            self.open(page)
            printed = self.driver.execute_cdp_cmd(
                "Page.printToPDF",
                {"printBackground": True, "paperWidth": PAPER_IN[0], "paperHeight": PAPER_IN[1],
                 "marginTop": MARGIN_IN, "marginBottom": MARGIN_IN, "marginLeft": MARGIN_IN,
                 "marginRight": MARGIN_IN, "scale": PRINT_SCALE, "displayHeaderFooter": False},
            )  # fmt: skip
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".pdf.tmp")
        tmp.write_bytes(base64.b64decode(printed["data"]))
        tmp.replace(target)
        return target

    def _drain_logs(self) -> None:
        with suppress(Exception):
            self.driver.get_log("browser")
            self.driver.get_log("performance")

    def _page_events(self) -> tuple[list[str], list[str]]:
        errors = [
            str(e.get("message", "")) for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"
        ]
        requests: list[str] = []
        for entry in self.driver.get_log("performance"):
            try:
                message = json.loads(entry["message"])["message"]
            except (KeyError, ValueError):
                continue
            if message.get("method") == "Network.requestWillBeSent":
                url = str(message["params"]["request"]["url"])
                if not url.startswith(LOCAL_SCHEMES) and url not in requests:
                    requests.append(url)
        return errors, requests


def _kill_tree(process: Any) -> None:
    if process is None:
        return
    import psutil

    try:
        parent = psutil.Process(process.pid)
        children = parent.children(recursive=True)
    except psutil.Error:
        return
    for proc in [*children, parent]:
        with suppress(psutil.Error):
            proc.kill()


CHECK_FILE = "browser-check.json"
SCREENSHOTS = "screenshots"
PDF_DIR = "pdf"


def run_pages(run_reports: Path) -> list[Path]:
    """A run's pages: its index first, then each experiment's report (``reports/<run-id>/*.html``)."""
    pages = sorted(p for p in Path(run_reports).glob("*.html") if p.name != "index.html")
    index = Path(run_reports) / "index.html"
    return ([index] if index.exists() else []) + pages


def check_run(
    run_reports: Path, run_data: Path | None = None, browser: Chromium | None = None
) -> list[PageCheck]:
    """Check every page of a run in Chromium; screenshots go to ``<run reports>/screenshots/`` and
    the findings to ``browser-check.json``. Each report's figures are counted against its executed
    notebook in ``run_data`` (``data/runs/<run-id>/<name>.ipynb``) when that is there."""
    checks = []
    with _browser(browser) as b:
        for page in run_pages(run_reports):
            notebook = (run_data / f"{page.stem}.ipynb") if run_data is not None else None
            expected = notebook_figures(notebook) if notebook is not None and notebook.exists() else None
            shot = Path(run_reports) / SCREENSHOTS / f"{page.stem}.png"
            checks.append(b.check(page, screenshot=shot, expected_figures=expected))
    (Path(run_reports) / CHECK_FILE).write_text(
        json.dumps([c.to_json() for c in checks], indent=1) + "\n", encoding="utf-8"
    )
    return checks


def print_run(run_reports: Path, browser: Chromium | None = None) -> list[Path]:
    """Print the index and every report of a run to ``<run reports>/pdf/<name>.pdf``."""
    with _browser(browser) as b:
        return [
            b.pdf(page, Path(run_reports) / PDF_DIR / f"{page.stem}.pdf") for page in run_pages(run_reports)
        ]


def _browser(given: Chromium | None) -> AbstractContextManager[Chromium]:
    """The given browser (left running), or a new one for the block."""
    return nullcontext(given) if given is not None else Chromium()
