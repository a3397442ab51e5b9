"""Export a load result in the Service Mesh Performance (SMP) shape.

SMP (CNCF, ``protos/service_mesh_performance.proto``) describes a test by three messages:
``PerformanceTestConfig`` (load generator clients, duration), ``PerformanceTestResult``
(``latencies_ms`` min/average/p50/p90/p99/max, ``actual_QPS``, start/end) and
``ServiceMeshConfig`` (sidecar count and cost, mTLS, proxy concurrency and build). Field names
are the proto's own, which proto3 JSON parsers accept. What SMP has no field for — p75, p99.9,
the sample count, error rate, the workbench's confidence intervals, whether the point was
saturated — goes in the clearly named extension ``x_mesh_workbench``, so nothing measured is lost
and nothing is misfiled. A figure a point does not have (a sidecar's CPU in mode ``none``, a
latency of an empty run) is written as JSON ``null``, never as NaN or a made-up 0.

``export_run(run_dir, out_dir)`` writes one document per stored load point of a run
(``workbench export smp RUN_ID``); ``read_smp`` reads one back.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

from workbench.load.results import LoadResult

SMP_VERSION = "v0.0.1"
EXTENSION = "x_mesh_workbench"


def to_smp(result: LoadResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SMP document for one run point; ``extra`` adds to the extension (e.g. CIs)."""
    meta, s = result.meta, result.summary()
    test_id = str(meta.get("id") or meta.get("point") or uuid.uuid4())
    labels = {k: str(v) for k, v in meta.items() if k in ("mode", "service", "backend", "variant", "labels")}
    target = meta.get("target") or {}
    urls = target.get("urls", []) if isinstance(target, dict) else [str(target)]
    cost = meta.get("proxy_cost") or {}
    config = {
        "smp_version": SMP_VERSION,
        "id": test_id,
        "name": str(meta.get("point") or test_id),
        "labels": labels,
        "clients": [
            {
                "internal": meta.get("backend") == "local",
                "load_generator": f"{meta.get('generator', '')} {meta.get('generator_version', '')}".strip(),
                "protocol": "http",
                "connections": int(meta.get("connections") or 0),
                "rps": round(meta.get("requested_rps") or meta.get("rps") or 0),
                "endpoint_url": [str(u) for u in urls],
            }
        ],
        "duration": f"{float(meta.get('duration_s') or 0):g}s",
    }
    test_result = {
        "smp_version": SMP_VERSION,
        "id": test_id,
        "labels": labels,
        "start_time": str(meta.get("start", "")),
        "end_time": str(meta.get("end", "")),
        "latencies_ms": {
            "min": _num(s.get("min", _sample_min(result))),
            "average": _num(s["mean"]),
            "p50": _num(s["p50"]),
            "p90": _num(s["p90"]),
            "p99": _num(s["p99"]),
            "max": _num(s["max"]),
        },
        "actual_QPS": _num(s["actual_rps"]),
        "testId": test_id,
    }
    mesh = {
        "smp_version": SMP_VERSION,
        "id": test_id,
        "mtls_enabled": meta.get("mode") == "both-mtls",
        "profile": str(meta.get("mode", "")),
        "proxy_build": str(meta.get("envoy_version", "")),
    }
    if cost:
        mesh["sidecar"] = {
            "cpu_mCores": _int(1000 * float(cost.get("cpu_cores", math.nan))),
            "mem_mb": _int(float(cost.get("rss_mib", math.nan)) * 1.048576),
            "rps": _int(s["actual_rps"]),
        }
    ext = {
        "p75_ms": _num(s["p75"]),
        "p999_ms": _num(s["p999"]),
        "count": int(s["count"]),
        "error_pct": _num(s["error_pct"]),
        "dropped": int(s.get("dropped", 0) or 0),
        "model": meta.get("model"),
        "proxy_cost": cost,
        "saturation": result.saturation().to_dict(),
        **(extra or {}),
    }
    return _nulls({
        "performance_test_config": config,
        "performance_test_result": test_result,
        "service_mesh_config": mesh,
        EXTENSION: ext,
    })  # fmt: skip


def write_smp(result: LoadResult, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``to_smp(result)`` as JSON (a missing figure is null, which JSON has; never NaN)."""
    path = Path(path)
    path.write_text(json.dumps(to_smp(result, extra), indent=2, allow_nan=False, default=str))
    return path


def read_smp(path: str | Path) -> dict[str, Any]:
    """An SMP document written by ``write_smp``; ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a JSON document ({exc})") from None
    missing = [
        k
        for k in ("performance_test_config", "performance_test_result", "service_mesh_config")
        if k not in doc
    ]
    if missing:
        raise ValueError(f"{path}: not an SMP document (missing {', '.join(missing)})")
    return doc


def export_run(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """One SMP document per stored load point of a run (every experiment's directory, its
    ``points/`` included): ``<out_dir>/<experiment>/<point>.smp.json``. Returns the files."""
    from workbench.load import storage

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    written = []
    for experiment in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.resolve() != out_dir.resolve()):
        for directory in sorted({experiment, *(d for d in experiment.rglob("*") if d.is_dir())}):
            for path in storage.list_results(directory):
                target = (
                    out_dir / experiment.name / f"{path.relative_to(experiment).with_suffix('')}.smp.json"
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                written.append(write_smp(storage.load(path), target))
    return written


def _num(value: Any) -> float | None:
    v = float(value)
    return None if math.isnan(v) else v


def _int(value: Any) -> int | None:
    v = float(value)
    return None if not math.isfinite(v) else round(v)


def _nulls(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls(v) for v in value]
    return value


def _sample_min(result: LoadResult) -> float:
    if len(result.samples):
        return float(result.samples["latency_ms"].min())
    hist = getattr(result, "histogram", None)
    return float(hist.min) if hist is not None and getattr(hist, "min", None) is not None else float("nan")
