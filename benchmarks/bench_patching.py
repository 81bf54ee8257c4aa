"""Benchmark the patching sweeps on the default model (SmolLM2-135M, 30 layers x 9 heads).

Run from the project root:  python benchmarks/bench_patching.py [--n 32 --k 4 --threads 1]

Prints, all measured in this one run:

1. Query-position head sweep (zero ablation of each of the 270 heads at the query position,
   metric logit_diff, ``--n`` prompts): the fast sweep vs the naive loop (one full batched
   forward pass over the prompts per head). The naive loop costs the same for every head,
   so by default it is timed on ``--naive-heads`` heads spread over the layers and its
   per-head time is multiplied by 270 (``--naive-heads 270`` times the whole loop). The
   fast results are checked against the naive ones on the timed heads.
2. All-position head patching sweep vs TransformerLens's
   ``patching.get_act_patch_attn_head_out_all_pos`` on the same work: ``--tl-n`` prompts of
   equal length (TransformerLens's function takes no attention mask, so no padding), the
   corrupted run = the same prompts with every demonstration label flipped, the clean run =
   the original prompts; every head's ``z`` patched clean -> corrupted at all positions;
   metric = mean gold-label logit difference. Results are checked against each other.
3. Attribution patching (one forward + one backward per batch) vs the exact query-position
   sweep from (1): time ratio and Spearman / Pearson correlation over the 270 heads.

Threads: on a shared 2-core machine, PyTorch's 2-thread kernels stall whenever another
process holds a core (a forward pass measured 19 s instead of 1 s), so the default is one
thread (``--threads``), which gives stable ratios.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=32, help="prompts for sweeps 1 and 3")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--naive-heads", type=int, default=10, help="heads timed in the naive loop (270 = all)"
    )
    parser.add_argument("--tl-n", type=int, default=1, help="equal-length prompts for sweep 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: query,allpos,attr")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from transformer_lens import patching as tl_patching

    import icl_heads as ih
    from icl_heads.heads import Head
    from icl_heads.metrics import logit_diff
    from icl_heads.patching import attribution_patching, head_sweep
    from icl_heads.prompts import shift_demo_labels

    skip = set(filter(None, args.skip.split(",")))
    model = ih.load_model()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    task = ih.load_task(args.task)
    prompts = ih.build_prompts(model, task, k=args.k, n=args.n, seed=args.seed)
    print(
        f"model={model.cfg.model_name} layers={L} heads={H} threads={torch.get_num_threads()} "
        f"cpu_count={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    print(f"prompts: {prompts}")

    exact = None
    if "query" not in skip:
        print("\n[1] query-position zero-ablation sweep, all heads, metric logit_diff")
        t0 = time.perf_counter()
        exact = head_sweep(
            model, prompts, "logit_diff", mode="zero", positions="query", progress=False
        )
        t_fast = time.perf_counter() - t0
        n_naive = min(args.naive_heads, L * H)
        flat = np.linspace(0, L * H - 1, n_naive).round().astype(int)
        heads = [Head(int(i) // H, int(i) % H) for i in flat]
        t0 = time.perf_counter()
        naive = head_sweep(
            model,
            prompts,
            "logit_diff",
            mode="zero",
            positions="query",
            heads=heads,
            method="naive",
            progress=False,
        )
        t_naive_sample = time.perf_counter() - t0
        t_naive = t_naive_sample / n_naive * L * H
        sel = ~torch.isnan(naive.scores)
        diff = (naive.per_prompt - exact.per_prompt)[:, sel].abs().max().item()
        label = (
            "measured"
            if n_naive == L * H
            else f"{n_naive} heads measured ({t_naive_sample:.1f} s), x{L * H / n_naive:.0f}"
        )
        print(f"  fast sweep (270 heads x {len(prompts)} prompts): {t_fast:.1f} s")
        print(f"  naive loop, one full pass per head: {t_naive:.1f} s ({label})")
        print(f"  max |fast - naive| per prompt on the timed heads: {diff:.2e}")
        print(f"  RATIO query sweep naive/fast = {t_naive / t_fast:.1f}x")

    if "allpos" not in skip:
        print(
            "\n[2] all-position head patching sweep vs TransformerLens "
            "get_act_patch_attn_head_out_all_pos"
        )
        pool = ih.build_prompts(model, task, k=args.k, n=max(64, 4 * args.tl_n), seed=args.seed + 1)
        lengths = pool.lengths
        values, counts = torch.unique(lengths, return_counts=True)
        length = int(values[counts.argmax()])
        idx = (lengths == length).nonzero().flatten()[: args.tl_n]
        clean = pool.select(idx)  # equal lengths: no padding at all
        corrupted = shift_demo_labels(clean)
        print(f"  {len(clean)} prompt(s) of {length} tokens; corrupted = demo labels flipped")

        gold, labels = corrupted.gold, corrupted.label_token_ids

        def tl_metric(logits):
            return logit_diff(logits[:, -1], gold, labels).mean()

        tl_patching.tqdm = lambda rows, **kwargs: rows  # silence its per-row progress bar
        with torch.inference_mode():
            t0 = time.perf_counter()
            _, clean_cache = model.run_with_cache(clean.tokens)
            tl = tl_patching.get_act_patch_attn_head_out_all_pos(
                model, corrupted.tokens, clean_cache, tl_metric
            )
            t_tl = time.perf_counter() - t0
            del clean_cache
        t0 = time.perf_counter()
        ours = head_sweep(
            model,
            corrupted,
            "logit_diff",
            mode="patch",
            source=clean,
            positions="all",
            progress=False,
        )
        t_ours = time.perf_counter() - t0
        clean_metric = ours.baseline
        diff = (tl.cpu() - clean_metric - ours.scores).abs().max().item()
        print(f"  TransformerLens: {t_tl:.1f} s (incl. its clean run_with_cache)")
        print(
            f"  ours (fast, start_at_layer + batched heads): {t_ours:.1f} s "
            "(incl. caching the source activations and the clean run)"
        )
        print(
            f"  max |TL - ours| over heads: {diff:.2e} (largest |effect| "
            f"{ours.scores.abs().max().item():.3f})"
        )
        print(f"  RATIO all-position sweep TL/ours = {t_tl / t_ours:.1f}x")

    if "attr" not in skip:
        print("\n[3] attribution patching vs exact query-position sweep (zero ablation)")
        if exact is None:
            t0 = time.perf_counter()
            exact = head_sweep(
                model, prompts, "logit_diff", mode="zero", positions="query", progress=False
            )
            t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        attr = attribution_patching(
            model, prompts, "logit_diff", mode="zero", positions="query", progress=False
        )
        t_attr = time.perf_counter() - t0
        a, e = attr.scores.flatten().numpy(), exact.scores.flatten().numpy()
        rho = spearmanr(a, e).statistic
        r = pearsonr(a, e).statistic
        top = set(exact.top(10, by_abs=True)) & set(attr.top(10, by_abs=True))
        print(
            f"  attribution patching: {t_attr:.1f} s; exact fast sweep: {t_fast:.1f} s "
            f"(ratio {t_fast / t_attr:.1f}x)"
        )
        print(
            f"  Spearman rho = {rho:.3f}, Pearson r = {r:.3f}, top-10 |effect| overlap = "
            f"{len(top)}/10"
        )


if __name__ == "__main__":
    main()
