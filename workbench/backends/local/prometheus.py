"""The local mesh's own Prometheus: config rendering (checked by promtool), readiness, and pausing
its scraping while a measurement runs (``pause``/``resume``: the lifecycle API's ``/-/reload``)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
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


def _reload(config: Path, text: str, url: str) -> None:
    """Write ``text`` over ``config`` (atomically) and have Prometheus reload it."""
    tmp = config.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(config)
    requests.post(f"{url}/-/reload", timeout=10).raise_for_status()


def pause(config: Path, url: str) -> None:
    """Stop scraping: reload ``config`` with its scrape jobs removed (the rest unchanged)."""
    quiet = yaml.safe_load(config.read_text())
    quiet["scrape_configs"] = []
    _reload(config, yaml.safe_dump(quiet, sort_keys=False), url)
    time.sleep(0.1)  # a scrape already under way finishes


def resume(config: Path, original: str, url: str) -> None:
    """Scrape again: reload the ``original`` config text."""
    _reload(config, original, url)
