"""Analysis above the statistics: the service graph (``topology``) and which service changed
(``localize``), from access logs or telemetry."""
