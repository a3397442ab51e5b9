"""Reports: executed notebooks to self-contained HTML, and the index page of a run.

Layout::

    reports/<run-id>/<experiment>.html   one report per experiment (code hidden, figures inline)
    reports/<run-id>/index.html          every experiment: verdict, reading, key figures, link
    reports/index.html                   the newest run's index (links into <run-id>/), older runs
    reports/latest -> <run-id>           symlink to the newest run
"""

from __future__ import annotations

import html
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench.report import numbers

SEVERITY_STYLE = {
    "ok": ("#e8f5e9", "#1b5e20"),
    "inconclusive": ("#fff8e1", "#8d6e00"),
    "worse": ("#ffebee", "#b71c1c"),
    "error": ("#eceff1", "#37474f"),
}
GROUP_STYLE = {"worse": "worse", "undecided": "inconclusive", "not worse": "ok", "could not run": "error"}
MAX_FIGURES = 6
PRINT_STYLE = """<style>
@media print {
  .jp-OutputArea-child, .plotly-graph-div, table, details { break-inside: avoid; }
  .jp-RenderedHTMLCommon h2, .jp-RenderedHTMLCommon h3 { break-after: avoid; }
  .modebar-container { display: none; }
}
</style>
"""
EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\ssrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.IGNORECASE)


def render_html(notebook: Path, target: Path, title: str) -> Path:
    """Render an executed notebook as one HTML file with code cells hidden and plotly.js inline."""
    import nbformat  # imported here: nbformat's schema checks cost seconds at import
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.exclude_anchor_links = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = offline(body)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(target)
    return target


def offline(html_text: str) -> str:
    """Drop external scripts (require.js and MathJax from a CDN): plotly.js is inlined, and with
    require.js present it would register as an AMD module instead of ``window.Plotly``. Add the
    print rules (a figure or table is not split across pages)."""
    return EXTERNAL_SCRIPT.sub("", html_text).replace("</head>", PRINT_STYLE + "</head>", 1)


def write_index(reports: Path, run_id: str, run: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    """Write ``reports/<run-id>/index.html``, then ``reports/index.html`` and ``reports/latest``."""
    run_dir = reports / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "index.html").write_text(_index_page(run_id, run, results, prefix=""), encoding="utf-8")
    if _is_newest(reports, run_id):
        latest = reports / "latest"
        tmp_link = reports / ".latest.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(run_id, target_is_directory=True)
        os.replace(tmp_link, latest)
        top = _index_page(run_id, run, results, prefix=f"{run_id}/", others=_other_runs(reports, run_id))
        (reports / "index.html").write_text(top, encoding="utf-8")
    return run_dir / "index.html"


def _is_newest(reports: Path, run_id: str) -> bool:
    runs = [
        p.name for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / "index.html").exists()
    ]
    return run_id >= max(runs, default=run_id)


def _other_runs(reports: Path, run_id: str) -> list[str]:
    runs = [
        p.name for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / "index.html").exists()
    ]
    return sorted((r for r in runs if r != run_id), reverse=True)[:20]


def _index_page(
    run_id: str,
    run: dict[str, Any],
    results: list[dict[str, Any]],
    prefix: str,
    others: list[str] | None = None,
) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for r in results:
        counts[r.get("severity", "error")] = counts.get(r.get("severity", "error"), 0) + 1
    rows = []
    for r in results:
        bg, fg = SEVERITY_STYLE.get(r.get("severity", "error"), SEVERITY_STYLE["error"])
        link = r.get("report")
        name = e(r["name"])
        name_cell = f'<a href="{e(prefix + link)}">{name}</a>' if link else name
        rows.append(
            "<tr>"
            f"<td>{name_cell}<div class=desc>{e(r.get('description') or '')}</div></td>"
            f"<td>{e(r.get('kind', ''))}</td>"
            f'<td><span class=verdict style="background:{bg};color:{fg}">'
            f"{e(r.get('verdict', 'failed'))}</span></td>"
            f"<td>{e(r.get('headline') or r.get('error') or '')}</td>"
            f"<td class=figs>{_figures_html(r.get('figures') or {})}</td>"
            f"<td class=num>{_seconds(r.get('duration_s'))}</td>"
            "</tr>"
        )
    started = run.get("started", "")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    mode = "quick (smoke) run" if run.get("quick") else "full run"
    history_link = "history.html" if prefix else "../history.html"
    older = ""
    if others:
        links = "".join(f'<li><a href="{e(o)}/index.html">{e(o)}</a></li>' for o in others)
        older = f"<h2>Earlier runs</h2><ul>{links}</ul>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mesh Workbench run {e(run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .5em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f5f5f5; }}
