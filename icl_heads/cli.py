"""The ``icl-heads`` command line. No analysis logic lives here: each subcommand calls
the same public functions a notebook would, saves the result with
``ExperimentResult.save`` / ``HeadScores.save`` and writes its linked HTML report
(:mod:`icl_heads.report`).

Subcommands: ``quickstart`` (ICL behaviour over k), ``detect`` (previous-token, induction,
duplicate-token and label-attention heads), ``find-heads`` (TR and TL heads), ``ablate``,
``perturb``, ``correlate``, ``steer`` (the TR/TL paper's experiments), ``geometry`` and
``task-vectors`` (the geometry paper's), and ``reproduce`` (a resumable grid of models x
tasks x experiment families, and the results pages). ``docs/cli.md`` is the reference.

Every expected error (a bad argument, an unknown task or model, an unavailable device,
an output path that cannot be written, a task that does not fit the model) ends the
command with one line on stderr, ``icl-heads: error: ...``, and exit code 2; progress bars
still open are closed first (:func:`_close_progress_bars`), so the line never sticks to a
bar, and messages name the subcommand's own options. Everything that needs no model
(output paths, device, tasks, every model name of a list, counts against the tasks and
each other) is checked before the first model loads; what needs the model (single-token
labels and context length of every prompt set the command builds, --top-k, --layers)
right after it loads, before any computation. The helpers below (parser class, argument
types, ``_add_*_args``, ``_check_*``, ``_load_model_arg``) are shared by every subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

from .model_names import check_model_name, hub_problem
from .outputs import check_output_dir, check_output_file

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


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer, or ``auto`` (the largest batch that fits the
    device's free memory on a GPU; the usual 16 on a CPU; icl_heads.batching)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer (1 or more) or auto, got {text!r}"
        ) from None


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer (0 or more), got {text!r}"
        )
    return value


def _folds(text: str) -> int:
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 2, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# --------------------------------------------------------------------------- shared arguments


def _models_help() -> str:
    from .models import EMBEDDED_MODELS

    return (
        f"an embedded model ({', '.join(EMBEDDED_MODELS)}), a local HF directory or a "
        "TransformerLens official name such as gpt2 (downloaded: needs network)"
    )


def _tasks_help() -> str:
    from .tasks import builtin_tasks

    return (
        f"a built-in task ({', '.join(builtin_tasks())}) or a .csv/.jsonl file with "
        "columns input,label"
    )


def _choices_epilog() -> str:
    return f"Models: {_models_help()}. Tasks: {_tasks_help()}."


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help=f"the model: {_models_help()}")
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:<index> or mps (default: cuda if available, else cpu)",
    )


def _add_task_arg(parser: argparse.ArgumentParser, default: str = "sentiment") -> None:
    parser.add_argument("--task", default=default, help=f"the task: {_tasks_help()}")


def _add_subcommand(sub, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter)


# --------------------------------------------------------------------------- shared checks


def _check_out_path(out: str | os.PathLike) -> Path:
    """Check, before any model loading or computation, that a result file can be written
    at ``out`` (:func:`icl_heads.outputs.check_output_file`: missing parents created, a
    probe file written, so read-only locations fail here, also as root)."""
    return check_output_file(out, what="--out")


def _resolve_device_arg(device: str | None):
    """``--device`` resolved (:func:`icl_heads.models.resolve_device`); its messages name the
    option, not the Python argument (``device='cpu'`` becomes ``--device 'cpu'``)."""
    from .models import resolve_device

    try:
        return resolve_device(device)
    except (ValueError, TypeError) as err:
        raise type(err)(str(err).replace("device=", "--device ")) from None


# --------------------------------------------------------------------------- model names


def _check_model_name(name: str, option: str = "--model") -> str:
    """:func:`icl_heads.model_names.check_model_name` with the CLI's option in its errors
    (``--model`` or ``--models``) and this module's hub probe. Returns ``name``."""
    from . import models

    if isinstance(name, str) and name in models.EMBEDDED_MODELS:  # ImportError if missing
        models.embedded_model_parts(models.EMBEDDED_MODELS[name])
    return check_model_name(name, option, probe=_hub_problem)


def _hub_problem(repo_id: str) -> str | None:
    """:func:`icl_heads.model_names.hub_problem` (a name the CLI's tests can replace)."""
    return hub_problem(repo_id)


def _load_model_arg(name: str, device, option: str = "--model"):
    """Load the model of ``--model``/``--device`` (through ``icl_heads.models.load_model``).
    A failed download names the option to use instead (``--model default``), not the Python
    call."""
    from . import models

    t0 = time.perf_counter()
    print(f"Loading model {name!r} (the first run converts and caches it) ...", flush=True)
    try:
        model = models.load_model(name, device=device)
    except ConnectionError as err:
        raise ConnectionError(
            str(err).replace("load_model('default')", f"{option} default")
        ) from None
    print(
        f"Loaded in {time.perf_counter() - t0:.1f} s: {model.cfg.n_layers} layers x "
        f"{model.cfg.n_heads} heads.",
        flush=True,
    )
    return model


def _check_shots(shots: list[int], task) -> None:
    """Each k needs k demonstrations besides the query, so at most ``len(examples) - 1``."""
    too_many = [k for k in shots if k > len(task.examples) - 1]
    if too_many:
        raise ValueError(
            f"--shots {max(too_many)} is too large for task {task.name!r}: it has "
            f"{len(task.examples)} examples, so k can be at most "
            f"{len(task.examples) - 1}."
        )


