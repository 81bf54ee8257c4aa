"""The ``icl-heads`` command line. No analysis logic lives here: each subcommand calls
the same public functions a notebook would.

Every expected error (a bad argument, an unknown task or model, an unavailable device,
an output path that cannot be written, a task that does not fit the model) ends the
command with one line on stderr, ``icl-heads: error: ...``, and exit code 2. Arguments
that need no model (output path, device, task, counts) are checked before the model is
loaded. The helpers below (parser class, argument types, ``_add_*_args``,
``_check_out_path``, ``_load_model_arg``) are shared by every subcommand.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

PROG = "icl-heads"
EXIT_ERROR = 2
#: The error types our public functions raise for bad input or a missing resource.
EXPECTED_ERRORS = (ValueError, TypeError, ImportError, ConnectionError, OSError)


class _UsageError(Exception):
    """A command-line argument argparse rejected."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are raised (and printed by :func:`main` as one
    line) instead of printing the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is ``None`` (the help text then says what
    happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer (0 or more), got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# --------------------------------------------------------------------------- shared arguments


def _models_help() -> str:
    from .models import EMBEDDED_MODELS

    return (f"an embedded model ({', '.join(EMBEDDED_MODELS)}), a local HF directory or a "
            "TransformerLens official name such as gpt2 (downloaded: needs network)")


def _tasks_help() -> str:
    from .tasks import builtin_tasks

    return (f"a built-in task ({', '.join(builtin_tasks())}) or a .csv/.jsonl file with "
            "columns input,label")


def _choices_epilog() -> str:
    return f"Models: {_models_help()}. Tasks: {_tasks_help()}."


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help=f"the model: {_models_help()}")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:<index> or mps (default: cuda if available, else cpu)")


def _add_task_arg(parser: argparse.ArgumentParser, default: str = "sentiment") -> None:
    parser.add_argument("--task", default=default, help=f"the task: {_tasks_help()}")


def _add_subcommand(sub, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description,
                          formatter_class=_HelpFormatter)


# --------------------------------------------------------------------------- shared checks


def _check_out_path(out: str | os.PathLike) -> Path:
    """Check, before any model loading or computation, that a result file can be written
    at ``out``: missing parent directories are created, and a probe file is written next to
    it (so read-only locations fail here, also as root). Returns the path.

    Raises:
        ValueError: ``out`` is empty, is a directory, lies under a file, or its directory
            cannot be created or written.
    """
    text = os.fspath(out)
    if not str(text).strip():
        raise ValueError("--out is empty; pass a file path such as results/quickstart.csv.")
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"--out {text!r} is a directory; pass a file path inside it, such as "
                         f"{str(path / 'quickstart.csv')!r}.")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"--out {text!r}: {str(ancestor)!r} is a file, so nothing can "
                                 "be written under it; choose another path.")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {text!r}: cannot create the directory {str(parent)!r} "
                         f"({err.strerror or err}); choose a writable location.") from None
    try:
        if path.exists():
            with path.open("ab"):  # opens for writing without changing the file
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".icl-heads-probe-"):
                pass
    except OSError as err:
        raise ValueError(f"--out {text!r} cannot be written ({err.strerror or err}); choose a "
                         "writable location.") from None
    return path


def _resolve_device_arg(device: str | None):
    from .models import resolve_device

    return resolve_device(device)


def _load_model_arg(name: str, device):
    """Load the model of ``--model``/``--device`` (through ``icl_heads.models.load_model``)."""
    from . import models

    t0 = time.perf_counter()
    print(f"Loading model {name!r} (the first run converts and caches it) ...", flush=True)
    model = models.load_model(name, device=device)
    print(f"Loaded in {time.perf_counter() - t0:.1f} s: {model.cfg.n_layers} layers x "
          f"{model.cfg.n_heads} heads.", flush=True)
    return model


def _check_shots(shots: list[int], task) -> None:
    """Each k needs k demonstrations besides the query, so at most ``len(examples) - 1``."""
    too_many = [k for k in shots if k > len(task.examples) - 1]
    if too_many:
        raise ValueError(f"--shots {max(too_many)} is too large for task {task.name!r}: it has "
                         f"{len(task.examples)} examples, so k can be at most "
                         f"{len(task.examples) - 1}.")


# --------------------------------------------------------------------------- subcommands


def _quickstart(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import build_prompts, evaluate, load_task

    out = _check_out_path(args.out) if args.out is not None else None  # first: before loading
    device = _resolve_device_arg(args.device)
    task = load_task(args.task)
    _check_shots(args.shots, task)
    model = _load_model_arg(args.model, device)
    # every prompt set is built (and checked: single-token labels, context length) before
    # any evaluation runs
    prompt_sets = [build_prompts(model, task, k=k, n=args.n, seed=args.seed) for k in args.shots]
    rows = [evaluate(model, prompts, batch_size=args.batch_size, progress=True)
            for prompts in prompt_sets]
    table = pd.concat(rows, ignore_index=True)
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(f"\nICL behaviour on task {task.name!r} ({len(task.labels)} labels, "
              f"n={args.n} queries per row):")
        print(table.drop(columns=["task", "seed"]).to_string(index=False, float_format="%.3f"))
    if out is not None:
        table.to_csv(out, index=False)
        print(f"\nWrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, formatter_class=_HelpFormatter,
        description="Find and explain the attention heads behind in-context learning.",
        epilog=_choices_epilog())
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = _add_subcommand(
        sub, "quickstart", help="ICL behaviour of a model on a task across k shots",
        description="ICL behaviour of a model on a task: for each k in --shots, build --n "
                    "k-shot prompts and print accuracy, label-space rate, in-space accuracy "
                    "and the gold-label logit difference, one row per k.")
    _add_model_args(q)
    _add_task_arg(q)
    q.add_argument("--shots", type=_non_negative_int, nargs="+", default=[0, 1, 2, 4, 8],
                   metavar="K", help="numbers of demonstrations per prompt")
    q.add_argument("--n", type=_positive_int, default=40, help="queries (prompts) per k")
    q.add_argument("--seed", type=int, default=0, help="seed of the query and demo choice")
    q.add_argument("--batch-size", type=_positive_int, default=16, help="prompts per forward pass")
    q.add_argument("--out", default=None, metavar="CSV",
                   help="also write the table to this CSV file (checked before the model loads)")
    q.set_defaults(func=_quickstart)
    return parser


def _fail(message: object) -> int:
    text = " ".join(str(message).splitlines()) or type(message).__name__
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 after a one-line error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        return _fail(err)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except EXPECTED_ERRORS as err:
        return _fail(err)


if __name__ == "__main__":
    sys.exit(main())
