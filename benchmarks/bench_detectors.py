"""All-head induction + previous-token scores: our batched detector vs TransformerLens
``detect_head``, on the same sequences (default: 32 random ``[BOS] + r + r``, T=50, on the
default model).

    python benchmarks/bench_detectors.py            # --n 32 --T 50 --batch-size 32

Timing runs in this one process, interleaved in rounds so that load drift from other jobs
on the machine hits every method: ours scores all sequences, then in each of ``--rounds``
rounds every detect_head variant scores one chunk of the sequences and ours scores all of
them again. Each detect_head variant's time is the sum over its chunks (every sequence
once); ours is the mean of its runs. detect_head is called once per sequence and per detector (its list path
re-runs the model per prompt anyway) under ``torch.no_grad()`` (as a careful user would;
``--with-grad`` also times it as shipped, with autograd on), and its scores are averaged
over sequences. The "shared cache" variant runs one ``run_with_cache`` per sequence and
passes it to both detectors (``cache=``), the cheapest way to use detect_head.

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

import psutil
import torch


class FixedTokens:
    """A model proxy whose ``to_tokens`` returns fixed tokens, so ``detect_head`` scores
    exactly our token sequences (everything else is the real model)."""

    def __init__(self, model, tokens):
        self._model, self._tokens = model, tokens

    def __getattr__(self, name):
        return getattr(self._model, name)

    def to_tokens(self, *args, **kwargs):
        return self._tokens


def ours(model, tokens, batch_size):
    from icl_heads.detectors import token_detector_scores

    s = token_detector_scores(model, tokens, detectors=["induction", "previous_token"],
                              normalize="detect_head", batch_size=batch_size, progress=False)
    return s["induction"].scores, s["previous_token"].scores


def transformer_lens(model, tokens, shared_cache=False, grad=False):
    from transformer_lens.head_detector import detect_head

    with torch.set_grad_enabled(grad):
        return _transformer_lens(detect_head, model, tokens, shared_cache)


def _transformer_lens(detect_head, model, tokens, shared_cache):
    ind, prev = [], []
    for i in range(len(tokens)):
        seq = FixedTokens(model, tokens[i:i + 1])
        cache = None
        if shared_cache:
            _, cache = model.run_with_cache(tokens[i:i + 1], remove_batch_dim=True)
        ind.append(detect_head(seq, "", "induction_head", cache=cache))
        prev.append(detect_head(seq, "", "previous_token_head", cache=cache))
    return torch.stack(ind).mean(0), torch.stack(prev).mean(0)


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
    out = subprocess.run([sys.executable, __file__, "--child", method, "--n", str(n), "--T",
                          str(T), "--batch-size", str(batch_size)], capture_output=True,
                         text=True, check=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4,
                        help="detect_head runs in this many chunks, each followed by one run "
                             "of ours (spreads machine-load drift over both)")
    parser.add_argument("--no-shared-cache", action="store_true",
                        help="skip the detect_head variant with a shared run_with_cache")
    parser.add_argument("--with-grad", action="store_true",
                        help="also time detect_head with autograd on (as shipped)")
    parser.add_argument("--child", choices=["ours", "tl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.T, args.batch_size)
        return

    import icl_heads as ih
    from icl_heads.detectors import random_repeated_tokens

    model = ih.load_model(device="cpu")
    tokens = random_repeated_tokens(model, args.T, args.n, seed=0)
    print(f"{args.n} sequences [BOS] + 2 x {args.T} random tokens, {model.cfg.n_layers} layers x "
          f"{model.cfg.n_heads} heads, torch threads {torch.get_num_threads()}")
    ours(model, tokens[:2], 2)  # warm-up
    variants = {"detect_head x2 per sequence": {}}
    if not args.no_shared_cache:
        variants["detect_head, shared cache"] = {"shared_cache": True}
    if args.with_grad:
        variants["detect_head x2, autograd on"] = {"grad": True}
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
    ind_tl, prev_tl = sum(tl_ind) / args.n, sum(tl_prev) / args.n
    diff = max((ind - ind_tl).abs().max().item(), (prev - prev_tl).abs().max().item())
    t_ours = sum(ours_times) / len(ours_times)
    rows = [("ours (batched, patterns only)", t_ours), *tl_times.items()]
    mem = {"ours": memory("ours", args.n, args.T, args.batch_size),
           "tl": memory("tl", args.n, args.T, args.batch_size)}

    print("ours: " + ", ".join(f"{t:.1f} s" for t in ours_times) + f" (mean {t_ours:.1f} s)")
    print("per round (detect_head chunk extrapolated to all sequences / our run right after):")
    for t_o, round_times in per_round:
        print("  " + "; ".join(f"{name}: {t / t_o:.1f}x" for name, t in round_times.items())
              + f"  (ours {t_o:.1f} s)")
    print(f"{'method':32} {'time (s)':>9} {'ratio':>7}")
    for name, t in rows:
        print(f"{name:32} {t:9.1f} {t / t_ours:6.1f}x")
    print(f"max |ours - detect_head| over all heads (induction, previous token): {diff:.2e}")
    print(f"peak memory above the loaded model: ours {mem['ours']:.0f} MB "
          f"(batch {args.batch_size}); detect_head {mem['tl']:.0f} MB (one sequence at a time)")


if __name__ == "__main__":
    main()
