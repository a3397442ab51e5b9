"""``rps: auto``: measure well below saturation, at a rate chosen by a short capacity probe.

A latency difference measured near saturation is queueing for CPU, not the cost of what is
compared. With ``rps: auto`` (the default of ``mesh_compare``, allowed for ``ab`` and
``canary``) the experiment first probes the capacity of its slowest arm — for a mesh comparison
the heaviest sidecar mode on a fresh mesh, for an A/B or canary the mesh it runs on — at its
service and its fewest connections (an open-model generator with few connections is the first to
fall behind), with ``load.capacity.probe``: 2 s points, doubling then bisecting to +-25 %, a point
passing when it is not saturated. The experiment then runs at ``HEADROOM`` (50 %) of the highest
rate that passed, rounded down to two significant digits: at most half the capacity. The probe is
stored (``probe.json``) so a replayed report says which rate was chosen and why, and a resumed run
reuses it. ``--quick`` probes with 1 s points to +-50 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.errors import BackendError
from workbench.experiments.session import Session
from workbench.load.capacity import probe
from workbench.load.results import LoadProfile

__all__ = ["HEADROOM", "PROBE_FILE", "Rate", "choose", "stored"]

PROBE_FILE = "probe.json"
HEADROOM = 0.5  # the share of the probed capacity an experiment uses
PROBE_S, PROBE_WARMUP_S, QUICK_PROBE_S = 2.0, 1.0, 1.0
PROBE_TOL, QUICK_PROBE_TOL = 0.25, 0.5  # the bracket a probe stops at (its passing end is what counts)
PROBE_START_RPS = 50.0


@dataclass(frozen=True)
class Rate:
    """The rate an experiment runs at and, for ``rps: auto``, the probe that chose it."""

    rps: float
    auto: bool
    reason: str
    capacity_rps: float = math.nan
    probe: dict[str, Any] = field(default_factory=dict)


def _round_down(x: float) -> float:
    """Down to two significant digits (173 -> 170, 86.5 -> 86, 1234 -> 1200), at least 1."""
    if x < 1:
        return 1.0
    unit = 10 ** max(0, math.floor(math.log10(x)) - 1)
    return float(math.floor(x / unit) * unit)


def stored(s: Session) -> Rate | None:
    """The rate recorded by an earlier ``choose`` of this experiment (None: none recorded)."""
    path = s.store / PROBE_FILE
    if not path.exists():
        return None
    raw = s.load_json(PROBE_FILE)
    capacity = float(raw.get("capacity_rps") or math.nan)
    return Rate(float(raw["rps"]), bool(raw["auto"]), str(raw["reason"]), capacity, raw.get("probe") or {})


def choose(
    s: Session,
    mesh: Callable[[], AbstractContextManager[Any]],
    *,
    what: str,
    connections: int,
) -> Rate:
    """The spec's rate, or for ``rps: auto`` half the capacity ``probe`` finds on ``mesh()``.

    ``what`` names the probed arm in the reason (e.g. "both-mtls, the slowest mode");
    ``connections`` is the probe's connection count. A stored choice is reused.
    """
    spec = s.spec
    if spec.rps != "auto":
        return Rate(float(spec.rps), False, f"{float(spec.rps):g} rps as configured")
    previous = stored(s)
    if previous is not None:
        return previous
    seconds = QUICK_PROBE_S if s.quick else PROBE_S
    s.progress(f"rps auto: probing the capacity of {what} ({spec.service}, {connections} connection(s), "
               f"{seconds:g} s points)")  # fmt: skip
    with mesh() as backend:

        def point(rps: float) -> Any:
            profile = LoadProfile(rps=rps, connections=connections, duration_s=seconds,
                                  warmup_s=PROBE_WARMUP_S, path=spec.path, seed=s.seed)  # fmt: skip
            result = backend.run_load(spec.service, profile)
            s.progress(f"rps auto: {rps:g} rps -> {result.saturation().explain()}")
            return result

        capacity = probe(point, PROBE_START_RPS, rel_tol=QUICK_PROBE_TOL if s.quick else PROBE_TOL)
    if capacity.rps <= 0:
        raise BackendError(f"rps auto: the capacity probe of {what} found no rate that was not saturated: "
                           f"{capacity.explain()}")  # fmt: skip
    rps = _round_down(HEADROOM * capacity.rps)
    reason = (f"rps auto: {rps:g} rps, {100 * rps / capacity.rps:.0f} % of the probed capacity of {what} "
              f"({spec.service}, {connections} connection{'s' if connections != 1 else ''}): "
              f"{capacity.explain()}")  # fmt: skip
    found = {"steps": [asdict(step) for step in capacity.steps], "upper_rps": capacity.upper,
             "rel_tol": capacity.rel_tol, "what": what, "connections": connections,
             "seconds": seconds}  # fmt: skip
    rate = Rate(rps, True, reason, capacity.rps, found)
    s.save_json(PROBE_FILE, asdict(rate))
    s.progress(reason)
    return rate
