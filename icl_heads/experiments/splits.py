"""Held-out selection: split one task's examples into a *selection* part (the queries that
choose heads, ablation means and steering vectors) and a disjoint *evaluation* part (the
queries every effect is measured on), and build prompt sets whose queries come from one part.

The split is over *queries*: no evaluation prompt asks a query (or a letter-case / spacing
variant of one, :func:`~icl_heads.tasks.input_key`) that a selection prompt asks.
Demonstrations are drawn from the whole task, as :func:`~icl_heads.prompts.build_prompts`
draws them (any example whose input differs from the query's), so an evaluation query can
appear as a demonstration of a selection prompt and the other way round: the context is
shared, the scored answers are not.

Both sets are of the same task (same digest), so the provenance checks accept heads, means
and maps of the selection set on the evaluation set (:mod:`icl_heads.provenance`); each set's
``info()`` records its own ``prompts_digest``, which is how results tell them apart.

Example::

    split = heldout_split(task, fraction=0.5, seed=0)
    selection = split_prompts(model, task, 4, 64, 0, split=split, part="selection")
    evaluation = split_prompts(model, task, 4, 64, 0, split=split, part="evaluation")
    set(selection.query_examples) & set(evaluation.query_examples)      # set()
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from ..backends import HookedTransformer
from ..checks import check_int, check_seed
from ..prompts import PromptSet, build_prompts
from ..settings import Settings
from ..tasks import Task, input_key
from .kit import sub_seed

Part = Literal["selection", "evaluation"]
PARTS: tuple[str, ...] = ("selection", "evaluation")


@dataclass(frozen=True)
class TaskSplit(Settings):
    """A split of a task's examples (indices into ``task.examples``) into disjoint selection
    and evaluation query pools, stratified by label (:func:`heldout_split`).

    Attributes:
        task, task_digest: the task split (:attr:`~icl_heads.tasks.Task.digest`).
        fraction: the share of each label's distinct inputs in the selection part.
        seed: seeds the split (independent of the prompts' seed).
        selection, evaluation: the example indices of each part, sorted.
    """

    task: str
    task_digest: str
    fraction: float
    seed: int
    selection: tuple[int, ...]
    evaluation: tuple[int, ...]

    def part(self, name: str) -> tuple[int, ...]:
        """The example indices of ``"selection"`` or ``"evaluation"``."""
        if name not in PARTS:
            raise ValueError(f"Unknown split part {name!r}; choose one of {PARTS}.")
        return self.selection if name == "selection" else self.evaluation

    def table(self) -> pd.DataFrame:
        """One row per example: ``example, part``."""
        rows = [(i, "selection") for i in self.selection]
        rows += [(i, "evaluation") for i in self.evaluation]
        return pd.DataFrame(sorted(rows), columns=["example", "part"])


def heldout_split(task: Task, fraction: float = 0.5, seed: int = 0) -> TaskSplit:
    """Split ``task``'s examples into selection and evaluation query pools.

    Examples are grouped by :func:`~icl_heads.tasks.input_key` (case / spacing variants stay
    together); per label, the groups are shuffled (seeded) and the first
    ``round(fraction * groups)`` (at least 1, at most all but 1) go to the selection part,
    the rest to the evaluation part. So both parts hold every label, in about the task's
    label balance, and share no input.

    Args:
        task: the task.
        fraction: the selection share, ``0 < fraction < 1`` (default one half).
        seed: seeds the split.

    Example::

        split = heldout_split(ih.load_task("sentiment"), 0.5, seed=0)
        len(split.selection), len(split.evaluation)

    Raises:
        TypeError: ``task`` is not a Task; a non-number fraction; a non-int seed.
        ValueError: ``fraction`` outside (0, 1); a label with fewer than 2 distinct inputs
            (it cannot be in both parts).
    """
    if not isinstance(task, Task):
        hint = (
            f"; load it first: heldout_split(load_task({task!r}))" if isinstance(task, str) else ""
        )
        raise TypeError(
            f"heldout_split needs a Task (from load_task or make_task), got "
            f"{type(task).__name__} {task!r}{hint}."
        )
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(f"fraction must be a number in (0, 1), got {fraction!r}.")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be in (0, 1) (the selection share), got {fraction!r}.")
    seed = check_seed(seed)
    groups: dict[str, list[int]] = {}
    for i, (text, _) in enumerate(task.examples):
        groups.setdefault(input_key(text), []).append(i)
    by_label: dict[int, list[list[int]]] = {}
    for members in groups.values():
        by_label.setdefault(task.label_index(task.examples[members[0]][1]), []).append(members)
    rng = random.Random(sub_seed(seed, "heldout_split"))
    selection: list[int] = []
    evaluation: list[int] = []
    for label, label_groups in sorted(by_label.items()):
        if len(label_groups) < 2:
            raise ValueError(
                f"heldout_split: label {task.labels[label]!r} of task {task.name!r} has "
                f"{len(label_groups)} distinct input(s); each part needs one. Add examples."
            )
        order = rng.sample(label_groups, len(label_groups))
        cut = min(max(round(float(fraction) * len(order)), 1), len(order) - 1)
        selection += [i for members in order[:cut] for i in members]
        evaluation += [i for members in order[cut:] for i in members]
    return TaskSplit(
        task=task.name,
        task_digest=task.digest,
        fraction=float(fraction),
        seed=seed,
        selection=tuple(sorted(selection)),
        evaluation=tuple(sorted(evaluation)),
    )


def split_prompts(
    model: HookedTransformer,
    task: Task,
    k: int,
    n: int,
    seed: int = 0,
    perturbation: str | None = None,
    *,
    split: TaskSplit,
    part: Part,
) -> PromptSet:
    """``n`` k-shot prompts of ``task`` whose queries all lie in one part of ``split``.

    Built as :func:`~icl_heads.prompts.build_prompts` builds prompts (same demonstrations
    rule, perturbations, padding), from one seeded pool of prompts over the whole task large
    enough that every example is a query at least ``ceil(n / labels)`` times over its part;
    the rows whose query lies in ``part`` are kept, balanced over the labels (round-robin),
    each distinct query before any repeat, in the pool's (random) order. The result records
    ``seed``, ``k``, ``n`` and ``perturbation`` as usual and its own ``prompts_digest``.

    Example::

        evaluation = split_prompts(model, task, 4, 64, 0, split=split, part="evaluation")
        zero_shot = split_prompts(model, task, 4, 64, 1, "zero_shot", split=split,
                                  part="evaluation")

    Raises:
        TypeError: ``split`` is not a :class:`TaskSplit`. ValueError: a split of another
        task (digest), an unknown part; ``build_prompts``'s errors.
    """
    if not isinstance(split, TaskSplit):
        raise TypeError(
            f"split must be a TaskSplit (from heldout_split(task)), got {type(split).__name__}."
        )
    if not isinstance(task, Task):
        raise TypeError(f"split_prompts needs a Task, got {type(task).__name__}.")
    if split.task_digest != task.digest:
        raise ValueError(
            f"split_prompts: the split was made for task {split.task!r} (digest "
            f"{split.task_digest}), not for task {task.name!r} (digest {task.digest}); "
            "make it with heldout_split(task)."
        )
    pool = set(split.part(part))
    n = check_int(n, "n", 1, "a positive integer")
    seed = check_seed(seed)
    labels = [task.label_index(y) for _, y in task.examples]
    n_labels = task.n_labels
    need = math.ceil(n / n_labels)
    in_task = [labels.count(y) for y in range(n_labels)]
    in_part = [sum(1 for i in pool if labels[i] == y) for y in range(n_labels)]
    size = n_labels * max(
        in_task[y] * math.ceil(need / in_part[y]) for y in range(n_labels) if in_part[y]
    )
    everything = build_prompts(model, task, k, max(size, n), seed, perturbation)
    rows: dict[int, list[tuple[int, int]]] = {y: [] for y in range(n_labels)}
    seen: dict[int, int] = {}
    for row, q in enumerate(everything.query_examples):
        if q in pool:
            seen[q] = seen.get(q, 0) + 1
            rows[labels[q]].append((seen[q], row))  # (occurrence, row): distinct queries first
    queues = {y: sorted(r) for y, r in rows.items() if r}
    order = random.Random(sub_seed(seed, "split_prompts", part)).sample(sorted(queues), len(queues))
    chosen: list[int] = []
    cursors = dict.fromkeys(queues, 0)
    while len(chosen) < n:
        for y in order:
            if len(chosen) == n:
                break
            if cursors[y] < len(queues[y]):
                chosen.append(queues[y][cursors[y]][1])
                cursors[y] += 1
    return everything.select(sorted(chosen))
