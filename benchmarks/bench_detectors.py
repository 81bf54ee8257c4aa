"""All-head induction + previous-token scores: our batched detector vs TransformerLens
``detect_head``, on the same sequences (default: 32 random ``[BOS] + r + r``, T=50, on the
default model).

    python benchmarks/bench_detectors.py            # --n 32 --T 50 --batch-size 32

Timing runs in this one process, interleaved in rounds so that load drift from other jobs
on the machine hits every method: ours scores all sequences, then in each of ``--rounds``
rounds every detect_head variant scores one chunk of the sequences and ours scores all of
them again. Each detect_head variant's time is the sum over its chunks (every sequence
once); ours is the mean of its runs. detect_head is called once per sequence and per
detector (as its list path does), both as shipped (autograd on) and under
``torch.no_grad()`` (as a careful user would), and its scores are averaged over sequences.
The "shared cache" variant runs one ``run_with_cache`` per sequence and passes it to both
detectors (``cache=``), the cheapest way to use detect_head.

The GEMM floor (:func:`gemm_floor`, timed before and after the rounds) is the time of the
matrix products alone that any exact float32 pattern-only forward of the same sequences
must do; detect_head's time divided by it bounds the ratio any exact method could reach.

Peak memory is measured in fresh subprocesses (RSS sampled every 2 ms, minus the RSS
after the model is loaded), one per method. detect_head's peak is per sequence (it runs
one at a time), so its child scores 4 sequences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch


def ours(model, tokens, batch_size):
    from icl_heads.detectors import token_detector_scores

    s = token_detector_scores(
        model,
        tokens,
        detectors=["induction", "previous_token"],
        normalize="detect_head",
        batch_size=batch_size,
        progress=False,
    )
    return s["induction"].scores, s["previous_token"].scores


def transformer_lens(model, tokens, shared_cache=False, grad=False):
    """detect_head once per sequence and detector (``shared_cache``: one run_with_cache per
    sequence serves both detectors)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tl_reference import detect_head_on_tokens  # test scaffolding, shared with the tests

    with torch.set_grad_enabled(grad):
        ind, prev = detect_head_on_tokens(
            model, tokens, ["induction", "previous_token"], share_cache=shared_cache
        )
    return ind, prev


