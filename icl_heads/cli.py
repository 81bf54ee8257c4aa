"""The ``icl-heads`` command line. No analysis logic lives here: each subcommand calls
the same public functions a notebook would."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _quickstart(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import build_prompts, evaluate, load_model, load_task

    t0 = time.perf_counter()
    print(f"Loading model {args.model!r} (the first run converts and caches it) ...", flush=True)
    model = load_model(args.model, device=args.device)
    print(f"Loaded in {time.perf_counter() - t0:.1f} s: {model.cfg.n_layers} layers x "
          f"{model.cfg.n_heads} heads.", flush=True)
    task = load_task(args.task)
    rows = []
    for k in args.shots:
        prompts = build_prompts(model, task, k=k, n=args.n, seed=args.seed)
        rows.append(evaluate(model, prompts, batch_size=args.batch_size, progress=True))
    table = pd.concat(rows, ignore_index=True)
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(f"\nICL behaviour on task {task.name!r} ({len(task.labels)} labels, "
              f"n={args.n} queries per row):")
        print(table.drop(columns=["task", "seed"]).to_string(index=False, float_format="%.3f"))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"\nWrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icl-heads",
        description="Find and explain the attention heads behind in-context learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="ICL behaviour of the embedded model across k shots")
    q.add_argument("--model", default="default")
    q.add_argument("--task", default="sentiment")
    q.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    q.add_argument("--n", type=int, default=40, help="queries per k")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--device", default=None)
    q.add_argument("--out", default=None, help="also write the table as CSV")
    q.set_defaults(func=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, ImportError, ConnectionError) as err:
        print(f"icl-heads: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
