"""Cold (convert + cache) and cached load time and peak memory of the default model.

Each load runs in a fresh subprocess so peak RSS is that load's own:

    python benchmarks/bench_load.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import icl_heads as ih
t1 = time.perf_counter()
model = ih.load_model(cache_dir=sys.argv[1], device="cpu")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run(cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, cache_dir], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = run(cache)
    print(f"{'':8} {'load (s)':>9} {'import (s)':>10} {'peak RSS (GB)':>14}")
    for name, r in (("cold", cold), ("cached", warm)):
        print(f"{name:8} {r['load_s']:9.1f} {r['import_s']:10.1f} {r['peak_rss_gb']:14.2f}")
    print(f"cached load is {cold['load_s'] / warm['load_s']:.0f}x faster than the cold conversion")


if __name__ == "__main__":
    main()
