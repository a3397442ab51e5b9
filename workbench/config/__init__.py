"""experiments.yaml: the schema (``schema.py``) and readable file:line problems (``problems.py``).

``workbench.config.load(path)`` returns a validated ``Config`` or raises ``ConfigError`` naming
every problem. The names below are re-exported for notebooks and scripts.
"""

from workbench.backends.traffic import CircuitBreaker, Fault, Policy, PolicyRule, Retries, Route, Split
from workbench.config.problems import ConfigError, Problem, format_path, parse_model
from workbench.config.schema import (
    AB,
    KINDS,
    Audit,
    Authz,
    BackendSettings,
    Canary,
    Change,
    Config,
    Defaults,
    Expectation,
    KubernetesSettings,
    LoadTest,
    LocalSettings,
    Margins,
    MeshCompare,
    Protection,
    Resilience,
    Step,
    Topology,
    Variants,
    load,
    loads,
    semantic_problems,
    summary_rows,
)
from workbench.units import parse_duration

__all__ = [
    "AB",
    "KINDS",
    "Audit",
    "Authz",
    "BackendSettings",
    "Canary",
    "Change",
    "CircuitBreaker",
    "Config",
    "ConfigError",
    "Defaults",
    "Expectation",
    "Fault",
    "KubernetesSettings",
    "LoadTest",
    "LocalSettings",
    "Margins",
    "MeshCompare",
    "Policy",
    "PolicyRule",
    "Problem",
    "Protection",
    "Resilience",
    "Retries",
    "Route",
    "Split",
    "Step",
    "Topology",
    "Variants",
    "format_path",
    "load",
    "loads",
    "parse_duration",
    "parse_model",
    "semantic_problems",
    "summary_rows",
]
