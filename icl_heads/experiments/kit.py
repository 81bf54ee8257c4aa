"""The experiment kit: what every experiment family (TR/TL, geometry) shares.

* **Argument checks** that name the bad value and the fix (:func:`check_model`,
  :func:`check_prompts`, :func:`check_boot`, ...).
* **Conditions**: one record, :class:`Condition`, and one naming scheme for the rows of
  every result table: ``"baseline"`` (no intervention), a named head set (``"TR"``,
  ``"PTH"``), its pooled random controls ``random_name("TR") == "random_TR"`` (single sets
  keep their index in ``Condition.index`` and in the ``set``/``index`` columns of
  ``tables["random_sets"]``), and contrasts ``contrast_name("TR", "random_TR") ==
  "TR - random_TR"``. Code keeps conditions as records; the strings exist only in tables.
* **Rows**: level rows (a metric's mean with its interval), effect rows (paired difference
  from the baseline) and contrast rows (paired difference between two conditions), all
  through :mod:`icl_heads.stats`.
* **Verdicts**: one vocabulary (:data:`VERDICTS`) and one set of rules (:func:`judge`,
  :func:`combine`, :func:`pool_claim`, :func:`pool_verdicts`), defined in
  :mod:`icl_heads.experiments.verdict_rules` and re-exported here.
* **Grid cells**: a saved result per ``<root>/<model>/<task>/<experiment>/``
  (:func:`run_cell`, :func:`load_cells`), resumable, verified and never stale: they live
  in :mod:`icl_heads.experiments.cells` and are re-exported here.

Example::

    from icl_heads.experiments import kit

    named = kit.named_sets(model, {"TR": tr.top(), "TL": tl.top()})
    controls = kit.random_controls(model, named, ["TR"], 5, layer_matched=True, seed=0)
    [c.key for c in controls]          # ["random_TR#0", ..., "random_TR#4"]
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..backends import HookedTransformer
from ..checks import check_int
from ..heads import (
    Head,
    HeadScores,
    HeadsLike,
    heads_to_mask,
    map_head_set,
    mask_to_heads,
    random_head_sets,
)
from ..interventions import ABLATION_MODES
from ..metrics import BEHAVIOUR
from ..prompt_set import check_model as check_prompt_model
from ..prompts import PromptSet, check_prompt_set
from ..provenance import check_map
from ..results import table_row
from ..stats import mean_ci, paired_difference_ci
from ..tasks import Task, load_task
from .cells import SeedResults as SeedResults
from .cells import cell_record as cell_record  # the grid cells (re-exported)
from .cells import cell_table as cell_table
from .cells import load_cells as load_cells
from .cells import per_seed as per_seed
from .cells import run_cell as run_cell
from .verdict_rules import VERDICTS as VERDICTS  # re-exported: the families and pages use them
from .verdict_rules import combine as combine
from .verdict_rules import judge as judge
from .verdict_rules import pool_claim as pool_claim
from .verdict_rules import pool_seeds as pool_seeds
from .verdict_rules import pool_verdicts as pool_verdicts
from .verdict_rules import verdict_text as verdict_text

log = logging.getLogger(__name__)

#: The condition without intervention, in every table.
BASELINE = "baseline"


# =========================================================================== checks


def check_model(model: object, fn: str) -> HookedTransformer:
    """``model`` if it is a ``HookedTransformer``, else a TypeError naming ``fn``
    (:func:`icl_heads.prompt_set.check_model`)."""
    check_prompt_model(model, fn)
    return model


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``, else a TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


def check_ablation_modes(mode: object, sensitivity_mode: object = None) -> None:
    """An experiment's ablation ``mode`` and its optional ``sensitivity_mode`` (another
    mode, run beside it as sensitivity rows): a ValueError naming the bad one otherwise.

    Example::

        check_ablation_modes("mean", "zero")
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}.")
    if sensitivity_mode is not None and (
        sensitivity_mode not in ABLATION_MODES or sensitivity_mode == mode
    ):
        raise ValueError(
            f"sensitivity_mode={sensitivity_mode!r} must be None or another ablation mode than "
            f"mode={mode!r}, one of {ABLATION_MODES}."
        )


def check_boot(n_boot: object) -> int:
    """The number of bootstrap resamples, an integer >= 1."""
    return check_int(n_boot, "n_boot", 1)