def gemm_floor(model, batch: int, seq_len: int, repeats: int = 3) -> float:
    """Seconds for just the matrix multiplications that ANY exact float32 computation of all
    attention patterns of ``batch`` sequences of ``seq_len`` tokens must do (best of
    ``repeats``).

    Every layer's pattern needs that layer's Q and K projections and ``Q K^T``; every layer
    but the last also feeds the next one, so it needs V, ``pattern @ V``, O and the MLP. The
    model's own weight matrices are used (flattened outside the timing). Norms, rotary,
    softmax, masking and all other elementwise work are left out, so this is a lower bound
    on the time of any exact pattern-only forward: detect_head's time / this floor bounds
    the speed-up that any such method can reach on this machine.
    """
    cfg = model.cfg

    def flat_in(w):  # [head, d_model, d_head] -> [d_model, head * d_head]
        return w.permute(1, 0, 2).reshape(cfg.d_model, -1).contiguous()

    with torch.inference_mode():
        layers = []
        for i, block in enumerate(model.blocks):
            attn, mlp = block.attn, block.mlp
            w = {"qk": flat_in(torch.cat([attn.W_Q, getattr(attn, "_W_K", attn.W_K)]))}
            if i < cfg.n_layers - 1:
                w["v"] = flat_in(getattr(attn, "_W_V", attn.W_V))
                w["o"] = attn.W_O.reshape(-1, cfg.d_model).contiguous()
                w["mlp_in"] = [
                    m.contiguous()
                    for m in (mlp.W_in, getattr(mlp, "W_gate", None))
                    if m is not None
                ]
                w["mlp_out"] = mlp.W_out.contiguous()
            layers.append(w)
        x = torch.randn(batch * seq_len, cfg.d_model)
        q = torch.randn(batch, cfg.n_heads, seq_len, cfg.d_head)
        k_t = torch.randn(batch, cfg.n_heads, cfg.d_head, seq_len)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for w in layers:
                x @ w["qk"]
                pattern = q @ k_t
                if "v" in w:
                    x @ w["v"]
                    (pattern @ q).reshape(-1, cfg.n_heads * cfg.d_head) @ w["o"]
                    hidden = [x @ m for m in w["mlp_in"]][0]
                    hidden @ w["mlp_out"]
            best = min(best, time.perf_counter() - t)
    return best


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def peak_rss_delta(fn) -> float:
    """Peak RSS above the current RSS while ``fn`` runs, in MB (sampled every 2 ms)."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    done.set()
    thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - base) / 2**20


def child(method: str, n: int, T: int, batch_size: int) -> None:
    import gc

    import icl_heads as ih
    from icl_heads.detectors import random_repeated_tokens

    model = ih.load_model(device="cpu")
    tokens = random_repeated_tokens(model, T, n, seed=0)
    gc.collect()
    if method == "ours":
        mb = peak_rss_delta(lambda: ours(model, tokens, batch_size))
    else:
        mb = peak_rss_delta(lambda: transformer_lens(model, tokens[:4]))  # no_grad
    print(json.dumps({"peak_mb": mb}))


def memory(method: str, n: int, T: int, batch_size: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            method,
            "--n",
            str(n),
            "--T",
            str(T),
            "--batch-size",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every method (default: torch's default)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="detect_head runs in this many chunks, each followed by one run "
        "of ours (spreads machine-load drift over both)",
    )
    parser.add_argument(
        "--no-shared-cache",
        action="store_true",
        help="skip the detect_head variant with a shared run_with_cache",
    )
    parser.add_argument(
        "--no-autograd", action="store_true", help="skip detect_head as shipped (autograd on)"
    )
    parser.add_argument("--child", choices=["ours", "tl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.n, args.T, args.batch_size)
        return

    import icl_heads as ih
    from icl_heads.detectors import random_repeated_tokens

    model = ih.load_model(device="cpu")
    tokens = random_repeated_tokens(model, args.T, args.n, seed=0)
    print(
        f"{args.n} sequences [BOS] + 2 x {args.T} random tokens, {model.cfg.n_layers} layers x "
        f"{model.cfg.n_heads} heads, torch threads {torch.get_num_threads()}"
    )
    ours(model, tokens[:2], 2)  # warm-up
    variants = {"detect_head x2, no_grad": {}}
    if not args.no_autograd:
        variants["detect_head x2, as shipped"] = {"grad": True}
    if not args.no_shared_cache:
        variants["detect_head, shared cache"] = {"shared_cache": True}
    floors = [gemm_floor(model, *tokens.shape)]
    # Rounds: each variant scores one chunk of the sequences, then ours scores all of them.
    # Every sequence is scored once by each variant; our time is the mean over rounds.
    ours_times, tl_times = [], dict.fromkeys(variants, 0.0)
    t, (ind, prev) = timed(ours, model, tokens, args.batch_size)
    ours_times.append(t)
    tl_ind, tl_prev, per_round = [], [], []
    for chunk in torch.arange(args.n).chunk(args.rounds):
        round_times = {}
        for name, kwargs in variants.items():
            t, (i, p) = timed(transformer_lens, model, tokens[chunk], **kwargs)
            tl_times[name] += t
            round_times[name] = t * args.n / len(chunk)  # extrapolated to all sequences
            if not kwargs:
                tl_ind.append(i * len(chunk))
                tl_prev.append(p * len(chunk))
        ours_times.append(timed(ours, model, tokens, args.batch_size)[0])
        per_round.append((ours_times[-1], round_times))
    floors.append(gemm_floor(model, *tokens.shape))
    floor = min(floors)
    ind_tl, prev_tl = sum(tl_ind) / args.n, sum(tl_prev) / args.n
    diff = max((ind - ind_tl).abs().max().item(), (prev - prev_tl).abs().max().item())
    t_ours = sum(ours_times) / len(ours_times)
    rows = [("ours (batched, patterns only)", t_ours), *tl_times.items()]
    mem = {
        "ours": memory("ours", args.n, args.T, args.batch_size),
        "tl": memory("tl", args.n, args.T, args.batch_size),
    }

    print("ours: " + ", ".join(f"{t:.1f} s" for t in ours_times) + f" (mean {t_ours:.1f} s)")
    print("per round (detect_head chunk extrapolated to all sequences / our run right after):")
    for t_o, round_times in per_round:
        print(
            "  "
            + "; ".join(f"{name}: {t / t_o:.1f}x" for name, t in round_times.items())
            + f"  (ours {t_o:.1f} s)"
        )
    print(f"{'method':32} {'time (s)':>9} {'ratio':>7} {'bound':>7}")
    for name, t in rows:
        bound = "" if t is t_ours else f"{t / floor:6.1f}x"
        print(f"{name:32} {t:9.1f} {t / t_ours:6.1f}x {bound:>7}")
    print(
        f"GEMM floor (the matrix products any exact pattern forward needs): {floor:.1f} s "
        f"(runs: {', '.join(f'{f:.1f}' for f in floors)}); ours / floor = {t_ours / floor:.2f}."
        " 'bound' = detect_head / floor, the most any exact method could reach here."
    )
    print(f"max |ours - detect_head| over all heads (induction, previous token): {diff:.2e}")
    print(
        f"peak memory above the loaded model: ours {mem['ours']:.0f} MB "
        f"(batch {args.batch_size}); detect_head {mem['tl']:.0f} MB (one sequence at a time)"
    )


if __name__ == "__main__":
    main()
