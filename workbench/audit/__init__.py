"""The release audit log (``log.py``: hash-chained JSON lines) and its Prometheus exporter
(``exporter.py``, run as ``python -m workbench.audit.exporter LOG PORT``)."""

from workbench.audit.log import (
    ACTIONS,
    ENV_PATH,
    ENV_RUN_ID,
    GENESIS,
    AuditError,
    AuditLog,
    VerifyResult,
    canonical,
    default_path,
    describe,
    entry_hash,
    grafana_annotations,
    label,
    markers_for_run,
    parse_since,
    scrub,
)

__all__ = [
    "ACTIONS",
    "ENV_PATH",
    "ENV_RUN_ID",
    "GENESIS",
    "AuditError",
    "AuditLog",
    "VerifyResult",
    "canonical",
    "default_path",
    "describe",
    "entry_hash",
    "grafana_annotations",
    "label",
    "markers_for_run",
    "parse_since",
    "scrub",
]
