"""Numbers for people: the one formatting layer of every table and key figure a report shows.

Results keep raw numbers (``result.json``, ``summary.json`` and the experiments' frames stay
machine-readable); what a person reads goes through here, at the presentation boundary — the
notebooks' tables (``present``, ``collapsed``), the index's key figures and summary
(``key_figures``), the history page and ``workbench compare``.

Conventions (one place, so every page agrees):

- latency: 2–3 significant digits in ms (``7.94 ms``, ``12.3 ms``, ``123 ms``), µs below 1 ms
  (``456 µs``), s from 10 s (``12.5 s``);
- percentages to 0.1 (``79.9 %``; two significant digits below 0.1: ``0.042 %``); differences of
  percentages in percentage points (``+0.4 pts``);
- a difference with its interval: ``+2.1 ms [+2.0, +2.2]`` (the ends in the estimate's unit, with
  enough decimals to tell them apart);
- a traffic split: ``v1 90 %, v3 10 %``; counts with thousands separators (``12,345``);
- a table's unit goes in its column header (``p99 (ms)``) when the column has one unit, into each
  cell when its rows differ (a comparison's latency rows in ms, its error-rate row in points).

Units come from names (``unit_of``): ``delta_p50``, ``p99_ms_lowest_load``, ``knee_rps``,
``success_pct_none``, ``requests_v1`` ... so experiments need no formatting code of their own.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd

Unit = Literal[
    "ms", "pct", "pts", "count", "rps", "ratio", "p", "s", "cores", "mcores", "mib", "bool", "split", "text",
    "number",
]  # fmt: skip

MISSING = "–"
QUANTILES = ("p50", "p75", "p90", "p95", "p99", "p999", "p99.9")
LATENCY_TOKENS = {*QUANTILES, "mean", "max", "min", "median", "latency", "ms", "margin", "estimate",
                  "delta", "self", "overhead", "baseline", "candidate"}  # fmt: skip
COUNT_TOKENS = {"count", "requests", "n", "windows", "entries", "calls", "samples", "errors", "looks",
                "steps", "attempts", "in", "scope"}  # fmt: skip
SIGNED_TOKENS = {"delta", "estimate", "difference", "change", "diff"}
LABELS = {"p999": "p99.9", "ci": "interval"}
UNIT_WORDS = {"ms", "pct", "mib"}  # the value carries its unit
GROUP_OF_SEVERITY = {"worse": "worse", "inconclusive": "undecided", "ok": "not worse"}
UNIT_SUFFIX: dict[str, str] = {"pct": " %", "pts": " pts", "rps": " rps", "s": " s", "ratio": "×",
                               "cores": " cores", "mcores": " mcores", "mib": " MiB"}  # fmt: skip
HEADER_UNITS: dict[Unit, str] = {"ms": "ms", "pct": "%", "pts": "pts", "rps": "rps", "s": "s",
                                 "cores": "cores", "mcores": "mcores", "mib": "MiB"}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Scalars


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, never in exponent notation."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if abs(value) >= 10_000:
        text = f"{round(value):,}"
    return text


def _signed(text: str, value: float, signed: bool) -> str:
    if text.startswith("-"):  # a true minus sign; "-0.0" is 0.0
        return "−" + text[1:] if text.strip("-0.") else text[1:]
    if not signed:
        return text
    return ("+" if value > 0 and text.strip("0.") else "") + text


def latency(ms: Any, signed: bool = False) -> str:
    """A latency in ms for people: ``7.94 ms``, ``456 µs``, ``12.5 s`` (``+`` when ``signed``)."""
    if not _finite(ms):
        return MISSING
    unit, scale = _latency_unit(abs(float(ms)))
    return f"{_signed(_sig(float(ms) * scale), float(ms), signed)} {unit}"


def _latency_unit(magnitude_ms: float) -> tuple[str, float]:
    if 0 < magnitude_ms < 1:
        return "µs", 1000.0
    if magnitude_ms >= 10_000:
        return "s", 0.001
    return "ms", 1.0


def percent(value: Any, signed: bool = False) -> str:
    """A percentage to 0.1 (two significant digits below 0.1): ``79.9 %``, ``0.042 %``."""
    if not _finite(value):
        return MISSING
    return f"{_pct_text(float(value), signed)} %"


def points(value: Any, signed: bool = True) -> str:
    """A difference of percentages, in percentage points: ``+0.4 pts``."""
    if not _finite(value):
        return MISSING
    return f"{_pct_text(float(value), signed)} pts"


def _pct_text(value: float, signed: bool) -> str:
    text = _sig(value, 2) if 0 < abs(value) < 0.1 else f"{value:.1f}"
    return _signed(text, value, signed)


def count(value: Any) -> str:
    """A count with thousands separators: ``12,345``."""
    if not _finite(value):
        return MISSING
    return f"{round(float(value)):,}"


def rate(rps: Any) -> str:
    """Requests per second: ``400 rps``, ``1,234 rps``, ``2.5 rps``."""
    if not _finite(rps):
        return MISSING
    return f"{_sig(float(rps), 3) if abs(rps) < 1000 else count(rps)} rps"


def pvalue(p: Any) -> str:
    """A p-value: ``0.012``, ``< 0.001``."""
    if not _finite(p):
        return MISSING
    return "< 0.001" if p < 0.001 else _sig(float(p), 2)


def ratio(value: Any) -> str:
    """A ratio: ``1.05×``."""
    return MISSING if not _finite(value) else f"{_sig(float(value), 3)}×"


def seconds(value: Any) -> str:
    """A duration: ``850 ms``, ``12 s``, ``2.5 min``."""
    if not _finite(value):
        return MISSING
    v = float(value)
    if abs(v) < 1:
        return latency(v * 1000)
    return f"{_sig(v, 2)} s" if abs(v) < 120 else f"{v / 60:.1f} min"


def split(weights: Mapping[str, Any]) -> str:
    """A traffic split: ``v1 90 %, v3 10 %``."""
    return ", ".join(f"{k} {_sig(float(v), 3) if _finite(v) else v} %" for k, v in weights.items())


def interval(estimate: Any, low: Any, high: Any, unit: Unit = "ms", signed: bool = True) -> str:
    """An estimate with its interval: ``+2.1 ms [+2.0, +2.2]``; without an interval, the estimate.

    The ends are in the estimate's unit (ms, or µs when all are below 1 ms; %, points ...), with as
    many decimals as it takes to show the estimate to 2 significant digits and the interval's
    width to at least one.
    """
    if not _finite(estimate):
        return MISSING
    if not (_finite(low) and _finite(high)):
        return value(estimate, unit, signed=signed)
    est, lo, hi = float(estimate), float(low), float(high)
    suffix, scale = UNIT_SUFFIX.get(unit, ""), 1.0
    if unit == "ms":
        name, scale = _latency_unit(max(abs(est), abs(lo), abs(hi)))
        suffix = f" {name}"
    e, a, b = est * scale, lo * scale, hi * scale
    decimals = _decimals(e, a, b, percentages=unit in ("pct", "pts"))

    def one(x: float) -> str:
        return _signed(f"{x:.{decimals}f}", x, signed)

    return f"{one(e)}{suffix} [{one(a)}, {one(b)}]"


def _decimals(est: float, lo: float, hi: float, percentages: bool = False) -> int:
    """Decimals that show the interval's width to its first digit, and the estimate to 2
    significant digits (percentages: to 0.1)."""
    width = abs(hi - lo)
    for_width = -math.floor(math.log10(width)) if width else 0
    for_est = 1 if percentages else (1 - math.floor(math.log10(abs(est))) if est else 0)
    return max(0, min(max(for_est, for_width), 4))


def value(x: Any, unit: Unit, signed: bool = False) -> str:
    """``x`` in ``unit``, with its unit (see the module docstring)."""
    if x is None:
        return MISSING
    if unit == "split" and isinstance(x, Mapping):
        return split(x)
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}: {value(v, unit_of(str(k)))}" for k, v in x.items())
    if isinstance(x, list | tuple):
        if len(x) == 2 and all(_finite(v) for v in x):
            return f"[{value(x[0], unit, signed)}, {value(x[1], unit, signed)}]"
        return ", ".join(value(v, unit, signed) for v in x) if x else MISSING
    if hasattr(x, "item") and not isinstance(x, str):  # numpy scalar
        return value(x.item(), unit, signed)
    if isinstance(x, pd.Timestamp):
        return x.strftime("%H:%M:%S") if x.tzinfo is None else x.tz_convert("UTC").strftime("%H:%M:%S UTC")
    if not isinstance(x, int | float):
        return str(x)
    if not _finite(x):
        return MISSING
    formatter = {
        "ms": lambda: latency(x, signed),
        "pct": lambda: percent(x, signed),
        "pts": lambda: points(x, signed),
        "count": lambda: count(x),
        "rps": lambda: rate(x),
        "ratio": lambda: ratio(x),
        "p": lambda: pvalue(x),
        "s": lambda: seconds(x),
        "cores": lambda: f"{_sig(float(x), 2)} cores",
        "mcores": lambda: f"{_sig(float(x), 3)} mcores",
        "mib": lambda: f"{_sig(float(x), 3)} MiB",
    }.get(unit)
    if formatter is not None:
        return formatter()
    if isinstance(x, int):
        return count(x)
    return _signed(_sig(float(x), 3), float(x), signed)


def bare(x: Any, unit: Unit, signed: bool = False) -> str:
    """``value`` without its unit, for a column whose header carries the unit."""
    if unit == "ms" and _finite(x):
        return _signed(_sig(float(x)), float(x), signed)
    if unit in ("pct", "pts") and _finite(x):
        return _pct_text(float(x), signed or unit == "pts")
    if unit == "rps" and _finite(x):
        return _sig(float(x), 3) if abs(x) < 1000 else count(x)
    if unit in ("cores", "mcores", "mib", "s") and _finite(x):
        return _signed(_sig(float(x), 3 if unit != "cores" else 2), float(x), signed)
    return value(x, unit, signed)


# ----------------------------------------------------------------------------------------------
# Names to units


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[_\s\-/().]+", name.lower()) if t]


def unit_of(name: str) -> Unit:
    """The unit a figure or column name implies (``delta_p50`` -> ms, ``knee_rps_both`` -> rps)."""
    low = name.lower()
    tokens = _tokens(low)
    ts = set(tokens)
    if "verdict" in ts or low in ("best", "culprit", "mode", "method", "explanation", "baseline_mode"):
        return "text"
    if "split" in ts or "weights" in ts:
        return "split"
    if ts & {"pvalue", "adjusted"} or low in ("p", "p_value"):
        return "p"
    if "ratio" in ts:
        return "ratio"
    if ts & {"pct", "percent", "share", "success"} or (low.endswith("_rate") and "error" in ts):
        return "pct"
    if "pts" in ts:
        return "pts"
    if ts & {"mcores", "millicores"}:
        return "mcores"
    if ts & {"cores", "cpu"}:
        return "cores"
    if ts & {"mib", "rss", "memory"}:
        return "mib"
    if "rps" in ts or low.endswith("rps"):
        return "rps"
    if ts & LATENCY_TOKENS:
        return "ms"
    if ts & {"s", "seconds", "duration", "time"} or low.endswith("_s"):
        return "s"
    if ts & COUNT_TOKENS:
        return "count"
    return "number"


def is_signed(name: str) -> bool:
    """A difference (shown with its sign): ``delta_p50``, ``p50_estimate``."""
    return bool(set(_tokens(name)) & SIGNED_TOKENS)


def label(name: str) -> str:
    """A figure name for people: ``delta_p50_both_c16`` -> ``Δp50 both c16``,
    ``direct_delta_p50`` -> ``direct Δp50``."""
    words = [LABELS.get(t, t) for t in name.split("_") if t and t not in UNIT_WORDS]
    if "delta" in words:
        i = words.index("delta")
        words[i : i + 2] = [f"Δ{words[i + 1]}"] if i + 1 < len(words) else ["Δ"]
    return " ".join(words)


# ----------------------------------------------------------------------------------------------
# Key figures (the index, the history page)


def interval_key(name: str, figures: Mapping[str, Any]) -> str | None:
    """Where ``figures`` keeps ``name``'s interval: ``<name>_ci``, ``p50_estimate`` -> ``p50_ci``,
    ``success_pct_none`` -> ``success_ci_none``."""
    candidates = [f"{name}_ci", name.replace("_estimate", "_ci"), name.replace("_pct_", "_ci_")]
    for key in candidates:
        if key != name and key in figures and _is_pair(figures[key]):
            return key
    return None


def _is_pair(x: Any) -> bool:
    return isinstance(x, list | tuple) and len(x) == 2


def _verdict_key(name: str, figures: Mapping[str, Any]) -> str | None:
    base = name.removeprefix("delta_").removesuffix("_estimate")
    keys = (
        (f"{base}_verdict", f"verdict_{base}")
        if name.endswith("_estimate")
        else (f"verdict_{base}", f"{base}_verdict")
    )
    for key in keys:
        if key in figures and isinstance(figures[key], str):
            return key
    return None


def format_figure(name: str, x: Any, figures: Mapping[str, Any] | None = None) -> str:
    """One key figure for people, with its interval and verdict when ``figures`` holds them."""
    figures = figures or {}
    signed = is_signed(name)
    unit = unit_of(name)
    if unit == "pct" and signed:  # a difference of percentages
        unit = "pts"
    ci_key = interval_key(name, figures)
    if ci_key is not None and _finite(x):
        lo, hi = figures[ci_key]
        text = interval(x, lo, hi, unit, signed=signed)
    else:
        text = value(x, unit, signed=signed)
    verdict = _verdict_key(name, figures)
    return f"{text} {figures[verdict]}" if verdict else text


def key_figures(figures: Mapping[str, Any], limit: int | None = None) -> list[tuple[str, str]]:
    """The figures as (label, text) pairs; an interval or a verdict joins the figure it belongs to."""
    consumed: set[str] = set()
    for name in figures:
        for key in (interval_key(name, figures), _verdict_key(name, figures)):
            if key is not None and key != name:
                consumed.add(key)
    out = []
    for name, x in figures.items():
        if name in consumed:
            continue
        out.append((label(name), format_figure(name, x, figures)))
        if limit is not None and len(out) >= limit:
            break
    return out


# ----------------------------------------------------------------------------------------------
# Tables


def _row_units(frame: pd.DataFrame) -> list[str] | None:
    """Per-row units of a frame whose rows are metrics (a comparison): its ``unit`` column, or
    the metric names (``error_rate`` in points, the others in ms)."""
    if "unit" in frame.columns:
        return [str(u) for u in frame["unit"]]
    if frame.index.name == "metric":
        return ["pts" if str(m) == "error_rate" else "ms" for m in frame.index]
    return None


def _level_unit(row_unit: str) -> Unit:
    return {"pts": "pct", "%": "pct", "pct": "pct"}.get(row_unit, "ms")  # type: ignore[return-value]


def _diff_unit(row_unit: str) -> Unit:
    return {"pts": "pts", "%": "pts", "pct": "pts"}.get(row_unit, "ms")  # type: ignore[return-value]


def _interval_groups(columns: Sequence[str]) -> list[tuple[str, str | None, str, str]]:
    """(prefix, estimate column or None, low column, high column) for ``<p>ci_low``/``<p>ci_high``."""
    groups = []
    for col in columns:
        if col.endswith("ci_low"):
            prefix = col[: -len("ci_low")]
            high = f"{prefix}ci_high"
            if high in columns:
                est = next((c for c in (f"{prefix}estimate", f"{prefix}delta", prefix.rstrip("_"))
                            if c and c in columns), None)  # fmt: skip
                groups.append((prefix, est, col, high))
    return groups


def present(frame: Any, columns: Sequence[str] | None = None, index_label: str | None = None) -> Any:
    """A results table for people: formatted cells, units in headers, intervals merged.

    ``estimate`` + ``ci_low`` + ``ci_high`` (or ``<prefix>estimate`` + ``<prefix>ci_low`` + ...)
    become one ``difference`` column, ``+2.1 ms [+2.0, +2.2]``; a comparison's rows keep their own
    units (the ``unit`` column, or the metric names). ``columns`` keeps and orders columns (by
    their original names). Anything not a DataFrame (a message string) is returned as it is.
    """
    if not isinstance(frame, pd.DataFrame):
        return frame
    src = frame.copy()
    if columns is not None:
        keep = list(columns)
        for prefix, est, lo, hi in _interval_groups(list(src.columns)):
            if est in keep or (prefix and f"{prefix}interval" in keep):
                keep += [lo, hi]
        src = src[[c for c in src.columns if c in keep]]
    row_units = _row_units(frame)
    out = pd.DataFrame(index=src.index)
    merged: set[str] = {"unit"}
    intervals = {}
    for prefix, est, lo, hi in _interval_groups(list(src.columns)):
        merged |= {lo, hi} | ({est} if est else set())
        intervals[est or lo] = (prefix, est, lo, hi)
    for col in src.columns:
        if col in intervals:
            prefix, est, lo, hi = intervals[col]
            name, cells = _interval_column(src, prefix, est, lo, hi, row_units)
            out[name] = cells
        elif col not in merged:
            name, cells = _column(src, str(col), row_units)
            out[name] = cells
    out.index = [_index_text(i) for i in out.index] if not isinstance(out.index, pd.MultiIndex) else out.index
    out.index.name = index_label if index_label is not None else frame.index.name
    return out


def _index_text(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return x


def _interval_column(
    src: pd.DataFrame, prefix: str, est: str | None, lo: str, hi: str, row_units: list[str] | None
) -> tuple[str, list[str]]:
    base = prefix.rstrip("_")
    unit = unit_of(base or "delta")
    cells = []
    for i, (_, row) in enumerate(src.iterrows()):
        u = _diff_unit(row_units[i]) if row_units else (unit if unit in ("ms", "pct", "pts") else "ms")
        if est is None:
            a, b = row[lo], row[hi]
            cells.append(f"[{bare(a, u, True)}, {bare(b, u, True)}] {HEADER_UNITS.get(u, '')}".strip()
                         if _finite(a) and _finite(b) else MISSING)  # fmt: skip
        else:
            cells.append(interval(row[est], row[lo], row[hi], u))
    name = f"{base} difference" if base and est else f"{base} interval" if base else "difference"
    if est is None and not base:
        name = "interval"
    return name.strip(), cells


def _column(src: pd.DataFrame, col: str, row_units: list[str] | None) -> tuple[str, list[str]]:
    values = src[col].tolist()
    unit = unit_of(col)
    signed = is_signed(col)
    if row_units and col in ("baseline", "candidate", "margin", "direct_estimate"):
        cells = []
        for x, u in zip(values, row_units, strict=True):
            cu = _diff_unit(u) if col == "margin" or signed else _level_unit(u)
            text = value(x, cu, signed=signed)
            cells.append(f"±{text}" if col == "margin" and _finite(x) else text)
        return col, cells
    if unit in HEADER_UNITS and all(_finite(x) or x is None or _isnan(x) for x in values):
        finite = [abs(float(x)) for x in values if _finite(x)]
        if unit == "ms" and finite and max(finite) < 1:  # the whole column in µs
            return f"{col} (µs)", [bare(x * 1000 if _finite(x) else x, "ms", signed) for x in values]
        return f"{col} ({HEADER_UNITS[unit]})", [bare(x, unit, signed) for x in values]
    if unit == "number" and all(isinstance(x, bool) for x in values if x is not None):
        unit = "bool"
    return col, [value(x, unit, signed=signed) for x in values]


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


class Collapsed:
    """A table (or any HTML-able object) folded under a one-line summary: ``<details>``.

    Notebooks put long method tables below the figures this way; nbconvert keeps the HTML, so
    the report shows the summary line and opens the table on a click.
    """

    def __init__(self, content: Any, summary: str, open_: bool = False):
        self.content, self.summary, self.open = content, summary, open_

    def _repr_html_(self) -> str:
        inner = self.content
        if isinstance(inner, pd.DataFrame):
            body = inner.to_html(escape=True, border=0, na_rep=MISSING)
        elif hasattr(inner, "_repr_html_"):
            body = inner._repr_html_()
        else:
            body = f"<p>{html.escape(str(inner))}</p>"
        return (
            f"<details{' open' if self.open else ''} class=wb-details><summary>{html.escape(self.summary)}"
            f"</summary>\n{body}\n</details>"
        )

    def __repr__(self) -> str:
        return f"{self.summary} (collapsed)"


def collapsed(frame: Any, summary: str, columns: Sequence[str] | None = None) -> Collapsed:
    """``present(frame)`` folded under ``summary`` (see ``Collapsed``)."""
    return Collapsed(present(frame, columns), summary)


def summarize_verdicts(results: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The experiments of a run in the index summary's groups: worse, not worse (equivalent,
    better, passed, measured), undecided (inconclusive, with why), could not run (with why)."""
    groups: dict[str, list[Mapping[str, Any]]] = {"worse": [], "not worse": [], "undecided": [],
                                                  "could not run": []}  # fmt: skip
    for r in results:
        severity = r.get("severity", "error")
        key = {"worse": "worse", "inconclusive": "undecided", "ok": "not worse"}.get(
            severity, "could not run"
        )
        groups[key].append(r)
    return groups


def figures_table(figures: Mapping[str, Any], limit: int | None = None) -> pd.DataFrame:
    """The key figures as a two-column table for the top of a report (``key_figures``)."""
    rows = key_figures(figures, limit)
    return pd.DataFrame({"value": [t for _, t in rows]}, index=pd.Index([n for n, _ in rows], name="figure"))