def check_prompts(
    model: HookedTransformer,
    prompts: PromptSet,
    what: str = "prompts",
    *,
    need_demos: bool = False,
    need_labels: int = 2,
) -> PromptSet:
    """``prompts`` checked against ``model``, with at least ``need_labels`` labels and (with
    ``need_demos``) demonstrations."""
    check_prompt_set(prompts, what, model=model)
    if prompts.n_labels < need_labels:
        raise ValueError(
            f"The {what} have {prompts.n_labels} label(s); these experiments "
            f"compare the gold label with the others and need at least "
            f"{need_labels}."
        )
    if need_demos and (prompts.k == 0 or prompts.perturbation == "zero_shot"):
        raise ValueError(
            f"The {what} have no demonstrations (k={prompts.k}, perturbation="
            f"{prompts.perturbation!r}), but this experiment needs ICL prompts: "
            "build them with k >= 1, e.g. build_prompts(model, task, k=4, n=64)."
        )
    return prompts


def as_task(task: object) -> Task:
    """A :class:`~icl_heads.tasks.Task` from a task, a built-in task name or a task file."""
    if isinstance(task, Task):
        return task
    if isinstance(task, (str, os.PathLike)):
        return load_task(task)
    raise TypeError(
        f"task must be a Task or a task name / file (load_task), got {type(task).__name__}."
    )


def post_attention_norm(model: HookedTransformer) -> bool:
    """Whether the model normalises each attention output before the residual stream
    (Gemma 2/3): head outputs there are scaled by that norm."""
    return bool(getattr(model.cfg, "use_normalization_before_and_after", False))


def sub_seed(seed: int, *keys: int | str) -> int:
    """A seed derived from ``seed`` and keys (names hashed with crc32: stable across runs)."""
    parts = [int(seed) & 0xFFFFFFFF]
    parts += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


# =========================================================================== conditions


def random_name(name: str) -> str:
    """The condition name of the pooled random controls of head set ``name``."""
    return f"random_{name}"


def contrast_name(a: str, b: str) -> str:
    """The condition name of the paired contrast ``a`` minus ``b``."""
    return f"{a} - {b}"


def heads_label(heads: Sequence[Head]) -> str:
    """Heads as one string, ``"L3H1 L5H0"`` (the ``heads`` column of tables)."""
    return " ".join(str(h) for h in heads)


def parse_heads(text: object) -> list[Head]:
    """The heads of a :func:`heads_label` string (empty for an empty or missing label)."""
    if not isinstance(text, str) or not text.strip():
        return []
    out = []
    for token in text.split():
        layer, head = token[1:].split("H")
        out.append(Head(int(layer), int(head)))
    return out


@dataclass(frozen=True)
class Condition:
    """One head set an experiment intervenes on.

    Attributes:
        name: the table's condition name (``"TR"``, or ``"random_TR"`` for a control).
        heads: its heads, sorted.
        control_of: for a random control set, the named set it controls.
        index: for a random control set, which of the ``n_random`` sets.
    """

    name: str
    heads: tuple[Head, ...]
    control_of: str | None = None
    index: int | None = None

    @property
    def key(self) -> str:
        """Unique among an experiment's conditions (``"random_TR#2"`` for a single set)."""
        return self.name if self.index is None else f"{self.name}#{self.index}"

    @property
    def label(self) -> str:
        """The heads as one string (:func:`heads_label`)."""
        return heads_label(self.heads)


