"""Experiment verdicts as a pipeline gate: exit status, ``summary.json`` and ``junit.xml``.

Severity scale (``ExperimentResult.severity``): ok < inconclusive < worse, plus error for an
experiment that could not run. ``--fail-on worse`` fails the pipeline when any verdict is worse
(a rolled-back canary, a failed authorization check, an A/B that got worse); ``inconclusive`` also
when one could not decide; ``never`` only reports. An experiment that could not run is exit 3,
whatever the threshold: the gate cannot vouch for what it did not measure.

Artifacts never carry secrets: ``Scrubber`` replaces every credential it can find (tokens in the
environment and in the kubeconfig, passwords in URLs) before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from workbench.errors import ExitCode

FailOn = Literal["worse", "inconclusive", "never"]
RANK = {"ok": 0, "inconclusive": 1, "worse": 2}
THRESHOLD = {"worse": 2, "inconclusive": 1, "never": 99}
SUMMARY_SCHEMA = "summary.schema.json"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|AUTH|CREDENTIAL", re.IGNORECASE)
MIN_SECRET_LEN = 6
REDACTED = "***"


def reaches(severity: str, fail_on: FailOn) -> bool:
    """Whether a verdict of ``severity`` fails a gate set to ``fail_on``."""
    return RANK.get(severity, -1) >= THRESHOLD[fail_on]


def exit_status(results: Iterable[Mapping[str, Any]], fail_on: FailOn) -> ExitCode:
    """OK, FAILED (a verdict reached the threshold) or COULD_NOT_RUN (an experiment could not run)."""
    results = list(results)
    if any(r.get("status") != "ok" for r in results):
        return ExitCode.COULD_NOT_RUN
    if any(reaches(str(r.get("severity")), fail_on) for r in results):
        return ExitCode.FAILED
    return ExitCode.OK


def summary(run: Mapping[str, Any], results: Iterable[Mapping[str, Any]], fail_on: FailOn) -> dict[str, Any]:
    """The machine-readable result of a run (validates against ``summary.schema.json``)."""
    results = list(results)
    experiments = []
    for r in results:
        experiments.append(
            {
                "name": r["name"],
                "kind": r.get("kind", ""),
                "status": r.get("status", "failed"),
                "verdict": r.get("verdict", "failed"),
                "severity": r.get("severity", "error"),
                "gate": "fail" if _fails(r, fail_on) else "pass",
                "headline": r.get("headline", ""),
                "figures": r.get("figures") or {},
                "checks": r.get("checks") or [],
                "duration_s": r.get("duration_s"),
                "report": r.get("report"),
                "error": r.get("error"),
            }
        )
    return {
        "schema": "mesh-workbench/summary/v1",
        "run_id": run["run_id"],
        "config": run.get("config", ""),
        "quick": bool(run.get("quick")),
        "seed": run.get("seed"),
        "backend": run.get("backend", ""),
        "started": run.get("started", ""),
        "finished": run.get("finished", ""),
        "interrupted": bool(run.get("interrupted")),
        "fail_on": fail_on,
        "exit_status": exit_status(results, fail_on),
        "versions": run.get("versions") or {},
        "experiments": experiments,
    }


def _fails(result: Mapping[str, Any], fail_on: FailOn) -> bool:
    return result.get("status") != "ok" or reaches(str(result.get("severity")), fail_on)


def schema() -> dict[str, Any]:
    """The JSON Schema of summary.json, shipped in the package."""
    return json.loads(resources.files("workbench").joinpath("schemas", SUMMARY_SCHEMA).read_text())


def junit_xml(run: Mapping[str, Any], results: Iterable[Mapping[str, Any]], fail_on: FailOn) -> str:
    """JUnit XML: one testcase per experiment and per check (metric, look, expectation ...).

    A verdict that reaches ``fail_on`` is a ``<failure>`` carrying the explanation sentence; an
    experiment that could not run is an ``<error>``.
    """
    results = list(results)
    suite = ET.Element("testsuite", name=f"mesh-workbench {run['run_id']}")
    suite.set("timestamp", str(run.get("started", "")))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for r in results:
        _case(suite, counts, r["kind"], r["name"], r, fail_on, r.get("duration_s"))
        for check in r.get("checks") or []:
            name, ran = f"{r['name']}: {check['name']}", r.get("status") == "ok"
            _case(suite, counts, f"{r['kind']}.{r['name']}", name, check, fail_on, None, ran)
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{sum(float(r.get('duration_s') or 0) for r in results):.1f}")
    props = ET.SubElement(suite, "properties")
    for key in ("run_id", "config", "seed", "quick", "backend"):
        ET.SubElement(props, "property", name=key, value=str(run.get(key, "")))
    suites = ET.Element("testsuites", name="mesh-workbench")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _case(
    suite: ET.Element, counts: dict[str, int], classname: str, name: str, item: Mapping[str, Any],
    fail_on: FailOn, seconds: Any, ran: bool = True,
) -> None:  # fmt: skip
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    if seconds is not None:
        case.set("time", f"{float(seconds):.1f}")
    counts["tests"] += 1
    message = str(item.get("explanation") or item.get("error") or item.get("headline") or "")
    verdict = str(item.get("verdict", ""))
    if not ran:
        ET.SubElement(case, "skipped", message="the experiment did not finish")
        counts["skipped"] += 1
    elif item.get("status", "ok") != "ok":
        err = ET.SubElement(case, "error", message=message[:500], type="could-not-run")
        err.text = str(item.get("traceback") or message)
        counts["errors"] += 1
    elif reaches(str(item.get("severity")), fail_on):
        failure = ET.SubElement(case, "failure", message=f"{verdict}: {message}"[:500], type=verdict)
        failure.text = message
        counts["failures"] += 1
    else:
        ET.SubElement(case, "system-out").text = f"{verdict}: {message}"


def write_artifacts(
    directory: Path, run: Mapping[str, Any], results: list[dict[str, Any]], fail_on: FailOn,
    scrubber: Scrubber | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """Write ``summary.json`` and ``junit.xml`` into ``directory`` (scrubbed)."""
    scrub = scrubber or Scrubber.from_environment()
    directory.mkdir(parents=True, exist_ok=True)
    summary_path, junit_path = directory / "summary.json", directory / "junit.xml"
    text = json.dumps(summary(run, results, fail_on), indent=1, default=str, allow_nan=False)
    summary_path.write_text(scrub(text) + "\n", encoding="utf-8")
    junit_path.write_text(scrub(junit_xml(run, results, fail_on)), encoding="utf-8")
    return summary_path, junit_path


class Scrubber:
    """Replaces known secret values in text: tokens from the environment and the kubeconfig."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        # "://user:password@": the scheme before it stays as it is; a literal start keeps it fast
        self._url_password = re.compile(r"://[^/\s:@]+:[^/\s@]+@")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Scrubber:
        environ = os.environ if environ is None else environ
        found = [v for k, v in environ.items() if SECRET_NAME.search(k)]
        found += _kubeconfig_secrets(environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config"))
        return cls(found)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return self._url_password.sub(f"://{REDACTED}@", text)

    def file(self, path: Path) -> bool:
        """Scrub a file in place; True when something was replaced."""
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        clean = self(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8", errors="surrogateescape")
        return clean != text


def _kubeconfig_secrets(paths: str) -> list[str]:
    """Token, password and client-key values of every user in the kubeconfig file(s)."""
    import yaml

    found: list[str] = []
    for name in paths.split(os.pathsep):
        try:
            doc = yaml.safe_load(Path(name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        for user in (doc or {}).get("users") or []:
            fields = (user or {}).get("user") or {}
            for key in ("token", "password", "client-key-data"):
                if isinstance(fields.get(key), str):
                    found.append(fields[key])
            provider = (fields.get("auth-provider") or {}).get("config") or {}
            found += [v for k, v in provider.items() if "token" in k.lower() and isinstance(v, str)]
    return found
