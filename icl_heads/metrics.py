"""Metrics of ICL behaviour on final-position logits, and :func:`evaluate`.

Every metric has the signature ``metric(logits, gold, label_token_ids) -> [batch]`` (one
value per prompt; NaN where undefined), so sweeps and experiments can take a metric by
name or any callable of that shape.

Logits that are not finite (NaN or +-inf, from a broken run: e.g. a steering vector scaled
past float range) are never scored: every metric raises a ValueError naming the metric and
the rows (:func:`check_logits`), instead of an argmax of NaN read as a prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .activations import collect
from .backends import HookedTransformer
from .batching import BatchSize
from .hooks import check_interventions
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo, Settings, describe_interventions, model_name

Metric = Callable[[Tensor, Tensor, Tensor], Tensor]


def check_logits(logits: Float[Tensor, "batch ..."], metric: str) -> Tensor:
    """``logits`` if every value is finite, else a ValueError naming ``metric``, how many
    rows are bad and the first one (NaN or inf logits cannot be scored: an argmax of NaN is
    not a prediction).

    Example::

        check_logits(torch.tensor([[0.0, float("nan")]]), "accuracy")   # ValueError
    """
    # A NaN or inf anywhere in a row makes its float32 sum NaN or inf, so rows whose sums
    # are finite need no other look (one read of the logits, no [batch, d_vocab] mask; the
    # mask cost ~10% of a Gemma 3 TR/TL cell). A sum can also overflow on finite values
    # (|logits| ~ 1e33): only then is every value looked at, so the answer is exact.
    flat = logits.reshape(logits.shape[0], -1)
    if bool(torch.isfinite(flat.sum(-1, dtype=torch.float32)).all()):
        return logits
    bad = ~torch.isfinite(flat).all(-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        kinds = "NaN" if bool(torch.isnan(logits).any()) else "inf"
        raise ValueError(
            f"{metric}: the logits of {len(rows)} of {logits.shape[0]} prompts hold "
            f"{kinds} (first: batch row {rows[0]}), so they cannot be scored; the run or an "
            "intervention made them non-finite (e.g. a huge steering alpha or vector, or "
            "float16 overflow)."
        )
    return logits


def label_logits(
    logits: Float[Tensor, "batch d_vocab"], label_token_ids: Int[Tensor, " label"]
) -> Float[Tensor, "batch label"]:
    return logits[:, label_token_ids.to(logits.device)]


def accuracy(logits: Tensor, gold: Tensor, label_token_ids: Tensor) -> Float[Tensor, " batch"]:
    """1 where the argmax over the label tokens is the gold label (non-finite label logits:
    ValueError)."""
    lab = check_logits(label_logits(logits, label_token_ids), "accuracy")
    return (lab.argmax(-1) == gold.to(logits.device)).float()


def in_label_space(
    logits: Tensor, gold: Tensor, label_token_ids: Tensor
) -> Float[Tensor, " batch"]:
    """1 where the argmax over the whole vocabulary is a label token (task recognition;
    non-finite logits: ValueError)."""
    top = check_logits(logits, "label_space_rate").argmax(-1)
    return (top[:, None] == label_token_ids.to(logits.device)[None]).any(-1).float()


label_space_rate = in_label_space


def in_space_accuracy(
    logits: Tensor, gold: Tensor, label_token_ids: Tensor
) -> Float[Tensor, " batch"]:
    """Accuracy among prompts whose vocabulary argmax is a label token (NaN elsewhere;
    non-finite logits: ValueError)."""
    check_logits(logits, "in_space_accuracy")
    acc = accuracy(logits, gold, label_token_ids)
    return torch.where(
        in_label_space(logits, gold, label_token_ids).bool(),
        acc,
        torch.full_like(acc, float("nan")),
    )


def logit_diff(logits: Tensor, gold: Tensor, label_token_ids: Tensor) -> Float[Tensor, " batch"]:
    """Gold-label logit difference ``logit[y*] - mean_{y' != y*} logit[y']`` (non-finite
    label logits: ValueError)."""
    lab = check_logits(label_logits(logits, label_token_ids), "logit_diff")
    gold = gold.to(logits.device)
    g = lab.gather(-1, gold[:, None]).squeeze(-1)
    others = (lab.sum(-1) - g) / (lab.shape[-1] - 1)
    return g - others


def label_mass(logits: Tensor, gold: Tensor, label_token_ids: Tensor) -> Float[Tensor, " batch"]:
    """Probability mass on the label tokens, ``sum_y softmax(logits)[y]`` over the whole
    vocabulary (the continuous counterpart of the label-space rate; non-finite logits:
    ValueError).

    Example::

        label_mass(logits, prompts.gold, prompts.label_token_ids)   # [batch], in [0, 1]
    """
    full = check_logits(logits, "label_mass").float()
    lab = label_logits(full, label_token_ids)
    return torch.exp(torch.logsumexp(lab, -1) - torch.logsumexp(full, -1))


def gold_margin(logits: Tensor, gold: Tensor, label_token_ids: Tensor) -> Float[Tensor, " batch"]:
    """Gold-label margin over the best other label, ``logit[y*] - max_{y' != y*}
    logit[y']`` (the continuous counterpart of accuracy: positive only where the gold label
    wins among the label tokens; with two labels it equals :func:`logit_diff`; non-finite
    label logits: ValueError).

    Example::

        gold_margin(logits, prompts.gold, prompts.label_token_ids)  # [batch]
    """
    lab = check_logits(label_logits(logits, label_token_ids), "gold_margin").float()
    gold = gold.to(logits.device)
    g = lab.gather(-1, gold[:, None]).squeeze(-1)
    others = lab.scatter(-1, gold[:, None], float("-inf"))
    return g - others.max(-1).values


METRICS: dict[str, Metric] = {
    "logit_diff": logit_diff,
    "accuracy": accuracy,
    "label_space_rate": label_space_rate,
    "in_space_accuracy": in_space_accuracy,
}
#: The behaviour metrics every experiment reports, in this order (one definition for
#: ``evaluate``, the TR/TL and the geometry experiments).
BEHAVIOUR = ("accuracy", "label_space_rate", "in_space_accuracy", "logit_diff")


#: Continuous metrics beside the step metrics (issue 18 item 6): the label tokens'
#: probability mass (TR's continuous counterpart of the label-space rate) and the gold
#: label's margin over the best other label (TL's, of accuracy). ``logit_diff`` (gold vs the
#: mean other label) is already a :data:`BEHAVIOUR` metric. Not in :data:`METRICS` (so
#: :func:`evaluate`'s columns are unchanged); :func:`get_metric` knows them by name.
CONTINUOUS_METRICS: dict[str, Metric] = {"label_mass": label_mass, "gold_margin": gold_margin}
CONTINUOUS = tuple(CONTINUOUS_METRICS)


def behaviour(logits: Float[Tensor, "prompt d_vocab"], prompts: PromptSet) -> dict[str, Tensor]:
    """Every :data:`BEHAVIOUR` metric per prompt (float32 on the CPU; in-space accuracy is
    NaN outside the label space).

    Example::

        per_prompt = behaviour(logits, prompts)      # {"accuracy": [n], ...}
    """
    gold = prompts.gold.to(logits.device)
    return {m: METRICS[m](logits, gold, prompts.label_token_ids).float().cpu() for m in BEHAVIOUR}


def continuous(logits: Float[Tensor, "prompt d_vocab"], prompts: PromptSet) -> dict[str, Tensor]:
    """Every :data:`CONTINUOUS` metric per prompt (float32 on the CPU), from the same logits
    as :func:`behaviour` (no extra forward pass).

    Example::

        per_prompt = continuous(logits, prompts)     # {"label_mass": [n], "gold_margin": [n]}
    """
    gold = prompts.gold.to(logits.device)
    return {
        m: CONTINUOUS_METRICS[m](logits, gold, prompts.label_token_ids).float().cpu()
        for m in CONTINUOUS
    }


def behaviour_and_continuous(
    logits: Float[Tensor, "prompt d_vocab"], prompts: PromptSet
) -> dict[str, Tensor]:
    """:func:`behaviour` then :func:`continuous`, in that order (a ``measure`` for
    :func:`~icl_heads.last_token.run_conditions`).

    Example::

        run_conditions(model, prompts, runs, measure=behaviour_and_continuous, query_only=True)
    """
    return {**behaviour(logits, prompts), **continuous(logits, prompts)}


def metric_name(metric: str | Metric) -> str:
    """The name a metric goes by in results (a callable's ``__name__``)."""
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")


def get_metric(metric: str | Metric) -> Metric:
    """A metric by name (``logit_diff``, ``accuracy``, ``label_space_rate``,
    ``in_space_accuracy``, ``label_mass``, ``gold_margin``) or a callable ``metric(logits, gold, label_token_ids) -> [batch]``.

    A callable is wrapped so that its input and output are checked on every call (so on the
    first batch, not after a long sweep): the logits must be finite (:func:`check_logits`)
    and it must return one number per prompt.
    """
    if isinstance(metric, str):
        named = {**METRICS, **CONTINUOUS_METRICS}
        if metric not in named:
            raise ValueError(
                f"Unknown metric {metric!r}; choose one of {sorted(named)} or pass "
                "a callable metric(logits, gold, label_token_ids) -> [batch]."
            )
        return named[metric]
    if not callable(metric):
        raise TypeError(
            f"metric must be a metric name ({sorted(METRICS)}) or a callable "
            f"metric(logits, gold, label_token_ids) -> [batch], got {metric!r}."
        )
    name = metric_name(metric)

    def checked(logits: Tensor, gold: Tensor, label_token_ids: Tensor) -> Tensor:
        value = metric(check_logits(logits, name), gold, label_token_ids)
        if not isinstance(value, Tensor):
            raise TypeError(
                f"The metric {name!r} returned {type(value).__name__}; it must "
                f"return a tensor with one value per prompt ([{len(gold)}])."
            )
        if tuple(value.shape) != (len(gold),):
            raise ValueError(
                f"The metric {name!r} returned shape {tuple(value.shape)} for a "
                f"batch of {len(gold)} prompts; it must return one value per "
                f"prompt, shape [{len(gold)}] (e.g. no .mean() over the batch)."
            )
        if not (value.dtype.is_floating_point or value.dtype == torch.bool):
            value = value.float()
        return value

    checked.__name__ = name
    return checked


def metrics_from_logits(
    logits: Float[Tensor, "prompt d_vocab"], prompts: PromptSet
) -> dict[str, float]:
    """All behaviour metrics, averaged over prompts (NaN-aware), plus chance level."""
    out = {}
    for name, fn in METRICS.items():
        values = fn(logits, prompts.gold, prompts.label_token_ids)
        out[name] = float(values.nanmean()) if (~values.isnan()).any() else float("nan")
    out["chance"] = 1.0 / prompts.n_labels
    return out


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """How :func:`evaluate` was run."""

    model: str | None
    prompts: PromptInfo
    interventions: tuple[str, ...] = ()


def evaluate(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Accuracy, label-space rate, in-space accuracy and mean gold-label logit difference.

    Args:
        interventions: run with these interventions (ablate, patch, steer, ...).

    Example::

        ih.evaluate(model, prompts)
        ih.evaluate(model, prompts, interventions=[ih.ablate(model, tl.top(8), "mean",
                                                             reference=prompts)])

    Returns:
        A one-row DataFrame with columns ``task, k, n, seed, perturbation, accuracy,
        label_space_rate, in_space_accuracy, logit_diff, chance``;
        ``.attrs["settings"]`` says how it was made.
    """
    check_prompt_set(prompts, model=model)
    logits = collect(
        model,
        prompts,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc=f"evaluate k={prompts.k}",
    ).logits
    info = prompts.info()
    row = {
        "task": info.task,
        "k": info.k,
        "n": info.n,
        "seed": info.seed,
        "perturbation": info.perturbation,
        **metrics_from_logits(logits, prompts),
    }
    frame = pd.DataFrame([row])
    frame.attrs["settings"] = EvaluateSettings(
        model=model_name(model),
        prompts=info,
        interventions=describe_interventions(check_interventions(interventions)),
    )
    return frame
