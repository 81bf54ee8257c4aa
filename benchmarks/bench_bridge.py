"""Benchmark the two backends on the default model (SmolLM2-135M): the query-position head
sweep (zero ablation of each of the 270 heads at the query, metric logit_diff, the fast
engine), TSLA and the detectors (``detect_heads``), each as a ratio to one plain forward
pass over the same prompts, on ``HookedTransformer`` (TransformerLens 3.x only) and on the
``TransformerBridge``.

Run from the project root:  python benchmarks/bench_bridge.py [--n 32 --k 4 --threads 1]
(on a shared machine pin it to one core too: ``taskset -c 0 python benchmarks/...``).

Prints, all measured in this one run: the TransformerLens version; per backend the plain
forward (``collect`` of the query logits, batches of 16: the pass the naive sweep makes once
per head), the fast query sweep, TSLA and ``detect_heads`` (the three token detectors on
their default random sequences plus label attention on the prompts), their ratios to the
plain forward, and which engine the sweep took (``icl_heads.backends.supports_engine``);
where both backends run, the largest difference of their sweep, TSLA and detector scores;
last, one table of the ratios per backend (the "Measured" table of docs/foundation.md). ``--naive-heads N`` also times the naive loop on
``N`` heads of the bridge and checks the fast sweep against it there.

Threads: one by default (``--threads``); on a shared machine more threads give unstable
ratios (see benchmarks/bench_patching.py). Clock: this process's CPU time by default
(``--clock cpu``; with one thread it is the compute time, which other jobs on the core do
not stretch), or ``--clock wall``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import statistics
import time

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(fn, repeat: int = 1, clock: str = "cpu") -> tuple[float, object]:
    """Median time of ``repeat`` calls of ``fn`` on ``clock`` and its last result. ``cpu``
    (this process's CPU time; one thread) is not stretched by other jobs sharing the core,
    which make wall-clock ratios swing by 2-5x on a shared machine; ``wall`` is what a
    user waits on a quiet one."""
    times, out = [], None
    for _ in range(repeat):
        t0 = CLOCKS[clock]()
        out = fn()
        times.append(CLOCKS[clock]() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--naive-heads", type=int, default=0, help="heads of a naive check")
    parser.add_argument("--backends", default="hooked,bridge")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time or wall time"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import numpy as np

    import icl_heads as ih
    from icl_heads import backends
    from icl_heads.activations import collect
    from icl_heads.heads import Head
    from icl_heads.patching import head_sweep

    tm = functools.partial(timed, clock=args.clock)  # every timing on the chosen clock
    wanted = [b for b in args.backends.split(",") if b]
    if not backends.hooked_available():
        wanted = [b for b in wanted if b != "hooked"]
    print(
        f"transformer-lens {importlib.metadata.version('transformer-lens')} "
        f"transformers {importlib.metadata.version('transformers')} "
        f"torch {torch.__version__} threads={torch.get_num_threads()} "
        f"cpu_count={os.cpu_count()} load={os.getloadavg()[0]:.1f} clock={args.clock}"
    )
    task = ih.load_task(args.task)
    prompts, sweeps, tslas, detected, rows = None, {}, {}, {}, []
    for backend in wanted:
        t_load, model = tm(lambda backend=backend: ih.load_model(backend=backend))
        if prompts is None:
            prompts = ih.build_prompts(model, task, k=args.k, n=args.n, seed=args.seed)
            print(f"prompts: {prompts}")
        engine = "cached-prefix engine" if backends.supports_engine(model) else "full passes"
        print(f"\n[{backend}] {type(model).__name__}, load {t_load:.1f} s, sweep path: {engine}")
        with torch.inference_mode():
            collect(model, prompts, progress=False)  # warm-up
            t_fwd, _ = tm(
                lambda model=model, prompts=prompts: collect(model, prompts, progress=False), 3
            )
        t_sweep, sweep = tm(
            lambda model=model, prompts=prompts: head_sweep(
                model, prompts, "logit_diff", mode="zero", positions="query", progress=False
            )
        )
        t_tsla, tsla = tm(
            lambda model=model, prompts=prompts: ih.tsla_scores(model, prompts, progress=False)
        )
        t_detect, detect = tm(
            lambda model=model, prompts=prompts: ih.detect_heads(model, prompts, progress=False)
        )
        sweeps[backend], tslas[backend], detected[backend] = sweep, tsla, detect
        print(f"  plain forward ({len(prompts)} prompts): {t_fwd:.2f} s (median of 3)")
        print(f"  query head sweep (270 heads): {t_sweep:.1f} s")
        print(f"  tsla_scores: {t_tsla:.2f} s")
        print(f"  RATIO query sweep / plain forward = {t_sweep / t_fwd:.1f}x")
        print(f"  detect_heads: {t_detect:.2f} s")
        print(f"  RATIO tsla / plain forward = {t_tsla / t_fwd:.1f}x")
        print(f"  RATIO detect_heads / plain forward = {t_detect / t_fwd:.1f}x")
        rows.append((backend, t_fwd, t_sweep / t_fwd, t_tsla / t_fwd, t_detect / t_fwd))
        if args.naive_heads and backend == "bridge":
            L, H = model.cfg.n_layers, model.cfg.n_heads
            flat = np.linspace(0, L * H - 1, args.naive_heads).round().astype(int)
            heads = [Head(int(i) // H, int(i) % H) for i in flat]
            t_naive, naive = tm(
                lambda model=model, prompts=prompts, heads=heads: head_sweep(
                    model, prompts, heads=heads, method="naive", progress=False
                )
            )
            sel = ~torch.isnan(naive.scores)
            diff = (naive.per_prompt - sweep.per_prompt)[:, sel].abs().max().item()
            per_head = t_naive / len(heads)
            print(
                f"  naive loop: {per_head:.2f} s per head ({len(heads)} timed) = "
                f"{per_head * L * H / t_fwd:.0f}x plain forward for 270 heads; "
                f"max |fast - naive| {diff:.2e}"
            )
        del model
    if len(sweeps) == 2:
        a, b = sweeps["hooked"].per_prompt, sweeps["bridge"].per_prompt
        print(f"\nmax |hooked - bridge| sweep effect per prompt: {(a - b).abs().max().item():.2e}")
        for i, (tr, tl) in enumerate(zip(tslas["hooked"], tslas["bridge"], strict=True)):
            diff = (tr.scores - tl.scores).abs().nan_to_num().max().item()
            print(f"max |hooked - bridge| TSLA map {i} score: {diff:.2e}")
        h, g = detected["hooked"], detected["bridge"]
        cols = [c for c in h.columns if c.endswith("_score") or c == "gold_label_share"]
        diff = np.nanmax((h[cols].to_numpy(float) - g[cols].to_numpy(float)).__abs__())
        same = (h["kind"] == g["kind"]).all()
        print(f"max |hooked - bridge| detector score: {diff:.2e}; same kinds: {same}")
    print("\n| backend | plain forward (s) | query sweep | TSLA | detect_heads |")
    print("|---|---|---|---|---|")
    for backend, t_fwd, r_sweep, r_tsla, r_detect in rows:
        print(f"| {backend} | {t_fwd:.2f} | {r_sweep:.1f}x | {r_tsla:.1f}x | {r_detect:.1f}x |")


if __name__ == "__main__":
    main()