def head_set(
    model: HookedTransformer, heads: HeadsLike, name: str, *, top_k: int | None = None
) -> list[Head]:
    """One head set as a sorted list, with clear errors (too many, repeated, out of range).
    A ``HeadScores`` gives its ``top(top_k)``, never an empty set (:func:`map_head_set`);
    an explicit empty list stays empty (a check that the intervention changes nothing)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(heads, HeadScores):  # never empty; a map made with another model is refused
        scores, heads = heads, map_head_set(heads, L, H, top_k, what=f"Head set {name!r}")
        check_map(scores, model, fn=f"Head set {name!r}", what=f"map {scores.name!r}", need="model")
    if isinstance(heads, (list, tuple)):
        if len(heads) > L * H:
            raise ValueError(
                f"Head set {name!r} has {len(heads)} heads, more than the model's "
                f"{L * H} ({L} layers x {H} heads)."
            )
        pairs = [tuple(h) if isinstance(h, (list, tuple)) else h for h in heads]
        try:
            if len(set(pairs)) != len(pairs):
                raise ValueError(f"Head set {name!r} lists a head more than once: {list(heads)}.")
        except TypeError:
            pass  # unhashable items: heads_to_mask gives the clear error
    try:
        mask = heads_to_mask(heads, L, H)
    except (TypeError, ValueError) as err:
        raise type(err)(f"Head set {name!r}: {err}") from None
    return mask_to_heads(mask)


def named_sets(
    model: HookedTransformer, heads: object, *, top_k: int | None = None
) -> dict[str, list[Head]]:
    """The named head sets of an experiment, checked: ``{name: sorted heads}``.

    Values may be any head selection (``Head`` lists, ``(layer, head)`` pairs, a boolean
    mask) or a ``HeadScores`` (its ``top(top_k)``; a map with no rankable head is an error,
    see :func:`head_set`). Names must be non-empty, must not be
    ``"baseline"``, start with ``"random"`` or contain ``" - "`` (those name controls and
    contrasts).
    """
    if not isinstance(heads, Mapping):
        raise TypeError(
            "heads must be a mapping from a set's name to its heads, e.g. "
            "{'TR': tr.top(), 'TL': tl.top()}, got "
            f"{type(heads).__name__}."
        )
    if not heads:
        raise ValueError(
            "heads is empty; give at least one named head set, e.g. "
            "{'TR': tr.top(), 'TL': tl.top()}."
        )
    out = {}
    for name, value in heads.items():
        if (
            not isinstance(name, str)
            or not name
            or name == BASELINE
            or name.startswith("random")
            or " - " in name
        ):
            raise ValueError(
                f"Head set names must be non-empty strings other than "
                f"{BASELINE!r}, not starting with 'random' nor containing ' - ' "
                f"(used for controls and contrasts); got {name!r}."
            )
        out[name] = head_set(model, value, name, top_k=top_k)
    return out


def check_random(
    n_random: object, random_like: object, named: Mapping[str, list]
) -> tuple[int, tuple[str, ...]]:
    """``(n_random, random_like)`` checked: the sets that get random controls (default every
    non-empty named set; naming an empty set is an error) and how many controls each."""
    n_random = check_int(n_random, "n_random", 0)
    if random_like is None:
        random_like = tuple(name for name, hs in named.items() if hs)
    elif isinstance(random_like, str):
        random_like = (random_like,)
    if not isinstance(random_like, Sequence) or isinstance(random_like, (bytes,)):
        raise TypeError(f"random_like must be a list of head-set names, got {random_like!r}.")
    random_like = tuple(random_like)
    for name in random_like:
        if name not in named:
            raise ValueError(
                f"random_like names {name!r}, which is not one of the head sets {list(named)}."
            )
        if not named[name]:
            raise ValueError(
                f"random_like names {name!r}, an empty head set: its random controls would "
                "be empty too (rows equal to the baseline). Leave it out of random_like."
            )
    if random_like and n_random == 0:
        raise ValueError(
            f"n_random=0 but random control sets were requested for "
            f"{list(random_like)}; pass n_random >= 1 (default 5), or "
            "random_like=() to run without random sets."
        )
    return n_random, random_like


def random_controls(
    model: HookedTransformer,
    named: Mapping[str, list[Head]],
    random_like: Sequence[str],
    n_random: int,
    *,
    layer_matched: bool = True,
    seed: int | np.random.Generator = 0,
) -> list[Condition]:
    """``n_random`` random control sets for each set in ``random_like``
    (:func:`~icl_heads.heads.random_head_sets`): the same size (and, ``layer_matched``, the
    same layers) as the set, never containing a head of any named set.

    ``seed``: an int gives each set its own stream (:func:`sub_seed` of the seed and the
    set's name, so adding a set leaves the others' controls unchanged); a numpy
    ``Generator`` is drawn from in order, set after set.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    evaluated = torch.zeros(L, H, dtype=torch.bool)
    for hs in named.values():
        evaluated |= heads_to_mask(hs, L, H)
    exclude = mask_to_heads(evaluated)
    out = []
    for name in random_like:
        stream = seed if isinstance(seed, np.random.Generator) else sub_seed(seed, "random", name)
        draws = random_head_sets(
            model, named[name], n_random, layer_matched=layer_matched, seed=stream, exclude=exclude
        )
        out += [
            Condition(random_name(name), tuple(hs), control_of=name, index=i)
            for i, hs in enumerate(draws)
        ]
    return out


@dataclass(frozen=True)
class HeadSets:
    """The head sets of an experiment: the named sets and their random controls.

    Attributes:
        named: ``{name: sorted heads}``, checked (:func:`named_sets`).
        controls: the random control sets (:func:`random_controls`).
        n_random, random_like: as checked (:func:`check_random`), for the settings.
    """

    named: dict[str, list[Head]]
    controls: list[Condition]
    n_random: int
    random_like: tuple[str, ...]

    @property
    def conditions(self) -> list[Condition]:
        """Every set as a :class:`Condition`: the named sets first, then the controls."""
        return [Condition(name, tuple(hs)) for name, hs in self.named.items()] + self.controls