.verdict {{ padding: .15em .5em; border-radius: .3em; font-weight: 600; white-space: nowrap; }}
.desc {{ color: #666; font-size: .85em; }}
.figs {{ font-size: .85em; color: #333; min-width: 16em; }}
.num {{ text-align: right; white-space: nowrap; }}
.summary {{ background: #fafafa; border: 1px solid #e0e0e0; border-radius: .4em; padding: .2em 1em .8em; }}
.summary ul {{ margin: .3em 0 .6em; }} .sumgroup {{ margin: .6em 0; }}
@media print {{ body {{ margin: 0; }} a {{ color: inherit; }} }}
</style></head><body>
<h1>Mesh Workbench — run {e(run_id)}</h1>
<p>{e(mode)} of <code>{e(str(run.get("config", "")))}</code> on the {e(str(run.get("backend", "")))},
started {e(started)}; {len(results)} experiments: {e(summary)}.</p>
{summary_html(results, prefix)}
<h2>Experiments</h2>
<table><thead><tr><th>experiment</th><th>kind</th><th>verdict</th><th>reading</th><th>key figures</th>
<th>time</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<p class=desc>Verdicts: worse / better / equivalent / inconclusive come from confidence intervals against the
practical margins in experiments.yaml (README, "Statistics"). Data of this run: data/runs/{e(run_id)}/.
Re-render without load: <code>workbench report {e(run_id)}</code>.</p>
<p><a href="{e(history_link)}">History across runs</a> (each experiment's figures over the stored runs);
regressions between two runs: <code>workbench compare RUN_A RUN_B</code>.</p>
{older}
</body></html>
"""


def _figures_html(figures: dict[str, Any]) -> str:
    """The key figures for people (``report.numbers``): units, intervals, verdicts joined."""
    return "<br>".join(
        f"{html.escape(name)}: {html.escape(text)}"
        for name, text in numbers.key_figures(figures, MAX_FIGURES)
    )


def summary_html(results: list[dict[str, Any]], prefix: str = "") -> str:
    """The index's opening: what was worse, what was not, what could not be decided and why."""
    e = html.escape
    groups = numbers.summarize_verdicts(results)
    titles = {
        "worse": "Worse",
        "not worse": "Not worse",
        "undecided": "Could not be decided",
        "could not run": "Could not run",
    }
    items = []
    for key, title in titles.items():
        members = groups[key]
        if not members:
            continue
        if key == "not worse":  # the name and its verdict are enough
            body = ", ".join(f"{_link(r, prefix)} ({e(str(r.get('verdict', '')))})" for r in members)
        else:  # why: the experiment's own sentence
            body = "".join(
                f"<li>{_link(r, prefix)}: {e(str(r.get('headline') or r.get('error') or ''))}</li>"
                for r in members
            )
            body = f"<ul>{body}</ul>"
        bg, fg = SEVERITY_STYLE[
            {"worse": "worse", "undecided": "inconclusive", "not worse": "ok"}.get(key, "error")
        ]
        items.append(
            f'<div class=sumgroup><span class=verdict style="background:{bg};color:{fg}">{title} '
            f"({len(members)})</span> {body}</div>"
        )
    return f"<section class=summary><h2>Summary</h2>{''.join(items)}</section>"


def _link(result: dict[str, Any], prefix: str) -> str:
    name = html.escape(str(result.get("name", "")))
    link = result.get("report")
    return f'<a href="{html.escape(prefix + link)}">{name}</a>' if link else name


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
