"""Cost of ``head_ablation_geometry`` (``icl-heads geometry --ablate``) per condition, relative
to one plain ``layer_geometry`` run on the same prompts (default model, SmolLM2-135M),
measured in one run:

* ``plain``: ``layer_geometry(model, prompts)`` (one pass, every state measured);
* ``shared`` (now): ``head_ablation_geometry`` with the PTH and IH sets of the token
  detectors and ``--n-random`` layer-matched random sets per set: one clean pass shared by
  every ablated run, each restarting at its first ablated block, the clean states measured
  once (target: <= 1.5x plain per condition);
* ``per_condition`` (before): the same conditions, one full pass and one full measurement
  each (the old implementation, reconstructed here with the same head sets).

Both paths give the same tables (the benchmark checks it, within 1e-6). The detectors
(finding the sets) run once, before timing. Torch is pinned to ``--threads`` (default 1).

Run from the project root:  python benchmarks/bench_geometry_ablate.py
      (options: --n 64 --k 4 --n-random 5 --n-boot 1000 --batch-size 16 --threads 1
       --skip-old)
The CLI defaults (``geometry --ablate``): n=64, k=4, top-k 3% of heads, n_random=5: 13
conditions (baseline, PTH, 5 random_PTH sets, IH, 5 random_IH sets).
"""

from __future__ import annotations

import argparse
import time


def per_condition_path(model, prompts, result, background=()):
    """The old implementation: one full ``run_query`` and ``measure_geometry`` per condition
    (the head sets of ``result.tables["heads"]``), random sets pooled."""
    import pandas as pd

    import icl_heads as ih
    from icl_heads.experiments.geometry.curves import curve_rows, measure_geometry, pool_sets
    from icl_heads.geometry import run_query

    s = result.settings
    layers = list(s.layers)
    geo = dict(folds=s.folds, seed=s.seed, n_boot=s.n_boot, C=s.C)

    def measure(heads):
        ivs = [ih.ablate(model, heads, s.mode, s.positions, seed=s.seed)] if heads else []
        states, _ = run_query(
            model, prompts, layers, interventions=[*background, *ivs], progress=False
        )
        return measure_geometry(model, prompts, states, layers, **geo)

    rows = curve_rows(measure([]), "baseline")
    sets = result.tables["heads"]
    for name in dict.fromkeys(sets["condition"]):
        mine = sets[sets["condition"] == name]
        curves = [
            measure(list(zip(g["layer"], g["head"], strict=True)))
            for _, g in mine.groupby("set", sort=True)
        ]
        pooled = pool_sets(curves, s.seed) if name.startswith("random") else curves[0]
        rows += curve_rows(pooled, name)
    return pd.DataFrame(rows)


def max_difference(got, want) -> float:
    import numpy as np

    merged = got.merge(want, on=["condition", "metric", "layer"], suffixes=("", "_ref"))
    worst = 0.0
    for col in ("value", "ci_low", "ci_high"):
        a, b = merged[col].to_numpy(float), merged[f"{col}_ref"].to_numpy(float)
        ok = ~(np.isnan(a) & np.isnan(b))
        diff = np.abs(a[ok] - b[ok])
        worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
        if np.isnan(diff).any():
            worst = float("inf")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--n-random", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-old", action="store_true", help="do not time the old path")
    args = parser.parse_args()

    import torch

    import icl_heads as ih
    from icl_heads.detectors import token_detector_scores
    from icl_heads.experiments.geometry import head_ablation_geometry, layer_geometry

    torch.set_num_threads(args.threads)
    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=args.k, n=args.n, seed=0)
    detected = token_detector_scores(
        model, detectors=["previous_token", "induction"], seed=0, progress=False
    )
    heads = {"PTH": detected["previous_token"], "IH": detected["induction"]}
    opts = dict(n_boot=args.n_boot, batch_size=args.batch_size, progress=False)

    def plain_run() -> float:
        t0 = time.perf_counter()
        layer_geometry(model, prompts, **opts)
        return time.perf_counter() - t0

    plains = [plain_run()]
    t0 = time.perf_counter()
    result = head_ablation_geometry(model, prompts, heads, n_random=args.n_random, **opts)
    shared = time.perf_counter() - t0
    plains.append(plain_run())  # before and after: machine load hits both alike
    plain = sum(plains) / len(plains)
    n_cond = 1 + len(result.tables["heads"].groupby(["condition", "set"]))
    firsts = result.tables["heads"].groupby(["condition", "set"])["layer"].min()
    print(
        f"{model.cfg.model_name}: {args.n} prompts (k={args.k}, {prompts.seq_len} tokens), "
        f"{model.cfg.n_layers} blocks, n_boot={args.n_boot}, torch threads "
        f"{torch.get_num_threads()}; {n_cond} conditions (sets: "
        + ", ".join(f"{k}: {v}" for k, v in result.settings.heads.items())
        + f"; first ablated blocks {sorted(set(firsts.tolist()))})"
    )
    print(
        f"  plain layer_geometry:            {plain:7.1f} s (mean of "
        + ", ".join(f"{p:.1f}" for p in plains)
        + ")"
    )
    print(
        f"  shared (now):                    {shared:7.1f} s = {shared / n_cond:6.1f} s per "
        f"condition = {shared / n_cond / plain:.2f} x plain per condition (target <= 1.5)"
    )
    if not args.skip_old:
        t0 = time.perf_counter()
        want = per_condition_path(model, prompts, result)
        old = time.perf_counter() - t0
        print(
            f"  per condition (before):          {old:7.1f} s = {old / n_cond:6.1f} s per "
            f"condition = {old / n_cond / plain:.2f} x plain per condition"
        )
        print(
            f"  speed-up: {old / shared:.2f} x; max |table difference|: "
            f"{max_difference(result.table, want):.2e}"
        )


if __name__ == "__main__":
    main()
