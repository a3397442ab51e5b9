"""``workbench run --dry-run``: what a run would do and write, without changing anything.

On a cluster it connects (reads only: discovery, the mesh), then renders through the mesh adapter
in dry-run mode the first objects each experiment would apply — the split of an A/B or of a
canary's first step, an authorization policy, a fault and the first protection — and prints them
as YAML. On the local mesh nothing outside this machine changes, so it prints the plan. Either way
an experiment needing a feature the backend lacks (``config.capabilities``) is shown as refused,
with what to change, and the dry run ends with a ConfigError listing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from workbench import config as cfgmod

Echo = Callable[[str], None]


def first_changes(backend: Any, spec: Any) -> list[dict[str, Any]]:
    """The manifests an experiment applies first, rendered by a dry-run ``backend``."""
    kind = spec.kind
    if kind == "ab":
        if spec.split is not None:
            return list(backend.set_split(spec.service, spec.split))
        out = list(backend.set_split(spec.service, {spec.variants.baseline: 100}))
        return out + list(backend.set_route(spec.service, spec.route, version=spec.variants.candidate))
    if kind == "canary":
        first = spec.steps[0].weight
        return list(backend.set_split(spec.service, {spec.stable: 100 - first, spec.canary: first}))
    if kind == "authz":
        return list(backend.set_policy(spec.policy))
    if kind == "resilience":
        out = list(backend.set_fault(spec.dependency, spec.fault))
        p = spec.protections[0]
        return out + list(backend.set_resilience(spec.dependency, p.retries, p.timeout, p.circuit_breaker))
    return []


def plan_run(cfg: cfgmod.Config, selected: list[Any], echo: Echo, source: str = "experiments.yaml",
             text: str | None = None) -> None:  # fmt: skip
    """Print each experiment's plan and, on a cluster, the objects it would write first; ConfigError
    at the end when the backend cannot run some of them (each printed as refused)."""
    from workbench.config.capabilities import capability_problems, offer_for

    b = cfg.backend
    for spec in selected:
        echo(f"{spec.name} ({spec.kind}): {spec.plan() or spec.description}")
    names = [s.name for s in selected]
    if b.type == "local":
        echo(f"local mesh (mode {b.mode}): processes on 127.0.0.1 only; nothing outside this machine changes")
        _refuse(capability_problems(cfg, offer_for(b), "local", source, text, names), echo)
        return
    from workbench.backends.kubernetes.backend import KubernetesBackend

    backend = KubernetesBackend.from_settings(b, dry_run=True)
    echo(f"cluster: context {backend.cluster.context}, namespace {backend.namespace}, mesh {backend.mesh}")
    problems = capability_problems(cfg, backend.capabilities(), "kubernetes", source, text, names)
    refused = {p.path.split(".")[0] for p in problems}
    for i, spec in enumerate(cfg.experiments):
        if spec.name not in names:
            continue
        if f"experiments[{i}]" in refused:
            echo(f"--- {spec.name}: refused, writes nothing (see below)")
            continue
        manifests = first_changes(backend, spec)
        if not manifests:
            echo(f"--- {spec.name}: generates load and reads telemetry; writes no mesh object")
            continue
        echo(f"--- {spec.name}: would apply (server-side apply, field manager mesh-workbench):")
        for manifest in manifests:
            echo(yaml.safe_dump(manifest, sort_keys=False).rstrip())
            echo("---")
    _refuse(problems, echo)


def _refuse(problems: list[Any], echo: Echo) -> None:
    if problems:
        echo(f"refused: {len(problems)} need(s) the backend cannot meet")
        raise cfgmod.ConfigError(problems)
