"""Prometheus queries as tidy pandas frames (through prometheus-api-client).

One row per series and point: the series' labels as columns, ``timestamp`` (UTC) and ``value``.
A URL with userinfo (``http://user:pass@host:9090``) becomes HTTP basic auth on a URL without it;
credentials never appear in errors or frames: the URL is shown redacted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit, urlunsplit

import pandas as pd
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from requests import ConnectionError as RequestsConnectionError
from requests import RequestException, Timeout
from requests.exceptions import RetryError
from urllib3.util.retry import Retry

from workbench.errors import BackendError
from workbench.tools import redact_url


class PrometheusError(BackendError):
    """A query that Prometheus could not answer; names the (redacted) URL and the query."""


RETRY_STATUSES = (408, 429, 500, 502, 503, 504)  # Prometheus answers 503 to a query timeout


class Prometheus:
    """A Prometheus server to query; ``url`` may carry basic-auth credentials.

    Connection errors, read timeouts and the ``RETRY_STATUSES`` answers are retried ``retries``
    times with exponential backoff (``backoff_s`` * 2**n, the first retry immediately), then raise
    PrometheusError; a rejected query (400, 422) fails at once.
    """

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 1.0):
        if retries < 0 or backoff_s < 0:
            raise ValueError(f"retries and backoff_s must be >= 0 (got {retries}, {backoff_s})")
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        retry = Retry(total=retries, backoff_factor=backoff_s, status_forcelist=RETRY_STATUSES)
        base, auth = split_userinfo(url)
        self._client = PrometheusConnect(
            url=base, disable_ssl=False, timeout=timeout_s, retry=retry, auth=auth
        )

    def __repr__(self) -> str:
        return f"Prometheus({redact_url(self.url)!r})"

    def _error(self, what: str, promql: str, exc: Exception) -> PrometheusError:
        retried = isinstance(exc, RequestsConnectionError | Timeout | RetryError)
        after = f" after {self.retries} retries" if retried and self.retries else ""
        return PrometheusError(f"{redact_url(self.url)}: {what} {promql!r} failed{after}: {exc}")

    def query(self, promql: str, at: float | datetime | None = None) -> pd.DataFrame:
        """Instant query (at a unix time or datetime, default now)."""
        params = {"time": _unix(at)} if at is not None else None
        try:
            raw = self._client.custom_query(promql, params=params)
        except (PrometheusApiClientException, RequestException, ValueError) as exc:
            raise self._error("query", promql, exc) from None
        return _frame([{"metric": r["metric"], "values": [r["value"]]} for r in raw])

    def query_range(
        self, promql: str, start: float | datetime, end: float | datetime, step_s: float
    ) -> pd.DataFrame:
        """Range query from ``start`` to ``end`` every ``step_s`` seconds."""
        try:
            raw = self._client.custom_query_range(
                promql, start_time=_dt(start), end_time=_dt(end), step=f"{step_s:g}s"
            )
        except (PrometheusApiClientException, RequestException, ValueError) as exc:
            raise self._error("range query", promql, exc) from None
        return _frame(raw)

    def scalar(self, promql: str, at: float | datetime | None = None) -> float:
        """The single value of an instant query; NaN when it returns nothing."""
        frame = self.query(promql, at)
        return float(frame["value"].iloc[0]) if len(frame) else float("nan")


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """(``url`` without userinfo and trailing slash, (user, password) for basic auth or None)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 address
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, parts.fragment))
    if parts.username is None and parts.password is None:
        return base, None
    return base, (unquote(parts.username or ""), unquote(parts.password or ""))


def _frame(series: list[dict]) -> pd.DataFrame:
    rows = []
    for s in series:
        for ts, value in s["values"]:
            rows.append({**s["metric"], "timestamp": float(ts), "value": float(value)})
    frame = pd.DataFrame(rows, columns=sorted({k for r in rows for k in r} | {"timestamp", "value"}))
    if len(frame):
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    return frame


def _unix(at: float | datetime) -> float:
    return at.timestamp() if isinstance(at, datetime) else float(at)


def _dt(at: float | datetime) -> datetime:
    return at if isinstance(at, datetime) else datetime.fromtimestamp(float(at), tz=UTC)
