"""Record the topology sample: a local-mesh run with a baseline half and a known-culprit half.

    python benchmarks/record_topology_sample.py [--rps 80] [--seconds 12] [--service reviews] [--delay-ms 6]

Runs the ``topology`` experiment kind on a fresh local mesh (mode both): load on frontend, the
second half with ``--service``'s stable version slower by ``--delay-ms``. Writes to
``data/sample/topology/``: ``access_logs.parquet`` (every sidecar's records; request ids as
integers, to stay small), ``prometheus.json.gz`` (both views of the envoy dialect, per 2 s window)
and ``meta.json`` (phases, the change, the load). Tests build the graph and localize from it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from workbench.experiments import open_session, topology

OUT = Path(__file__).resolve().parents[1] / "data" / "sample" / "topology"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rps", type=float, default=80)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--service", default="reviews")
    ap.add_argument("--delay-ms", type=float, default=6)
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="record-topology-"))
    try:
        (work / "experiments.yaml").write_text(
            "backend: local\nexperiments:\n"
            f"  - {{name: sample, kind: topology, rps: {args.rps:g}, duration: {args.seconds:g}s,\n"
            "     warmup: 2s,\n"
            f"     change: {{service: {args.service}, service_time_ms: {args.delay_ms:g}}}}}\n"
        )
        s = open_session(work / "experiments.yaml", "sample", run_dir=work / "run")
        try:
            result = s.execute(topology)
        finally:
            s.close()
        store = s.store
        logs = topology.stored_logs(store)
        assert logs is not None
        logs = logs.assign(request_id=pd.factorize(logs["request_id"])[0].astype("int32"))
        for column in (
            "sidecar",
            "service",
            "version",
            "direction",
            "flags",
            "destination",
            "dest_version",
            "caller",
        ):
            logs[column] = logs[column].astype("category")
        logs["status"] = logs["status"].astype("int16")
        OUT.mkdir(parents=True, exist_ok=True)
        logs.to_parquet(OUT / "access_logs.parquet", compression="zstd", index=False)
        with gzip.open(OUT / "prometheus.json.gz", "wt", encoding="utf-8") as fh:
            fh.write((store / "prometheus.json").read_text())
        meta = {
            **json.loads((store / "phases.json").read_text()),
            "rps": args.rps,
            "seconds": args.seconds,
            "entry": "frontend",
            "recorded_by": "benchmarks/record_topology_sample.py",
            "verdict": result.verdict,
            "headline": result.headline,
        }
        (OUT / "meta.json").write_text(json.dumps(meta, indent=1))
        for path in sorted(OUT.iterdir()):
            print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
        print(result.headline)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
