"""The canary kind on a real local mesh: promote, roll back, survive Ctrl-C/SIGTERM, replay, notebook.

One detached mesh (``workbench local up``) serves the whole module; every test attaches to it afresh
(an attached ``LocalMesh`` holds a copy of the traffic state, so a stale one must not write it back).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from conftest import REPO, processes_using, run_workbench
from workbench import config as cfgmod
from workbench.backends.local.mesh import LocalMesh
from workbench.experiments import canary, open_session
from workbench.load import storage
from workbench.load.results import LoadResult

STABLE_ONLY = {"v1": 100, "v2": 0, "v3": 0}
CANARY_ONLY = {"v1": 0, "v2": 0, "v3": 100}

# Short steps that can still decide: 300 rps in 1 s windows gives >= 75 canary requests per window
# from 25 % on, 8 paired windows at the last look, two metrics (so each claim may spend alpha / 2);
# margins wide enough for a loaded 2-core machine, while a 30 % error rate lies far beyond them. The
# bad canary's first step holds 8 windows of ~30 canary requests (5 were not always enough under
# load: a CI run decided only at step 2): an error rate needs >= 3 windows,
# and a confidence sequence (the default anytime looks) a few more than a fixed-sample interval.
SUITE = """
defaults:
  window: 1s
  warmup: 1s
  margins: {latency_ms: 3, latency_pct: 25, error_rate_pct: 2}