def head_sets_with_controls(
    model: HookedTransformer,
    heads: object,
    *,
    n_random: object,
    random_like: object,
    layer_matched: bool = True,
    seed: int | np.random.Generator = 0,
    top_k: int | None = None,
) -> HeadSets:
    """The named head sets of ``heads`` (:func:`named_sets`) and ``n_random`` random
    controls for each set of ``random_like`` (:func:`check_random`,
    :func:`random_controls`).

    Example::

        sets = head_sets_with_controls(model, {"TR": tr.top()}, n_random=5, random_like=None)
        [c.key for c in sets.conditions]        # ["TR", "random_TR#0", ..., "random_TR#4"]
    """
    named = named_sets(model, heads, top_k=top_k)
    n_random, random_like = check_random(n_random, random_like, named)
    controls = random_controls(
        model, named, random_like, n_random, layer_matched=layer_matched, seed=seed
    )
    return HeadSets(named, controls, n_random, random_like)


def matched_fraction(reference: Sequence[Head], sample: Sequence[Head]) -> float:
    """Fraction of ``reference``'s heads whose layer ``sample`` matches (1 = layer-matched)."""
    if not reference:
        return math.nan
    want = np.bincount(
        [h.layer for h in reference],
        minlength=1 + max([h.layer for h in reference] + [h.layer for h in sample]),
    )
    got = np.bincount([h.layer for h in sample], minlength=want.size)
    return float(np.minimum(want, got).sum() / len(reference))


# =========================================================================== rows


def level_rows(
    condition: str,
    values: Mapping[str, Tensor],
    *,
    n_boot: int,
    seed: int,
    metrics: Sequence[str] = BEHAVIOUR,
    **extra,
) -> list[dict]:
    """One ``kind="level"`` row per metric: the mean over prompts with its interval."""
    rows = []
    for metric in metrics:
        v, lo, hi, n = mean_ci(values[metric], n_boot=n_boot, seed=seed)
        rows.append(table_row(condition, metric, v, lo, hi, n, kind="level", **extra))
    return rows


def effect_rows(
    condition: str,
    treated: Mapping[str, Tensor],
    baseline: Mapping[str, Tensor],
    *,
    n_boot: int,
    seed: int,
    kind: str = "effect",
    metrics: Sequence[str] = BEHAVIOUR,
    **extra,
) -> list[dict]:
    """One row per metric, ``delta_<metric>``: the paired difference ``treated - baseline``
    over the same prompts (:func:`~icl_heads.stats.paired_difference_ci`). ``kind`` is
    ``"effect"`` against the baseline, ``"contrast"`` between two conditions."""
    rows = []
    for metric in metrics:
        v, lo, hi, n = paired_difference_ci(
            treated[metric], baseline[metric], n_boot=n_boot, seed=seed
        )
        rows.append(table_row(condition, f"delta_{metric}", v, lo, hi, n, kind=kind, **extra))
    return rows


def chance_row(prompts: PromptSet, **extra) -> dict:
    """The ``baseline`` x ``chance`` row (``1 / n_labels``)."""
    chance = 1.0 / prompts.n_labels
    return table_row(
        BASELINE, "chance", chance, chance, chance, len(prompts), kind="level", **extra
    )


def pool(per_set: Sequence[Mapping[str, Tensor]], metrics: Sequence[str]) -> dict[str, Tensor]:
    """Per-prompt mean over random sets (NaN-aware)."""
    out = {}
    for metric in metrics:
        stacked = torch.stack([s[metric].double() for s in per_set])
        out[metric] = torch.nanmean(stacked, 0) if (~torch.isnan(stacked)).any() else stacked[0]
    return out


def spread(per_set: Sequence[Mapping[str, Tensor]], metric: str) -> dict[str, float]:
    """``set_sd``, ``set_min``, ``set_max`` of the random sets' mean values."""
    means = []
    for s in per_set:
        v = s[metric].float()
        means.append(float(torch.nanmean(v)) if (~torch.isnan(v)).any() else math.nan)
    arr = np.asarray(means, dtype=float)
    ok = arr[~np.isnan(arr)]
    if ok.size == 0:
        return {"set_sd": math.nan, "set_min": math.nan, "set_max": math.nan}
    return {
        "set_sd": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
        "set_min": float(ok.min()),
        "set_max": float(ok.max()),
    }


# =========================================================================== verdicts
# The rules live in verdict_rules (judge, combine, pool_claim, margins, ...); the names the
# families and pages use are re-exported here.


# =========================================================================== numbers


def fmt(x: float | None) -> str:
    """One number as the results pages and verdict details show it: 3 significant digits,
    ``1.2e-04`` below 1e-3, ``0`` for float rounding of zero (|x| < 1e-9), ``–`` for a
    missing value (None or NaN).

    Example::

        fmt(0.12345), fmt(0.00012), fmt(float("nan"))     # '0.123', '1.2e-04', '–'
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    x = float(x)
    if abs(x) < 1e-9:
        return "0"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}"
