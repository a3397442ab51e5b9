"""The one root of every error a user can meet, and the exit statuses of the command line.

Every failure the workbench raises on purpose is a ``WorkbenchError``: invalid input
(``ConfigError``, ``ResultFileError``), a backend that cannot do what was asked (``BackendError``
and its kinds: Kubernetes, Prometheus, local processes, Envoy configuration), a broken audit log.
Callers that must tell "the workbench said no" from a bug catch ``WorkbenchError``; the message is
always written for the user (what, where, what was expected).

Exit statuses live here, once, so the CLI and the CI artifacts agree on them.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["BackendError", "ExitCode", "WorkbenchError"]


class WorkbenchError(Exception):
    """A failure the workbench explains; ``str(exc)`` is the sentence a user reads."""


class ExitCode(IntEnum):
    """Exit status of every ``workbench`` command (and of a CI gate)."""

    OK = 0
    FAILED = 1  # a check or a gated verdict failed (``--fail-on``)
    INVALID = 2  # invalid input: usage, experiments.yaml, a result file
    COULD_NOT_RUN = 3  # an experiment could not run (a dependency missing, the backend unreachable)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class BackendError(WorkbenchError, RuntimeError):
    """A backend operation that cannot be done; the message says what and why."""
