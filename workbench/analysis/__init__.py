"""Analysis above the statistics: the service graph (``topology``), which service changed
(``localize``), from access logs or telemetry, and what each proxy costs per traversal
(``proxycost``), from its access log."""
