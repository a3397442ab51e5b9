"""What each experiment needs from its backend, and a located problem for each need it lacks.

``required_capabilities(spec, backend)`` is the one answer to "what does this experiment need?",
used by ``workbench validate``, the start of ``workbench run`` and ``--dry-run``: a split, a
header or cookie route, a fault, retries (on non-status conditions, with a per-try timeout), a
timeout, a circuit breaker, L4/L7/deny authorization, requests as a caller, load, telemetry,
sidecar modes, kube contexts, traces. What a backend, mesh or local mode offers is declared in
``workbench.backends.capabilities``; ``capability_problems`` sets one against the other and says,
for each missing feature, which experiment needs it, for which field, which backend/mesh lacks it
and what to change — as ``file:line experiments[i].field: message`` lines, before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workbench.backends import declared
from workbench.backends.capabilities import Capability, Offer, policy_needs, resilience_needs, route_needs
from workbench.config.problems import ConfigError, Problem, format_path
from workbench.config.yamlload import YamlProblem, load_yaml

__all__ = ["Need", "capability_problems", "check_capabilities", "offer_for", "required_capabilities"]


@dataclass(frozen=True)
class Need:
    """One capability an experiment needs, and the field of the experiment that asks for it."""

    capability: Capability
    field: tuple[str | int, ...] = ()  # () : the experiment as a whole


def required_capabilities(spec: Any, backend: str = "local") -> list[Need]:
    """What ``spec`` needs on a ``backend`` ("local" or "kubernetes"), in the order of its fields.

    How an experiment runs can depend on the backend: a canary on the local mesh generates its
    load with k6; on a cluster it reads the versions' traffic from Prometheus and generates load
    (a k6 Job) only when ``rps`` is given.
    """
    kind = spec.kind
    out: list[Need] = []
    if kind == "loadtest":
        out.append(Need(Capability.LOAD, ("rps",)))
        if spec.modes:
            out.append(Need(Capability.SIDECAR_MODES, ("modes",)))
    elif kind == "mesh_compare":
        if spec.modes is not None:
            out += [Need(Capability.LOAD, ("rps",)), Need(Capability.SIDECAR_MODES, ("modes",))]
        elif spec.meshes is not None:
            out += [Need(Capability.LOAD, ("rps",)), Need(Capability.CONTEXTS, ("meshes",))]
    elif kind == "ab":
        out.append(Need(Capability.LOAD, ("rps",)))
        if spec.split is not None:
            out.append(Need(Capability.SPLIT, ("split",)))
        else:
            out.append(Need(Capability.SPLIT, ("route",)))  # the baseline gets 100 % of the rest
            out += [Need(c, ("route",)) for c in route_needs(spec.route)]
    elif kind == "canary":
        out.append(Need(Capability.SPLIT, ("steps",)))
        if backend == "kubernetes":
            out.append(Need(Capability.TELEMETRY))
            if "rps" in spec.model_fields_set:
                out.append(Need(Capability.LOAD, ("rps",)))
        else:
            out.append(Need(Capability.LOAD, ("rps",)))
    elif kind == "authz":
        out.append(Need(Capability.REQUEST_AS, ("expect",)))
        out += [Need(c, _policy_field(spec.policy, c)) for c in policy_needs(spec.policy)]
    elif kind == "resilience":
        out += [Need(Capability.LOAD, ("rps",)), Need(Capability.FAULT, ("fault",))]
        for j, p in enumerate(spec.protections):
            for c in resilience_needs(p.retries, p.timeout, p.circuit_breaker):
                out.append(Need(c, ("protections", j, _protection_field(c))))
    elif kind == "traces":
        out.append(Need(Capability.TRACES))
        if backend != "kubernetes":  # on a cluster it reads the traffic there is
            out.append(Need(Capability.LOAD, ("rps",)))
        if spec.change is not None:
            out.append(Need(Capability.BEHAVIOURS, ("change",)))
    elif kind == "topology":
        out += [Need(Capability.LOAD, ("rps",)), Need(Capability.TELEMETRY)]
        if spec.change is not None:
            out.append(Need(Capability.BEHAVIOURS, ("change",)))
    return out


def _policy_field(policy: Any, capability: Capability) -> tuple[str | int, ...]:
    if capability is Capability.AUTHZ_DENY:
        return ("policy", "action")
    if capability is Capability.AUTHZ_L7:
        i = next(i for i, r in enumerate(policy.rules) if r.paths or r.methods)
        rule = policy.rules[i]
        return ("policy", "rules", i, "paths" if rule.paths else "methods")
    return ("policy",)


def _protection_field(capability: Capability) -> str:
    return {
        Capability.TIMEOUT: "timeout",
        Capability.CIRCUIT_BREAKER: "circuit_breaker",
    }.get(capability, "retries")


def offer_for(settings: Any, **override: Any) -> Offer:
    """The declared offer of experiments.yaml's ``backend:`` settings (``override``: type, mode, mesh)."""
    given = {
        "type": settings.type,
        "mode": getattr(settings, "mode", None),
        "mesh": getattr(settings, "mesh", None),
        "prometheus_url": str(getattr(settings, "prometheus_url", None) or "") or None,
        "dialect": getattr(settings, "dialect", None),
        "traces": getattr(settings, "traces", None) is not None
        if settings.type == "kubernetes"
        else getattr(settings, "tracing", None) is not None,
    }
    given.update({k: v for k, v in override.items() if v is not None})
    return declared(given.pop("type"), **given)


def capability_problems(
    cfg: Any,
    offer: Offer,
    backend: str,
    source: str = "experiments.yaml",
    text: str | None = None,
    only: Iterable[str] = (),
) -> list[Problem]:
    """One problem per capability an experiment (of ``only``, else all) needs and ``offer`` lacks."""
    lines = _lines(text)
    chosen = set(only)
    problems = []
    for i, spec in enumerate(cfg.experiments):
        if chosen and spec.name not in chosen:
            continue
        # one line per field and reason: "needs retries and per-try timeout, which ..."
        grouped: dict[tuple[tuple[str | int, ...], str], list[Capability]] = {}
        seen: set[Capability] = set()
        for need in required_capabilities(spec, backend):
            if offer.has(need.capability) or need.capability in seen:
                continue
            seen.add(need.capability)
            grouped.setdefault((need.field, offer.hint(need.capability)), []).append(need.capability)
        for (field, hint), missing in grouped.items():
            loc = ("experiments", i, *field)
            names = [c.value for c in missing]
            features = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            message = f"{spec.name} ({spec.kind}) needs {features}, which {offer.name} does not offer: {hint}"
            problems.append(Problem(source, lines(loc), format_path(loc), message))
    return problems


def check_capabilities(
    cfg: Any, offer: Offer, backend: str, source: str = "experiments.yaml", text: str | None = None,
    only: Iterable[str] = (),
) -> None:  # fmt: skip
    """Raise ``ConfigError`` listing ``capability_problems`` (nothing when every need is met)."""
    problems = capability_problems(cfg, offer, backend, source, text, only)
    if problems:
        raise ConfigError(problems)


def _lines(text: str | None) -> Any:
    if text is None:
        return lambda loc: None
    try:
        located = load_yaml(text)
    except YamlProblem:
        return lambda loc: None
    return located.line_of
