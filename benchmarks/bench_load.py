"""Cold (convert + cache) and cached load time, peak memory and cache disk use of an
embedded model (default: SmolLM2-135M). Run from the project root:

    python benchmarks/bench_load.py                        # the default model
    python benchmarks/bench_load.py --model gemma-3-270m   # the optional Gemma 3 270M

Each load runs in a fresh subprocess so peak RSS is that load's own; the cache is a
temporary directory, so the cold load really converts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import icl_heads as ih
t1 = time.perf_counter()
model = ih.load_model(sys.argv[2], cache_dir=sys.argv[1], device="cpu")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run(cache_dir: str, model: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cache_dir, model], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def disk_use_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="an embedded model name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache, args.model)
        warm = run(cache, args.model)
        entries = {p.name: disk_use_mb(p) for p in (Path(cache) / "models").iterdir()}
        leftover = disk_use_mb(Path(cache) / "gguf") if (Path(cache) / "gguf").exists() else 0.0
    print(f"{'':8} {'load (s)':>9} {'import (s)':>10} {'peak RSS (GB)':>14}")
    for name, r in (("cold", cold), ("cached", warm)):
        print(f"{name:8} {r['load_s']:9.1f} {r['import_s']:10.1f} {r['peak_rss_gb']:14.2f}")
    print(f"cached load is {cold['load_s'] / warm['load_s']:.0f}x faster than the cold conversion")
    for name, mb in entries.items():
        print(f"cache entry {name}: {mb:.0f} MB")
    print(f"assembled GGUF files left in the cache: {leftover:.0f} MB")


if __name__ == "__main__":
    main()
