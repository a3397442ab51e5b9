"""Record the A/A sample the calibration uses: catalog v1 and v2 (identical) live at 50/50.

    python benchmarks/record_sample.py [--seconds 180] [--rps 1000]

Writes ``data/sample/local-aa-<rps>rps.parquet`` (timestamp, latency_ms, status, variant) and
prints its size and per-variant summary. Both versions behave identically, so any difference
between the arms is noise: exactly what an A/A replay needs, with the real mesh's bursts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.backends.local import LocalMesh
from workbench.load.results import LoadProfile

OUT = Path(__file__).resolve().parents[1] / "data" / "sample"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--rps", type=float, default=1000)
    args = ap.parse_args(argv)
    with LocalMesh(mode="both", wait_for_metrics=False) as mesh:
        mesh.set_split("catalog", {"v1": 50, "v2": 50})
        result = mesh.run_load(
            "catalog", LoadProfile(rps=args.rps, connections=32, duration_s=args.seconds, warmup_s=5)
        )
    samples = result.samples[["timestamp", "latency_ms", "status", "variant"]].copy()
    samples["latency_ms"] = samples["latency_ms"].astype("float32")
    samples["status"] = samples["status"].astype("int16")
    samples["variant"] = samples["variant"].astype("category")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"local-aa-{args.rps:g}rps.parquet"
    samples.to_parquet(path, compression="zstd", index=False)
    print(f"{path}: {path.stat().st_size / 2**20:.2f} MiB, {len(samples)} requests")
    print(samples.groupby("variant", observed=True)["latency_ms"].describe(percentiles=[0.5, 0.9, 0.99]))


if __name__ == "__main__":
    main()
