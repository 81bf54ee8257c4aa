"""TSLA scoring cost on the default model (SmolLM2-135M), measured in one run.

1. Time: ``tsla_scores`` vs one plain batched forward pass over the same prompts (through
   ``iter_batches`` with no captured hooks, logits at the query position). Repetitions are
   interleaved (plain, TSLA, plain, TSLA, ...) so machine load hits both alike; the ratio
   of the medians is reported. Target: <= 1.5x.
2. Memory: peak resident memory (RSS, sampled every 5 ms by a thread) during
   ``tsla_scores`` over n=50 vs n=1000 prompts, each in a fresh subprocess after loading
   the model and a warm-up call. Target: the two peaks within 10% (memory independent of
   the number of prompts). The part added over the RSS before the call is printed too; it
   grows over the first few batches (allocator caching) and then stays flat.

Run from the project root:  python benchmarks/bench_tsla.py
      (options: --n 32 --k 4 --reps 3 --mem-k 1 --mem-n 50 1000 --batch-size 16)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time


def _time_it(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_time(n: int, k: int, reps: int, batch_size: int) -> dict:
    import icl_heads as ih
    from icl_heads.activations import iter_batches
    from icl_heads.attribution import tsla_scores

    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=k, n=n, seed=0)

    def plain() -> None:
        for _ in iter_batches(model, prompts, batch_size=batch_size, progress=False):
            pass

    def tsla() -> None:
        tsla_scores(model, prompts, batch_size=batch_size, progress=False)

    plain()  # warm-up (allocator, kernels)
    t_plain, t_tsla = [], []
    for _ in range(reps):
        t_plain.append(_time_it(plain))
        t_tsla.append(_time_it(tsla))
    return {
        "n": n,
        "k": k,
        "seq_len": prompts.seq_len,
        "batch_size": batch_size,
        "plain_s": t_plain,
        "tsla_s": t_tsla,
        "ratio_of_medians": statistics.median(t_tsla) / statistics.median(t_plain),
        "ratios": [b / a for a, b in zip(t_plain, t_tsla, strict=True)],
    }


def memory_worker(n: int, k: int, batch_size: int) -> dict:
    """Runs in a fresh process: peak RSS added by tsla_scores over n prompts."""
    import gc
    import resource

    import psutil

    import icl_heads as ih
    from icl_heads.attribution import tsla_scores

    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=k, n=n, seed=0)
    # warm up on a few prompts so one-time allocations do not count against either n
    tsla_scores(
        model, prompts.select(range(min(batch_size, n))), batch_size=batch_size, progress=False
    )
    gc.collect()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    tsla_scores(model, prompts, batch_size=batch_size, progress=False)
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = max(peak, proc.memory_info().rss)
    return {
        "n": n,
        "k": k,
        "seq_len": prompts.seq_len,
        "seconds": elapsed,
        "rss_before_mb": base / 2**20,
        "peak_added_mb": (peak - base) / 2**20,
        "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_memory(ns: list[int], k: int, batch_size: int) -> list[dict]:
    out = []
    for n in ns:
        cmd = [
            sys.executable,
            __file__,
            "--memory-worker",
            str(n),
            "--mem-k",
            str(k),
            "--batch-size",
            str(batch_size),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="prompts for the timing part")
    parser.add_argument("--k", type=int, default=4, help="demonstrations (timing part)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mem-k", type=int, default=1, help="demonstrations (memory part)")
    parser.add_argument("--mem-n", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args.memory_worker, args.mem_k, args.batch_size)))
        return

    if not args.skip_time:
        t = bench_time(args.n, args.k, args.reps, args.batch_size)
        print(
            f"[time] sentiment, n={t['n']} prompts, k={t['k']}, seq_len={t['seq_len']}, "
            f"batch_size={t['batch_size']}, {args.reps} interleaved repetitions"
        )
        print("  plain forward (s): " + ", ".join(f"{x:.2f}" for x in t["plain_s"]))
        print("  tsla_scores   (s): " + ", ".join(f"{x:.2f}" for x in t["tsla_s"]))
        print("  per-repetition ratios: " + ", ".join(f"{x:.2f}" for x in t["ratios"]))
        verdict = "OK" if t["ratio_of_medians"] <= 1.5 else "ABOVE TARGET"
        print(
            f"  TSLA / plain forward (ratio of medians) = {t['ratio_of_medians']:.2f}x "
            f"(target <= 1.5x: {verdict})"
        )
    if not args.skip_memory:
        rows = bench_memory(args.mem_n, args.mem_k, args.batch_size)
        print(
            f"[memory] sentiment, k={args.mem_k}, batch_size={args.batch_size}, each n in a "
            "fresh process; RSS sampled every 5 ms"
        )
        for r in rows:
            r["peak_during_mb"] = r["rss_before_mb"] + r["peak_added_mb"]
            print(
                f"  n={r['n']:>5}: seq_len={r['seq_len']}, {r['seconds']:.1f} s, RSS before "
                f"{r['rss_before_mb']:.0f} MB, peak during TSLA {r['peak_during_mb']:.0f} MB "
                f"(+{r['peak_added_mb']:.1f} MB), process peak incl. model loading "
                f"{r['process_peak_mb']:.0f} MB"
            )
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            ratio = large["peak_during_mb"] / small["peak_during_mb"]
            verdict = "OK" if abs(ratio - 1) <= 0.10 else "ABOVE TARGET"
            print(
                f"  peak RSS during TSLA, n={large['n']} / n={small['n']} = {ratio:.3f} "
                f"(target within 10%: {verdict}); memory added by TSLA "
                f"{small['peak_added_mb']:.0f} -> {large['peak_added_mb']:.0f} MB for "
                f"{large['n'] / small['n']:.0f}x the prompts"
            )


if __name__ == "__main__":
    main()
