"""Benchmark of the TR/TL reproduction (``reproduce_trtl``) on the default model.

For every experiment of every task it prints the wall time, the work it ran in *prompt-passes*
(block x token work, counted by hooks on every block's input, divided by the work of one plain
forward pass over the task's prompts, so a pass that re-runs only some layers or only the last
token counts for less) and the wall-time ratio to one plain forward pass over the same
prompts. Waste shows up as a large ratio. Target: the whole reproduction on three tasks (n=64,
k=4) in at most 10 minutes on the 2-core machine.

    python benchmarks/bench_trtl.py --threads 2          # the target: both cores, 3 tasks
    python benchmarks/bench_trtl.py                      # one thread (a core may be busy)
    python benchmarks/bench_trtl.py --tasks sentiment --n 16
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import torch

import icl_heads as ih
from icl_heads.activations import collect
from icl_heads.experiments import trtl
from icl_heads.experiments.trtl import reproduce

EXPERIMENT_FUNCTIONS = (
    "find_task_heads",
    "activation_means",
    "ablation_experiment",
    "perturbation_experiment",
    "correlation_experiment",
    "mean_head_outputs",
    "steering_experiment",
    "reconciliation_experiment",
)


class WorkCounter:
    """Counts block x token work: every block's ``hook_resid_pre`` adds rows x positions."""

    def __init__(self, model):
        self.model, self.work = model, 0
        for layer in range(model.cfg.n_layers):
            model.add_hook(f"blocks.{layer}.hook_resid_pre", self._count, is_permanent=True)

    def _count(self, act, hook):
        self.work += act.shape[0] * act.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sentiment", "topic", "category"])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results directory (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    model = ih.load_model()
    counter = WorkCounter(model)
    out = args.out or tempfile.mkdtemp(prefix="bench_trtl_")
    print(
        f"model: {model.cfg.model_name} ({model.cfg.n_layers} layers x {model.cfg.n_heads} "
        f"heads), {args.threads} thread(s), load average {load0:.1f} at start"
    )
    print(f"tasks: {args.tasks}, k={args.k}, n={args.n}; results in {out}\n")

    plain: dict[str, tuple[float, int]] = {}
    for name in args.tasks:
        prompts = ih.build_prompts(model, ih.load_task(name), args.k, args.n, 0)
        counter.work = 0
        started = time.perf_counter()
        collect(model, prompts, progress=False)
        plain[name] = (time.perf_counter() - started, counter.work)
        print(
            f"plain forward pass, {name}: {plain[name][0]:.1f} s "
            f"({len(prompts)} prompts, {prompts.seq_len} tokens padded)"
        )

    records: list[tuple[str, str, float, int]] = []
    current = {"task": None}

    def timed(fn_name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            before, started = counter.work, time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                records.append(
                    (current["task"], fn_name, time.perf_counter() - started, counter.work - before)
                )

        return wrapper

    for fn_name in EXPERIMENT_FUNCTIONS:  # the names reproduce_trtl calls
        setattr(reproduce, fn_name, timed(fn_name, getattr(reproduce, fn_name)))
    total_started = time.perf_counter()
    for name in args.tasks:
        current["task"] = name
        trtl.reproduce_trtl(model, [name], out, k=args.k, n=args.n, progress=False)
    total = time.perf_counter() - total_started

    print(
        f"\n{'task':<10} {'experiment':<26} {'wall s':>8} {'prompt-passes':>14} "
        f"{'wall / plain pass':>18}"
    )
    for task, fn_name, seconds, work in records:
        t_plain, w_plain = plain[task]
        print(
            f"{task:<10} {fn_name:<26} {seconds:8.1f} {work / w_plain:14.2f} "
            f"{seconds / t_plain:18.2f}"
        )
    per_task = {t: sum(r[2] for r in records if r[0] == t) for t in args.tasks}
    passes = {t: sum(r[3] for r in records if r[0] == t) / plain[t][1] for t in args.tasks}
    for task in args.tasks:
        print(
            f"{task:<10} {'all experiments':<26} {per_task[task]:8.1f} {passes[task]:14.2f} "
            f"{per_task[task] / plain[task][0]:18.2f}"
        )
    print(
        f"\nTOTAL reproduction: {total:.1f} s ({total / 60:.1f} min; target <= 10 min); "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
