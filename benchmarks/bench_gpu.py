"""The papers' model shapes on a GPU, without downloading them: random-initialised models with
the exact shapes of SmolLM2-135M, Llama-3.2-1B and Llama-3-8B (TransformerLens configs
written out below; the embedded SmolLM2 tokenizer, so no hub access), timed in one run.

Per shape and dtype it prints: one plain forward pass over 64 k=4 prompts; the fast query
sweep (its ratio to the forward and to the naive loop, which is timed on a few heads and
extrapolated to all of them); TSLA; the detectors; ``find_task_heads`` +
``ablation_experiment``; ``layer_geometry``; the peak GPU memory (next to the weights);
and the largest fast-vs-naive difference on the timed heads. Batch sizes are ``"auto"``.

Targets (issue 20): on a GPU the fast query sweep <= 4x one forward and >= 20x faster than
the naive loop at every shape, TSLA <= 1.5x one forward, the 8B shape's peak memory in
bfloat16 <= 1.3x the weights plus one forward's activations. On a CPU (where only the
135M shape runs, and the script says no GPU was found): the sweep ~3.5-3.9x one forward.

The weights are random, so accuracies are chance; the timings and memory are those of the
real shapes (prompt lengths come from the real tokenizer).

Run from the project root:  python benchmarks/bench_gpu.py
      (options: --shapes SmolLM2-135M Llama-3-8B --dtypes bfloat16 --n 64 --k 4
       --naive-heads 3 --quick: skip the experiments)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

#: What every shape shares: Llama's architecture, as TransformerLens loads it with the
#: weights processed (``fold_ln``: the norms' weights folded in, so ``RMSPre``).
COMMON = dict(
    act_fn="silu",
    normalization_type="RMSPre",
    final_rms=True,
    positional_embedding_type="rotary",
    gated_mlp=True,
    eps=1e-5,
    original_architecture="LlamaForCausalLM",
    default_prepend_bos=True,
    tokenizer_prepends_bos=True,
)
#: The shapes, as TransformerLens configures the real models (d_vocab: each model's own
#: vocabulary; the prompts use the SmolLM2 tokenizer's first 49152 ids).
SHAPES: dict[str, dict] = {
    "SmolLM2-135M": dict(
        n_layers=30,
        d_model=576,
        n_heads=9,
        n_key_value_heads=3,
        d_head=64,
        d_mlp=1536,
        d_vocab=49152,
        n_ctx=8192,
        rotary_base=100000.0,
    ),
    "Llama-3.2-1B": dict(
        n_layers=16,
        d_model=2048,
        n_heads=32,
        n_key_value_heads=8,
        d_head=64,
        d_mlp=8192,
        d_vocab=128256,
        n_ctx=2048,
        rotary_base=500000.0,
        use_NTK_by_parts_rope=True,
        NTK_by_parts_factor=32.0,
        NTK_by_parts_low_freq_factor=1.0,
        NTK_by_parts_high_freq_factor=4.0,
        NTK_original_ctx_len=8192,
    ),
    "Llama-3-8B": dict(
        n_layers=32,
        d_model=4096,
        n_heads=32,
        n_key_value_heads=8,
        d_head=128,
        d_mlp=14336,
        d_vocab=128256,
        n_ctx=8192,
        rotary_base=500000.0,
    ),
}


def shape_config(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    d_head: int | None = None,
) -> HookedTransformerConfig:
    """The TransformerLens config of shape ``name``; ``d_head`` (for tests) shrinks the
    width keeping every ratio: ``d_model = n_heads * d_head`` and ``d_mlp / d_model``, with
    the layers, heads, key/value heads (GQA), rotary settings and vocabulary unchanged."""
    if name not in SHAPES:
        raise ValueError(f"Unknown shape {name!r}; choose one of {list(SHAPES)}.")
    shape = dict(SHAPES[name])
    if d_head is not None:
        ratio = shape["d_mlp"] / shape["d_model"]
        shape["d_head"] = d_head
        shape["d_model"] = shape["n_heads"] * d_head
        shape["d_mlp"] = round(ratio * shape["d_model"])
    return HookedTransformerConfig(
        **COMMON, **shape, rotary_dim=shape["d_head"], dtype=dtype, device=device
    )


def weight_count(cfg: HookedTransformerConfig) -> int:
    """Parameters of a (processed) Llama-shaped model: embedding, unembedding, attention
    (GQA) and gated MLP weights; the zero biases TransformerLens keeps are counted too."""
    d, H, kv, dh, m, V, L = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_key_value_heads,
        cfg.d_head,
        cfg.d_mlp,
        cfg.d_vocab,
        cfg.n_layers,
    )
    attn = 2 * H * d * dh + 2 * kv * d * dh + (H + 2 * kv) * dh + d  # W_Q, W_O, W_K, W_V, b
    mlp = 3 * d * m + m + d  # W_gate, W_in, W_out, b_in, b_out
    return V * d + d * V + V + L * (attn + mlp)


def build_model(cfg: HookedTransformerConfig, tokenizer, seed: int = 0) -> HookedTransformer:
    """A random-initialised model of ``cfg``, created directly on ``cfg.device`` (an 8B
    model never passes through the CPU)."""
    torch.manual_seed(seed)
    with torch.device(cfg.device):
        model = HookedTransformer(
            cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left"
        )
    model.eval()
    return model


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _peak_gb(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU, allocated)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return f"{rss:.2f} GiB (CPU: peak RSS of the process; no GPU memory)"


def bench_shape(name: str, dtype: torch.dtype, device: torch.device, args, tokenizer) -> None:
    import icl_heads as ih
    from icl_heads.activations import iter_batches

    def say(what: str, value: str) -> None:
        print(f"  {what:<34} {value}", flush=True)

    cfg = shape_config(name, dtype=dtype, device=str(device))
    weights = weight_count(cfg) * torch.empty((), dtype=dtype).element_size()
    print(f"\n== {name}  {str(dtype).removeprefix('torch.')}  on {device}", flush=True)
    say("weights", f"{weight_count(cfg) / 1e9:.3f} B parameters = {weights / 2**30:.2f} GiB")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_build, model = _timed(lambda: build_model(cfg, tokenizer), device)
    say("random init", f"{t_build:.1f} s")
    task = ih.load_task("sentiment")
    prompts = ih.build_prompts(model, task, k=args.k, n=args.n, seed=0)
    say("prompts", f"n={len(prompts)} k={args.k} seq_len={prompts.seq_len}")
    bs = "auto"

    def forward() -> None:
        for _ in iter_batches(model, prompts, batch_size=bs, progress=False):
            pass

    forward()  # warm-up (kernels, allocator)
    t_fwd = statistics.median(_timed(forward, device)[0] for _ in range(args.reps))
    say("plain forward (median)", f"{t_fwd:.3f} s")
    t_fwd_only_peak = _peak_gb(device)

    def sweep():
        return ih.head_sweep(model, prompts, batch_size=bs, rows_per_pass="auto", progress=False)

    t_sweep, fast = _timed(sweep, device)
    L, H = cfg.n_layers, cfg.n_heads
    picked = [(layer, layer % H) for layer in range(0, L, max(1, L // args.naive_heads))]
    picked = picked[: args.naive_heads]
    t_naive, naive = _timed(
        lambda: ih.head_sweep(
            model, prompts, heads=picked, method="naive", batch_size=bs, progress=False
        ),
        device,
    )
    naive_all = t_naive / len(picked) * L * H
    idx = tuple(torch.tensor(p) for p in zip(*picked, strict=True))
    diff = float(
        (fast.per_prompt[:, idx[0], idx[1]] - naive.per_prompt[:, idx[0], idx[1]]).abs().max()
    )
    say("fast query sweep", f"{t_sweep:.2f} s = {t_sweep / t_fwd:.2f}x forward (target <= 4)")
    say(
        "naive loop (extrapolated)",
        f"{naive_all:.1f} s from {len(picked)} heads; fast is {naive_all / t_sweep:.1f}x faster"
        " (target >= 20)",
    )
    say("fast vs naive max |diff|", f"{diff:.3g} (on {len(picked)} heads, logit-diff units)")
    t_tsla, _ = _timed(
        lambda: ih.tsla_scores(model, prompts, batch_size=bs, progress=False), device
    )
    say("TSLA", f"{t_tsla:.2f} s = {t_tsla / t_fwd:.2f}x forward (target <= 1.5)")
    t_det, _ = _timed(lambda: ih.detect_heads(model, prompts, progress=False), device)
    say("detectors (detect_heads)", f"{t_det:.2f} s")
    if not args.quick:
        t_find, _ = _timed(
            lambda: ih.find_task_heads(
                model, prompts, n_boot=args.n_boot, batch_size=bs, progress=False
            ),
            device,
        )
        say("find_task_heads", f"{t_find:.2f} s")
        t_abl, _ = _timed(
            lambda: ih.ablation_experiment(
                model, prompts, n_random=2, n_boot=args.n_boot, batch_size=bs, progress=False
            ),
            device,
        )
        say("ablation_experiment", f"{t_abl:.2f} s (n_random=2)")
        t_geo, _ = _timed(
            lambda: ih.layer_geometry(
                model, prompts, n_boot=args.n_boot, batch_size=bs, progress=False
            ),
            device,
        )
        say("layer_geometry", f"{t_geo:.2f} s")
    say("peak memory (forward only)", t_fwd_only_peak)
    say("peak memory (whole run)", _peak_gb(device))
    if device.type == "cuda":  # the model goes when this function returns
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None)
    parser.add_argument("--dtypes", nargs="+", default=None)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--naive-heads", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="skip the three experiments")
    args = parser.parse_args(argv)

    from icl_heads.devices import resolve_dtype
    from icl_heads.models import load_tokenizer

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        shapes = args.shapes or list(SHAPES)
        dtypes = args.dtypes or ["bfloat16", "float32"]
    else:
        print(
            f"No GPU found (torch {torch.__version__} sees no CUDA device): running the "
            "SmolLM2-135M shape on the CPU only; the GPU figures are still to be measured."
        )
        shapes = ["SmolLM2-135M"]
        dtypes = args.dtypes or ["float32"]
    tokenizer = load_tokenizer("default")
    for name in shapes:
        for dt in dtypes:
            bench_shape(name, resolve_dtype(dt), device, args, tokenizer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