experiments:
  - name: healthy
    kind: canary
    service: reviews
    stable: v1
    canary: v3
    rps: 300
    metrics: [p50, error_rate]
    steps: [{weight: 25}, {weight: 50}, {weight: 100}]
    duration: 4s
  - name: bad
    kind: canary
    service: reviews
    stable: v1
    canary: v3
    rps: 300
    metrics: [p50, error_rate]
    steps: [{weight: 10, duration: 8s}, {weight: 25}, {weight: 50}, {weight: 100}]
    duration: 3s
  - name: long
    kind: canary
    service: reviews
    stable: v1
    canary: v3
    rps: 200
    warmup: 0s
    steps: [{weight: 10, duration: 2s}, {weight: 50, duration: 60s}, {weight: 100}]
  - name: undecided
    kind: canary
    description: p99 needs >= 100 requests per window; 5 % of 200 rps gives 10, so no look can decide.
    service: reviews
    stable: v1
    canary: v3
    rps: 200
    warmup: 0s
    metrics: [p99]
    steps: [{weight: 5, duration: 2s}, {weight: 100}]
    on_fail: pause
  - name: no-such-version
    kind: canary
    service: reviews
    stable: v1
    canary: v9
    steps: [{weight: 50, duration: 3s}]
  - name: only-promotion
    kind: canary
    service: reviews
    stable: v1
    canary: v3
    steps: [{weight: 100, duration: 3s}]
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("canary-suite") / "experiments.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def mesh_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A detached mesh for the module; stopped (and checked gone) at the end, also on failure."""
    state = tmp_path_factory.mktemp("canary-mesh") / "mesh"
    try:
        up = run_workbench("local", "up", "--state-dir", str(state))
        assert up.returncode == 0, up.stdout + up.stderr
        yield state
    finally:
        down = run_workbench("local", "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        time.sleep(0.2)
        assert processes_using(state) == []


def _answers(state: Path, n: int = 30) -> set[str]:
    """The versions that answer ``n`` real requests from frontend to reviews."""
    mesh = LocalMesh.attach(state)
    return {mesh.request_as("frontend", "reviews").headers.get("x-version", "") for _ in range(n)}


def _events(run: Path, name: str) -> list[dict]:
    return json.loads((run / name / canary.TIMELINE_FILE).read_text())["events"]


def _no_k6_left(state: Path) -> None:
    assert [p for p in processes_using(state) if "k6" in p.name()] == []


@pytest.mark.slow
def test_healthy_canary_is_promoted_and_replays(suite: Path, mesh_state: Path, tmp_path: Path) -> None:
    s = open_session(suite, "healthy", tmp_path / "run", mesh_state=mesh_state)
    result = s.execute(canary)
    looks = result.tables["looks"]
    shown = f"{result.verdict}: {result.headline}\n{looks.to_string()}"
    # v1 and v3 are identical: never a rollback. Promotion is expected; only when the machine is so
    # loaded that an interval still reaches across its margin may the data say "inconclusive".
    assert result.verdict in ("promoted", "inconclusive, rolled back"), shown
    events = _events(tmp_path / "run", "healthy")
    stored = [e["action"] for e in events if e["event"] == "decision"]
    assert stored[0] == "continue" and result.figures["decisions_consistent"] is True, shown
    assert [e["step"] for e in events if e["event"] == "step start"] == [1, 2]
    assert not (s.store / "step-3.json").exists()  # the 100 % step is the promotion: no load
    splits = [e["split"] for e in events if e["event"] == "split"]
    assert splits[:2] == [{"v1": 75, "v3": 25}, {"v1": 50, "v3": 50}]
    assert sum(e["alpha_spent"] for e in events if e["event"] == "decision") == pytest.approx(0.05)
    assert result.figures["steps_completed"] == 2
    last = looks[looks["look"] == 2]
    if result.verdict == "promoted":
        assert (result.severity, stored[1], events[-1]["outcome"]) == ("ok", "promote", "promoted")
        assert splits[2] == {"v3": 100} and result.figures["final_split"] == {"v3": 100}
        assert set(last["verdict"]) == {"equivalent"}, shown
        assert LocalMesh.attach(mesh_state).get_split("reviews") == CANARY_ONLY
        assert _answers(mesh_state, 10) == {"v3"}
    else:
        assert (result.severity, stored[1], events[-1]["outcome"]) == ("inconclusive",) * 3
        assert splits[2] == {"v1": 100} and result.figures["final_split"] == {"v1": 100}
        open_ = last[last["verdict"] == "inconclusive"]
        assert len(open_) and "worse" not in set(last["verdict"]), shown
        assert all((r.ci_high > r.margin) or (r.ci_low < -r.margin) for r in open_.itertuples()), shown
        assert LocalMesh.attach(mesh_state).get_split("reviews") == STABLE_ONLY
    assert json.loads((s.store / "result.json").read_text())["verdict"] == result.verdict
    figs = canary.figures(result)
    assert set(figs) == {"timeline", "looks", "intervals"}
    for fig in figs.values():
        assert fig.layout.title.text and fig.layout.meta["reading"]
    timeline = figs["timeline"]
    titles = {ax.title.text for ax in timeline.select_yaxes()}
    assert titles >= {"canary weight (%)", "latency per window (ms)", "errors per window (%)"}
    assert timeline.layout.xaxis3.title.text == "time since start (s)"
    # Replay: the same verdict and figures from the stored data, without touching the mesh.
    before = {p.name: p.stat().st_mtime_ns for p in s.store.glob("step-*")}
    again = open_session(suite, "healthy", tmp_path / "run", replay=True)
    replayed = again.execute(canary)
    assert again._backend is None
    assert (replayed.verdict, replayed.headline) == (result.verdict, result.headline)
    assert replayed.figures == result.figures
    assert {p.name: p.stat().st_mtime_ns for p in s.store.glob("step-*")} == before
    _no_k6_left(mesh_state)


@pytest.mark.slow
def test_bad_canary_is_rolled_back_at_the_first_step(suite: Path, mesh_state: Path, tmp_path: Path) -> None:
    LocalMesh.attach(mesh_state).set_behaviour("reviews", "v3", error_rate=0.3)
    try:
        s = open_session(suite, "bad", tmp_path / "run", mesh_state=mesh_state)
        result = s.execute(canary)
    finally:
        LocalMesh.attach(mesh_state).set_behaviour("reviews", "v3", error_rate=0.0)
    assert (result.verdict, result.severity) == ("rolled back", "worse"), result.headline
    assert "error rate rose" in result.headline and "worse" in result.headline
    assert result.figures["error_rate_verdict"] == "worse" and result.figures["last_decision"] == "rollback"
    events = _events(tmp_path / "run", "bad")
    assert [e["step"] for e in events if e["event"] == "step start"] == [1]
    assert [e["action"] for e in events if e["event"] == "decision"] == ["rollback"]
    assert [e["split"] for e in events if e["event"] == "split"] == [{"v1": 90, "v3": 10}, {"v1": 100}]
    assert sorted(p.name for p in s.store.glob("step-*")) == ["step-1.json", "step-1.parquet"]
    assert LocalMesh.attach(mesh_state).get_split("reviews") == STABLE_ONLY
    assert _answers(mesh_state) == {"v1"}
    _no_k6_left(mesh_state)


SCRIPT = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for the stacks if it hangs
# Ctrl-C in a terminal: started from a background job (make test's lanes, CI run with '&'), SIGINT
# is inherited as ignored and Python then installs no KeyboardInterrupt handler (the stacks of a
# hang showed k6 still awaited 30 s after SIGINT)
signal.signal(signal.SIGINT, signal.default_int_handler)
from workbench.experiments import canary, open_session
from workbench.load import storage
from workbench.load.results import LoadResult
config_file, experiment, run_dir, state = sys.argv[1:]
open_session(config_file, experiment, run_dir, mesh_state=state).execute(canary)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_step_restores_stable(
    suite: Path, mesh_state: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    run, progress = tmp_path / "run", tmp_path / "progress.log"
    env = {**os.environ, "WORKBENCH_PROGRESS_FILE": str(progress)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(suite), "long", str(run), str(mesh_state)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "canary step 2/3" not in (progress.read_text() if progress.exists() else ""):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "step 2 never started"
            time.sleep(0.1)
        assert LocalMesh.attach(mesh_state).get_split("reviews") == {"v1": 50, "v2": 0, "v3": 50}
        time.sleep(1.0)  # mid-step: k6 is running
        proc.send_signal(signum)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a CI run once hung here: show where every thread was
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"still running 30 s after {signum.name}; its output and stacks:\n{output[-8000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output
    assert LocalMesh.attach(mesh_state).get_split("reviews") == STABLE_ONLY
    assert _answers(mesh_state) == {"v1"}
    _no_k6_left(mesh_state)
    store = run / "long"
    failed = json.loads((store / "result.json").read_text())
    assert (failed["status"], failed["verdict"], failed["error"]) == ("failed", "failed", "interrupted")
    events = _events(run, "long")
    outcome = "interrupted" if signum == signal.SIGINT else "terminated"
    assert events[-1]["event"] == "end" and events[-1]["outcome"] == outcome
    assert (events[-2]["event"], events[-2]["split"]) == ("split", {"v1": 100})
    assert [e["action"] for e in events if e["event"] == "decision"] == ["continue"]
    assert (store / "step-1.json").exists() and not (store / "step-2.json").exists()
    # The partial run still analyses from what was stored.
    s = open_session(suite, "long", run, replay=True)
    result = canary.analyse(s)
    assert (result.verdict, result.severity) == (f"{outcome}, rolled back", "error")
    assert result.figures["steps_completed"] == 1 and result.figures["final_split"] == {"v1": 100}
    assert result.figures["last_decision"] == "continue" and result.figures["decisions_consistent"]
    assert set(canary.figures(result)) >= {"timeline", "looks"}


@pytest.mark.slow
def test_undecided_with_on_fail_pause_ends_on_stable(suite: Path, mesh_state: Path, tmp_path: Path) -> None:
    s = open_session(suite, "undecided", tmp_path / "run", mesh_state=mesh_state)
    result = s.execute(canary)
    assert (result.verdict, result.severity) == ("paused: needs a human decision", "inconclusive")
    assert "too few windows" in result.headline and "paused on v1 100 %" in result.headline
    assert result.figures["last_decision"] == "inconclusive" and result.figures["final_split"] == {"v1": 100}
    assert LocalMesh.attach(mesh_state).get_split("reviews") == STABLE_ONLY


@pytest.mark.slow
def test_bad_input_names_the_field(suite: Path, mesh_state: Path, tmp_path: Path) -> None:
    before = LocalMesh.attach(mesh_state).get_split("reviews")
    s = open_session(suite, "no-such-version", tmp_path / "run", mesh_state=mesh_state)
    with pytest.raises(ValueError, match=r"no-such-version: canary: reviews has no version 'v9'"):
        s.execute(canary)
    assert json.loads((s.store / "result.json").read_text())["status"] == "failed"
    assert LocalMesh.attach(mesh_state).get_split("reviews") == before
    with pytest.raises(ValueError, match=r"only-promotion: steps: needs at least one step below weight 100"):
        canary.plan_of(cfgmod.load(suite).get("only-promotion"))


@pytest.mark.slow
def test_notebook_runs_a_canary_quick(suite: Path, mesh_state: Path, tmp_path: Path) -> None:
    """The template under papermill (the short suite keeps the test fast; the default suite's quick
    canary runs the same code for longer)."""
    out = tmp_path / "canary.ipynb"
    run = tmp_path / "run"
    pm.execute_notebook(
        str(REPO / "notebooks" / "canary.ipynb"),
        str(out),
        parameters={
            "config_file": str(suite),
            "experiment": "healthy",
            "run_dir": str(run),
            "quick": True,
            "mesh_state": str(mesh_state),
        },
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    saved = json.loads((run / "healthy" / "result.json").read_text())
    assert saved["status"] == "ok" and saved["quick"] is True and saved["verdict"] != "rolled back"
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert f"**{saved['verdict']}**" in markdown
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count("Plotly.newPlot") >= 2 and "Canary roll-out of reviews v3" in html
    final = LocalMesh.attach(mesh_state).get_split("reviews")
    assert final == (CANARY_ONLY if saved["verdict"] == "promoted" else STABLE_ONLY)
    _no_k6_left(mesh_state)


def _synthetic_step(start: pd.Timestamp, weight: int, seed: int) -> LoadResult:
    """3 s at 300 rps of two identical versions split by ``weight`` (stored data, no mesh)."""
    rng = np.random.default_rng(seed)
    n = 900
    samples = pd.DataFrame(
        {
            "timestamp": start + pd.to_timedelta(np.sort(rng.uniform(0, 3, n)), unit="s"),
            "latency_ms": rng.lognormal(np.log(5.0), 0.2, n),
            "status": np.full(n, 200),
            "variant": np.where(rng.uniform(0, 100, n) < weight, "v3", "v1").astype(object),
        }
    )
    return LoadResult({"duration_s": 3.0, "start": start}, samples)


def test_analyse_a_run_stopped_after_two_of_five_steps(suite: Path, tmp_path: Path) -> None:
    """No end event (the process was killed): analyse still judges the two stored steps (the
    alpha-spending plan: two of its four looks spent)."""
    s = open_session(suite, "bad", tmp_path / "run", replay=True)
    plan = canary.plan_of(s.spec)
    plan = canary.Plan.from_json({**plan.to_json(), "sequential": "alpha-spending",
                                  "steps": [{"weight": w, "duration_s": 3.0}
                                            for w in (5, 10, 25, 50, 100)]})  # fmt: skip
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    events: list[dict] = [{"time": t0.isoformat(), "event": "initial split", "split": {"v1": 100}}]
    test = plan.test()
    frames = []
    for i, weight in ((1, 5), (2, 10)):
        start = t0 + pd.Timedelta(seconds=4 * (i - 1))
        step = _synthetic_step(start, weight, seed=i)
        storage.save(step, s.store, f"step-{i}")
        frames.append(step.samples)
        decision = test.look(*canary._arms(frames, plan))
        began, ended = start.isoformat(), (start + pd.Timedelta(seconds=3)).isoformat()
        events += [
            {"time": began, "event": "split", "split": plan.split(weight), "reason": f"step {i}/5"},
            {"time": began, "event": "step start", "step": i, "weight": weight, "duration_s": 3.0},
            {"time": ended, "event": "step end", "step": i},
            {"time": ended, "event": "decision", **canary._decision_record(decision, i)},
        ]
    events.append({"time": (t0 + pd.Timedelta(seconds=8)).isoformat(), "event": "step start", "step": 3,
                   "weight": 25, "duration_s": 3.0})  # fmt: skip
    s.save_json(canary.TIMELINE_FILE, {"plan": plan.to_json(), "events": events})
    result = s.execute(canary)
    assert (result.verdict, result.severity) == ("incomplete", "error")
    assert result.figures["steps_completed"] == 2 and result.figures["looks"] == 2
    assert result.figures["decisions_consistent"] is True and result.figures["last_decision"] == "continue"
    assert result.figures["final_split"] == {"v1": 90, "v3": 10}
    assert result.figures["alpha_spent"] == pytest.approx(2 * 0.05 / 4)
    assert list(result.tables["looks"]["look"].unique()) == [1, 2]
    assert set(canary.figures(result)) >= {"timeline", "looks"}


def test_anytime_plan_looks_after_every_window_and_replays(suite: Path, tmp_path: Path) -> None:
    """The default plan (``sequential: anytime``): each step's decision is the last of its window looks;
    analyse re-derives the same looks from the stored steps, and alpha is committed once."""
    s = open_session(suite, "bad", tmp_path / "run", replay=True)
    plan = canary.plan_of(s.spec)
    assert plan.sequential == "anytime" and plan.to_json()["alpha_shares"] == []
    steps = [{"weight": w, "duration_s": 3.0} for w in (25, 50, 100)]
    plan = canary.Plan.from_json({**plan.to_json(), "window_s": 0.5, "steps": steps})
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    events: list[dict] = [{"time": t0.isoformat(), "event": "initial split", "split": {"v1": 100}}]
    looker = canary.Looker(plan)
    frames = []
    for i, weight in ((1, 25), (2, 50)):
        start = t0 + pd.Timedelta(seconds=3 * (i - 1))
        step = _synthetic_step(start, weight, seed=10 + i)
        storage.save(step, s.store, f"step-{i}")
        frames.append(step.samples)
        made = looker.look(frames, final=i == plan.looks)
        assert len(made) >= 5  # 0.5 s windows over 3 s: a look after each window of the step
        ended = (start + pd.Timedelta(seconds=3)).isoformat()
        events += [
            {
                "time": start.isoformat(),
                "event": "split",
                "split": plan.split(weight),
                "reason": f"step {i}/3",
            },
            {
                "time": start.isoformat(),
                "event": "step start",
                "step": i,
                "weight": weight,
                "duration_s": 3.0,
            },
            {"time": ended, "event": "step end", "step": i},
            {"time": ended, "event": "decision", **canary._decision_record(made[-1], i, made, plan.window_s)},
        ]
    events.append({"time": (t0 + pd.Timedelta(seconds=6)).isoformat(), "event": "end", "outcome": "promoted",
                   "reason": "test"})  # fmt: skip
    s.save_json(canary.TIMELINE_FILE, {"plan": plan.to_json(), "events": events})
    result = canary.analyse(s)
    assert result.figures["decisions_consistent"] is True and result.figures["sequential"] == "anytime"
    assert result.figures["alpha_spent"] == pytest.approx(0.05)  # all of alpha, once, for every look
    looks = result.tables["looks"]
    assert list(looks["look"].unique()) == [1, 2] and (looks["window_looks"] >= 5).all()
    assert [e["alpha_spent"] for e in events if e["event"] == "decision"] == [0.05, 0.0]
    assert result.details["looks"][-1].decision.action == "promote"
