"""Value formats the mesh adapters share: durations, cookie regexes, percent weights, object names.

Durations are written as Go durations built from whole units ("200ms", "2s", "1m30s500ms"), which
both Istio (``duration(self) >= duration('1ms')``) and Gateway API (GEP-2257:
``^([0-9]{1,5}(h|m|s|ms)){1,4}$``, no decimals) accept; the finest unit is a millisecond.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from workbench.backends.base import BackendError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def go_duration(seconds: float, field: str) -> str:
    """``seconds`` as a Go/GEP-2257 duration of whole units, e.g. 0.2 -> "200ms", 90.5 -> "1m30s500ms".

    Rounded to the millisecond; ``field`` names the setting in the error for values under 1 ms.
    """
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        raise BackendError(f"{field} must be a number of seconds (got {seconds!r})")
    ms = round(seconds * 1000)
    if ms < 1:
        raise BackendError(f"{field} must be at least 1ms (got {seconds:g}s)")
    hours, rest = divmod(ms, 3_600_000)
    if hours > 99_999:
        raise BackendError(f"{field} is too long ({seconds:g}s; at most 99999h)")
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s"), (millis, "ms")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration string ("1m30s", "0.2s", "200ms"); ValueError for anything else."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def percent_split(weights: Mapping[str, int], what: str) -> dict[str, int]:
    """Weights normalised to integer percent summing to 100 (largest remainder), in the given order."""
    total = sum(weights.values())
    if total <= 0:
        raise BackendError(f"{what} sends no traffic: every weight is 0")
    exact = {k: 100 * w / total for k, w in weights.items()}
    out = {k: math.floor(x) for k, x in exact.items()}
    short = 100 - sum(out.values())
    for k in sorted(exact, key=lambda k: out[k] - exact[k])[:short]:
        out[k] += 1
    return out


def dns_label(name: str, field: str, *, start_with_letter: bool = False) -> str:
    """``name`` if it is a DNS-1123 label (DNS-1035 with ``start_with_letter``), else a clear error."""
    pattern = _DNS_1035 if start_with_letter else _DNS_LABEL
    if len(name) > 63 or not pattern.match(name):
        kind = "DNS-1035" if start_with_letter else "DNS-1123"
        raise BackendError(
            f"{field} {name!r} is not a valid {kind} label (lowercase letters, digits and '-', "
            f"{'starting with a letter, ' if start_with_letter else ''}at most 63 characters)"
        )
    return name
