"""Numbers for people: the formatting layer of tables, key figures and the index summary."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from workbench.report import html as report_html
from workbench.report import numbers as n
from workbench.stats import compare


@pytest.mark.parametrize(
    ("ms", "text"),
    [(7.935244, "7.94 ms"), (12.345, "12.3 ms"), (123.4, "123 ms"), (0.456, "456 µs"), (0.0123, "12.3 µs"),
     (12_345.0, "12.3 s"), (3.0, "3 ms"), (float("nan"), "–"), (None, "–")],
)  # fmt: skip
def test_latency_to_two_or_three_significant_digits_in_ms_or_us(ms: float, text: str) -> None:
    assert n.latency(ms) == text


def test_signed_latency_percent_points_counts_splits() -> None:
    assert n.latency(2.1, signed=True) == "+2.1 ms"
    assert n.latency(-0.5, signed=True) == "−500 µs"
    assert n.percent(79.94) == "79.9 %"
    assert n.percent(0.042) == "0.042 %"
    assert n.points(0.4) == "+0.4 pts" and n.points(-0.04) == "−0.04 pts"
    assert n.count(12345) == "12,345" and n.rate(399.8) == "400 rps" and n.rate(1234.4) == "1,234 rps"
    assert n.split({"v3": 100}) == "v3 100 %"
    assert n.split({"v1": 90, "v3": 10}) == "v1 90 %, v3 10 %"
    assert n.pvalue(0.0004) == "< 0.001" and n.pvalue(0.0123) == "0.012"


@pytest.mark.parametrize(
    ("args", "text"),
    [((2.1, 2.0, 2.2), "+2.1 ms [+2.0, +2.2]"), ((2.1, 2.08, 2.12), "+2.10 ms [+2.08, +2.12]"),
     ((2.1, 1.2, 3.0), "+2.1 ms [+1.2, +3.0]"), ((123.0, 120.0, 126.0), "+123 ms [+120, +126]"),
     ((0.456, 0.44, 0.47), "+456 µs [+440, +470]"), ((-0.04, -0.3, 0.2, "pts"), "0.0 pts [−0.3, +0.2]"),
     ((2.1, float("nan"), float("nan")), "+2.1 ms")],
)  # fmt: skip
def test_intervals_share_the_estimates_unit_and_show_their_width(args: tuple, text: str) -> None:
    assert n.interval(*args) == text


@pytest.mark.parametrize(
    ("name", "unit"),
    [("delta_p50", "ms"), ("p99_ms_lowest_load_both", "ms"), ("knee_rps_both", "rps"),
     ("requests_v1", "count"), ("success_pct_none", "pct"), ("error_pct", "pct"), ("final_split", "split"),
     ("verdict_p50", "text"),
     ("pvalue_adjusted", "p"), ("cpu_mcores_per_1000rps", "mcores"), ("rss_mib", "mib"), ("ratio", "ratio"),
     ("n_windows", "count"), ("duration_s", "s")],
)  # fmt: skip
def test_units_follow_from_names(name: str, unit: str) -> None:
    assert n.unit_of(name) == unit


def test_key_figures_join_interval_and_verdict_and_never_show_raw_floats() -> None:
    figures = {
        "requests_v1": 7935, "delta_p50": 2.1234567, "delta_p50_ci": [2.0123, 2.2456], "verdict_p50": "worse",
        "success_pct_none": 79.94123, "success_ci_none": [78.14943548181594, 81.65579224453437],
        "p50_estimate": 0.1, "p50_ci": [-0.2, 0.4], "p50_verdict": "equivalent", "final_split": {"v3": 100},
        "direct_covered_p50": True, "direct_delta_p50": 2.45, "direct_delta_p50_ci": [2.1, 2.8],
    }  # fmt: skip
    shown = dict(n.key_figures(figures))
    assert shown == {
        "requests v1": "7,935",
        "Δp50": "+2.1 ms [+2.0, +2.2] worse",
        "success none": "79.9 % [78.1, 81.7]",
        "p50 estimate": "+100 µs [−200, +400] equivalent",
        "final split": "v3 100 %",
        "direct covered p50": "yes",
        "direct Δp50": "+2.5 ms [+2.1, +2.8]",
    }
    assert not any(re.search(r"\d\.\d{4,}", t) for t in shown.values())


def _arms(shift_ms: float, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")

    def arm(shift: float) -> pd.DataFrame:
        ts = t0 + pd.to_timedelta(np.sort(rng.uniform(0, 40, 4000)), unit="s")
        status = np.where(rng.uniform(size=4000) < 0.01, 503, 200)
        return pd.DataFrame({"timestamp": ts, "latency_ms": rng.lognormal(np.log(3 + shift), 0.3, 4000),
                             "status": status})  # fmt: skip

    return arm(0), arm(shift_ms)


def test_present_merges_intervals_keeps_row_units_and_puts_column_units_in_headers() -> None:
    frame = compare(*_arms(2.0), window="5s").to_frame()
    shown = n.present(frame, columns=["baseline", "candidate", "estimate", "margin", "verdict"])
    assert list(shown.columns) == ["baseline", "candidate", "difference", "margin", "verdict"]
    assert re.fullmatch(r"\+\d\.\d ms \[\+\d\.\d, \+\d\.\d\]", shown.loc["p50", "difference"])
    assert shown.loc["p50", "margin"] == "±1 ms"
    assert re.fullmatch(r"−?\d\.\d pts \[[−+]\d\.\d, [−+]\d\.\d\]", shown.loc["error_rate", "difference"])
    assert (
        shown.loc["error_rate", "baseline"].endswith(" %") and shown.loc["error_rate", "margin"] == "±0.5 pts"
    )
    percentiles = pd.DataFrame(
        {"count": [4000.0, 3990.0], "p50": [3.01234, 5.1], "p99": [0.5, 0.7], "error_pct": [1.04, 0.0]},
        index=pd.Index(["v1", "v2"], name="version"),
    )
    shown = n.present(percentiles)
    assert list(shown.columns) == ["count", "p50 (ms)", "p99 (µs)", "error_pct (%)"]
    assert shown.loc["v1"].tolist() == ["4,000", "3.01", "500", "1.0"]
    assert n.present("no comparison") == "no comparison"


def test_collapsed_folds_a_table_under_its_summary() -> None:
    frame = compare(*_arms(0.0), window="5s").to_frame()
    page = n.collapsed(frame, "Method: every metric")._repr_html_()
    assert page.startswith("<details class=wb-details><summary>Method: every metric</summary>")
    assert "pvalue_adjusted" in page and "</table>" in page and page.endswith("</details>")


def test_index_opens_with_a_summary_of_worse_not_worse_undecided_and_why() -> None:
    results = [
        {"name": "catalog-v2-ab", "kind": "ab", "verdict": "worse", "severity": "worse", "report": "c.html",
         "headline": "p50 rose +2.1 ms", "figures": {"delta_p50": 2.1234, "delta_p50_ci": [2.01, 2.24]}},
        {"name": "reviews-aa", "kind": "ab", "verdict": "equivalent", "severity": "ok", "headline": "same"},
        {"name": "canary", "kind": "canary", "verdict": "inconclusive, rolled back",
         "severity": "inconclusive", "headline": "p99 needs more windows"},
        {"name": "k8s", "kind": "ab", "verdict": "failed", "severity": "error", "status": "failed",
         "error": "cluster unreachable", "headline": "cluster unreachable"},
    ]  # fmt: skip
    page = report_html._index_page("20260101-000000-0001", {"quick": True}, results, prefix="")
    summary = page[page.index("<section class=summary>") : page.index("</section>")]
    assert page.index("<section class=summary>") < page.index("<table>")
    assert "Worse (1)" in summary and '<a href="c.html">catalog-v2-ab</a>: p50 rose +2.1 ms' in summary
    assert "Not worse (1)" in summary and "reviews-aa (equivalent)" in summary
    assert "Could not be decided (1)" in summary and "canary: p99 needs more windows" in summary
    assert "Could not run (1)" in summary and "k8s: cluster unreachable" in summary
    assert "Δp50: +2.1 ms [+2.0, +2.2]" in page and "2.1234" not in page
