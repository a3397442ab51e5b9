"""experiments.yaml: the valid suite, defaults, and every malformed case with its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from workbench import config
from workbench.config import AB, Canary, ConfigError, LoadTest, parse_duration

CORPUS = Path(__file__).parent / "config_corpus"
EXPECTED: dict[str, list[str]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
BAD_FILES = sorted((CORPUS / "bad").glob("*.yaml"))


def test_corpus_is_large_and_fully_specified() -> None:
    assert len(BAD_FILES) >= 25
    assert sorted(EXPECTED) == [p.name for p in BAD_FILES]


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_malformed_file_gives_exact_problems(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    expected = [line.replace("FILE", str(path), 1) for line in EXPECTED[path.name]]
    assert [str(p) for p in info.value.problems] == expected


def test_default_suite_is_valid_and_covers_every_runnable_kind() -> None:
    from workbench.experiments import NOTEBOOKS

    cfg = config.load(REPO / "experiments.yaml")
    assert cfg.backend.type == "local"
    assert {e.kind for e in cfg.experiments} == set(NOTEBOOKS)
    assert len({e.name for e in cfg.experiments}) == len(cfg.experiments)


def test_defaults_are_inherited_and_overridable() -> None:
    cfg = config.loads(
        """
defaults:
  alpha: 0.01
  window: 10s
  duration: 2m
  margins: {latency_ms: 2}
experiments:
  - name: roll
    kind: canary
    stable: v1
    canary: v2
    margins: {latency_pct: 10}
    steps:
      - weight: 10
      - {weight: 100, duration: 30s}
  - name: sweep
    kind: loadtest
    rps: [100, 200]
    alpha: 0.02
"""
    )
    roll, sweep = cfg.experiments
    assert isinstance(roll, Canary) and isinstance(sweep, LoadTest)
    assert roll.alpha == 0.01 and sweep.alpha == 0.02
    assert roll.window == 10.0 and roll.duration == 120.0
    assert [s.duration for s in roll.steps] == [120.0, 30.0]
    # margins merge field by field: suite -> experiment
    assert roll.margins.model_dump() == {"latency_ms": 2.0, "latency_pct": 10.0, "error_rate_pct": 0.5}
    assert sweep.margins.model_dump() == {"latency_ms": 2.0, "latency_pct": 5.0, "error_rate_pct": 0.5}
    assert sweep.slo_p99_ms == 100.0 and sweep.connections == [16]
    assert roll.planned_seconds() == 5.0 + 120.0 + 30.0


def test_backend_shorthand_and_kubernetes_settings() -> None:
    cfg = config.loads("backend: kubernetes\nexperiments: [{name: a, kind: audit}]")
    assert cfg.backend.type == "kubernetes" and cfg.backend.mesh == "auto"
    cfg = config.loads(
        "backend: {type: kubernetes, context: prod, namespace: shop, prometheus_url: 'http://127.0.0.1:9090'}\n"
        "experiments: [{name: a, kind: audit}]"
    )
    assert (cfg.backend.context, cfg.backend.namespace) == ("prod", "shop")
    assert cfg.backend.prometheus_url == "http://127.0.0.1:9090"


def test_header_route_ab_and_split_ab() -> None:
    cfg = config.loads(
        """
experiments:
  - name: by-header
    kind: ab
    variants: {baseline: v1, candidate: v2}
    route: {cookie: beta, value: "yes", percent: 20}
  - name: by-weight
    kind: ab
    variants: {baseline: v1, candidate: v2}
    split: {v1: 90, v2: 10}
"""
    )
    header, weight = cfg.experiments
    assert isinstance(header, AB) and header.route is not None and header.route.cookie == "beta"
    assert header.route.percent == 20.0 and header.split is None
    assert isinstance(weight, AB) and weight.split == {"v1": 90, "v2": 10}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0), (15, 15.0), (0.25, 0.25)],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 sec", "s", "-1s", True, None, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_several_problems_are_all_reported_in_file_order() -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(
            "experiments:\n"
            "  - {name: a, kind: loadtest, rps: [0]}\n"
            "  - {name: b, kind: canary, stable: v1, canary: v2, steps: [{weight: 101}]}\n",
            source="x.yaml",
        )
    assert [str(p) for p in info.value.problems] == [
        "x.yaml:2 experiments[0].rps[0]: must be > 0 (got 0)",
        "x.yaml:3 experiments[1].steps[0].weight: must be between 0 and 100 (got 101)",
    ]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_direct_construction_still_checks_across_fields() -> None:
    with pytest.raises(ValueError, match=r"experiments\[1\]\.name: duplicate name 'a'"):
        config.Config.model_validate({"experiments": [{"name": "a", "kind": "audit"}] * 2})


def test_get_by_name() -> None:
    cfg = config.load(REPO / "experiments.yaml")
    assert cfg.get("reviews-canary").kind == "canary"
    with pytest.raises(KeyError, match="no experiment named 'nope'"):
        cfg.get("nope")


def test_quick_mode_keeps_enough_paired_windows_for_the_default_ab_to_decide() -> None:
    from workbench.experiments.session import quick_spec

    cfg = config.load(REPO / "experiments.yaml")
    by_name = {e.name: quick_spec(e) for e in cfg.experiments}
    ab, canary = by_name["catalog-v2-ab"], by_name["reviews-canary"]
    assert (ab.duration, ab.window, ab.warmup) == (30.0, 2.0, 1.0)  # 15 windows: t(14), not t(3)
    assert canary.window == 1.0 and all(s.duration == 5.0 for s in canary.steps)
