"""Run every benchmark in this folder and print its figures: ``python benchmarks/run.py [NAME ...]``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> None:
    # record_*.py make data (e.g. data/sample/), they are not benchmarks: run them by name.
    modules = sorted(p for p in HERE.glob("*.py") if p.name != "run.py" and not p.name.startswith("record_"))
    chosen = [p for p in modules if not names or p.stem in names]
    unknown = set(names) - {p.stem for p in modules}
    if unknown:
        there = ", ".join(p.stem for p in modules)
        sys.exit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; there are: {there}")
    for path in chosen:
        print(f"== {path.stem}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
