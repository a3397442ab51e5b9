"""Units and validated values every layer shares: durations, percentages, weights, names.

``parse_duration("1m30s") == 90.0``; the ``Annotated`` types below validate the same values
inside pydantic models (experiments.yaml, the traffic types of ``backends.traffic``), and
``Strict`` is the base of every such model. Messages quote the value as the user wrote it
(``show_value``), so a bad input reads as "must be a duration like '30s' (got '3O s')".
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "Duration",
    "HttpUrl",
    "Name",
    "Percent",
    "PositiveDuration",
    "Strict",
    "Weight",
    "parse_duration",
    "show_value",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"1m30s"``, ``"2h"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like '30s' or '2m' (got {show_value(value)})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"must be a positive duration (got {show_value(value)})")
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"must be a duration like '30s', '500ms' or '2m' (got {show_value(value)})")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"must be a duration like '30s' or '2m' (got {show_value(value)})")
    if seconds < 0:
        raise ValueError(f"must be a positive duration (got {show_value(value)})")
    return seconds


def show_value(value: Any) -> str:
    """A value as the user wrote it in YAML, shortened."""
    if value is None:
        text = "nothing (null)"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value)) if abs(value) < 1e15 else repr(value)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _positive_duration(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _percent(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError(f"must be between 0 and 100 (got {show_value(value)})")
    return value


_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must be lowercase letters, digits, '-' or '_' (at most 63, used in file names and "
            f"Kubernetes labels), e.g. 'checkout-ab' (got {show_value(value)})"
        )
    return value


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"must be an http(s) URL like http://127.0.0.1:9090 (got {show_value(value)})")
    return value


def _auto_rps(value: Any) -> float | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"must be a number of requests per second > 0, or 'auto' (got {show_value(value)})")
    return float(value)


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive_duration)]
Percent = Annotated[float, AfterValidator(_percent)]
Weight = Annotated[int, AfterValidator(_percent)]
Name = Annotated[str, AfterValidator(_name)]
Rps = Annotated[float, Field(gt=0)]
# ``auto``: probe the capacity of the slowest arm first, then use at most half of it
AutoRps = Annotated[float | str, BeforeValidator(_auto_rps)]
Connections = Annotated[int, Field(ge=1, le=100_000)]


class Strict(BaseModel):
    """Base of every validated model: unknown keys are errors, types are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
