"""The local mesh's own Prometheus: config rendering (checked by promtool) and readiness."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ScrapeTarget:
    """One endpoint to scrape every second, with the labels that name it."""

    job: str  # "envoy" or "app"
    port: int
    labels: dict[str, str]
    metrics_path: str = "/metrics"


def render_config(targets: list[ScrapeTarget], interval_s: float = 1.0) -> dict[str, Any]:
    """prometheus.yml: one job per kind of target, a static config per target."""
    jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in targets:
        jobs.setdefault((t.job, t.metrics_path), []).append(
            {"targets": [f"127.0.0.1:{t.port}"], "labels": t.labels}
        )
    return {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": path,
                "scrape_timeout": f"{interval_s:g}s",
                "static_configs": statics,
            }
            for (job, path), statics in jobs.items()
        ],
    }


def check_config(promtool: Path, path: Path) -> None:
    """``promtool check config``; ValueError with its message if the config is rejected."""
    proc = subprocess.run(
        [str(promtool), "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"promtool rejected {path}: {(proc.stdout + proc.stderr).strip()[-500:]}")


def write_config(path: Path, targets: list[ScrapeTarget], promtool: Path) -> None:
    path.write_text(yaml.safe_dump(render_config(targets), sort_keys=False))
    check_config(promtool, path)


def argv(prometheus: Path, config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        str(prometheus),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=2d",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
