"""``workbench run`` and ``workbench report``: the suite through papermill into HTML reports.

For each experiment, papermill executes ``notebooks/<kind>.ipynb`` with the experiment's
parameters into ``data/runs/<run-id>/<name>.ipynb`` (the notebook's session stores the data and a
``result.json`` next to it), nbconvert renders ``reports/<run-id>/<name>.html``, and the index page
lists every experiment with its verdict. One local mesh serves the whole run (started here, or the
one ``workbench local up`` runs); experiments that need other sidecar modes start their own.

Before anything starts, every selected experiment's needs are checked against what the backend can
do (``config.capabilities``; on a cluster after detecting its mesh, reading only): a missing feature
is a ConfigError naming the experiment, the feature, the mesh and what to change — nothing is written.
A failing experiment is marked failed with its reason and the others still run. Ctrl-C or SIGTERM
interrupts the running experiment's kernel (its ``finally`` puts traffic back on the stable
version), the runner checks the traffic state itself, renders what was collected and stops.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from workbench import config as cfgmod
from workbench.audit import ENV_RUN_ID, AuditError, AuditLog
from workbench.experiments import NOTEBOOKS
from workbench.experiments.session import (
    SEED_ENV,
    env_var,
    new_run_id,
    progress_file,
    quick_spec,
    read_result,
)
from workbench.report import ci
from workbench.report import html as report_html
from workbench.suite.kernel import SuiteKernel

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
RUN_FILE = "run.json"
SHARED_BACKEND_KINDS = {"loadtest", "ab", "canary", "authz", "resilience", "traces"}

Echo = Callable[[str], None]


@dataclass
class RunOutcome:
    """What a run produced: its id, where its index is, one result dict per experiment."""

    run_id: str
    data_dir: Path
    index: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [r["name"] for r in self.results if r.get("status") != "ok"]


def run_suite(
    config_file: str | Path,
    only: Sequence[str] = (),
    quick: bool = False,
    reports: str | Path = "reports",
    mesh_state: str | Path | None = None,
    echo: Echo = print,
    fail_on: ci.FailOn = "worse",
    seed: int | None = None,
) -> RunOutcome:
    """Run the experiments of ``config_file`` (or the ``only`` ones) and render their reports.

    Next to the HTML, ``summary.json`` and ``junit.xml`` judge the verdicts against ``fail_on``.
    ``seed`` (else the config's, else a fresh one — always recorded) seeds every random choice.
    Raises ConfigError for an invalid file or an experiment the backend cannot run, and ValueError
    for unknown ``only`` names, before anything starts.
    """
    config_file = Path(config_file).resolve()
    cfg = cfgmod.load(config_file)
    selected = cfg.select(only)
    check_backend_capabilities(cfg, selected, config_file, echo)
    if seed is None:
        seed = cfg.defaults.seed if cfg.defaults.seed is not None else random.SystemRandom().randrange(2**31)
    run_id = new_run_id()
    data_dir = config_file.parent / "data" / "runs" / run_id
    data_dir.mkdir(parents=True)
    reports = Path(reports).resolve()
    run = {
        "run_id": run_id,
        "config": str(config_file),
        "config_text": ci.Scrubber.from_environment()(config_file.read_text(encoding="utf-8")),
        "quick": quick,
        "backend": _describe_backend(cfg),
        "started": report_html.now_iso(),
        "experiments": [e.name for e in selected],
        "seed": seed,
        "fail_on": fail_on,
        "versions": tool_versions(cfg),
    }
    report_json(data_dir / RUN_FILE, run)
    outcome = RunOutcome(run_id, data_dir, reports / run_id / "index.html")
    guard = _Interrupts()
    total = len(selected)
    echo(f"run {run_id}: {total} experiment(s) of {config_file.name}{' (quick)' if quick else ''}")
    try:
        with (
            guard.installed(),
            env_var(SEED_ENV, str(seed)),
            env_var(ENV_RUN_ID, run_id),  # the kernel's audit entries carry the run id
            progress_file(data_dir / "progress.log"),
            ExitStack() as stack,
        ):
            kernel = stack.enter_context(SuiteKernel(NOTEBOOK_DIR))  # boots while the mesh starts
            try:
                state = stack.enter_context(_shared_mesh(cfg, selected, mesh_state, echo))
            except Exception as exc:  # any start failure leaves every experiment unrunnable
                reason = f"the local mesh did not start: {exc}"
                echo(reason)
                outcome.results += [_not_run(spec, reason) for spec in selected]
                return outcome
            for i, spec in enumerate(selected, 1):
                if guard.requested:
                    outcome.results.append(_not_run(spec, "not run: the run was interrupted"))
                    continue
                echo(f"[{i}/{total}] {spec.name} ({spec.kind}) ...")
                started = time.monotonic()
                result = _run_one(
                    cfg, spec, config_file, data_dir, reports / run_id, quick, state, echo, kernel
                )
                result.setdefault("duration_s", round(time.monotonic() - started, 1))
                outcome.results.append(result)
                tail = f" - {result['headline']}" if result.get("status") != "ok" else ""
                echo(f"[{i}/{total}] {spec.name}: {result['verdict']} ({result['duration_s']:.0f} s){tail}")
    finally:
        outcome.interrupted = guard.requested
        run["finished"] = report_html.now_iso()
        run["interrupted"] = guard.requested
        report_json(data_dir / RUN_FILE, run)
        _finish(reports, data_dir, run, outcome.results, fail_on)
    return outcome


def check_backend_capabilities(
    cfg: cfgmod.Config, selected: list[Any], config_file: Path, echo: Echo = print
) -> None:
    """ConfigError when a selected experiment needs what the backend lacks (see the module docstring).

    The local mesh's offer is its declared mode's; a cluster's is read from the cluster itself
    (its mesh detected, Istio's ambient mode seen) — or, when it cannot be reached, the declared one.
    """
    from workbench.config.capabilities import check_capabilities, offer_for

    offer = offer_for(cfg.backend)
    if cfg.backend.type == "kubernetes":
        from workbench.backends.kubernetes.backend import KubernetesBackend
        from workbench.errors import BackendError

        try:
            live = KubernetesBackend.from_settings(cfg.backend, dry_run=True, record_releases=False)
            offer = live.capabilities()
        except BackendError as exc:  # unreachable: the experiments will say so; check what is declared
            echo(f"capabilities: the cluster could not be asked ({exc}); checking the declared ones")
    text = config_file.read_text(encoding="utf-8")
    check_capabilities(cfg, offer, cfg.backend.type, str(config_file), text, [s.name for s in selected])


def _finish(
    reports: Path, data_dir: Path, run: dict[str, Any], results: list[dict[str, Any]], fail_on: ci.FailOn
) -> None:
    """Index page, history page, summary.json and junit.xml; then scrub every artifact of secrets."""
    from workbench.report.history import write_history

    run_id = data_dir.name
    report_html.write_index(reports, run_id, run, results)
    history = write_history(reports, data_dir.parent)
    ci.write_artifacts(reports / run_id, run, results, fail_on)
    scrub = ci.Scrubber.from_environment()
    kept = [
        *data_dir.glob("*.ipynb"),
        *data_dir.glob("*/result.json"),
        data_dir / RUN_FILE,
        data_dir / "progress.log",
    ]
    for path in [*(reports / run_id).glob("*"), *kept]:
        if path.is_file():
            scrub.file(path)
    for page in (reports / "index.html", history):
        if page.exists():
            scrub.file(page)


def tool_versions(cfg: cfgmod.Config) -> dict[str, str]:
    """Versions of the workbench and of the tools a run uses (recorded in run.json and summary.json)."""
    import platform

    from workbench import __version__
    from workbench.tools import find_binary, tool_version

    versions = {"workbench": __version__, "python": platform.python_version()}
    names = ("envoy", "k6", "prometheus") if cfg.backend.type == "local" else ("k6",)
    for name in names:
        path = find_binary(name)
        try:
            versions[name] = tool_version(path, name) if path else "missing"
        except RuntimeError:
            versions[name] = "unusable"
    return versions


def resolve_run(run_id: str, data_root: str | Path = "data/runs") -> Path:
    """The directory of run ``run_id`` under ``data_root`` ('latest': the newest run);
    FileNotFoundError naming what is missing."""
    data_root = Path(data_root)
    if run_id == "latest":
        runs = sorted(p.name for p in data_root.glob("*") if (p / RUN_FILE).exists())
        if not runs:
            raise FileNotFoundError(f"no runs in {data_root}")
        run_id = runs[-1]
    if not (data_root / run_id).is_dir():
        raise FileNotFoundError(f"no run {run_id!r} in {data_root}")
    return data_root / run_id


def rerender(run_id: str, reports: str | Path = "reports", data_root: str | Path = "data/runs",
             echo: Echo = print) -> RunOutcome:  # fmt: skip
    """Re-analyse a stored run and re-render its reports without generating load."""
    import json

    reports = Path(reports).resolve()
    data_root = Path(data_root).resolve()
    data_dir = resolve_run(run_id, data_root)
    run_id = data_dir.name
    try:
        run = json.loads((data_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no run {run_id!r} in {data_root} (no {RUN_FILE})") from None
    config_file = Path(run["config"])
    if not config_file.exists():  # the file moved: use the copy stored with the run
        config_file = data_dir / "experiments.yaml"
        config_file.write_text(run["config_text"], encoding="utf-8")
    cfg = cfgmod.load(config_file)
    outcome = RunOutcome(run_id, data_dir, reports / run_id / "index.html")
    with SuiteKernel(NOTEBOOK_DIR) as kernel:
        _rerender_each(cfg, run, config_file, data_dir, reports / run_id, kernel, outcome, echo)
    _finish(reports, data_dir, run, outcome.results, run.get("fail_on", "worse"))
    return outcome


def _rerender_each(
    cfg: cfgmod.Config, run: dict[str, Any], config_file: Path, data_dir: Path, out_dir: Path,
    kernel: SuiteKernel, outcome: RunOutcome, echo: Echo,
) -> None:  # fmt: skip
    for name in run["experiments"]:
        spec = cfg.get(name)
        stored = read_result(data_dir / name)
        if stored is not None and stored.get("status") == "ok":
            echo(f"{name}: re-analysing stored data")
            result = _run_one(cfg, spec, config_file, data_dir, out_dir, run["quick"], None, echo, kernel,
                              replay=True)  # fmt: skip
        else:
            result = stored or _not_run(spec, "no stored result")
            nb = data_dir / f"{name}.ipynb"
            if nb.exists():
                report_html.render_html(nb, out_dir / f"{name}.html", name)
                result["report"] = f"{name}.html"
        outcome.results.append(result)


def _run_one(
    cfg: cfgmod.Config, spec: Any, config_file: Path, data_dir: Path, out_dir: Path, quick: bool,
    mesh_state: Path | None, echo: Echo, kernel: SuiteKernel, replay: bool = False,
) -> dict[str, Any]:  # fmt: skip
    import papermill as pm

    notebook = NOTEBOOKS.get(spec.kind)
    if notebook is None:
        return _not_run(spec, f"kind {spec.kind!r} has no notebook in this version of the workbench")
    executed = data_dir / f"{spec.name}.ipynb"
    params = {
        "config_file": str(config_file),
        "experiment": spec.name,
        "run_dir": str(data_dir),
        "quick": quick,
        "replay": replay,
        "mesh_state": str(mesh_state or ""),
    }
    reason = ""
    run_id = data_dir.name
    log = None if replay else AuditLog(backend=_audit_backend(cfg, mesh_state))
    if log is not None:
        _audit(log, echo, "experiment_start", spec.name, run_id=run_id, kind=spec.kind, quick=quick)
    with _tail(data_dir / "progress.log", echo):  # the kernel writes there (run_suite's progress_file)
        try:
            pm.execute_notebook(
                str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(executed), parameters=params,
                cwd=str(NOTEBOOK_DIR), progress_bar=False, kernel_name="python3", **kernel.for_notebook(),
            )  # fmt: skip
        except pm.PapermillExecutionError as exc:
            reason = f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # the kernel died, could not start, ...
            reason = f"{type(exc).__name__}: {exc}"
    result = read_result(data_dir / spec.name)
    if result is None or (reason and result.get("status") == "ok"):
        result = _not_run(spec, reason or "the notebook ended without a result")
    if result.get("status") != "ok" and mesh_state is not None:
        result["restored"] = restore_safe(spec, mesh_state)
    if log is not None:
        _audit(log, echo, "experiment_end", spec.name, run_id=run_id, kind=spec.kind,
               verdict=result.get("verdict"), status=result.get("status"), headline=result.get("headline"),
               restored=result.get("restored"))  # fmt: skip
    if executed.exists():
        report_html.render_html(executed, out_dir / f"{spec.name}.html", spec.name)
        result["report"] = f"{spec.name}.html"
    return result


def _audit_backend(cfg: cfgmod.Config, mesh_state: Path | None) -> dict[str, Any]:
    """The ``backend`` of the run's audit entries: local (its mesh's state dir) or the kube context."""
    b = cfg.backend
    if b.type == "local":
        return {"type": "local", "context": str(mesh_state) if mesh_state else "", "mode": b.mode}
    return {"type": b.type, "context": b.context or "(current)", "namespace": b.namespace or ""}


def _audit(log: AuditLog, echo: Echo, action: str, target: str, **details: Any) -> None:
    """Record an experiment's start or end; a broken audit log is reported, not fatal to the run."""
    try:
        log.record(action, target, **details)
    except (AuditError, OSError) as exc:
        echo(f"    warning: not recorded in the audit log: {exc}")


def restore_safe(spec: Any, mesh_state: Path) -> list[str]:
    """Put what a failed experiment may have changed back to the safe state; say what was done.

    Safe: all traffic on the stable (first) version, no route, no fault, no protections, no policy
    left by the experiment. Each change goes through the backend, so it is recorded like any other.
    """
    from workbench.backends.local.mesh import LocalMesh

    try:
        mesh = LocalMesh.attach(mesh_state)
        mesh.check()
    except Exception as exc:
        return [f"could not reach the mesh to check its traffic state: {exc}"]
    done: list[str] = []
    service = getattr(spec, "service", None)
    if spec.kind in ("ab", "canary"):
        stable = spec.variants.baseline if spec.kind == "ab" else spec.stable
        if spec.kind == "ab" and spec.route is not None and mesh.traffic[service].route is not None:
            mesh.set_route(service, None)
            done.append(f"removed the {service} route")
        if mesh.get_split(service).get(stable) != 100:
            mesh.set_split(service, {stable: 100})
            done.append(f"{service} split back to {stable} 100 %")
    elif spec.kind == "resilience":
        policy = mesh.traffic[spec.dependency]
        if policy.fault is not None:
            mesh.set_fault(spec.dependency, None)
            done.append(f"removed the fault on {spec.dependency}")
        if policy.retries or policy.timeout_s or policy.breaker:
            mesh.set_resilience(spec.dependency)
            done.append(f"removed retries/timeout/breaker on {spec.dependency}")
    elif spec.kind == "authz" and spec.policy.service in mesh.policies:
        mesh.set_policy(None, service=spec.policy.service)
        done.append(f"removed the policy on {spec.policy.service}")
    return done


@contextmanager
def _shared_mesh(
    cfg: cfgmod.Config, selected: list[Any], given: str | Path | None, echo: Echo
) -> Iterator[Path | None]:
    """The state dir of the mesh the run's experiments share (None when none is needed)."""
    if given:
        yield Path(given)
        return
    if cfg.backend.type != "local" or not any(e.kind in SHARED_BACKEND_KINDS for e in selected):
        yield None
        return
    from workbench.backends.local.mesh import LocalMesh, running_mesh

    attached = running_mesh(cfg.backend.mode)
    if attached is not None:
        echo(f"using the local mesh of 'workbench local up' ({attached.run_dir})")
        yield attached.run_dir
        return
    echo(f"starting the local mesh (mode {cfg.backend.mode}) ...")
    with LocalMesh(**cfg.backend.mesh_options()) as mesh:
        mesh.save_state()
        yield mesh.run_dir


class _Interrupts:
    """First Ctrl-C/SIGTERM: interrupt the running kernel gracefully and stop after it; second: abort."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        for child in psutil.Process().children(recursive=True):
            try:
                if any("ipykernel" in part for part in child.cmdline()):
                    child.send_signal(signal.SIGINT)
            except psutil.Error:
                pass


@contextmanager
def _tail(path: Path, echo: Echo) -> Iterator[None]:
    """Echo lines appended to ``path`` (experiment progress from the kernel) while the block runs."""
    stop = threading.Event()
    path.touch()

    def follow() -> None:
        with open(path, encoding="utf-8") as fh:
            fh.seek(0, 2)
            while True:
                line = fh.readline()
                if line:
                    echo("    " + line.rstrip())
                elif stop.is_set():
                    return
                else:
                    time.sleep(0.3)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


def _not_run(spec: Any, reason: str) -> dict[str, Any]:
    return {
        "name": spec.name, "kind": spec.kind, "verdict": "failed", "severity": "error", "headline": reason,
        "error": reason, "status": "failed", "figures": {}, "description": spec.description,
    }  # fmt: skip


def _describe_backend(cfg: cfgmod.Config) -> str:
    b = cfg.backend
    return (
        f"local mesh (mode {b.mode})"
        if b.type == "local"
        else f"kubernetes ({b.context or 'current context'})"
    )


def report_json(path: Path, payload: dict[str, Any]) -> None:
    import json

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


__all__ = ["RunOutcome", "quick_spec", "rerender", "restore_safe", "run_suite"]
