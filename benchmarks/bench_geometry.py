"""Cost of ``layer_geometry`` on the default model (SmolLM2-135M), measured in one run.

1. ``layer_geometry`` on 128 four-shot sentiment prompts, against one plain batched forward
   pass over the same prompts (``iter_batches`` with no captured hooks, logits at the query
   position):
   * the forward pass that captures the query states (``query_states``, every state):
     target ratio <= 1.2;
   * the whole call (that pass, the probes and every metric with its bootstrap): target
     <= 2x.
   Repetitions are interleaved (plain, states, whole, plain, ...) so machine load hits all
   three alike; ratios of the medians are printed, and per round.
2. The full geometry reproduction (three tasks, default model): its wall time as recorded
   by ``reproduce_geometry`` in ``<out>/<model>/timings.csv`` (the cells computed, not
   loaded); with ``--reproduce`` the reproduction is run now into a temporary directory and
   timed (about an hour on 2 shared cores); ``--quick`` times the quick reproduction (CI).

Run from the project root:  python benchmarks/bench_geometry.py
      (options: --n 128 --k 4 --reps 2 --batch-size 16 --threads 1 --quick --reproduce
       --out docs/results/data/geometry)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

TASKS = ["sentiment", "topic", "category"]


def _time_it(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_ratios(model, n: int, k: int, reps: int, batch_size: int) -> dict:
    import icl_heads as ih
    from icl_heads.activations import iter_batches
    from icl_heads.experiments.geometry import layer_geometry
    from icl_heads.geometry import query_states

    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=k, n=n, seed=0)

    def plain() -> None:
        for _ in iter_batches(model, prompts, batch_size=batch_size, progress=False):
            pass

    def states() -> None:
        query_states(model, prompts, batch_size=batch_size, progress=False)

    def whole() -> None:
        layer_geometry(model, prompts, batch_size=batch_size, progress=False)

    plain()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"plain": [], "states": [], "whole": []}
    for _ in range(reps):
        for name, fn in (("plain", plain), ("states", states), ("whole", whole)):
            times[name].append(_time_it(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    return {
        "n": n,
        "k": k,
        "seq_len": prompts.seq_len,
        "batch_size": batch_size,
        "times": times,
        "states_ratio": med["states"] / med["plain"],
        "whole_ratio": med["whole"] / med["plain"],
        "rounds": [
            (s / p, w / p)
            for p, s, w in zip(times["plain"], times["states"], times["whole"], strict=True)
        ],
    }


def recorded_reproduction(out: Path, model_name: str) -> tuple[float, int, str] | None:
    """Sum of the recorded wall times of the full (not quick) reproduction's cells."""
    import pandas as pd

    path = out / model_name / "timings.csv"
    if not path.is_file():
        return None
    log = pd.read_csv(path)
    log = log[(~log["quick"].astype(bool)) & log["task"].isin(TASKS)]
    log = log.drop_duplicates(["task", "experiment"], keep="last")
    if log.empty:
        return None
    return (
        float(log["seconds"].sum()),
        len(log),
        f"{log['finished'].min()} .. {log['finished'].max()}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 when the machine is loaded)",
    )
    parser.add_argument("--quick", action="store_true", help="time the quick reproduction")
    parser.add_argument(
        "--reproduce", action="store_true", help="run and time the full reproduction now"
    )
    parser.add_argument("--out", default="docs/results/data/geometry")
    args = parser.parse_args()

    import torch

    import icl_heads as ih
    from icl_heads.experiments.geometry import reproduce_geometry

    load = os.getloadavg()[0]
    threads = args.threads or (1 if load > 0.5 * (os.cpu_count() or 1) else None)
    if threads:
        torch.set_num_threads(threads)
    print(
        f"load average {load:.2f} on {os.cpu_count()} cores; torch threads "
        f"{torch.get_num_threads()}"
    )
    model = ih.load_model()

    r = bench_ratios(model, args.n, args.k, args.reps, args.batch_size)
    print(
        f"\nlayer_geometry on {r['n']} prompts (k={r['k']}, {r['seq_len']} tokens, "
        f"batch {r['batch_size']}), interleaved x{args.reps}:"
    )
    for name, values in r["times"].items():
        print(f"  {name:>6}: " + ", ".join(f"{v:.1f} s" for v in values))
    print(f"  capturing forward / plain forward: {r['states_ratio']:.2f}  (target <= 1.2)")
    print(f"  whole call        / plain forward: {r['whole_ratio']:.2f}  (target <= 2.0)")
    print(
        "  per round (states, whole): " + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in r["rounds"])
    )

    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            t = _time_it(lambda: reproduce_geometry(model, TASKS, tmp, quick=True, progress=False))
        print(f"\nquick reproduction (3 tasks, default model): {t:.0f} s")
    if args.reproduce:
        with tempfile.TemporaryDirectory() as tmp:
            t = _time_it(lambda: reproduce_geometry(model, TASKS, tmp, progress=False))
        print(f"\nfull reproduction (3 tasks, default model), run now: {t / 60:.1f} min")
    recorded = recorded_reproduction(Path(args.out), model.cfg.model_name)
    if recorded is None:
        print(
            f"\nfull reproduction: no timings recorded under {args.out} (run "
            "icl-heads reproduce --experiments geometry, or pass --reproduce)"
        )
    else:
        seconds, cells, when = recorded
        print(
            f"\nfull reproduction (3 tasks, default model), as recorded in {args.out}: "
            f"{seconds / 60:.1f} min over {cells} cells ({when})"
        )


if __name__ == "__main__":
    main()
