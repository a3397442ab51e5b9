"""HTTP GETs to a trace store's query API (Jaeger, Tempo), with every failure explained.

A URL with ``user:password@`` is sent as HTTP basic auth and never shown: messages carry the URL
without its credentials (``tools.redact_url``). Unreachable, timed out, 4xx (with what each one
usually means for a trace store) and 5xx become a :class:`TraceSourceError` that says what was asked
and what to check; a body that is not JSON likewise.
"""

from __future__ import annotations

from typing import Any

import requests

from workbench.errors import BackendError
from workbench.metrics.prometheus import split_userinfo
from workbench.tools import redact_url

__all__ = ["TraceSourceError", "get_json"]

_HINTS = {
    400: "the store rejected the query parameters",
    401: "authentication is required: put user:password@ in the URL",
    403: "the credentials may not read traces",
    404: "no such path or trace: is this the store's query URL (Jaeger query port 16686, Tempo 3200)?",
    429: "the store is rate-limiting: query a shorter range or fewer traces",
}


class TraceSourceError(BackendError):
    """A trace store (Jaeger, Tempo) could not be read; the message says what and why."""


def get_json(url: str, path: str, params: dict[str, Any] | None, what: str, timeout: float = 10.0) -> Any:
    """``GET url + path`` with ``params``; the decoded JSON, or TraceSourceError naming ``what``."""
    base, auth = split_userinfo(url)
    shown = redact_url(url).rstrip("/") + path
    try:
        resp = requests.get(base + path, params=params, auth=auth, timeout=timeout,
                            headers={"Accept": "application/json"})  # fmt: skip
    except requests.Timeout:
        raise TraceSourceError(f"{what}: {shown} did not answer within {timeout:g} s") from None
    except requests.ConnectionError:
        raise TraceSourceError(
            f"{what}: cannot connect to {shown} (is it running, is the URL right?)"
        ) from None
    except requests.RequestException as exc:
        raise TraceSourceError(f"{what}: request to {shown} failed ({type(exc).__name__})") from None
    if resp.status_code >= 400:
        body = " ".join(resp.text.split())[:200]
        kind = "server error" if resp.status_code >= 500 else _HINTS.get(resp.status_code, "client error")
        raise TraceSourceError(
            f"{what}: {shown} answered HTTP {resp.status_code} ({kind}): {body or 'no body'}"
        )
    try:
        return resp.json()
    except ValueError:
        raise TraceSourceError(
            f"{what}: {shown} answered HTTP {resp.status_code} with a body that is not JSON"
        ) from None
