"""The example pipelines in examples/ci/: they parse, and every step calls a command that exists."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from conftest import REPO, run_workbench
from workbench import config

CI = REPO / "examples" / "ci"
USES = re.compile(r"^[\w.-]+/[\w.-]+@v\d+$")


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([\w-]+):", text, re.M))


def _workbench_options(command: str) -> set[str]:
    proc = run_workbench(*command.split(), "--help")
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"--[a-z][a-z-]+", proc.stdout))


def _check_command(line: str) -> None:
    """One shell line of a step: make targets exist, workbench subcommands and options exist."""
    words = shlex.split(line)
    if not words:
        return
    if words[0] == "make":
        assert set(words[1:]) <= _make_targets(), f"{line}: no such make target"
    elif words[0].endswith("workbench"):
        sub = words[1]
        options = _workbench_options(sub)
        used = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        assert used <= options, f"{line}: unknown option(s) {sorted(used - options)}"
        files = [w for w in words[2:] if w.endswith(".yaml")]
        for f in files:
            config.load(REPO / f)  # the experiments file it runs is valid


def _run_lines(steps: list[dict]) -> list[str]:
    lines = []
    for step in steps:
        for line in str(step.get("run", "")).splitlines():
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize("name", ["github-actions.yml", "github-actions-cluster.yml"])
def test_github_actions_workflow_is_valid_and_calls_real_commands(name: str) -> None:
    doc = yaml.safe_load((CI / name).read_text())
    assert doc["name"] and doc["jobs"]
    (job,) = doc["jobs"].values()
    steps = job["steps"]
    assert all(("uses" in s) != ("run" in s) for s in steps), "each step either uses an action or runs"
    for step in steps:
        if "uses" in step:
            assert USES.match(step["uses"]), step["uses"]
    lines = _run_lines(steps)
    for line in lines:
        _check_command(line)
    assert "make install" in lines
    gate = [ln for ln in lines if " run " in f" {ln} " and "--fail-on worse" in ln]
    assert gate, "the workflow must gate on --fail-on worse"
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload and upload[0]["with"]["path"] == "reports/" and upload[0]["if"] == "always()"
    if "cluster" in name:
        dry = next(i for i, ln in enumerate(lines) if "--dry-run" in ln)
        assert dry < lines.index(gate[0]), "dry run first"
        assert any("secrets.KUBECONFIG" in str(s.get("env", "")) for s in steps)
    else:
        assert "--quick" in gate[0]


def test_gitlab_pipeline_is_valid_and_calls_real_commands() -> None:
    doc = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    job = doc["mesh-workbench"]
    for line in job["script"]:
        _check_command(line)
    assert any("--fail-on worse" in ln and "--quick" in ln for ln in job["script"])
    assert job["artifacts"]["when"] == "always" and "reports/" in job["artifacts"]["paths"]
    assert job["artifacts"]["reports"]["junit"] == "reports/latest/junit.xml"
