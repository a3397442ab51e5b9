"""Mesh Workbench: service-mesh experiments with statistics that say whether a difference is real.

The chain, in the folder names (dependencies point down it; ``tests/test_layers.py`` walks the
import graph and fails on a cycle or an upward import)::

    experiments.yaml ─► config/        the validated spec (schema.py) and file:line problems
                           │
          experiments/     one module per kind: run(session) stores, analyse(session) judges
         │ drives               │ reads                               │ judges
         ▼                      ▼                                     ▼
    backends/  ───────►  metrics/ (Prometheus, dialects)  ──►  stats/  ──►  analysis/
    local mesh |          load/ (k6, result files, sweeps,      compare,     topology,
    kubernetes            host CPU, capacity search)            trials,      localization,
                          traces/ (spans: receiver, readers,    sequential   proxy cost,
                                   critical path, export)                    request flows
         │ every change                                                    │
         ▼                                                                 ▼
      audit/  (hash-chained log + exporter)        suite/ (runner, kernel) ─► report/ (HTML, CI,
                                                                  numbers, history, regressions,
                                                                  browser checks, PDF, explorer)
                                                                                   │
                                                                           cli/ (``workbench``)

Leaves every layer may use: ``errors`` (``WorkbenchError``, the one root, and exit codes),
``units`` (durations, percentages), ``tools`` (finding envoy, k6, prometheus),
``backends.traffic`` (split, route, fault, retries, breaker, policy) and ``report.plots``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mesh-workbench")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0+unknown"