def _check_out_dir(out: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any model loading or computation, that files can be written into the
    directory ``out`` of ``option`` (:func:`icl_heads.outputs.check_output_dir`: created,
    probed, so read-only locations fail here, also as root)."""
    return check_output_dir(out, what=option)


def _check_k(k: int, task, *, minimum: int = 0, command: str = "") -> None:
    """``k`` demonstrations besides the query: at most ``len(examples) - 1``."""
    if k < minimum:
        raise ValueError(
            f"--k {k} is too small for {command}: it needs prompts with at least "
            f"{minimum} demonstration{'s' if minimum > 1 else ''}."
        )
    if k > len(task.examples) - 1:
        raise ValueError(
            f"--k {k} is too large for task {task.name!r}: it has "
            f"{len(task.examples)} examples, so k can be at most "
            f"{len(task.examples) - 1}."
        )


def _prepare(args: argparse.Namespace, *, min_k: int = 0, checks=()):
    """Every check that needs no model (--out, --device, --task, --k, then each of
    ``checks(args, task)``, then the --model name), then the model, then the checks that
    need it (--top-k). Returns ``(out_dir, device, task, model)``."""
    from .results import check_result_dir
    from .tasks import load_task

    out = check_result_dir(args.out, what="--out")  # first: before anything is loaded
    device = _resolve_device_arg(args.device)
    task = load_task(args.task)
    _check_k(args.k, task, minimum=min_k, command=args.command)
    for check in checks:
        check(args, task)
    _check_model_name(args.model)
    model = _load_model_arg(args.model, device)
    if hasattr(args, "top_k"):
        _check_top_k(args, model)
    return out, device, task, model


#: The head sets that get random controls (--n-random), per subcommand.
_RANDOM_CONTROLS = {"ablate": "TR and TL", "steer": "TR and TL", "geometry": "PTH and IH"}


def _check_top_k(args: argparse.Namespace, model) -> None:
    """Right after the model loads, before any computation: --top-k fits the model's heads
    and, where random control sets are drawn (disjoint from the named sets, the same size),
    leaves room for them. Whether the named sets overlap (TR and TL, PTH and IH), and so
    whether ``2 x top-k`` or fewer heads are taken, is only known once they are found."""
    from .heads import default_top_k

    if args.command == "geometry" and not args.ablate:
        return  # no head sets without --ablate
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = args.top_k if args.top_k is not None else default_top_k(L, H)
    if top_k > L * H:
        raise ValueError(
            f"--top-k {top_k} exceeds the model's {L * H} heads ({L} layers x {H} heads); "
            f"pass --top-k {L * H} or less."
        )
    sets = _RANDOM_CONTROLS.get(args.command)
    if sets and 2 * top_k > L * H:
        default = " (the default: 3% of the heads)" if args.top_k is None else ""
        raise ValueError(
            f"--top-k {top_k}{default} leaves no room for the random control sets "
            f"(--n-random): the {sets} sets take at least {top_k} of the model's {L * H} "
            f"heads and each random set needs {top_k} others; pass --top-k {L * H // 2} "
            "or less."
        )


def _check_per_label(
    n: int, task, folds: int, *, folds_text: str, fix: str = "", preset: bool = False
) -> None:
    """The probes' cross-validation needs ``folds`` (and at least 2) prompts of every label;
    ``build_prompts`` balances the labels, so each gets ``n // labels`` or one more."""
    labels = len(task.labels)
    need = max(folds, 2)
    if n // labels < need:
        given = f"--n {n} (the preset's)" if preset else f"--n {n}"
        raise ValueError(
            f"{given} gives task {task.name!r} ({labels} labels) {n // labels} prompt(s) of "
            f"some label, fewer than {folds_text}: every label needs {need}; pass "
            f"--n {need * labels} or more{fix}."
        )


def _check_folds(args: argparse.Namespace, task) -> None:
    """--n against --folds (geometry, task-vectors), before the model loads."""
    _check_per_label(
        args.n, task, args.folds, folds_text=f"--folds {args.folds}", fix=", or fewer --folds"
    )


def _check_perturbations(args: argparse.Namespace, task) -> None:
    """--perturbations has gold, names each condition once; --n splits in halves."""
    chosen = args.perturbations
    if "gold" not in chosen:
        raise ValueError(
            f"--perturbations {' '.join(chosen)} lacks gold: every map is compared with the "
            "gold-label map; add gold."
        )
    repeated = sorted({p for p in chosen if chosen.count(p) > 1})
    if repeated:
        raise ValueError(f"--perturbations names {repeated[0]!r} twice; name each condition once.")
    _check_split_halves(args.n, task, "perturb")


def _check_split_halves(n: int, task, command: str, *, preset: bool = False) -> None:
    """The perturbation experiment splits the gold prompts in two halves with the same
    labels (its split-half stability): some label needs 2 prompts, so ``n`` must exceed the
    number of labels (``build_prompts`` balances them)."""
    labels = len(task.labels)
    if n <= labels:
        given = f"--n {n} (the preset's)" if preset else f"--n {n}"
        raise ValueError(
            f"{given} is too small for {command} on task {task.name!r} ({labels} labels): "
            "the gold prompts are split in two halves with the same labels (the split-half "
            f"stability), so some label needs 2 prompts; pass --n {labels + 1} or more."
        )


def _finish(args: argparse.Namespace, out: Path, result, model, prompts, *, maps=None) -> int:
    """Save the result, write its linked report (example: the first prompt), print what
    decides its claim (:func:`icl_heads.summaries.summary_lines`) and where the full table
    is."""
    from .attention_patterns import attention_example
    from .report import write_report

    result.save(out)
    example = attention_example(model, prompts) if prompts is not None else None
    report = write_report(
        out / "report.html", result, maps=maps, example=example, command=args.command_line
    )
    _print_result(result, out)
    written = (
        ["result.json", "table.csv"]
        + (["maps/"] if result.maps else [])
        + (["tables/"] if result.tables else [])
    )
    print(f"\nWrote {out}{os.sep}: {', '.join(written)}; report: {report}")
    return 0


def _print_result(result, out: Path) -> None:
    """The summary of ``result`` (the numbers that decide its claim, with 95% CIs), then
    where its full table is; a result without a summary prints its first rows instead."""
    import pandas as pd

    from .summaries import summary_lines

    table = result.table
    lines = summary_lines(result)
    if lines:
        print(f"\n{result.name}:")
        print("\n".join(lines))
        print(
            f"\nFull table: {len(table)} rows ({len(result.conditions)} conditions x "
            f"{len(result.metrics)} metrics{_axes(table)}) in {out / 'table.csv'}; the "
            "report shows them all."
        )
    else:
        columns = [
            c
            for c in ("condition", "metric", "layer", "alpha", "value", "ci_low", "ci_high", "n")
            if c in table.columns
        ]
        with pd.option_context(
            "display.width", 140, "display.max_columns", 20, "display.max_rows", 60
        ):
            shown = f" (showing 40; all in {out / 'table.csv'})" if len(table) > 40 else ""
            print(f"\n{result.name}: {len(table)} rows{shown}")
            print(table[columns].head(40).to_string(index=False, float_format="%.4g"))
    for name, scores in list(result.maps.items())[:6]:
        print(f"top {name}: {' '.join(str(h) for h in scores.top())}")


def _axes(table) -> str:
    """`` x N layers`` (and alphas, scales) where the table has such an axis."""
    parts = [
        f" x {table[c].nunique()} {c}s" for c in ("layer", "alpha", "scale") if c in table.columns
    ]
    return "".join(parts)


# --------------------------------------------------------------------------- time estimate


def _forward_passes(args: argparse.Namespace, model, prompt_tokens: int) -> int:
    """How many prompt forward passes the command runs, in a simple model: one per prompt
    per condition (baseline, each head set, each random set, each alpha or injection
    layer), plus the head-finding and mean-reference passes; the detectors' repeated
    sequences count as many prompts as their tokens fill (``prompt_tokens`` per prompt)."""
    n, command = args.n, args.command
    n_random = getattr(args, "n_random", 0)
    sets = 2 * (1 + n_random)  # two named head sets and their random controls
    reference = n if getattr(args, "mode", "mean") == "mean" else 0
    sequences = math.ceil(
        getattr(args, "sequences", 0) * (2 * getattr(args, "T", 50) + 1) / max(prompt_tokens, 1)
    )
    if command == "quickstart":
        return n * len(args.shots)
    if command == "detect":
        return n + sequences
    if command == "find-heads":
        return n
    if command == "ablate":
        return n + reference + n * (1 + sets)
    if command == "perturb":
        return n * len(args.perturbations)
    if command == "correlate":
        heads = model.cfg.n_layers * model.cfg.n_heads
        return n * (2 if args.positions == "query" else 1 + heads) + reference
    if command == "steer":
        return 2 * n + n * (1 + len(args.alphas) * sets)
    if command == "geometry":
        return n + (sequences + n + n * (1 + sets) if args.ablate else 0)
    if command == "task-vectors":
        layers = len(args.layers) if args.layers else model.cfg.n_layers + 1
        return 2 * n + n * layers * len(args.scales)
    return n


def _geometry_measurements(args: argparse.Namespace, model) -> int:
    """How many sets of query states the geometry commands measure (probes and alignment,
    each over ``n_layers + 1`` states): one per condition."""
    if args.command == "geometry":
        return 1 + (2 * (1 + args.n_random) if args.ablate else 0)
    if args.command == "task-vectors":
        layers = len(args.layers) if args.layers else model.cfg.n_layers + 1
        return 2 + layers * len(args.scales)
    return 0


def _print_estimate(args: argparse.Namespace, model, prompts, device) -> None:
    """Time a first batch of ``prompts`` (after a one-prompt warm-up) and, for the geometry
    commands, the probes and alignment of two states, and print the command's estimated
    time: :func:`_forward_passes` x seconds per prompt, plus
    :func:`_geometry_measurements` x ``n_layers + 1`` states x seconds per state ("about
    N s", and that it is an estimate)."""
    import torch

    from .activations import collect
    from .batching import resolve_batch_size

    size = min(len(prompts), resolve_batch_size(args.batch_size, model, prompts, device=device))
    collect(model, prompts.select([0]), batch_size=1, device=device, progress=False)
    started = time.perf_counter()
    collect(model, prompts.select(slice(0, size)), batch_size=size, device=device, progress=False)
    per_prompt = (time.perf_counter() - started) / size
    passes = _forward_passes(args, model, prompts.seq_len)
    seconds = passes * per_prompt
    parts = [f"{passes} prompt forward passes x {per_prompt * 1000:.0f} ms"]
    measurements = _geometry_measurements(args, model)
    if measurements:
        import sklearn.linear_model  # noqa: F401  (imported before the clock starts)

        from .experiments.geometry.curves import measure_geometry

        states = torch.randn(len(prompts), 2, model.cfg.d_model, generator=torch.manual_seed(0))
        started = time.perf_counter()
        measure_geometry(
            model, prompts, states, [0, 1], folds=args.folds, seed=0, n_boot=args.n_boot, C=1.0
        )
        per_state = (time.perf_counter() - started) / 2
        count = measurements * (model.cfg.n_layers + 1)
        seconds += count * per_state
        parts.append(f"{count} states' probes and alignment x {per_state * 1000:.0f} ms")
    about = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    print(
        f"Estimated time: about {about} ({' + '.join(parts)}, timed on a first batch; an "
        "estimate, not a promise).",
        flush=True,
    )


def _base_prompts(model, task, args, **kwargs):
    from .prompts import build_prompts

    return build_prompts(
        model,
        task,
        k=kwargs.pop("k", args.k),
        n=args.n,
        seed=kwargs.pop("seed", args.seed),
        **kwargs,
    )


# --------------------------------------------------------------------------- subcommands


def _quickstart(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import build_prompts, evaluate, load_task
    from .summaries import behaviour_lines

    out = _check_out_path(args.out) if args.out is not None else None  # first: before loading
    device = _resolve_device_arg(args.device)
    task = load_task(args.task)
    _check_shots(args.shots, task)
    _check_model_name(args.model)
    model = _load_model_arg(args.model, device)
    # every prompt set is built (and checked: single-token labels, context length) before
    # any evaluation runs
    prompt_sets = [build_prompts(model, task, k=k, n=args.n, seed=args.seed) for k in args.shots]
    _print_estimate(args, model, max(prompt_sets, key=lambda p: p.seq_len), device)
    rows = [
        evaluate(model, prompts, batch_size=args.batch_size, progress=True)
        for prompts in prompt_sets
    ]
    table = pd.concat(rows, ignore_index=True)
    print(f"\nICL behaviour on task {task.name!r} ({len(task.labels)} labels, n={args.n}):")
    print("\n".join(behaviour_lines(table)))
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print("\nAll metrics, one row per k:")
        print(table.drop(columns=["task", "seed"]).to_string(index=False, float_format="%.3f"))
    if out is not None:
        table.to_csv(out, index=False)
        settings = [
            frame.attrs["settings"].to_dict() for frame in rows if "settings" in frame.attrs
        ]
        out.with_suffix(".json").write_text(json.dumps({"settings": settings}, indent=1))
        report = _quickstart_report(out.with_suffix(".html"), table, task, args)
        print(f"\nWrote {out} (settings: {out.with_suffix('.json').name}, report: {report.name})")
    return 0


def _quickstart_report(path: Path, table, task, args) -> Path:
    """Behaviour over k as curves (one panel per metric, chance dotted)."""
    from .report import write_report
    from .results import make_table, table_row
    from .viz import layer_curves

    metrics = ("accuracy", "label_space_rate", "in_space_accuracy", "logit_diff")
    rows = [
        table_row(task.name, m, r[m], math.nan, math.nan, r["n"], k=int(r["k"]))
        for _, r in table.iterrows()
        for m in metrics
    ]
    figure = layer_curves(
        make_table(rows),
        x="k",
        chance={"accuracy": 1 / len(task.labels), "in_space_accuracy": 1 / len(task.labels)},
        title=f"ICL behaviour on {task.name} over k demonstrations",
    )
    return write_report(
        path,
        None,
        figures=[figure],
        tables={"behaviour": table},
        title=f"icl-heads quickstart: {task.name}",
        command=args.command_line,
    )


def _detect(args: argparse.Namespace) -> int:
    import torch

    from .attention_patterns import attention_example
    from .detectors import KINDS, detect_heads
    from .heads import HeadScores, default_top_k
    from .report import write_report
    from .results import ExperimentResult, make_table, table_row
    from .summaries import detector_lines

    out, device, task, model = _prepare(args, min_k=1)  # label attention needs demos
    prompts = _base_prompts(model, task, args)
    _print_estimate(args, model, prompts, device)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    # one rule for the kind column, the report's outlines and the list printed below
    top_k = args.top_k if args.top_k is not None else default_top_k(L, H)
    frame = detect_heads(
        model,
        prompts,
        T=args.T,
        n_sequences=args.sequences,
        seed=args.seed,
        top_k=top_k,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    settings = frame.attrs.get("settings")
    maps = {}
    for column in _DETECT_MAPS:
        grid = torch.tensor(frame[column].to_numpy(float), dtype=torch.float32).reshape(L, H)
        maps[column.removesuffix("_score")] = HeadScores(
            grid, name=column, settings=settings, top_k=top_k
        )
    rows = []  # the tidy table: one row per head and score (no CIs: scores are means)
    for record in frame.to_dict("records"):
        for column in _DETECT_MAPS:
            on_prompts = column in ("label_attention_score", "gold_label_share")
            rows.append(
                table_row(
                    record["label"],
                    column,
                    record[column],
                    math.nan,
                    math.nan,
                    args.n if on_prompts else args.sequences,
                    layer=int(record["layer"]),
                    head=int(record["head"]),
                    kind=record["kind"],
                )
            )
    result = ExperimentResult(
        name="detect_heads",
        table=make_table(rows),
        settings=settings,
        maps=maps,
        tables={"heads": frame},
    )
    result.save(out)
    report = write_report(
        out / "report.html",
        maps,
        example=attention_example(model, prompts),
        tables={"Heads": frame},
        command=args.command_line,
        title=f"icl-heads detect ({model.cfg.model_name}, task={task.name})",
    )
    print()
    print("\n".join(detector_lines(maps, KINDS, top_k)))
    print(
        f"\nWrote {out}{os.sep}: result.json, table.csv (one row per head and score), "
        f"tables/heads.csv (one row per head, with its kinds), maps/; report: {report}"
    )
    return 0


#: The detect command's maps (columns of :func:`icl_heads.detectors.detect_heads`).
_DETECT_MAPS = (
    "previous_token_score",
    "induction_score",
    "duplicate_token_score",
    "label_attention_score",
    "gold_label_share",
)


def _find_heads(args: argparse.Namespace) -> int:
    from .experiments import trtl

    out, device, task, model = _prepare(args)
    prompts = _base_prompts(model, task, args)
    _print_estimate(args, model, prompts, device)
    result = trtl.find_task_heads(
        model,
        prompts,
        args.top_k,
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    return _finish(args, out, result, model, prompts)


def _ablate(args: argparse.Namespace) -> int:
    from .experiments import trtl

    out, device, task, model = _prepare(args)
    prompts = _base_prompts(model, task, args)
    _print_estimate(args, model, prompts, device)
    found = trtl.find_task_heads(
        model,
        prompts,
        args.top_k,
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    result = trtl.ablation_experiment(
        model,
        prompts,
        trtl.head_sets(found),
        n_random=args.n_random,
        mode=args.mode,
        positions=args.positions,
        seed=args.seed,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    return _finish(args, out, result, model, prompts, maps=found.maps)


def _perturb(args: argparse.Namespace) -> int:
    from .experiments import trtl

    out, device, task, model = _prepare(args, min_k=1, checks=[_check_perturbations])
    prompts = _base_prompts(model, task, args)  # the gold prompts
    for perturbation in args.perturbations:  # each condition's prompts, checked before any run
        if perturbation != "gold":
            _base_prompts(model, task, args, perturbation=perturbation)
    _print_estimate(args, model, prompts, device)
    result = trtl.perturbation_experiment(
        model,
        prompts,
        perturbations=args.perturbations,
        task=task,
        top_k=args.top_k,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    return _finish(args, out, result, model, prompts)


def _correlate(args: argparse.Namespace) -> int:
    from .experiments import trtl

    out, device, task, model = _prepare(args)
    prompts = _base_prompts(model, task, args)
    _print_estimate(args, model, prompts, device)
    result = trtl.correlation_experiment(
        model,
        prompts,
        mode=args.mode,
        positions=args.positions,
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    return _finish(args, out, result, model, prompts)


def _steer(args: argparse.Namespace) -> int:
    from .experiments import trtl

    out, device, task, model = _prepare(args, min_k=1)
    source = _base_prompts(model, task, args)
    target = _base_prompts(model, task, args, seed=args.seed + 1, perturbation=args.target)
    _print_estimate(args, model, source, device)
    found = trtl.find_task_heads(
        model,
        source,
        args.top_k,
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    result = trtl.steering_experiment(
        model,
        source,
        target,
        trtl.head_sets(found),
        args.alphas,
        n_random=args.n_random,
        seed=args.seed,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    return _finish(args, out, result, model, source, maps=found.maps)


def _geometry(args: argparse.Namespace) -> int:
    from .detectors import token_detector_scores
    from .experiments import geometry

    out, device, task, model = _prepare(args, checks=[_check_folds])
    prompts = _base_prompts(model, task, args)
    _print_estimate(args, model, prompts, device)
    if args.ablate:
        detected = token_detector_scores(
            model,
            detectors=["previous_token", "induction"],
            n_sequences=args.sequences,
            seed=args.seed,
            device=device,
            progress=True,
        )
        heads = {"PTH": detected["previous_token"], "IH": detected["induction"]}
        result = geometry.head_ablation_geometry(
            model,
            prompts,
            heads,
            top_k=args.top_k,
            n_random=args.n_random,
            folds=args.folds,
            seed=args.seed,
            n_boot=args.n_boot,
            batch_size=args.batch_size,
            device=device,
            progress=True,
        )
    else:
        result = geometry.layer_geometry(
            model,
            prompts,
            folds=args.folds,
            seed=args.seed,
            n_boot=args.n_boot,
            batch_size=args.batch_size,
            device=device,
            progress=True,
        )
    return _finish(args, out, result, model, prompts)


def _task_vectors(args: argparse.Namespace) -> int:
    from .experiments import geometry

    out, device, task, model = _prepare(args, min_k=1, checks=[_check_folds])
    _check_layers(args.layers, model)
    icl = _base_prompts(model, task, args)
    zero_shot = _base_prompts(model, task, args, k=0)
    _print_estimate(args, model, icl, device)
    result = geometry.task_vector_experiment(
        model,
        icl,
        zero_shot,
        layers=args.layers,
        scales=args.scales,
        mode=args.mode,
        folds=args.folds,
        seed=args.seed,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        device=device,
        progress=True,
    )
    return _finish(args, out, result, model, icl)


def _check_layers(layers: list[int] | None, model) -> None:
    """--layers of task-vectors: states 0 (embeddings) to n_layers (after the last block)."""
    L = model.cfg.n_layers
    bad = [layer for layer in layers or () if layer > L]
    if bad:
        raise ValueError(
            f"--layers {bad[0]} is out of range for this model: states run from 0 (the "
            f"embeddings) to {L} (after the last block)."
        )


def _grid_prompt_sets(args: argparse.Namespace) -> list[tuple[str, int, int, int, str]]:
    """What ``reproduce`` builds for each task: ``(family, k, n, seed, perturbation)`` of
    every prompt set of the chosen families and preset (--quick, --n, --seed, --seeds; a
    held-out part is drawn from a larger set of the same recipe, so the recipe is what is
    checked)."""
    from .experiments import geometry, trtl
    from .prompts import PERTURBATIONS

    sets = []
    for seed in _grid_seeds(args):
        if "trtl" in args.experiments:
            preset = trtl.QUICK if args.quick else trtl.FULL
            n = args.n or preset.n
            sets += [("trtl", preset.k, n, seed, p) for p in PERTURBATIONS]
            for offset in (0, 1):  # query-matched targets: seed; task-mean targets: seed + 1
                sets += [("trtl", preset.k, n, seed + offset, p) for p in preset.steering_targets]
        if "geometry" in args.experiments:
            n = args.n or (geometry.QUICK if args.quick else geometry.FULL).n
            sets += [("geometry", k, n, seed, "gold") for k in (0, _GEOMETRY_K)]
    return list(dict.fromkeys(sets))


def _grid_seeds(args: argparse.Namespace) -> list[int]:
    """The prompt seeds of ``reproduce``: --seed and the next ones, --seeds of them (default:
    the preset's, 3 for the full grid, 1 with --quick)."""
    from .experiments import trtl

    count = args.seeds or (trtl.QUICK if args.quick else trtl.FULL).n_seeds
    return list(range(args.seed, args.seed + count))


def _seed_roots(args: argparse.Namespace, family_dir: Path) -> list[Path]:
    """Where each seed's grid of one family lies (``family_dir`` for one seed, else
    ``family_dir/seed<s>``)."""
    from .experiments.trtl.presets import seed_root

    seeds = _grid_seeds(args)
    return [seed_root(family_dir, s, len(seeds)) for s in seeds]


#: The demonstrations of the geometry grid's ICL prompts (``reproduce_geometry``'s k).
_GEOMETRY_K = 4


def _check_grid_sizes(args: argparse.Namespace, tasks) -> None:
    """Before any model loads: every task has the examples the grid's k-shot prompts need,
    --n is at least 2 (split halves, probes) and, for geometry, gives every label as many
    prompts as the preset's probe folds."""
    from .experiments import geometry

    if args.n is not None and args.n < 2:
        raise ValueError(
            f"--n {args.n} is too small for reproduce: every experiment needs at least 2 "
            "prompts per set."
        )
    preset = "--quick" if args.quick else "full"
    for task in tasks:
        for family, k, n, _, perturbation in _grid_prompt_sets(args):
            if k > len(task.examples) - 1:
                raise ValueError(
                    f"--tasks {task.name!r} has {len(task.examples)} examples, but the "
                    f"{family} grid builds {k}-shot prompts, which need at least {k + 1}; "
                    "give a task with more examples."
                )
            if family == "trtl" and perturbation == "gold":
                _check_split_halves(n, task, "reproduce", preset=args.n is None)
            if family == "geometry":
                folds = (geometry.QUICK if args.quick else geometry.FULL).folds
                _check_per_label(
                    n,
                    task,
                    folds,
                    folds_text=f"the {folds} probe folds of the {preset} geometry preset",
                    preset=args.n is None,
                )
        if args.design == "main":  # held-out selection needs every label in both halves
            from .experiments.splits import heldout_split

            try:
                heldout_split(task, 0.5, args.seed)
            except ValueError as err:
                raise ValueError(
                    f"--tasks {task.name!r} cannot be split for the held-out design ({err}); "
                    "or run it with --design legacy."
                ) from None


def _check_grid_prompts(args: argparse.Namespace, tasks, model, name: str) -> None:
    """Right after a model loads, before its first cell: every prompt set the grid will
    build, for every task (single-token labels, abstract label words, the context length:
    what only the model's tokenizer and context can tell)."""
    from .detectors import random_repeated_tokens
    from .prompts import build_prompts

    for task in tasks:
        for _, k, n, seed, perturbation in _grid_prompt_sets(args):
            try:
                build_prompts(model, task, k, n, seed, perturbation=perturbation)
            except ValueError as err:
                raise ValueError(f"--tasks {task.name!r} on model {name!r}: {err}") from None
    try:  # both families find heads on the detectors' repeated sequences (default length)
        random_repeated_tokens(model, n_sequences=1, seed=args.seed)
    except ValueError as err:
        raise ValueError(
            f"--models {name!r}: its context is too short for the grid's head detectors ({err})"
        ) from None


#: The experiment families of ``reproduce`` (``icl_heads.experiments.<family>``).
FAMILIES = ("trtl", "geometry")


@contextlib.contextmanager
def _stale_cells_in_cli_terms():
    """The grids' stale-cell errors name the API's fix (``rerun_stale=True``, a new
    ``out_dir``): say it with the options of ``reproduce``."""
    try:
        yield
    except ValueError as err:
        text = str(err)
        if "rerun_stale=True" not in text:
            raise
        text = text.replace("pass rerun_stale=True", "pass --rerun-stale")
        raise ValueError(text.replace("a new out_dir", "a new --out")) from None


def _run_family(family: str, model, args: argparse.Namespace, out: Path, device):
    """One family's grid of ``reproduce`` on one model (resumable; see the library's
    ``reproduce_trtl`` / ``reproduce_geometry``): the design of --design, --seeds seeds."""
    from .experiments import geometry, trtl

    n_seeds = len(_grid_seeds(args))
    if family == "trtl":
        return trtl.reproduce_trtl(
            model,
            args.tasks,
            out / "trtl",
            quick=args.quick,
            seed=args.seed,
            progress=getattr(args, "progress", True),
            n=args.n,
            n_seeds=n_seeds,
            batch_size=args.batch_size,
            device=device,
            rerun_stale=args.rerun_stale,
            design=trtl.MAIN if args.design == "main" else trtl.LEGACY,
        )
    else:
        return geometry.reproduce_geometry(
            model,
            args.tasks,
            out / "geometry",
            quick=args.quick,
            k=_GEOMETRY_K,
            seed=args.seed,
            progress=getattr(args, "progress", True),
            n=args.n,
            n_seeds=n_seeds,
            batch_size=args.batch_size,
            device=device,
            rerun_stale=args.rerun_stale,
            design=geometry.MAIN if args.design == "main" else geometry.LEGACY,
        )


def _family_requests(family: str, name: str | None, task, args: argparse.Namespace, out: Path):
    """``(path, request)`` of every experiment folder of one cell of ``reproduce``, over
    its seeds and in its design (the requests :func:`_run_family` makes: keep the two in
    step), for the grid's one stale-cell check before anything runs."""
    from .experiments import geometry, trtl
    from .experiments.geometry.reproduce import cell_requests as geometry_requests
    from .experiments.splits import heldout_split
    from .experiments.trtl.presets import request_options
    from .experiments.trtl.reproduce import cell_requests as trtl_requests
    from .results import safe_name

    out_paths = []
    for seed, root in zip(_grid_seeds(args), _seed_roots(args, out / family), strict=True):
        cell_dir = root / safe_name(name or "model") / safe_name(task.name)
        if family == "trtl":
            design = trtl.MAIN if args.design == "main" else trtl.LEGACY
            preset = trtl.QUICK if args.quick else trtl.FULL
            split = heldout_split(task, design.split_fraction, seed) if design.heldout else None
            sizes = dict(n=args.n or preset.n, n_random=preset.n_random, n_boot=preset.n_boot)
            requests = trtl_requests(
                name, task, preset, k=preset.k, seed=seed, split=split, **sizes,
                **request_options(design),
            )  # fmt: skip
        else:
            design = geometry.MAIN if args.design == "main" else geometry.LEGACY
            preset = geometry.QUICK if args.quick else geometry.FULL
            split = heldout_split(task, design.split_fraction, seed) if design.heldout else None
            requests = geometry_requests(
                name, task, preset, n=args.n or preset.n, k=_GEOMETRY_K, seed=seed,
                split=split, sensitivity_mode=design.sensitivity_mode,
            )  # fmt: skip
        out_paths += [(cell_dir / experiment, request) for experiment, request in requests.items()]
    return out_paths


def _write_cell_reports(model, family: str, task, args: argparse.Namespace, out: Path) -> None:
    """A report.html for every saved experiment of one cell that lacks one (not the hidden
    temporary folders of a killed run), sharing ``out/plotly.min.js``."""
    from .attention_patterns import attention_example
    from .prompts import build_prompts
    from .report import write_report
    from .results import ExperimentResult, safe_name
    from .settings import model_name

    task_dir = out / family / safe_name(model_name(model) or "model") / safe_name(task.name)
    cells = [c for c in sorted(task_dir.glob("*/result.json")) if not c.parent.name.startswith(".")]
    todo = [c.parent for c in cells if not (c.parent / "report.html").is_file()]
    if not todo:
        return
    example = attention_example(model, build_prompts(model, task, k=4, n=1, seed=args.seed))
    for cell in todo:
        write_report(
            cell / "report.html",
            ExperimentResult.load(cell),
            example=example,
            command=args.command_line,
            plotly_js=os.path.relpath(out / "plotly.min.js", cell),
        )


@dataclasses.dataclass(frozen=True)
class _ReproduceJob:
    """What one cell (model x task x family) of ``reproduce`` does, in this process or in a
    Ray task (an :class:`icl_heads.experiments.grid.CellJob`): it holds the options, never a
    model, so it pickles; each worker loads its model by name."""

    args: argparse.Namespace
    out: Path
    progress: bool = True  # the cells' progress bars (off in Ray tasks: one line per cell)

    def load(self, model: str):
        return _load_model_arg(model, _resolve_device_arg(self.args.device), "--models")

    def check(self, model: str, loaded) -> str | None:
        from .settings import model_name
        from .tasks import load_task

        _check_grid_prompts(self.args, [load_task(t) for t in self.args.tasks], loaded, model)
        return model_name(loaded)

    def requests(self, cell, name: str | None):
        from .tasks import load_task

        return _family_requests(cell.family, name, load_task(cell.task), self.args, self.out)

    def run(self, cell, loaded) -> list[dict]:
        from .tasks import load_task

        args = argparse.Namespace(
            **{**vars(self.args), "tasks": [cell.task], "progress": self.progress}
        )
        device = _resolve_device_arg(self.args.device)
        table = _run_family(cell.family, loaded, args, self.out, device)
        if self.args.reports:
            _write_cell_reports(loaded, cell.family, load_task(cell.task), args, self.out)
        return table.to_dict("records")


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
    return value


def _grid_runner(args: argparse.Namespace):
    """The runner of ``reproduce --backend`` (checked before any model loads)."""
    from .experiments.grid import LocalRunner

    if args.backend == "local":
        for option, value in (("--address", args.address), ("--gpus-per-cell", args.gpus_per_cell)):
            if value is not None:
                raise ValueError(f"{option} {value} is for --backend ray; add --backend ray.")
        _resolve_device_arg(args.device)  # the device of this machine, before any load
        return LocalRunner()
    from .experiments.ray_runner import RayRunner

    return RayRunner(address=args.address, gpus_per_cell=args.gpus_per_cell)


def _paths_for_other_nodes(args: argparse.Namespace, out: Path) -> Path:
    """``--backend ray``: ``--out`` and the model directories and task files of the grid as
    absolute paths (a worker on another node runs in another working directory)."""
    from .models import EMBEDDED_MODELS
    from .tasks import builtin_tasks

    def absolute(name: str, names) -> str:
        path = Path(name).expanduser()
        return name if name in names or not path.exists() else str(path.resolve())

    args.models = [absolute(name, EMBEDDED_MODELS) for name in args.models]
    args.tasks = [absolute(name, builtin_tasks()) for name in args.tasks]
    return out.resolve()


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments.grid import failure_summary, plan_grid, progress_line, run_grid
    from .pages.geometry import write_geometry_page
    from .pages.trtl import write_trtl_page
    from .tasks import load_task

    quick_root = Path("results/reproduce-quick")
    # each design's committed grid: the docs' results pages are written from docs/results/main
    committed = "docs/results/data" if args.design == "legacy" else "docs/results/main"
    out = _check_out_dir(args.out or (quick_root if args.quick else committed))
    page_dir = None
    if args.pages:
        page_dir = _check_out_dir(
            args.page_dir or (quick_root / "pages" if args.quick else "docs/results"),
            "--page-dir",
        )
    runner = _grid_runner(args)
    if args.backend == "ray":
        out = _paths_for_other_nodes(args, out)
    tasks = [load_task(name) for name in args.tasks]  # every task checked before any run
    _check_grid_sizes(args, tasks)
    for name in args.models:  # every model name checked before the first one loads
        _check_model_name(name, "--models")
    options = argparse.Namespace(**{**vars(args), "func": None})
    job = _ReproduceJob(options, out, progress=args.backend == "local")
    cells = plan_grid(args.models, args.tasks, args.experiments)
    print(f"{len(cells)} cells (model x task x family) on the {args.backend} backend", flush=True)
    with _stale_cells_in_cli_terms():
        outcomes = run_grid(
            job,
            cells,
            runner,
            rerun_stale=args.rerun_stale,
            on_done=lambda outcome, done, total: print(
                progress_line(outcome, done, total), flush=True
            ),
        )
    several = len(_grid_seeds(args)) > 1
    layout = "<family>/seed<s>/<model>" if several else "<family>/<model>"
    print(
        f"\nResults in {out}{os.sep}{layout}/<task>/<experiment>/ (finished cells "
        "are skipped on a re-run)"
    )
    failed = failure_summary(outcomes)
    if failed is not None:
        return _fail(failed)
    if page_dir is not None:
        command = args.command_line
        if several:  # the pages read every seed's grid of the family and pool the verdicts
            print("The pages pool the verdicts over the seeds' grids (methods.md, Verdict rules).")
        if "trtl" in args.experiments:
            page = write_trtl_page(
                out / "trtl",
                page_dir / "trtl.md",
                page_dir / "figures" / "trtl",
                command=command,
            )
            print(f"Wrote {page}")
        if "geometry" in args.experiments:
            page = write_geometry_page(
                out / "geometry",
                page_dir / "geometry.md",
                page_dir / "figures" / "geometry",
                command=command,
            )
            print(f"Wrote {page}")
    return 0


# --------------------------------------------------------------------------- the parser


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _add_run_args(parser: argparse.ArgumentParser, *, command: str, n: int, k: int = 4) -> None:
    """The options every analysis subcommand shares."""
    _add_model_args(parser)
    _add_task_arg(parser)
    parser.add_argument(
        "--k",
        type=_non_negative_int,
        default=k,
        help="demonstrations per prompt (at most the task's examples - 1)",
    )
    parser.add_argument("--n", type=_positive_int, default=n, help="prompts")
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="seed of every random choice (prompts, random head sets, bootstrap)",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=16,
        help="prompts per forward pass, or auto (the largest that fits a GPU; 16 on a CPU)",
    )
    parser.add_argument(
        "--out",
        default=f"results/{command}",
        metavar="DIR",
        help="directory for the result (result.json with the settings, "
        "table.csv, maps/, tables/) and report.html; checked before the "
        "model loads",
    )


def _add_top_k(parser: argparse.ArgumentParser, what: str = "TR and TL head sets") -> None:
    parser.add_argument(
        "--top-k",
        type=_positive_int,
        default=None,
        metavar="K",
        help=f"size of the {what} (default: 3%% of the model's heads, at least 1)",
    )


def _add_n_boot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-boot",
        type=_positive_int,
        default=1000,
        help="bootstrap resamples of the confidence intervals",
    )


def _add_ablation(parser: argparse.ArgumentParser, *, positions: str, where: str) -> None:
    """``--mode`` and ``--positions`` of the ablating subcommands (the default position
    first among the choices)."""
    from .interventions import ABLATION_MODES

    parser.add_argument(
        "--mode", choices=ABLATION_MODES, default="mean", help="how a head's output is replaced"
    )
    choices = (positions, *(p for p in ("all", "query") if p != positions))
    parser.add_argument("--positions", choices=choices, default=positions, help=where)


def _add_n_random(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-random",
        type=_positive_int,
        default=5,
        help="random control head sets per named set (layer-matched)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .interventions import TASK_VECTOR_MODES
    from .prompts import PERTURBATIONS

    parser = _Parser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        description="Find and explain the attention heads behind in-context learning. Each "
        "analysis subcommand saves its result (CSV tables, JSON with the "
        "settings) and a self-contained HTML report in --out.",
        epilog=_choices_epilog(),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = _add_subcommand(
        sub,
        "quickstart",
        help="ICL behaviour of a model on a task across k shots",
        description="ICL behaviour of a model on a task: for each k in --shots, build --n "
        "k-shot prompts and print accuracy, label-space rate, in-space accuracy "
        "and the gold-label logit difference, one row per k.",
    )
    _add_model_args(q)
    _add_task_arg(q)
    q.add_argument(
        "--shots",
        type=_non_negative_int,
        nargs="+",
        default=[0, 1, 2, 4, 8],
        metavar="K",
        help="numbers of demonstrations per prompt",
    )
    q.add_argument("--n", type=_positive_int, default=40, help="queries (prompts) per k")
    q.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the query and demo choice"
    )
    q.add_argument(
        "--batch-size",
        type=_batch_size,
        default=16,
        help="prompts per forward pass, or auto (the largest that fits a GPU; 16 on a CPU)",
    )
    q.add_argument(
        "--out",
        default=None,
        metavar="CSV",
        help="also write the table to this CSV file, its settings beside it "
        "(.json) and a report (.html); checked before the model loads",
    )
    q.set_defaults(func=_quickstart)

    d = _add_subcommand(
        sub,
        "detect",
        help="previous-token, induction, duplicate-token, label-attention heads",
        description="Score every head as a previous-token, duplicate-token and induction head "
        "(on --n-sequences seeded random token sequences [BOS] + r + r, r of --T "
        "tokens) and as a label-attention head (attention from the query to the "
        "demonstrations' labels, on --n k-shot prompts of --task); a head has a kind "
        "when it is among the --top-k best by that score (the report outlines the same "
        "heads); write result.json, table.csv, tables/heads.csv (one row per head, with "
        "its kinds), the maps and the report.",
    )
    _add_run_args(d, command="detect", n=16)
    d.add_argument(
        "--n-sequences",
        "--sequences",
        dest="sequences",
        metavar="N",
        type=_positive_int,
        default=32,
        help="random repeated-token sequences for the token detectors (n_sequences; "
        "--sequences is the old spelling)",
    )
    d.add_argument("--T", type=_positive_int, default=50, help="tokens per repeated half")
    _add_top_k(
        d,
        "head kinds (a head has a kind when it is among the K best by that score; the "
        "report outlines, and the command lists, the same K heads of every map)",
    )
    d.set_defaults(func=_detect)

    f = _add_subcommand(
        sub,
        "find-heads",
        help="TR and TL heads (TSLA) with their overlap",
        description="Task Recognition (TR) and Task Learning (TL) scores of every head by "
        "Task Subspace Logit Attribution on --n k-shot prompts, the TR and TL head "
        "sets (the --top-k best of each), their overlap and the baseline behaviour "
        "(trtl.find_task_heads).",
    )
    _add_run_args(f, command="find-heads", n=32)
    _add_top_k(f)
    _add_n_boot(f)
    f.set_defaults(func=_find_heads)

    a = _add_subcommand(
        sub,
        "ablate",
        help="ablate the TR and TL heads and random control sets",
        description="Find the TR and TL heads, then ablate each set and --n-random "
        "layer-matched random sets of the same size, and measure accuracy, "
        "label-space rate, in-space accuracy and logit difference with bootstrap "
        "confidence intervals (trtl.ablation_experiment).",
    )
    _add_run_args(a, command="ablate", n=32)
    _add_top_k(a)
    _add_n_random(a)
    _add_ablation(a, positions="all", where="where heads are ablated")
    _add_n_boot(a)
    a.set_defaults(func=_ablate)

    p = _add_subcommand(
        sub,
        "perturb",
        help="behaviour and TR/TL maps under input perturbations",
        description="Behaviour and TR/TL maps with gold, random and abstract labels and "
        "without demonstrations, and how stable each map is against the gold "
        "map: Spearman over heads and top-k overlap "
        "(trtl.perturbation_experiment).",
    )
    _add_run_args(p, command="perturb", n=32)
    p.add_argument(
        "--perturbations",
        nargs="+",
        choices=PERTURBATIONS,
        default=list(PERTURBATIONS),
        metavar="NAME",
        help=f"conditions ({', '.join(PERTURBATIONS)}); gold is needed",
    )
    _add_top_k(p, "top-k overlaps")
    _add_n_boot(p)
    p.set_defaults(func=_perturb)

    c = _add_subcommand(
        sub,
        "correlate",
        help="single-head ablation effects against TR and TL scores",
        description="Ablate every head alone (exact fast sweep) and correlate the drop in "
        "label-space rate, in-space accuracy and logit difference with its TR and "
        "TL scores: Spearman and Pearson over heads with confidence intervals "
        "(trtl.correlation_experiment).",
    )
    _add_run_args(c, command="correlate", n=32)
    _add_ablation(
        c, positions="query", where="where heads are ablated (query: the exact fast path)"
    )
    _add_n_boot(c)
    c.set_defaults(func=_correlate)

    s = _add_subcommand(
        sub,
        "steer",
        help="steer zero-shot prompts with the TR / TL heads' mean output",
        description="Find the TR and TL heads on --n k-shot prompts, then add alpha times "
        "each head's mean output at the query of --target prompts (and of random "
        "control sets) and measure behaviour, subspace alignment and rotation "
        "toward the gold label (trtl.steering_experiment).",
    )
    _add_run_args(s, command="steer", n=32)
    s.add_argument(
        "--target",
        choices=("zero_shot", "abstract_labels", "random_labels"),
        default="zero_shot",
        help="the prompts that are steered",
    )
    s.add_argument(
        "--alphas",
        type=_float,
        nargs="+",
        default=[0.0, 0.5, 1.0, 2.0, 4.0],
        metavar="ALPHA",
        help="steering strengths",
    )
    _add_top_k(s)
    _add_n_random(s)
    _add_n_boot(s)
    s.set_defaults(func=_steer)

    g = _add_subcommand(
        sub,
        "geometry",
        help="separability and alignment of the query states over layers",
        description="Separability (probe accuracy, Fisher ratio) and alignment (with the "
        "label unembeddings, logit-lens accuracy) of the query hidden states, "
        "layer by layer (geometry.layer_geometry); with --ablate, the same curves "
        "with the previous-token (PTH) and induction (IH) heads ablated, against "
        "random sets (geometry.head_ablation_geometry).",
    )
    _add_run_args(g, command="geometry", n=64)
    g.add_argument(
        "--folds", type=_folds, default=5, help="probe cross-validation folds (at least 2)"
    )
    g.add_argument(
        "--ablate",
        action="store_true",
        help="ablate the top previous-token and induction heads (default: off)",
    )
    g.add_argument(
        "--n-sequences",
        "--sequences",
        dest="sequences",
        metavar="N",
        type=_positive_int,
        default=32,
        help="random sequences that find the PTH and IH heads (with --ablate; n_sequences; "
        "--sequences is the old spelling)",
    )
    _add_top_k(g, "PTH and IH sets (with --ablate)")
    _add_n_random(g)
    _add_n_boot(g)
    g.set_defaults(func=_geometry)

    t = _add_subcommand(
        sub,
        "task-vectors",
        help="inject the ICL task vector into zero-shot prompts",
        description="The task vector (mean query state of --n k-shot prompts after a layer) "
        "injected into --n zero-shot prompts at each layer: behaviour and geometry "
        "against the zero-shot and ICL references (geometry.task_vector_experiment).",
    )
    _add_run_args(t, command="task-vectors", n=32)
    t.add_argument(
        "--layers",
        type=_non_negative_int,
        nargs="+",
        default=None,
        metavar="L",
        help="injection states (0 = embeddings; default: every layer)",
    )
    t.add_argument(
        "--scales", type=_float, nargs="+", default=[1.0], metavar="S", help="injection scales"
    )
    t.add_argument(
        "--mode",
        choices=TASK_VECTOR_MODES,
        default="replace",
        help="replace the state or add the vector",
    )
    t.add_argument(
        "--folds", type=_folds, default=5, help="probe cross-validation folds (at least 2)"
    )
    _add_n_boot(t)
    t.set_defaults(func=_task_vectors)

    r = _add_subcommand(
        sub,
        "reproduce",
        help="a resumable grid: models x tasks x experiments, and the pages",
        description="Run every experiment of the chosen families (trtl: find-heads, ablation, "
        "perturbation, correlation, steering, reconciliation; geometry: layer "
        "geometry at k=0 and 4, task vectors, PTH/IH ablation) for every model and "
        "task, one folder per cell (--out/<family>/<model>/<task>/<experiment>/, "
        "with its report.html; with several --seeds, one such grid per seed in "
        "--out/<family>/seed<s>/), in the design of --design. Resumable: a finished "
        "cell is skipped, so an "
        "interrupted grid continues and cells can be farmed out. With --pages, "
        "write the results pages (--page-dir/trtl.md, geometry.md) from the saved "
        "results.",
    )
    r.add_argument(
        "--models",
        nargs="+",
        default=["default"],
        metavar="MODEL",
        help=f"the models: {_models_help()}",
    )
    r.add_argument(
        "--tasks",
        nargs="+",
        default=["sentiment", "topic", "category"],
        metavar="TASK",
        help=f"the tasks: {_tasks_help()}",
    )
    r.add_argument(
        "--experiments",
        nargs="+",
        choices=FAMILIES,
        default=list(FAMILIES),
        metavar="FAMILY",
        help=f"experiment families ({', '.join(FAMILIES)})",
    )
    r.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:<index> or mps (default: cuda if available, else cpu)",
    )
    r.add_argument(
        "--quick",
        action="store_true",
        help="the small preset (few prompts, random sets and resamples) for a smoke "
        "run (default: off, the full sizes)",
    )
    r.add_argument(
        "--n", type=_positive_int, default=None, help="prompts per set (default: the preset's)"
    )
    r.add_argument(
        "--rerun-stale",
        action="store_true",
        help="recompute saved cells made with other settings than asked for (default: off: "
        "such cells stop the run before anything is computed, naming what differs; a "
        "damaged cell is always recomputed)",
    )
    r.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="the first prompt seed (of every random choice of its grid)",
    )
    r.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        help="prompt seeds, --seed and the next ones, one grid each in <family>/seed<s>/ when "
        "more than one (default: the preset's, 3 for the full grid, 1 with --quick)",
    )
    r.add_argument(
        "--design",
        choices=("main", "legacy"),
        default="main",
        help="the experiments' design: main (issue 18: normalised TL score with the raw "
        "margin beside it, held-out selection, query-matched and task-mean steering, the "
        "other ablation mode and continuous metrics as sensitivity rows) or legacy (the "
        "first saved results' design); docs/methods.md",
    )
    r.add_argument(
        "--batch-size",
        type=_batch_size,
        default=16,
        help="prompts per forward pass, or auto (the largest that fits a GPU; 16 on a CPU)",
    )
    r.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="root of the grid's folders, checked before any model loads (default: "
        "docs/results/main, the data of the docs' results pages; with --design legacy "
        "docs/results/data, the first results; with --quick results/reproduce-quick, so "
        "small runs never mix with full ones)",
    )
    r.add_argument(
        "--pages",
        action="store_true",
        help="also write the results pages from the saved results (default: off)",
    )
    r.add_argument(
        "--page-dir",
        default=None,
        metavar="DIR",
        help="where --pages writes trtl.md, geometry.md and figures/ (default: "
        "docs/results; with --quick results/reproduce-quick/pages)",
    )
    r.add_argument(
        "--no-reports",
        dest="reports",
        action="store_false",
        help="do not write a report.html per cell (default: write them, sharing "
        "one plotly.min.js in --out)",
    )
    r.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where the cells (model x task x family) run: local (this process) or "
        'ray (one Ray task per cell; pip install "icl-heads[ray]"); same folders either way',
    )
    r.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: the cluster to join (ray.init(address=...), e.g. auto or "
        "ray://head:10001; default: $RAY_ADDRESS, else a new local Ray instance)",
    )
    r.add_argument(
        "--gpus-per-cell",
        type=_non_negative_float,
        default=None,
        metavar="N",
        help="with --backend ray: GPUs per cell (Ray's num_gpus; a fraction such as 0.5 "
        "packs cells on a GPU; default: 1 when the cluster has GPUs, else 0)",
    )
    r.set_defaults(func=_reproduce)
    return parser


#: docs/cli.md: everything after this line is :func:`reference_markdown` (checked by a test).
REFERENCE_MARKER = "<!-- generated by icl_heads.cli.reference_markdown(): do not edit below -->"


def reference_markdown(width: int = 96) -> str:
    """The ``--help`` of the command and of every subcommand as Markdown (the generated
    part of ``docs/cli.md``), formatted at ``width`` columns whatever the terminal."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        parser = build_parser()
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parts = ["## `icl-heads`", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, subparser in sub.choices.items():
            parts += [
                f"## `icl-heads {name}`",
                "",
                "```text",
                subparser.format_help().rstrip(),
                "```",
                "",
            ]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


def _close_progress_bars() -> None:
    """Close every progress bar still open (innermost first), so that the error line that
    follows starts on a line of its own: each bar is drawn where it stopped and ends its
    line, and none is redrawn after the error when it is garbage-collected."""
    from tqdm import tqdm

    bars = sorted(getattr(tqdm, "_instances", ()), key=lambda bar: -abs(getattr(bar, "pos", 0)))
    for bar in bars:
        bar.leave = True  # keep where it stopped, and end its line (a cleared one ends in \r)
        bar.close()


def _fail(message: object) -> int:
    text = " ".join(str(message).splitlines()) or type(message).__name__
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 after a one-line error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        return _fail(err)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    args.command_line = shlex.join([PROG, *argv])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except EXPECTED_ERRORS as err:
        _close_progress_bars()
        return _fail(err)
    except BaseException:  # a bug or Ctrl-C: the traceback, also on a line of its own
        _close_progress_bars()
        raise


if __name__ == "__main__":
    sys.exit(main())
