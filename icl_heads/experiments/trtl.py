"""The experiments of the TR/TL paper (Yang, Cho, Inoue 2025, arXiv 2509.24164): which heads
recognise a task (TR) and which learn it (TL), and does each claim of the paper hold here?

Every experiment is a function ``f(model, prompts_or_task, ...)`` returning an
:class:`~icl_heads.results.ExperimentResult` (tidy table with bootstrap confidence
intervals, a frozen settings dataclass, the head maps it made, extra tables)::

    import icl_heads as ih
    from icl_heads.experiments import trtl

    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=4, n=64, seed=0)
    found = trtl.find_task_heads(model, prompts)          # TR/TL maps, head sets, overlap
    sets = trtl.head_sets(found)                           # {"TR": [...], "TL": [...]}
    trtl.ablation_experiment(model, prompts, sets)         # + 5 random sets each, with CIs
    trtl.perturbation_experiment(model, "sentiment", 4, 64, 0)
    trtl.correlation_experiment(model, prompts, tr=found.maps["TR"], tl=found.maps["TL"])
    zero_shot = ih.build_prompts(model, ih.load_task("sentiment"), k=0, n=64, seed=0)
    trtl.steering_experiment(model, prompts, zero_shot, sets)
    trtl.reconciliation_experiment(model, prompts, tr=found.maps["TR"], tl=found.maps["TL"])
    trtl.reproduce_trtl(model, ["sentiment"], "results/trtl")       # all of it, resumable
    trtl.write_trtl_page("results/trtl", "docs/results/trtl.md", "docs/results/figures/trtl")

Definitions are in ``docs/methods.md``. Conventions:

- Behaviour metrics (``accuracy``, ``label_space_rate``, ``in_space_accuracy``,
  ``logit_diff``) are computed per prompt and averaged (NaN-aware); ``chance`` is ``1/C``.
- Intervals are seeded percentile bootstraps (``icl_heads.stats``, ``n_boot`` resamples,
  95%): over prompts for metrics and effects, over heads for correlations between maps.
- An *effect* (``kind="effect"``, metric ``delta_<metric>``) is ``metric(condition) -
  metric(baseline)`` on the same prompts: a paired bootstrap over prompts of the difference
  of the two (NaN-aware) means. A *contrast* (``kind="contrast"``, condition ``"A - B"``)
  is the same for two conditions. For metrics defined on every prompt this is exactly
  ``stats.paired_difference_ci``; for ``in_space_accuracy`` (NaN outside the label space)
  the two means are taken over their own defined prompts, resampled jointly.
- Random control sets (``random_<name>``, pooled over ``n_random`` sets; single sets in
  ``tables["random_sets"]``) have the size of the named set, lie in the same layers when
  ``layer_matched`` (the nearest layer when a layer has no free head left), and never
  contain any evaluated head; they are drawn from ``seed``
  (:func:`~icl_heads.heads.random_head_sets`).
  Pooled rows give the per-prompt mean over the sets (CI over prompts) and, in
  ``set_sd``/``set_min``/``set_max``, the spread of the set means.
- Runs that share prompts share one clean run: the baseline and every ablated or steered
  condition re-run only what can change (from the earliest intervened layer on, and only
  the last token for query-position work) through the cached-prefix engine of
  :mod:`icl_heads.last_token` (exact). No experiment keeps a full activation cache.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..attribution import label_unembeddings, tsla_scores
from ..checks import check_int
from ..decomposition import iter_query_terms
from ..detectors import label_attention_scores, token_detector_scores
from ..geometry import label_rotation, normalized_states, subspace_alignment
from ..heads import (
    Head,
    HeadScores,
    HeadsLike,
    check_top_k,
    heads_to_mask,
    mask_to_heads,
    random_head_sets,
)
from ..interventions import (
    ABLATION_MODES,
    ActivationMeans,
    Capture,
    Positions,
    ablate,
    activation_means,
    check_interventions,
    check_positions,
    compose,
    steer,
)
from ..last_token import check_supported, clean_run, run_items
from ..metrics import METRICS, accuracy, in_label_space, logit_diff
from ..patching import head_sweep
from ..prompts import PERTURBATIONS, PromptSet, build_prompts, check_prompt_set
from ..results import ExperimentResult, make_table, safe_name, table_row
from ..settings import PromptInfo, Settings, describe_interventions, model_name
from ..stats import (
    correlation_ci,
    correlation_difference_ci,
    mean_ci,
    paired_difference_ci,
    top_k_overlap_ci,
)
from ..tasks import Task, load_task

log = logging.getLogger(__name__)

#: The behaviour metrics every experiment reports, in this order.
BEHAVIOUR = ("accuracy", "label_space_rate", "in_space_accuracy", "logit_diff")
#: The steering geometry of the final state (``docs/methods.md``, "Geometry of steering").
GEOMETRY = ("alignment", "rotation")
#: The experiments of :func:`reproduce_trtl`, in the order they run (directory names).
EXPERIMENTS = ("find_task_heads", "ablation", "perturbation", "correlation",
               "steering_zero_shot", "steering_abstract_labels", "reconciliation")
#: The steering strength at which the steering claims are judged on the results page.
VERDICT_ALPHA = 1.0
VERDICTS = ("holds", "does not hold", "unclear")


# =========================================================================== settings


@dataclass(frozen=True)
class FindTaskHeadsSettings(Settings):
    """How :func:`find_task_heads` was run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    top_k: int
    normalize: str
    apply_ln: bool
    n_boot: int
    seed: int
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AblationSettings(Settings):
    """How :func:`ablation_experiment` was run (``heads``: ``(name, ("L3H5", ...))``)."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    heads: tuple
    n_random: int
    layer_matched: bool
    random_like: tuple[str, ...]
    mode: str
    positions: str | tuple[int, ...]
    means: PromptInfo | None
    seed: int
    n_boot: int
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PerturbationSettings(Settings):
    """How :func:`perturbation_experiment` was run."""

    model: str | None
    task: str
    k: int
    n: int
    seed: int
    perturbations: tuple[str, ...]
    labels: tuple[str, ...]
    top_k: int
    normalize: str
    apply_ln: bool
    n_boot: int
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorrelationSettings(Settings):
    """How :func:`correlation_experiment` was run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    mode: str
    positions: str | tuple[int, ...]
    method: str
    scores: str
    normalize: str
    apply_ln: bool
    n_boot: int
    seed: int
    effect: str = "metric(ablated) - metric(clean) per prompt (head_sweep), mean over prompts"
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SteeringSettings(Settings):
    """How :func:`steering_experiment` was run."""

    model: str | None
    source: PromptInfo
    target: PromptInfo
    labels: tuple[str, ...]
    heads: tuple
    alphas: tuple[float, ...]
    n_random: int
    layer_matched: bool
    random_like: tuple[str, ...]
    positions: str | tuple[int, ...]
    start_layer: int
    seed: int
    n_boot: int
    vector: str = ("each head's mean output at the query over the source prompts, in the "
                   "residual stream, added at its layer's attention output")
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReconciliationSettings(Settings):
    """How :func:`reconciliation_experiment` was run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    top_k: int
    T: int
    n_sequences: int
    task_vector_layer: int
    seed: int
    n_boot: int
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()


# =========================================================================== validation


def _check_model(model: object, fn: str) -> HookedTransformer:
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"{fn} needs a HookedTransformer as model (e.g. ih.load_model()), got "
                        f"{type(model).__name__}.")
    return model


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


def _check_prompts(model: HookedTransformer, prompts: PromptSet, what: str = "prompts", *,
                   need_demos: bool = False, need_labels: int = 2) -> PromptSet:
    check_prompt_set(prompts, what, model=model)
    if prompts.n_labels < need_labels:
        raise ValueError(f"The {what} have {prompts.n_labels} label(s); TR/TL experiments compare "
                         f"the gold label with the others and need at least {need_labels}.")
    if need_demos and (prompts.k == 0 or prompts.perturbation == "zero_shot"):
        raise ValueError(f"The {what} have no demonstrations (k={prompts.k}, perturbation="
                         f"{prompts.perturbation!r}), but this experiment needs ICL prompts: "
                         "build them with k >= 1, e.g. build_prompts(model, task, k=4, n=64).")
    return prompts


def _post_norm(model: HookedTransformer) -> bool:
    return bool(getattr(model.cfg, "use_normalization_before_and_after", False))


def _head_list(model: HookedTransformer, heads: HeadsLike, name: str) -> list[Head]:
    """One head set as a sorted list, with clear errors (too many, repeated, out of range)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(heads, (list, tuple)):
        if len(heads) > L * H:
            raise ValueError(f"Head set {name!r} has {len(heads)} heads, more than the model's "
                             f"{L * H} ({L} layers x {H} heads).")
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


def _named_sets(model: HookedTransformer, heads: object) -> dict[str, list[Head]]:
    if not isinstance(heads, Mapping):
        raise TypeError("heads must be a mapping from a set's name to its heads, e.g. "
                        "{'TR': tr.top(), 'TL': tl.top()}, got "
                        f"{type(heads).__name__}.")
    if not heads:
        raise ValueError("heads is empty; give at least one named head set, e.g. "
                         "{'TR': tr.top(), 'TL': tl.top()}.")
    out = {}
    for name, value in heads.items():
        if not isinstance(name, str) or not name or name.startswith("random") or " - " in name:
            raise ValueError(f"Head set names must be non-empty strings, not starting with "
                             f"'random' nor containing ' - ' (used for controls and contrasts); "
                             f"got {name!r}.")
        out[name] = _head_list(model, value, name)
    return out


def _check_random(n_random: object, random_like: object, named: Mapping[str, list]) -> tuple:
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
            raise ValueError(f"random_like names {name!r}, which is not one of the head sets "
                             f"{list(named)}.")
    if random_like and n_random == 0:
        raise ValueError(f"n_random=0 but random control sets were requested for "
                         f"{list(random_like)}; pass n_random >= 1 (default 5), or "
                         "random_like=() to run without random sets.")
    return n_random, random_like


def _check_boot(n_boot: object) -> int:
    return check_int(n_boot, "n_boot", 1)


def _sub_seed(seed: int, *keys: int | str) -> int:
    """A seed derived from ``seed`` and keys (names hashed with crc32: stable across runs)."""
    parts = [int(seed) & 0xFFFFFFFF]
    parts += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


def _label(heads: Sequence[Head]) -> str:
    return " ".join(str(h) for h in heads)


def _parse_heads(text: object) -> list[Head]:
    if not isinstance(text, str) or not text.strip():
        return []
    out = []
    for token in text.split():
        layer, head = token[1:].split("H")
        out.append(Head(int(layer), int(head)))
    return out


# =========================================================================== random sets


def _random_sets_for(model, named: dict[str, list[Head]], random_like: tuple, n_random: int,
                     layer_matched: bool, seed: int) -> dict[str, list[list[Head]]]:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    evaluated = torch.zeros(L, H, dtype=torch.bool)
    for hs in named.values():
        evaluated |= heads_to_mask(hs, L, H)
    exclude = mask_to_heads(evaluated)
    return {name: random_head_sets(model, named[name], n_random, layer_matched=layer_matched,
                                   seed=_sub_seed(seed, "random", name), exclude=exclude)
            for name in random_like}


def _matched_fraction(reference: Sequence[Head], sample: Sequence[Head]) -> float:
    if not reference:
        return math.nan
    want = np.bincount([h.layer for h in reference], minlength=1 + max(
        [h.layer for h in reference] + [h.layer for h in sample]))
    got = np.bincount([h.layer for h in sample], minlength=want.size)
    return float(np.minimum(want, got).sum() / len(reference))


# =========================================================================== statistics


def _behaviour(logits: Float[Tensor, "batch d_vocab"], prompts: PromptSet) -> dict[str, Tensor]:
    """Per-prompt behaviour metrics (CPU float)."""
    return {m: METRICS[m](logits, prompts.gold.to(logits.device),
                          prompts.label_token_ids).float().cpu() for m in BEHAVIOUR}


def _np(values) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=float).reshape(-1)


def _difference_ci(treated, baseline, *, n_boot: int, seed: int) -> tuple[float, float, float, int]:
    """Paired bootstrap over prompts of ``nanmean(treated) - nanmean(baseline)``.

    Without NaNs this is exactly :func:`icl_heads.stats.paired_difference_ci`."""
    t, b = _np(treated), _np(baseline)
    if t.shape != b.shape:
        raise ValueError(f"treated and baseline must pair up: {t.size} vs {b.size} values.")
    if not (np.isnan(t).any() or np.isnan(b).any()):
        return paired_difference_ci(t, b, n_boot=n_boot, seed=seed)
    keep = ~(np.isnan(t) & np.isnan(b))
    t, b = t[keep], b[keep]
    n = int(t.size)
    if n == 0 or np.isnan(t).all() or np.isnan(b).all():
        return math.nan, math.nan, math.nan, n
    value = float(np.nanmean(t) - np.nanmean(b))
    if n == 1:
        return value, value, value, 1
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    with np.errstate(invalid="ignore"), _quiet():
        boots = np.nanmean(t[idx], 1) - np.nanmean(b[idx], 1)
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return value, math.nan, math.nan, n
    low, high = np.quantile(boots, [0.025, 0.975])
    return value, float(low), float(high), n


class _quiet:
    """Silence numpy's "mean of empty slice" warnings (all-NaN resamples become NaN)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _level_rows(condition: str, values: Mapping[str, Tensor], *, n_boot: int, seed: int,
                metrics: Sequence[str] = BEHAVIOUR, **extra) -> list[dict]:
    rows = []
    for metric in metrics:
        v, lo, hi, n = mean_ci(values[metric], n_boot=n_boot, seed=seed)
        rows.append(table_row(condition, metric, v, lo, hi, n, kind="level", **extra))
    return rows


def _effect_rows(condition: str, treated: Mapping[str, Tensor], baseline: Mapping[str, Tensor],
                 *, n_boot: int, seed: int, kind: str = "effect",
                 metrics: Sequence[str] = BEHAVIOUR, **extra) -> list[dict]:
    rows = []
    for metric in metrics:
        v, lo, hi, n = _difference_ci(treated[metric], baseline[metric], n_boot=n_boot, seed=seed)
        rows.append(table_row(condition, f"delta_{metric}", v, lo, hi, n, kind=kind, **extra))
    return rows


def _pool(per_set: Sequence[Mapping[str, Tensor]], metrics: Sequence[str]) -> dict[str, Tensor]:
    """Per-prompt mean over random sets (NaN-aware)."""
    out = {}
    for metric in metrics:
        stacked = torch.stack([s[metric].double() for s in per_set])
        out[metric] = torch.nanmean(stacked, 0) if (~torch.isnan(stacked)).any() else stacked[0]
    return out


def _spread(per_set: Sequence[Mapping[str, Tensor]], metric: str) -> dict[str, float]:
    means = []
    for s in per_set:
        v = s[metric].float()
        means.append(float(torch.nanmean(v)) if (~torch.isnan(v)).any() else math.nan)
    arr = np.asarray(means, dtype=float)
    ok = arr[~np.isnan(arr)]
    if ok.size == 0:
        return {"set_sd": math.nan, "set_min": math.nan, "set_max": math.nan}
    return {"set_sd": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
            "set_min": float(ok.min()), "set_max": float(ok.max())}


# =========================================================================== shared passes


class _Tap:
    """Query-position activations kept from a pass that some analysis runs anyway (a
    :class:`~icl_heads.interventions.Capture` whose reducer appends each batch), so that
    e.g. TSLA scores and the logits of the same prompts come from one forward pass."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.rows: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self.capture = Capture(names=set(self.names).__contains__, positions="query",
                               reduce=self._keep)

    def _keep(self, act: Tensor, name: str) -> Tensor:
        self.rows[name].append(act.detach().float().clone())
        return act[:0]

    def stacked(self, name: str) -> Tensor:
        return torch.cat(self.rows[name])


def _final_logits(model: HookedTransformer, resid: Tensor) -> Tensor:
    from ..activations import final_logits

    with torch.inference_mode():
        return final_logits(model, resid.to(model.cfg.device)).float().cpu()


def _tsla_pass(model, prompts, *, top_k, normalize, apply_ln, batch_size, device,
               interventions, progress, state_layers: Sequence[int] = ()):
    """:func:`tsla_scores` plus the query logits (and query states after the given blocks)
    from the same forward pass."""
    L = model.cfg.n_layers
    final = f"blocks.{L - 1}.hook_resid_post"
    names = [final] + [f"blocks.{layer}.hook_resid_post" for layer in state_layers
                       if layer != L - 1]
    tap = _Tap(names)
    tr, tl = tsla_scores(model, prompts, top_k=top_k, normalize=normalize, apply_ln=apply_ln,
                         batch_size=batch_size, device=device,
                         interventions=[*interventions, tap.capture], progress=progress)
    settings = tr.settings.replace(interventions=describe_interventions(interventions))
    tr.settings = tl.settings = settings
    logits = _final_logits(model, tap.stacked(final))
    states = {layer: tap.stacked(f"blocks.{layer}.hook_resid_post").cpu() for layer in state_layers}
    return tr, tl, logits, states


def mean_head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> Float[Tensor, "layer head d_model"]:
    """Each head's mean output at the query over ``prompts``, as it enters the residual
    stream: the steering vectors of :func:`steering_experiment`.

    ``mean_i a_i[l, h]`` with ``a = z W_O`` (equal to
    ``activation_means(model, prompts).outputs(model)``), times the post-attention norm's
    cached weight and scale on models that have one (Gemma 2/3), so that it is what the head
    added to the residual stream there. One forward pass.

    Example::

        vectors = trtl.mean_head_outputs(model, prompts)      # [n_layers, n_heads, d_model]
    """
    _check_model(model, "mean_head_outputs")
    check_prompt_set(prompts, model=model)
    interventions = check_interventions(interventions, model)
    total, count = None, 0
    for _batch, terms in iter_query_terms(model, prompts, full=False, apply_ln=False,
                                          batch_size=batch_size, device=device,
                                          interventions=interventions, progress=progress,
                                          desc="mean head outputs"):
        s = terms["head"].double().sum(0).cpu()
        total = s if total is None else total + s
        count += terms["head"].shape[0]
    return (total / count).float()


@dataclass
class _Condition:
    """One run to make over the prompts: its interventions and the layer it starts at."""

    interventions: tuple
    start: int


def _engine_runs(model, prompts, conditions: Mapping[str, _Condition], *, query_only: bool,
                 state_layers: Sequence[int] = (), baseline_start: int | None = None,
                 background: Sequence = (), batch_size: int, device, progress: bool,
                 desc: str) -> tuple[dict, dict]:
    """The baseline and every condition over ``prompts``, sharing one clean run per group of
    prompts: each condition re-runs only its layers from ``start`` on (and only the last
    token when ``query_only``). Returns ``(metrics, states)``: name (``"baseline"`` first) ->
    per-prompt behaviour metrics; name -> ``[prompt, len(state_layers), d_model]`` query
    states after those blocks (when asked).

    ``baseline_start=None``: the baseline is the clean run itself; an int: the baseline is
    re-run from that layer through the same engine as the conditions (so a condition whose
    interventions change nothing reproduces it bit for bit)."""
    from ..models import resolve_device

    device = resolve_device(device) if device is not None else torch.device(model.cfg.device)
    names = [f"blocks.{layer}.hook_resid_post" for layer in state_layers]
    starts = sorted({c.start for c in conditions.values()} | (
        {baseline_start} if baseline_start is not None else set()))
    if not starts:
        starts = [model.cfg.n_layers - 1]
    metrics: dict[str, list] = {"baseline": [], **{k: [] for k in conditions}}
    states: dict[str, list] = {k: [] for k in metrics}
    n = len(prompts)
    bar = tqdm(total=n * (len(conditions) + 1), desc=desc, disable=not progress, leave=False,
               unit="prompt-run")

    def one(clean, start, ivs):
        """Logits at the query and the captured states of one condition."""
        cap = Capture(names=set(names).__contains__, positions="query")
        logits = run_items(model, clean, torch.tensor([start]), None,
                           [*background, *ivs, cap])[0]
        st = torch.stack([cap.store[nm] for nm in names], 1).float().cpu() if names else None
        return logits, st

    with torch.inference_mode():
        for g0 in range(0, n, batch_size):
            gidx = torch.arange(g0, min(g0 + batch_size, n))
            group = prompts.select(gidx).to(device)
            clean = clean_run(model, group, gidx, query_only=query_only, layers=starts,
                              interventions=background)
            if baseline_start is None:
                logits, st = clean.logits, None
            else:
                logits, st = one(clean, baseline_start, ())
            metrics["baseline"].append(_behaviour(logits, group))
            states["baseline"].append(st)
            bar.update(len(gidx))
            for key, cond in conditions.items():
                logits, st = one(clean, cond.start, cond.interventions)
                metrics[key].append(_behaviour(logits, group))
                states[key].append(st)
                bar.update(len(gidx))
    bar.close()
    out_m = {k: {m: torch.cat([g[m] for g in v]) for m in BEHAVIOUR} for k, v in metrics.items()}
    out_s = {k: torch.cat(v) for k, v in states.items() if v and v[0] is not None}
    return out_m, out_s


def _full_runs(model, prompts, conditions: Mapping[str, _Condition], *, background, batch_size,
               device, progress, desc, state_layers=()) -> tuple[dict, dict]:
    """Fallback for architectures the cached-prefix engine cannot run: one full pass per
    condition (the same results, slower)."""
    from ..activations import collect

    names = [f"blocks.{layer}.hook_resid_post" for layer in state_layers]
    metrics, states = {}, {}
    for key, ivs in [("baseline", ()), *((k, c.interventions) for k, c in conditions.items())]:
        got = collect(model, prompts, names, positions="query", batch_size=batch_size,
                      device=device, interventions=[*background, *ivs], progress=progress,
                      desc=desc)
        metrics[key] = _behaviour(got.logits, prompts)
        if names:
            states[key] = torch.stack([got.activations[nm] for nm in names], 1).float().cpu()
    return metrics, states


def _runs(model, prompts, conditions, **kwargs):
    try:
        check_supported(model)
    except ValueError:
        kwargs.pop("query_only", None)
        kwargs.pop("baseline_start", None)
        return _full_runs(model, prompts, conditions, **kwargs)
    return _engine_runs(model, prompts, conditions, **kwargs)


# =========================================================================== 1. find heads


def find_task_heads(
    model: HookedTransformer,
    prompts: PromptSet,
    top_k: int | None = None,
    *,
    normalize: Literal["none", "norm", "tr"] = "none",
    apply_ln: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """TR and TL maps (TSLA, :func:`~icl_heads.tsla_scores`), the TR and TL head sets (the
    ``top_k`` best heads of each map; default 3% of heads, at least 1) and their overlap.

    One forward pass over the prompts gives the maps and the prompts' behaviour (the
    baseline rows).

    Table rows (``kind``): ``baseline`` x behaviour metrics and ``chance`` (``level``);
    ``TR`` / ``TL`` / ``all heads`` x ``tr_score`` / ``tl_score`` (mean over the set's heads
    of the per-prompt score, CI over prompts; ``score``); ``TR∩TL`` x ``overlap`` (fraction
    of the ``top_k`` TR heads that are TL heads; CI: bootstrap over prompts of the sets) and
    ``chance_overlap`` (``top_k / (L H)``, the expected overlap of random sets); ``TR vs
    TL`` x ``spearman`` (rank correlation of the maps over heads, CI over heads).

    Example::

        found = trtl.find_task_heads(model, prompts)
        trtl.head_sets(found)            # {"TR": [Head(...), ...], "TL": [...]}
        found.maps["TR"].plot()

    Returns:
        :class:`ExperimentResult` ``"find_task_heads"`` with maps ``{"TR", "TL"}`` and
        ``tables["sets"]`` (one row per head of each set: ``set, rank, layer, head, label,
        tr_score, tl_score``); :class:`FindTaskHeadsSettings`.
    """
    _check_model(model, "find_task_heads")
    _check_prompts(model, prompts)
    seed, n_boot = check_int(seed, "seed"), _check_boot(n_boot)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k, L, H)
    if top_k > L * H:
        raise ValueError(f"top_k={top_k} exceeds the model's {L * H} heads.")
    interventions = check_interventions(interventions, model)
    tr, tl, logits, _ = _tsla_pass(model, prompts, top_k=top_k, normalize=normalize,
                                   apply_ln=apply_ln, batch_size=batch_size, device=device,
                                   interventions=interventions, progress=progress)
    behaviour = _behaviour(logits, prompts)
    rows = _level_rows("baseline", behaviour, n_boot=n_boot, seed=seed)
    chance = 1.0 / prompts.n_labels
    rows.append(table_row("baseline", "chance", chance, chance, chance, len(prompts),
                          kind="level"))
    sets = {"TR": tr.top(top_k), "TL": tl.top(top_k)}
    every = [Head(layer, head) for layer in range(L) for head in range(H)]
    for name, heads in [*sets.items(), ("all heads", every)]:
        for score_name, scores in (("tr_score", tr), ("tl_score", tl)):
            idx = torch.tensor([[h.layer, h.head] for h in heads])
            per = scores.per_prompt[:, idx[:, 0], idx[:, 1]]
            per = torch.nanmean(per, 1) if torch.isnan(per).any() else per.mean(1)
            v, lo, hi, n = mean_ci(per, n_boot=n_boot, seed=seed)
            rows.append(table_row(name, score_name, v, lo, hi, n, kind="score",
                                  heads=_label(heads) if name != "all heads" else ""))
    v, lo, hi, _ = top_k_overlap_ci(tr.per_prompt, tl.per_prompt, top_k, paired=True,
                                    n_boot=n_boot, seed=seed)
    rows.append(table_row("TR∩TL", "overlap", v, lo, hi, top_k, kind="overlap",
                          heads=_label(sorted(set(sets["TR"]) & set(sets["TL"])))))
    rows.append(table_row("TR∩TL", "chance_overlap", top_k / (L * H), top_k / (L * H),
                          top_k / (L * H), top_k, kind="overlap"))
    r, lo, hi, n = correlation_ci(tr.scores, tl.scores, method="spearman", n_boot=n_boot,
                                  seed=seed)
    rows.append(table_row("TR vs TL", "spearman", r, lo, hi, n, kind="correlation"))
    set_rows = []
    for name, heads in sets.items():
        for rank, h in enumerate(heads, 1):
            set_rows.append({"set": name, "rank": rank, "layer": h.layer, "head": h.head,
                             "label": str(h), "tr_score": tr[h], "tl_score": tl[h]})
    settings = FindTaskHeadsSettings(
        model=model_name(model), prompts=prompts.info(), labels=tuple(prompts.label_words),
        top_k=top_k, normalize=normalize, apply_ln=bool(apply_ln), n_boot=n_boot, seed=seed,
        post_attention_norm=_post_norm(model), interventions=describe_interventions(interventions))
    per_prompt = pd.DataFrame({"prompt": np.arange(len(prompts)),
                               **{m: v.double().numpy() for m, v in behaviour.items()}})
    return ExperimentResult("find_task_heads", make_table(rows), settings,
                            maps={"TR": tr, "TL": tl},
                            tables={"sets": pd.DataFrame(set_rows), "per_prompt": per_prompt})


def head_sets(result: ExperimentResult) -> dict[str, list[Head]]:
    """The named head sets of a result: ``{"TR": [...], "TL": [...]}`` from
    :func:`find_task_heads` (its ``tables["sets"]``, best first), or the sets an ablation or
    steering result evaluated (its settings' ``heads``)."""
    if not isinstance(result, ExperimentResult):
        raise TypeError(f"head_sets needs an ExperimentResult, got {type(result).__name__}.")
    if "sets" in result.tables:
        frame = result.tables["sets"].sort_values(["set", "rank"], kind="stable")
        out: dict[str, list[Head]] = {}
        for name in dict.fromkeys(result.tables["sets"]["set"]):
            rows = frame[frame["set"] == name]
            out[str(name)] = [Head(int(a), int(b)) for a, b in zip(rows["layer"], rows["head"])]
        return out
    heads = getattr(result.settings, "heads", None)
    if heads:
        return {str(name): _parse_heads(" ".join(labels)) for name, labels in heads}
    raise ValueError(f"The {result.name!r} result holds no head sets (find_task_heads, "
                     "ablation and steering results do).")


# =========================================================================== 2. ablation


def ablation_experiment(
    model: HookedTransformer,
    prompts: PromptSet,
    heads: Mapping[str, HeadsLike] | None = None,
    *,
    n_random: int = 5,
    layer_matched: bool = True,
    mode: Literal["zero", "mean", "resample"] = "mean",
    positions: Positions = "all",
    seed: int = 0,
    random_like: Sequence[str] | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    top_k: int | None = None,
    n_boot: int = 1000,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """Ablate each named head set (and ``n_random`` seeded random sets of the same size per
    set) and measure accuracy, label-space rate, in-space accuracy and logit difference.

    All conditions share one clean run per group of prompts (the baseline); each ablated
    run re-runs only the layers from the set's earliest layer on (only the last token when
    ``positions="query"``). Mean ablation uses one :func:`~icl_heads.activation_means` over
    ``reference`` (default: these prompts; at the query when ``positions="query"``, else over
    every real token) for every set.

    Args:
        heads: ``{"TR": tr.top(), "TL": tl.top(), ...}`` (any head selection per name; an
            empty set is allowed and reproduces the baseline). ``None``: the TR and TL heads
            of these prompts (``tsla_scores``, ``top_k``).
        n_random: random control sets per named set (see
            :func:`~icl_heads.heads.random_head_sets`); they never contain a head of any
            named set.
        layer_matched: random heads in the same layers as the set's heads.
        mode, positions: as in :func:`~icl_heads.ablate` (default mean ablation at every
            position).
        seed: seeds the random sets, resampling donors and the bootstrap.
        random_like: the sets that get random controls (default: every non-empty set;
            ``()`` for none).
        means, reference: mean-ablation values or the prompts they come from.
        interventions: background interventions, active in every run (baseline included).

    Table: ``baseline`` / each set / ``random_<set>`` x metrics (``kind="level"``, with
    ``heads``, ``set_sd``, ``set_min``, ``set_max``); ``delta_<metric>`` vs baseline
    (``"effect"``); ``"<set> - random_<set>"`` and ``"<set> - <other set>"`` contrasts of the
    same metrics (``"contrast"``); ``baseline`` x ``chance``. ``tables["random_sets"]``: each
    random set's heads, layer-matched fraction and levels.

    Example::

        res = trtl.ablation_experiment(model, prompts, {"TR": tr.top(), "TL": tl.top()})
        res.select(condition="TR - random_TR", metric="delta_label_space_rate")

    Raises:
        TypeError: a non-mapping ``heads``, a float seed. ValueError: a head set larger than
        the model or out of range, ``n_random=0`` with random sets requested, too few free
        heads for the random sets, a bad mode.
    """
    _check_model(model, "ablation_experiment")
    _check_prompts(model, prompts)
    seed, n_boot = check_int(seed, "seed"), _check_boot(n_boot)
    _check_bool(layer_matched, "layer_matched")
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}.")
    positions = check_positions(positions)
    interventions = check_interventions(interventions, model)
    if heads is None:
        tr, tl = tsla_scores(model, prompts, top_k=top_k, batch_size=batch_size, device=device,
                             interventions=interventions, progress=progress)
        heads = {"TR": tr.top(), "TL": tl.top()}
    named = _named_sets(model, heads)
    n_random, random_like = _check_random(n_random, random_like, named)
    randoms = _random_sets_for(model, named, random_like, n_random, layer_matched, seed)
    L, H = model.cfg.n_layers, model.cfg.n_heads

    sets: dict[str, list[Head]] = dict(named)
    for name, draws in randoms.items():
        for i, hs in enumerate(draws):
            sets[f"random_{name}#{i}"] = hs
    union = torch.zeros(L, H, dtype=torch.bool)
    for hs in sets.values():
        union |= heads_to_mask(hs, L, H)
    mean_info = None
    if mode == "mean":
        if means is None:
            ref = reference if reference is not None else prompts
            means = activation_means(model, ref, "z",
                                     positions="query" if positions == "query" else "all",
                                     batch_size=batch_size, device=device, progress=progress)
        mean_info = means.prompts if isinstance(means, ActivationMeans) else None
    elif means is not None:
        raise ValueError(f"means= is only used with mode='mean' (mode is {mode!r}).")
    template = ablate(model, union, mode, positions, means=means,
                      reference=(reference if reference is not None else prompts)
                      if mode == "resample" else None,
                      seed=seed, batch_size=batch_size, device=device, progress=progress)
    conditions = {}
    for key, hs in sets.items():
        if hs:
            iv = template.with_mask(heads_to_mask(hs, L, H))
            conditions[key] = _Condition((iv,), min(h.layer for h in hs))
    measured, _ = _runs(model, prompts, conditions, query_only=positions == "query",
                        background=interventions, batch_size=batch_size, device=device,
                        progress=progress, desc="ablation")
    base = measured["baseline"]
    for key, hs in sets.items():
        if not hs:
            measured[key] = {m: v.clone() for m, v in base.items()}

    rows = _level_rows("baseline", base, n_boot=n_boot, seed=seed, heads="")
    chance = 1.0 / prompts.n_labels
    rows.append(table_row("baseline", "chance", chance, chance, chance, len(prompts),
                          kind="level", heads=""))
    pooled = {}
    for name, hs in named.items():
        rows += _level_rows(name, measured[name], n_boot=n_boot, seed=seed, heads=_label(hs))
        rows += _effect_rows(name, measured[name], base, n_boot=n_boot, seed=seed,
                             heads=_label(hs))
        if name in randoms:
            per_set = [measured[f"random_{name}#{i}"] for i in range(n_random)]
            pooled[name] = _pool(per_set, BEHAVIOUR)
            cond = f"random_{name}"
            for row in _level_rows(cond, pooled[name], n_boot=n_boot, seed=seed, heads=""):
                row.update(_spread(per_set, row["metric"]))
                rows.append(row)
            rows += _effect_rows(cond, pooled[name], base, n_boot=n_boot, seed=seed, heads="")
    for name in named:
        if name in pooled:
            rows += _effect_rows(f"{name} - random_{name}", measured[name], pooled[name],
                                 n_boot=n_boot, seed=seed, kind="contrast", heads="")
        for other in named:
            if other != name:
                rows += _effect_rows(f"{name} - {other}", measured[name], measured[other],
                                     n_boot=n_boot, seed=seed, kind="contrast", heads="")
    random_rows = []
    for name, draws in randoms.items():
        for i, hs in enumerate(draws):
            key = f"random_{name}#{i}"
            for row in _level_rows(key, measured[key], n_boot=n_boot, seed=seed):
                row.update(set=name, index=i, heads=_label(hs),
                           layer_matched_fraction=_matched_fraction(named[name], hs))
                random_rows.append(row)
    settings = AblationSettings(
        model=model_name(model), prompts=prompts.info(), labels=tuple(prompts.label_words),
        heads=tuple((k, tuple(str(h) for h in v)) for k, v in named.items()),
        n_random=n_random, layer_matched=layer_matched, random_like=random_like, mode=mode,
        positions=positions, means=mean_info, seed=seed, n_boot=n_boot,
        post_attention_norm=_post_norm(model), interventions=describe_interventions(interventions))
    return ExperimentResult("ablation", make_table(rows), settings,
                            tables={"random_sets": make_table(random_rows)})


# =========================================================================== 3. perturbations


def _as_task(task: object) -> Task:
    if isinstance(task, Task):
        return task
    if isinstance(task, (str, os.PathLike)):
        return load_task(task)
    raise TypeError(f"task must be a Task or a task name / file (load_task), got "
                    f"{type(task).__name__}.")


def perturbation_experiment(
    model: HookedTransformer,
    task: Task | str,
    k: int,
    n: int,
    seed: int = 0,
    perturbations: Sequence[str] = PERTURBATIONS,
    *,
    top_k: int | None = None,
    normalize: Literal["none", "norm", "tr"] = "none",
    apply_ln: bool = False,
    n_boot: int = 1000,
    gold: ExperimentResult | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """Behaviour and TR/TL maps under input perturbations (Pan et al. 2023 style), and how
    stable each map is against the gold-label map.

    For each perturbation (``"gold"``, ``"random_labels"``: demo labels drawn uniformly;
    ``"abstract_labels"``: label words replaced by unrelated tokens; ``"zero_shot"``: no
    demonstrations), ``n`` prompts are built with ``build_prompts(model, task, k, n, seed,
    perturbation)``; one forward pass gives their TSLA maps (TSLA only needs the query, so
    zero-shot prompts get maps too) and behaviour.

    Table: per condition, the behaviour metrics and ``chance`` (``kind="level"``); for every
    condition but gold, its maps against the gold maps (``kind="stability"``,
    ``reference="gold"``): ``tr_spearman`` / ``tl_spearman`` (Spearman over heads with
    ``correlation_ci``), ``tr_overlap`` / ``tl_overlap`` (top-``k`` overlap; CI: bootstrap
    over each condition's prompts) and ``tr_minus_tl_spearman`` (paired bootstrap over heads:
    is TR more stable than TL?); and condition ``"gold (split half)"``: the same statistics
    between two halves of the gold prompts (each gold label split evenly;
    ``reference="other half"``), the reliability of a map from ``n/2`` prompts, a reference
    for the others.

    ``gold``: a :func:`find_task_heads` result computed (not loaded) on the gold prompts,
    ``build_prompts(model, task, k, n, seed)``, with the same ``normalize``, ``apply_ln``
    and interventions: its maps and per-prompt behaviour are the gold condition's (the same
    numbers, one forward pass fewer).

    Example::

        res = trtl.perturbation_experiment(model, "sentiment", k=4, n=64, seed=0)
        res.select(metric="tr_spearman")

    Returns:
        :class:`ExperimentResult` ``"perturbation"``, maps ``"TR/<condition>"`` and
        ``"TL/<condition>"``; :class:`PerturbationSettings`.
    """
    _check_model(model, "perturbation_experiment")
    task = _as_task(task)
    k, n = check_int(k, "k", 1), check_int(n, "n", 2)
    seed, n_boot = check_int(seed, "seed"), _check_boot(n_boot)
    if isinstance(perturbations, str) or not isinstance(perturbations, Sequence):
        raise TypeError(f"perturbations must be a list of names from {PERTURBATIONS}, got "
                        f"{perturbations!r}.")
    perturbations = tuple(perturbations)
    for p in perturbations:
        if p not in PERTURBATIONS:
            raise ValueError(f"Unknown perturbation {p!r}; choose from {PERTURBATIONS}.")
    if len(set(perturbations)) != len(perturbations):
        raise ValueError(f"perturbations repeats a condition: {list(perturbations)}.")
    if "gold" not in perturbations:
        raise ValueError("perturbations must include 'gold': every map is compared with the "
                         "gold-label map.")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k, L, H)
    interventions = check_interventions(interventions, model)
    maps, rows, labels, gold_prompts = {}, [], (), None
    for p in tqdm(perturbations, desc="perturbations", disable=not progress, leave=False):
        prompts = build_prompts(model, task, k, n, seed, perturbation=p)
        if p == "gold":
            labels, gold_prompts = tuple(prompts.label_words), prompts
        if p == "gold" and gold is not None:
            tr, tl, behaviour = _reused_gold(gold, prompts, normalize=normalize,
                                             apply_ln=apply_ln, interventions=interventions)
        else:
            tr, tl, logits, _ = _tsla_pass(model, prompts, top_k=top_k, normalize=normalize,
                                           apply_ln=apply_ln, batch_size=batch_size,
                                           device=device, interventions=interventions,
                                           progress=progress)
            behaviour = _behaviour(logits, prompts)
        maps[f"TR/{p}"], maps[f"TL/{p}"] = tr, tl
        rows += _level_rows(p, behaviour, n_boot=n_boot, seed=seed)
        chance = 1.0 / prompts.n_labels
        rows.append(table_row(p, "chance", chance, chance, chance, n, kind="level"))
    gold_tr, gold_tl = maps["TR/gold"], maps["TL/gold"]
    for p in perturbations:
        if p == "gold":
            first, second = _split_by_label(gold_prompts.gold)
            a = {s: maps[f"{s}/gold"].per_prompt[first] for s in ("TR", "TL")}
            b = {s: maps[f"{s}/gold"].per_prompt[second] for s in ("TR", "TL")}
            cond, reference, paired = "gold (split half)", "other half", False
        else:
            a = {s: maps[f"{s}/{p}"].per_prompt for s in ("TR", "TL")}
            b = {"TR": gold_tr.per_prompt, "TL": gold_tl.per_prompt}
            cond, reference, paired = p, "gold", False
        mean_a = {s: torch.nanmean(v, 0) for s, v in a.items()}
        mean_b = {s: torch.nanmean(v, 0) for s, v in b.items()}
        for s in ("TR", "TL"):
            r, lo, hi, m = correlation_ci(mean_a[s], mean_b[s], method="spearman",
                                          n_boot=n_boot, seed=seed)
            rows.append(table_row(cond, f"{s.lower()}_spearman", r, lo, hi, m,
                                  kind="stability", reference=reference))
            v, lo, hi, m = top_k_overlap_ci(a[s], b[s], top_k, paired=paired,
                                            n_boot=n_boot, seed=seed)
            rows.append(table_row(cond, f"{s.lower()}_overlap", v, lo, hi, m,
                                  kind="stability", reference=reference))
        v, lo, hi, m = correlation_difference_ci(mean_a["TR"], mean_b["TR"], mean_a["TL"],
                                                 mean_b["TL"], n_boot=n_boot, seed=seed)
        rows.append(table_row(cond, "tr_minus_tl_spearman", v, lo, hi, m, kind="stability",
                              reference=reference))
    settings = PerturbationSettings(
        model=model_name(model), task=task.name, k=k, n=n, seed=seed,
        perturbations=perturbations, labels=labels, top_k=top_k, normalize=normalize,
        apply_ln=bool(apply_ln), n_boot=n_boot, post_attention_norm=_post_norm(model),
        interventions=describe_interventions(interventions))
    return ExperimentResult("perturbation", make_table(rows), settings, maps=maps)


def _reused_gold(found: object, prompts: PromptSet, *, normalize: str, apply_ln: bool,
                 interventions: Sequence) -> tuple[HeadScores, HeadScores, dict[str, Tensor]]:
    """The gold condition's maps and behaviour from a :func:`find_task_heads` result, after
    checking that it was made on these prompts with these settings."""
    if not isinstance(found, ExperimentResult) or found.name != "find_task_heads":
        raise TypeError(f"gold must be a find_task_heads result, got {found!r:.80}.")
    s = found.settings
    mismatch = [what for what, ok in (
        ("prompts", s.prompts == prompts.info()), ("normalize", s.normalize == normalize),
        ("apply_ln", s.apply_ln == bool(apply_ln)),
        ("interventions", tuple(s.interventions) == describe_interventions(interventions)))
        if not ok]
    if mismatch:
        raise ValueError(f"gold was made with other {', '.join(mismatch)} than this "
                         f"experiment's gold condition (build_prompts(model, task, k, n, seed)); "
                         "pass the find_task_heads result of those prompts, or gold=None.")
    table = found.tables.get("per_prompt")
    tr, tl = found.maps["TR"], found.maps["TL"]
    if table is None or tr.per_prompt is None or tl.per_prompt is None:
        raise ValueError("gold has no per-prompt maps or behaviour (a result loaded from disk "
                         "keeps only the mean maps); pass a result computed in this session, "
                         "or gold=None.")
    return tr, tl, {m: torch.tensor(table[m].to_numpy(), dtype=torch.float32)
                    for m in BEHAVIOUR}


def _split_by_label(gold: Tensor) -> tuple[Tensor, Tensor]:
    """Two halves of the prompts with the same gold-label balance (alternate prompts of each
    label): on a binary task a head that favours one label has a TL score of opposite sign
    on the two labels, so halves with different balance would disagree for that reason."""
    first, second = [], []
    for label in torch.unique(gold).tolist():
        idx = (gold == label).nonzero().flatten().tolist()
        first += idx[0::2]
        second += idx[1::2]
    return torch.tensor(sorted(first)), torch.tensor(sorted(second))


# =========================================================================== 4. correlation


def _all_metrics_sweep(model, prompts, *, mode, positions, means, reference, seed, batch_size,
                       device, interventions, progress) -> tuple[dict[str, HeadScores], dict]:
    """Single-head ablation effects on the three metrics from ONE fast sweep.

    :func:`~icl_heads.head_sweep` takes one metric; its metric callable sees every logit it
    computes, in a fixed order (per group of prompts: the clean rows, then the swept heads
    in layer order, item-major). So one sweep on ``logit_diff`` records the label-space and
    in-space outcome of the same logits on the side. The recording is checked against the
    sweep's own per-prompt ``logit_diff`` effects (bit for bit); if the engine ever visits
    logits in another order, the check fails and the two other metrics get sweeps of their
    own (the same numbers, 3x the time).

    Returns:
        ``({metric: HeadScores of effects}, {metric: per-prompt clean values})`` (the clean
        values only when the recording was used)."""
    calls: list[tuple[Tensor, Tensor]] = []

    def recorded(logits: Tensor, gold: Tensor, label_token_ids: Tensor) -> Tensor:
        ld = logit_diff(logits, gold, label_token_ids)
        code = in_label_space(logits, gold, label_token_ids) * (
            1.0 + accuracy(logits, gold, label_token_ids))  # 0 out, 1 in & wrong, 2 in & right
        calls.append((ld.detach().float().cpu(), code.detach().float().cpu()))
        return ld

    recorded.__name__ = "logit_diff"
    common = dict(mode=mode, positions=positions, means=means, reference=reference, seed=seed,
                  batch_size=batch_size, device=device, interventions=interventions,
                  progress=progress)
    ld_map = head_sweep(model, prompts, recorded, **common)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    decoded = _decode_calls(calls, len(prompts), batch_size, L * H)
    ok = decoded is not None
    if ok:
        ld_int, ld_clean, code_int, code_clean = decoded
        effect = (ld_int - ld_clean[:, None]).reshape(len(prompts), L, H)
        ok = torch.equal(effect, ld_map.per_prompt)
    if not ok:
        log.warning("correlation_experiment: the one-sweep recording did not match; running "
                    "one head_sweep per metric instead.")
        out = {"logit_diff": ld_map}
        for metric in ("label_space_rate", "in_space_accuracy"):
            out[metric] = head_sweep(model, prompts, metric, **common)
        return out, {}
    base_lsr = (code_clean > 0).float()
    base_isa = torch.where(code_clean > 0, (code_clean == 2).float(), torch.nan)
    int_lsr = (code_int > 0).float()
    int_isa = torch.where(code_int > 0, (code_int == 2).float(), torch.nan)
    out = {"logit_diff": ld_map}
    for metric, clean, intervened in (("label_space_rate", base_lsr, int_lsr),
                                      ("in_space_accuracy", base_isa, int_isa)):
        per_prompt = (intervened - clean[:, None]).reshape(len(prompts), L, H)
        out[metric] = HeadScores(torch.nanmean(per_prompt, 0), name=f"delta_{metric}",
                                 settings=ld_map.settings.replace(metric=metric),
                                 per_prompt=per_prompt,
                                 baseline=float(torch.nanmean(clean)))
    return out, {"label_space_rate": base_lsr, "in_space_accuracy": base_isa,
                 "logit_diff": ld_clean}


def _decode_calls(calls, n: int, batch_size: int, n_items: int):
    """The recorded metric calls of a fast head sweep as ``[prompt, item]`` tensors."""
    ld_int = torch.full((n, n_items), math.nan)
    code_int = torch.full((n, n_items), math.nan)
    ld_clean, code_clean = torch.full((n,), math.nan), torch.full((n,), math.nan)
    i = 0
    for g0 in range(0, n, batch_size):
        G = min(batch_size, n - g0)
        if i >= len(calls) or calls[i][0].numel() != G:
            return None
        ld_clean[g0:g0 + G], code_clean[g0:g0 + G] = calls[i]
        i += 1
        parts_ld, parts_code, rows = [], [], 0
        while rows < n_items * G:
            if i >= len(calls) or calls[i][0].numel() % G:
                return None
            parts_ld.append(calls[i][0])
            parts_code.append(calls[i][1])
            rows += calls[i][0].numel()
            i += 1
        if rows != n_items * G:
            return None
        ld_int[g0:g0 + G] = torch.cat(parts_ld).reshape(n_items, G).T
        code_int[g0:g0 + G] = torch.cat(parts_code).reshape(n_items, G).T
    if i != len(calls):
        return None
    return ld_int, ld_clean, code_int, code_clean


def correlation_experiment(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    tr: HeadScores | None = None,
    tl: HeadScores | None = None,
    mode: Literal["zero", "mean", "resample"] = "mean",
    positions: Positions = "query",
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    normalize: Literal["none", "norm", "tr"] = "none",
    apply_ln: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """Every head's single-head ablation effect against its TR and TL score.

    The effects come from the exact fast sweep (:func:`~icl_heads.head_sweep`; default mean
    ablation at the query, the TR/TL paper's setting and the fast path) on label-space rate,
    in-space accuracy and logit difference: one sweep serves all three (see
    :func:`_all_metrics_sweep`; per prompt, ``metric(ablated) - metric(clean)``, averaged
    NaN-aware, exactly as ``head_sweep`` with that metric). A head's *drop* is minus its
    effect, so a positive correlation of a score with a drop means high-scoring heads are the
    ones whose removal hurts.

    Args:
        tr, tl: TSLA maps of these prompts (default: computed here, one pass).
        mode, positions, means, reference: the ablation of the sweep.

    Table: ``baseline`` x metrics (``kind="level"``, the clean run); ``TR`` / ``TL`` x
    ``spearman_drop_<metric>`` and ``pearson_drop_<metric>`` (CI over heads; columns
    ``score``, ``effect``, ``method``). ``tables["heads"]``: one row per head (``layer, head,
    label, tr_score, tl_score, delta_label_space_rate, delta_in_space_accuracy,
    delta_logit_diff``) for a scatter plot.

    Example::

        res = trtl.correlation_experiment(model, prompts)
        res.value("TR", "spearman_drop_label_space_rate")
    """
    _check_model(model, "correlation_experiment")
    _check_prompts(model, prompts)
    seed, n_boot = check_int(seed, "seed"), _check_boot(n_boot)
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}.")
    positions = check_positions(positions)
    interventions = check_interventions(interventions, model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for name, m in (("tr", tr), ("tl", tl)):
        if m is not None and (not isinstance(m, HeadScores) or m.scores.shape != (L, H)):
            raise ValueError(f"{name}= must be a HeadScores of this model's shape [{L}, {H}] "
                             f"(from tsla_scores(model, prompts)), got {m!r}.")
    scores_from = "given"
    if tr is None or tl is None:
        tr, tl = tsla_scores(model, prompts, normalize=normalize, apply_ln=apply_ln,
                             batch_size=batch_size, device=device, interventions=interventions,
                             progress=progress)
        scores_from = "computed"
    effects, clean = _all_metrics_sweep(model, prompts, mode=mode, positions=positions, means=means,
                                 reference=reference, seed=seed, batch_size=batch_size,
                                 device=device, interventions=interventions, progress=progress)
    rows = []
    for metric in ("label_space_rate", "in_space_accuracy", "logit_diff"):
        if metric in clean:
            v, lo, hi, n = mean_ci(clean[metric], n_boot=n_boot, seed=seed)
        else:
            v, lo, hi, n = effects[metric].baseline, math.nan, math.nan, len(prompts)
        rows.append(table_row("baseline", metric, v, lo, hi, n, kind="level", score="",
                              effect="", method=""))
    for score_name, scores in (("TR", tr), ("TL", tl)):
        for metric in ("label_space_rate", "in_space_accuracy", "logit_diff"):
            drop = -effects[metric].scores
            for method in ("spearman", "pearson"):
                r, lo, hi, n = correlation_ci(scores.scores, drop, method=method, n_boot=n_boot,
                                              seed=seed)
                rows.append(table_row(score_name, f"{method}_drop_{metric}", r, lo, hi, n,
                                      kind="correlation", score=score_name, effect=metric,
                                      method=method))
    heads = tr.to_frame()[["layer", "head", "label"]].copy()
    heads["tr_score"] = tr.scores.flatten().numpy()
    heads["tl_score"] = tl.scores.flatten().numpy()
    for metric in ("label_space_rate", "in_space_accuracy", "logit_diff"):
        heads[f"delta_{metric}"] = effects[metric].scores.flatten().numpy()
    settings = CorrelationSettings(
        model=model_name(model), prompts=prompts.info(), labels=tuple(prompts.label_words),
        mode=mode, positions=positions, method="fast", scores=scores_from,
        normalize=getattr(tr.settings, "normalize", normalize),
        apply_ln=bool(getattr(tr.settings, "apply_ln", apply_ln)), n_boot=n_boot, seed=seed,
        post_attention_norm=_post_norm(model),
        interventions=describe_interventions(interventions))
    maps = {"TR": tr, "TL": tl, **{f"delta_{m}": effects[m] for m in
                                   ("label_space_rate", "in_space_accuracy", "logit_diff")}}
    return ExperimentResult("correlation", make_table(rows), settings, maps=maps,
                            tables={"heads": heads})


# =========================================================================== 5. steering


def _check_alphas(alphas: object) -> tuple[float, ...]:
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence) or not alphas:
        raise TypeError(f"alphas must be a non-empty list of numbers, got {alphas!r}.")
    out = []
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a):
            raise TypeError(f"alphas must be finite numbers, got {a!r} in {list(alphas)}.")
        out.append(float(a))
    if len(set(out)) != len(out):
        raise ValueError(f"alphas repeats a value: {list(alphas)}.")
    return tuple(out)


def steering_experiment(
    model: HookedTransformer,
    source_prompts: PromptSet,
    target_prompts: PromptSet,
    heads: Mapping[str, HeadsLike] | None = None,
    alphas: Sequence[float] = (0, 0.5, 1, 2, 4),
    *,
    n_random: int = 5,
    layer_matched: bool = True,
    random_like: Sequence[str] | None = None,
    positions: Positions = "query",
    vectors: Float[Tensor, "layer head d_model"] | None = None,
    top_k: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """Steer target prompts (zero-shot or abstract-label) with the mean output of a head set
    over ICL source prompts, and measure behaviour and the geometry of the query state.

    For a set ``S`` and strength ``alpha``, every head ``(l, h)`` of ``S`` adds
    ``alpha * mean_i a_i[l, h]`` (its mean output at the query over ``source_prompts``, in
    the residual stream) at its layer's attention output, at the query position of every
    target prompt (``ih.steer(model, v, head=(l, h), alpha=alpha)``, composed over the set).
    Geometry (``docs/methods.md``, "Geometry of steering"), on the state after the final
    norm's scale: ``alignment = ||P h|| / ||h||`` and ``rotation = cos(P h, u_{y*}) -
    mean_{y' != y*} cos(P h, u_{y'})`` (``geometry.subspace_alignment``,
    ``geometry.label_rotation``; ``P`` projects on the target's label subspace), for the final
    state (main table) and for the state after every block from the earliest steered layer on
    (``tables["geometry"]``, the final norm applied as a logit lens).

    All runs share one clean run of the target prompts; each re-runs only the last token
    from the earliest steered layer of all sets on (the baseline too, so ``alpha = 0``
    reproduces it exactly).

    Args:
        source_prompts: ICL prompts (with demonstrations) the vectors are averaged over.
        target_prompts: the prompts to steer (any perturbation).
        heads: ``{"TR": ..., "TL": ...}``; ``None``: TR and TL heads of the source prompts.
        alphas: steering strengths.
        n_random, layer_matched, random_like, seed: random control sets, as in
            :func:`ablation_experiment`.
        positions: where the vectors are added (default ``"query"``).
        vectors: the heads' mean outputs over the source prompts, if already computed
            (:func:`mean_head_outputs`; saves its forward pass).

    Table: ``baseline`` (``alpha = 0``) and, per alpha, each set and ``random_<set>`` x
    behaviour metrics, ``alignment``, ``rotation`` (``kind="level"``), their ``delta_*`` vs
    the baseline (``"effect"``) and ``"<set> - random_<set>"`` (``"contrast"``); ``chance``.

    Example::

        zs = ih.build_prompts(model, task, k=0, n=64)
        res = trtl.steering_experiment(model, prompts, zs, {"TR": tr.top(), "TL": tl.top()})
        res.select(condition="TR", metric="label_space_rate")
    """
    _check_model(model, "steering_experiment")
    _check_prompts(model, source_prompts, "source_prompts", need_demos=True)
    _check_prompts(model, target_prompts, "target_prompts")
    alphas = _check_alphas(alphas)
    seed, n_boot = check_int(seed, "seed"), _check_boot(n_boot)
    _check_bool(layer_matched, "layer_matched")
    positions = check_positions(positions)
    interventions = check_interventions(interventions, model)
    if heads is None:
        tr, tl = tsla_scores(model, source_prompts, top_k=top_k, batch_size=batch_size,
                             device=device, interventions=interventions, progress=progress)
        heads = {"TR": tr.top(), "TL": tl.top()}
    named = _named_sets(model, heads)
    n_random, random_like = _check_random(n_random, random_like, named)
    randoms = _random_sets_for(model, named, random_like, n_random, layer_matched, seed)
    L = model.cfg.n_layers
    if vectors is None:
        vectors = mean_head_outputs(model, source_prompts, batch_size=batch_size,
                                    device=device, interventions=interventions,
                                    progress=progress)
    else:
        want = (L, model.cfg.n_heads, model.cfg.d_model)
        if not isinstance(vectors, Tensor) or tuple(vectors.shape) != want:
            raise ValueError(f"vectors must be a [n_layers, n_heads, d_model] = {list(want)} "
                             f"tensor (mean_head_outputs(model, source_prompts)), got "
                             f"{getattr(vectors, 'shape', type(vectors).__name__)}.")
        vectors = vectors.detach().float().cpu()
    sets: dict[str, list[Head]] = dict(named)
    for name, draws in randoms.items():
        for i, hs in enumerate(draws):
            sets[f"random_{name}#{i}"] = hs
    used = [h.layer for hs in sets.values() for h in hs]
    start = min(used) if used else L - 1
    conditions = {}
    for key, hs in sets.items():
        for alpha in alphas:
            ivs = (compose(*[steer(model, vectors[h.layer, h.head], head=h, alpha=alpha,
                                   positions=positions) for h in hs]),) if hs else ()
            conditions[(key, alpha)] = _Condition(ivs, start)
    state_layers = list(range(start, L))
    measured, states = _runs(model, target_prompts, conditions, query_only=positions == "query",
                             state_layers=state_layers, baseline_start=start,
                             background=interventions, batch_size=batch_size, device=device,
                             progress=progress, desc="steering")
    label_dirs = label_unembeddings(model, target_prompts.label_token_ids).float().cpu()
    gold = target_prompts.gold.cpu()

    def geometry(st: Tensor) -> tuple[Tensor, Tensor]:  # [n, layers]
        normed = normalized_states(model, st).float().cpu()
        return (subspace_alignment(normed, label_dirs),
                label_rotation(normed, label_dirs, gold))

    per: dict = {}
    for key, values in measured.items():
        align, rot = geometry(states[key])
        per[key] = {**values, "alignment": align[:, -1], "rotation": rot[:, -1],
                    "_alignment_layers": align, "_rotation_layers": rot}
    metrics = (*BEHAVIOUR, *GEOMETRY)
    base = per["baseline"]
    rows = _level_rows("baseline", base, n_boot=n_boot, seed=seed, metrics=metrics, alpha=0.0)
    chance = 1.0 / target_prompts.n_labels
    rows.append(table_row("baseline", "chance", chance, chance, chance, len(target_prompts),
                          kind="level", alpha=0.0))
    geo_rows = _geometry_rows("baseline", base, state_layers, n_boot=n_boot, seed=seed,
                              alpha=0.0)
    random_rows = []
    for alpha in alphas:
        pooled = {}
        for name in named:
            here = per[(name, alpha)]
            rows += _level_rows(name, here, n_boot=n_boot, seed=seed, metrics=metrics,
                                alpha=alpha)
            rows += _effect_rows(name, here, base, n_boot=n_boot, seed=seed, metrics=metrics,
                                 alpha=alpha)
            geo_rows += _geometry_rows(name, here, state_layers, n_boot=n_boot, seed=seed,
                                       alpha=alpha)
            if name in randoms:
                per_set = [per[(f"random_{name}#{i}", alpha)] for i in range(n_random)]
                keys = (*metrics, "_alignment_layers", "_rotation_layers")
                pooled[name] = _pool(per_set, keys)
                cond = f"random_{name}"
                for row in _level_rows(cond, pooled[name], n_boot=n_boot, seed=seed,
                                       metrics=metrics, alpha=alpha):
                    row.update(_spread(per_set, row["metric"]))
                    rows.append(row)
                rows += _effect_rows(cond, pooled[name], base, n_boot=n_boot, seed=seed,
                                     metrics=metrics, alpha=alpha)
                rows += _effect_rows(f"{name} - random_{name}", here, pooled[name],
                                     n_boot=n_boot, seed=seed, kind="contrast",
                                     metrics=metrics, alpha=alpha)
                geo_rows += _geometry_rows(cond, pooled[name], state_layers, n_boot=n_boot,
                                           seed=seed, alpha=alpha)
                for i, hs in enumerate(randoms[name]):
                    for row in _level_rows(f"random_{name}#{i}", per_set[i], n_boot=n_boot,
                                           seed=seed, metrics=metrics, alpha=alpha):
                        row.update(set=name, index=i, heads=_label(hs),
                                   layer_matched_fraction=_matched_fraction(named[name], hs))
                        random_rows.append(row)
    settings = SteeringSettings(
        model=model_name(model), source=source_prompts.info(), target=target_prompts.info(),
        labels=tuple(target_prompts.label_words),
        heads=tuple((k, tuple(str(h) for h in v)) for k, v in named.items()), alphas=alphas,
        n_random=n_random, layer_matched=layer_matched, random_like=random_like,
        positions=positions, start_layer=start, seed=seed, n_boot=n_boot,
        post_attention_norm=_post_norm(model), interventions=describe_interventions(interventions))
    return ExperimentResult("steering", make_table(rows), settings,
                            tables={"geometry": make_table(geo_rows),
                                    "random_sets": make_table(random_rows)})


def _geometry_rows(condition, values, layers, *, n_boot, seed, alpha) -> list[dict]:
    rows = []
    for metric in GEOMETRY:
        per_layer = values[f"_{metric}_layers"]
        for j, layer in enumerate(layers):
            v, lo, hi, n = mean_ci(per_layer[:, j], n_boot=n_boot, seed=seed)
            rows.append(table_row(condition, metric, v, lo, hi, n, alpha=alpha, layer=layer))
    return rows


# =========================================================================== 6. reconciliation


def reconciliation_experiment(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    tr: HeadScores | None = None,
    tl: HeadScores | None = None,
    top_k: int | None = None,
    task_vector_layer: int | None = None,
    T: int = 50,
    n_sequences: int = 32,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """TR/TL heads against the classic head types, and the task vector's share of the task
    subspace.

    Head maps: induction and previous-token scores on ``n_sequences`` seeded random
    ``[BOS] + r + r`` sequences (``T`` tokens per half; :func:`~icl_heads.token_detector_scores`),
    label-attention mass on the prompts (:func:`~icl_heads.label_attention_scores`).
    Compared: TL with induction and with label attention, TR with previous-token heads (the
    paper's pairings), and the crossed pairs (TR with induction, TL with previous-token) as
    controls. Per pair: ``top_k_overlap`` (fraction of the ``top_k`` heads of the first map
    among the ``top_k`` of the second; CI: bootstrap over prompts and sequences) beside
    ``chance_overlap`` (``top_k / (L H)``, a random set's expected overlap), and ``spearman``
    over heads (CI over heads).

    Task vector: ``v_l`` = mean query state after block ``l`` over the prompts
    (``l = 0`` the embeddings); its share in the task subspace ``||P v||^2 / ||v||^2`` after
    the final norm (``task_subspace_share``; chance for a random direction: ``rank(P) /
    d_model``), and the norms of its two parts ``||P v||`` and ``||(I - P) v||``; CI:
    bootstrap over prompts. Main table: at ``task_vector_layer`` (default ``n_layers // 2``
    **reconstruction**); ``tables["task_vector"]``: every layer.

    Example::

        res = trtl.reconciliation_experiment(model, prompts)
        res.select(condition="TL vs induction")
    """
    _check_model(model, "reconciliation_experiment")
    _check_prompts(model, prompts, need_demos=True)
    seed, n_boot = check_int(seed, "seed"), _check_boot(n_boot)
    T, n_sequences = check_int(T, "T", 1), check_int(n_sequences, "n_sequences", 1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k if top_k is not None else (tr.top_k if tr is not None else None),
                        L, H)
    if top_k > L * H:
        raise ValueError(f"top_k={top_k} exceeds the model's {L * H} heads.")
    if task_vector_layer is None:
        task_vector_layer = L // 2
    task_vector_layer = check_int(task_vector_layer, "task_vector_layer", 0)
    if task_vector_layer > L:
        raise ValueError(f"task_vector_layer={task_vector_layer} is out of range: states run "
                         f"from 0 (the embeddings) to {L} (after the last block).")
    interventions = check_interventions(interventions, model)
    for name, m in (("tr", tr), ("tl", tl)):
        if m is not None and (not isinstance(m, HeadScores) or m.scores.shape != (L, H)):
            raise ValueError(f"{name}= must be a HeadScores of this model's shape [{L}, {H}].")
    if tr is None or tl is None or tr.per_prompt is None or tl.per_prompt is None:
        tr, tl = tsla_scores(model, prompts, top_k=top_k, batch_size=batch_size, device=device,
                             interventions=interventions, progress=progress)
    detectors = token_detector_scores(model, detectors=("previous_token", "induction"), T=T,
                                      n=n_sequences, seed=seed, device=device,
                                      interventions=interventions, progress=progress)
    tap = _Tap([f"blocks.{layer}.hook_resid_post" for layer in range(L)] +
               ["blocks.0.hook_resid_pre"])
    label_attention = label_attention_scores(model, prompts, batch_size=batch_size,
                                             device=device,
                                             interventions=[*interventions, tap.capture],
                                             progress=progress).mass
    label_attention.settings = label_attention.settings.replace(
        interventions=describe_interventions(interventions))
    states = torch.stack([tap.stacked("blocks.0.hook_resid_pre")] +
                         [tap.stacked(f"blocks.{layer}.hook_resid_post") for layer in range(L)],
                         1).cpu()  # [n, L + 1, d]
    maps = {"TR": tr, "TL": tl, "induction": detectors["induction"],
            "previous_token": detectors["previous_token"], "label_attention": label_attention}
    pairs = [("TL", "induction"), ("TL", "label_attention"), ("TR", "previous_token"),
             ("TR", "induction"), ("TL", "previous_token")]
    rows = []
    chance = top_k / (L * H)
    for a, b in pairs:
        cond = f"{a} vs {b}"
        v, lo, hi, _ = top_k_overlap_ci(maps[a].per_prompt, maps[b].per_prompt, top_k,
                                        paired=b == "label_attention", n_boot=n_boot,
                                        seed=seed)
        common = set(maps[a].top(top_k)) & set(maps[b].top(top_k))
        rows.append(table_row(cond, "top_k_overlap", v, lo, hi, top_k, kind="overlap",
                              heads=_label(sorted(common)), layer=math.nan))
        rows.append(table_row(cond, "chance_overlap", chance, chance, chance, top_k,
                              kind="overlap", heads="", layer=math.nan))
        r, lo, hi, n = correlation_ci(maps[a].scores, maps[b].scores, method="spearman",
                                      n_boot=n_boot, seed=seed)
        rows.append(table_row(cond, "spearman", r, lo, hi, n, kind="correlation", heads="",
                              layer=math.nan))
    tv_rows = _task_vector_rows(model, prompts, states, n_boot=n_boot, seed=seed)
    rows += [dict(r) for r in tv_rows if r["layer"] == task_vector_layer]
    settings = ReconciliationSettings(
        model=model_name(model), prompts=prompts.info(), labels=tuple(prompts.label_words),
        top_k=top_k, T=T, n_sequences=n_sequences, task_vector_layer=task_vector_layer,
        seed=seed, n_boot=n_boot, post_attention_norm=_post_norm(model),
        interventions=describe_interventions(interventions))
    return ExperimentResult("reconciliation", make_table(rows), settings, maps=maps,
                            tables={"task_vector": make_table(tv_rows)})


def _task_vector_rows(model, prompts, states: Tensor, *, n_boot: int, seed: int) -> list[dict]:
    """Share of the mean query state (per layer) in the task subspace, with a bootstrap over
    prompts (the mean is recomputed on each resample)."""
    from ..attribution import subspace_basis

    label_dirs = label_unembeddings(model, prompts.label_token_ids).float().cpu()
    basis = subspace_basis(label_dirs).double()  # [d, rank]
    n, n_states, d = states.shape
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.integers(0, n, size=(n_boot, n)))
    weights = torch.zeros(n_boot, n, dtype=torch.float64)
    weights.scatter_add_(1, idx, torch.full(idx.shape, 1.0 / n, dtype=torch.float64))
    rows = []
    chance = basis.shape[1] / d
    for layer in range(n_states):
        x = states[:, layer].double()

        def parts(v: Tensor) -> tuple[Tensor, Tensor]:
            normed = normalized_states(model, v.float()).double()
            inside = (normed @ basis).norm(dim=-1)
            total = normed.norm(dim=-1)
            return inside, (total ** 2 - inside ** 2).clamp_min(0).sqrt()

        inside, outside = parts(x.mean(0, keepdim=True))
        boot_means = weights @ x if n_boot > 1 else None  # [n_boot, d]: resampled means
        values = {"task_subspace_share": (inside ** 2 / (inside ** 2 + outside ** 2)),
                  "task_subspace_norm": inside, "orthogonal_norm": outside}
        if boot_means is not None:
            bi, bo = parts(boot_means)
            boots = {"task_subspace_share": bi ** 2 / (bi ** 2 + bo ** 2),
                     "task_subspace_norm": bi, "orthogonal_norm": bo}
        for metric, value in values.items():
            v = float(value[0])
            if boot_means is not None:
                lo, hi = np.quantile(boots[metric].numpy(), [0.025, 0.975])
            else:
                lo = hi = v
            rows.append(table_row("task_vector", metric, v, float(lo), float(hi), n,
                                  kind="task_vector", heads="", layer=layer))
        rows.append(table_row("task_vector", "chance_share", chance, chance, chance, n,
                              kind="task_vector", heads="", layer=layer))
    return rows


# =========================================================================== 7. reproduce


@dataclass(frozen=True)
class _Preset:
    k: int
    n: int
    n_random: int
    n_boot: int
    alphas: tuple[float, ...]
    steering_targets: tuple[str, ...]
    n_sequences: int


FULL = _Preset(k=4, n=64, n_random=5, n_boot=1000, alphas=(0, 0.5, 1, 2, 4),
               steering_targets=("zero_shot", "abstract_labels"), n_sequences=32)
QUICK = _Preset(k=4, n=12, n_random=2, n_boot=200, alphas=(0, 1, 4),
                steering_targets=("zero_shot",), n_sequences=8)


def _compact(result: ExperimentResult) -> ExperimentResult:
    """The result as saved: maps without per-prompt values (keeps the files small)."""
    maps = {k: HeadScores(m.scores, name=m.name, settings=m.settings, per_prompt=None,
                          top_k=m.top_k, baseline=m.baseline) for k, m in result.maps.items()}
    return ExperimentResult(result.name, result.table, result.settings, maps=maps,
                            tables=result.tables)


def reproduce_trtl(
    model: HookedTransformer | str,
    tasks: Sequence[str | Task] = ("sentiment", "topic", "category"),
    out_dir: str | Path = "results/trtl",
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    k: int | None = None,
    n: int | None = None,
    n_random: int | None = None,
    n_boot: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, ExperimentResult]]:
    """Run every TR/TL experiment on several tasks and save each result.

    Per task, on ``build_prompts(model, task, k, n, seed)``: :func:`find_task_heads`; then,
    with its TR and TL head sets (3% of heads each) and maps,
    :func:`ablation_experiment` (mean ablation, all positions, ``n_random`` layer-matched
    random sets per set), :func:`perturbation_experiment`, :func:`correlation_experiment`
    (mean ablation at the query), :func:`steering_experiment` onto zero-shot and
    abstract-label prompts of the same task (``n`` prompts, seed ``seed + 1``) and
    :func:`reconciliation_experiment`. Each result is saved with ``.save()`` (maps without
    per-prompt values) to ``out_dir/<model name>/<task>/<experiment>/``. Resumable: a cell
    whose ``result.json`` exists is loaded, not recomputed.

    Work shared between cells (the numbers of separate calls, the steering vectors up to
    float rounding; fewer forward passes):
    one :func:`~icl_heads.activation_means` pass gives the mean-ablation means of the
    ablation (every token) and correlation (query) cells and, on models without a
    post-attention norm, the steering vectors (``means.outputs(model)``); the perturbation
    cell takes its gold condition from the :func:`find_task_heads` result (``gold=``).

    Args:
        model: a loaded model or a name for :func:`~icl_heads.load_model`.
        tasks: built-in task names (or :class:`Task` objects).
        quick: the small preset (``n=12``, 2 random sets, 200 bootstrap resamples, alphas
            0/1/4, zero-shot steering only) for CI; default ``k=4, n=64``, 5 random sets,
            1000 resamples, alphas 0/0.5/1/2/4.
        k, n, n_random, n_boot: override the preset.

    Example::

        trtl.reproduce_trtl(ih.load_model(), ["sentiment"], "results/trtl", quick=True)

    Returns:
        ``{task: {experiment: ExperimentResult}}`` (computed results keep their per-prompt
        maps; loaded ones do not).
    """
    from ..models import load_model

    if isinstance(model, str):
        model = load_model(model)
    _check_model(model, "reproduce_trtl")
    _check_bool(quick, "quick")
    seed = check_int(seed, "seed")
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    if not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    preset = QUICK if quick else FULL
    k = check_int(k if k is not None else preset.k, "k", 1)
    n = check_int(n if n is not None else preset.n, "n", 2)
    n_random = check_int(n_random if n_random is not None else preset.n_random, "n_random", 1)
    n_boot = _check_boot(n_boot if n_boot is not None else preset.n_boot)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is a file; give a directory.")
    task_objs = [_as_task(t) for t in tasks]
    options = dict(k=k, n=n, n_random=n_random, n_boot=n_boot, seed=seed, preset=preset,
                   common=dict(batch_size=batch_size, device=device, progress=progress))
    results: dict[str, dict[str, ExperimentResult]] = {}
    bar = tqdm(total=len(task_objs) * len(EXPERIMENTS), desc="reproduce TR/TL",
               disable=not progress, unit="experiment")
    model_dir = out_dir / safe_name(model_name(model) or "model")
    for task in task_objs:
        results[task.name] = _reproduce_task(model, task, model_dir / safe_name(task.name),
                                             bar=bar, **options)
    bar.close()
    return results


def _reproduce_task(model, task: Task, cell_root: Path, *, k, n, n_random, n_boot, seed,
                    preset: _Preset, common: dict, bar) -> dict[str, ExperimentResult]:
    """Every experiment of one task (see :func:`reproduce_trtl`), loading saved cells."""
    done: dict[str, ExperimentResult] = {}
    prompts = build_prompts(model, task, k, n, seed)

    def cell(name: str, make) -> ExperimentResult:
        path = cell_root / name
        if (path / "result.json").is_file():
            done[name] = ExperimentResult.load(path)
        else:
            started = time.perf_counter()
            res = make()
            log.info("%s/%s/%s: %.1f s", cell_root.parent.name, task.name, name,
                     time.perf_counter() - started)
            _compact(res).save(path)
            done[name] = res
        bar.update(1)
        return done[name]

    found = cell("find_task_heads", lambda: find_task_heads(
        model, prompts, n_boot=n_boot, seed=seed, **common))
    sets = head_sets(found)
    tr, tl = found.maps["TR"], found.maps["TL"]
    # Shared by several cells, computed on first use: the heads' mean z over every token
    # (mean ablation) and at the query (query-position mean ablation; on models without a
    # post-attention norm also the steering vectors, z W_O) in one forward pass.
    shared: dict[str, object] = {}

    def means(positions: str):
        if "all" not in shared:
            shared["all"], shared["query"] = activation_means(
                model, prompts, "z", positions=("all", "query"), **common)
        return shared[positions]

    def steering_vectors() -> Tensor:
        if "vectors" not in shared:
            shared["vectors"] = (means("query").outputs(model) if not _post_norm(model) else
                                 mean_head_outputs(model, prompts, **common))
        return shared["vectors"]

    cell("ablation", lambda: ablation_experiment(
        model, prompts, sets, n_random=n_random, seed=seed, n_boot=n_boot, means=means("all"),
        **common))
    computed = found.maps["TR"].per_prompt is not None  # not loaded from disk
    cell("perturbation", lambda: perturbation_experiment(
        model, task, k, n, seed, n_boot=n_boot, gold=found if computed else None, **common))
    cell("correlation", lambda: correlation_experiment(
        model, prompts, tr=tr, tl=tl, seed=seed, n_boot=n_boot, means=means("query"),
        **common))
    def steer_on(target: str) -> ExperimentResult:
        # many short last-token runs: bigger groups mean fewer of them (same results)
        steer_common = {**common, "batch_size": max(common["batch_size"], 64)}
        return steering_experiment(
            model, prompts, build_prompts(model, task, k, n, seed + 1, perturbation=target),
            sets, preset.alphas, n_random=n_random, seed=seed, n_boot=n_boot,
            vectors=steering_vectors(), **steer_common)

    for target in ("zero_shot", "abstract_labels"):
        if target not in preset.steering_targets:
            bar.update(1)
            continue
        cell(f"steering_{target}", lambda target=target: steer_on(target))
    cell("reconciliation", lambda: reconciliation_experiment(
        model, prompts, tr=tr, tl=tl, seed=seed, n_sequences=preset.n_sequences,
        n_boot=n_boot, **common))
    return done


# =========================================================================== verdicts


#: The paper's claims, as the results page states them.
CLAIMS: dict[str, str] = {
    "tr_ablation_label_space": "TR ablation lowers label-space rate more than TL ablation "
                               "and random sets",
    "tl_ablation_in_space": "TL ablation lowers in-space accuracy more than TR ablation and "
                            "random sets",
    "tr_stable_tl_not": "TR maps are stable under random labels while TL maps are not",
    "scores_predict_ablation": "TR/TL scores correlate with their single-head ablation "
                               "effects",
    "tr_steering": "TR steering raises label-space rate and subspace alignment",
    "tl_steering": "TL steering raises in-space accuracy and rotation toward the gold label",
    "tl_induction_overlap": "TL heads overlap induction heads",
}


@dataclass(frozen=True)
class _Test:
    """One statistic a claim predicts: the row(s) of an experiment's table, the predicted
    sign, and the null it is compared with (a number, or the value of another row)."""

    experiment: str
    condition: str
    metric: str
    sign: int
    null: float | tuple[str, str] = 0.0
    where: tuple = ()


def _claim_tests(claim: str) -> list[_Test]:
    a = (("alpha", VERDICT_ALPHA),)
    return {
        "tr_ablation_label_space": [
            _Test("ablation", "TR - TL", "delta_label_space_rate", -1),
            _Test("ablation", "TR - random_TR", "delta_label_space_rate", -1)],
        "tl_ablation_in_space": [
            _Test("ablation", "TL - TR", "delta_in_space_accuracy", -1),
            _Test("ablation", "TL - random_TL", "delta_in_space_accuracy", -1)],
        "tr_stable_tl_not": [
            _Test("perturbation", "random_labels", "tr_minus_tl_spearman", +1)],
        "scores_predict_ablation": [
            _Test("correlation", "TR", "spearman_drop_label_space_rate", +1),
            _Test("correlation", "TL", "spearman_drop_in_space_accuracy", +1)],
        "tr_steering": [
            _Test("steering_zero_shot", "TR", "delta_label_space_rate", +1, where=a),
            _Test("steering_zero_shot", "TR", "delta_alignment", +1, where=a),
            _Test("steering_zero_shot", "TR - random_TR", "delta_label_space_rate", +1,
                  where=a),
            _Test("steering_zero_shot", "TR - random_TR", "delta_alignment", +1, where=a)],
        "tl_steering": [
            _Test("steering_zero_shot", "TL", "delta_in_space_accuracy", +1, where=a),
            _Test("steering_zero_shot", "TL", "delta_rotation", +1, where=a),
            _Test("steering_zero_shot", "TL - random_TL", "delta_in_space_accuracy", +1,
                  where=a),
            _Test("steering_zero_shot", "TL - random_TL", "delta_rotation", +1, where=a)],
        "tl_induction_overlap": [
            _Test("reconciliation", "TL vs induction", "top_k_overlap", +1,
                  null=("TL vs induction", "chance_overlap"))],
    }[claim]


def _row(table: pd.DataFrame, condition: str, metric: str, where: tuple = ()) -> pd.Series | None:
    rows = table[(table["condition"] == condition) & (table["metric"] == metric)]
    for column, value in where:
        if column not in rows.columns:
            return None
        rows = rows[np.isclose(rows[column].astype(float), value)]
    return rows.iloc[0] if len(rows) == 1 else None


def _judge(value: float, low: float, high: float, sign: int, null: float) -> str:
    if any(isinstance(x, float) and math.isnan(x) for x in (value, low, high)):
        return "unclear"
    if sign > 0 and low > null or sign < 0 and high < null:
        return "holds"
    if sign > 0 and high < null or sign < 0 and low > null or (low == high == null):
        return "does not hold"
    return "unclear"


def claim_verdict(claim: str, results: Mapping[str, ExperimentResult]) -> dict:
    """The verdict of one claim from one task's saved results (``{experiment: result}``).

    Each claim predicts the sign of one or more statistics (contrasts against random sets or
    the other head set, effects against the baseline, correlations against 0, an overlap
    against its chance value); each has a 95% bootstrap CI. The claim **holds** when every
    CI lies on the predicted side of its null value; it **does not hold** when some CI lies
    on the opposite side, or is exactly the null (no effect at all); otherwise it is
    **unclear**.

    Returns:
        ``{"claim", "verdict", "tests": [{"experiment", "condition", "metric", "value",
        "ci_low", "ci_high", "null", "sign", "verdict"}], "notes": [...]}`` (notes: e.g.
        identical TR and TL sets, which make their contrasts exactly 0).
    """
    if claim not in CLAIMS:
        raise ValueError(f"Unknown claim {claim!r}; choose one of {list(CLAIMS)}.")
    tests = []
    for t in _claim_tests(claim):
        res = results.get(t.experiment)
        row = _row(res.table, t.condition, t.metric, t.where) if res is not None else None
        null = t.null
        if isinstance(null, tuple) and res is not None:
            null_row = _row(res.table, *null)
            null = float(null_row["value"]) if null_row is not None else math.nan
        if row is None or not isinstance(null, float):
            tests.append({"experiment": t.experiment, "condition": t.condition,
                          "metric": t.metric, "value": math.nan, "ci_low": math.nan,
                          "ci_high": math.nan, "null": math.nan, "sign": t.sign,
                          "verdict": "unclear", "missing": True})
            continue
        v, lo, hi = float(row["value"]), float(row["ci_low"]), float(row["ci_high"])
        tests.append({"experiment": t.experiment, "condition": t.condition, "metric": t.metric,
                      "value": v, "ci_low": lo, "ci_high": hi, "null": float(null),
                      "sign": t.sign, "verdict": _judge(v, lo, hi, t.sign, float(null))})
    notes = []
    for experiment in dict.fromkeys(t.experiment for t in _claim_tests(claim)):
        res = results.get(experiment)
        heads = dict(getattr(res.settings, "heads", ()) or ()) if res is not None else {}
        if "TR" in heads and "TL" in heads and set(heads["TR"]) == set(heads["TL"]) and any(
                " - " in t["condition"] and "random" not in t["condition"] for t in tests):
            notes.append(f"the TR and TL head sets of {experiment} are identical "
                         f"({' '.join(heads['TR'])}), so TR-vs-TL contrasts are exactly 0")
    verdicts = [t["verdict"] for t in tests]
    if all(v == "holds" for v in verdicts):
        verdict = "holds"
    elif any(v == "does not hold" for v in verdicts):
        verdict = "does not hold"
    else:
        verdict = "unclear"
    return {"claim": claim, "verdict": verdict, "tests": tests, "notes": notes}


def load_results(results_root: str | Path) -> dict[str, dict[str, dict[str, ExperimentResult]]]:
    """Every saved result under ``results_root``: ``{model: {task: {experiment: result}}}``
    (the layout :func:`reproduce_trtl` writes)."""
    root = Path(results_root)
    if not root.is_dir():
        raise FileNotFoundError(f"No results directory {str(root)!r}; run reproduce_trtl first.")
    out: dict = {}
    for meta in sorted(root.glob("*/*/*/result.json")):
        exp_dir = meta.parent
        model, task, experiment = exp_dir.parent.parent.name, exp_dir.parent.name, exp_dir.name
        out.setdefault(model, {}).setdefault(task, {})[experiment] = ExperimentResult.load(exp_dir)
    return out


def trtl_verdicts(results_root: str | Path) -> pd.DataFrame:
    """The verdict of every claim for every model and task under ``results_root``, from the
    saved tables (see :func:`claim_verdict`), plus an ``"all tasks"`` row per model and claim:
    holds (or does not hold) when it does on every task, else unclear.

    Returns:
        Tidy DataFrame ``model, task, claim, statement, verdict, detail``.
    """
    rows = []
    for model, tasks in load_results(results_root).items():
        for claim, statement in CLAIMS.items():
            per_task = []
            for task, results in tasks.items():
                got = claim_verdict(claim, results)
                per_task.append(got["verdict"])
                rows.append({"model": model, "task": task, "claim": claim,
                             "statement": statement, "verdict": got["verdict"],
                             "detail": "; ".join([_detail(got["tests"]), *got["notes"]])})
            holds = sum(v == "holds" for v in per_task)
            fails = sum(v == "does not hold" for v in per_task)
            overall = ("holds" if per_task and holds == len(per_task) else
                       "does not hold" if per_task and fails == len(per_task) else "unclear")
            rows.append({"model": model, "task": "all tasks", "claim": claim,
                         "statement": statement, "verdict": overall,
                         "detail": f"holds on {holds}/{len(per_task)} tasks, does not hold on "
                                   f"{fails}/{len(per_task)}"})
    return pd.DataFrame(rows, columns=["model", "task", "claim", "statement", "verdict",
                                       "detail"])


def _detail(tests: list[dict]) -> str:
    parts = []
    for t in tests:
        if t.get("missing"):
            parts.append(f"{t['condition']} {t['metric']}: missing")
            continue
        rel = ">" if t["sign"] > 0 else "<"
        if math.isnan(t["value"]):
            parts.append(f"{t['condition']} {t['metric']}: undefined (NaN: e.g. a correlation "
                         "with a metric no head changes, or no prompt in the label space)")
            continue
        parts.append(f"{t['condition']} {t['metric']} = {_fmt(t['value'])} "
                     f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] ({rel} {_fmt(t['null'])}?)")
    return "; ".join(parts)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) < 1e-9:  # float rounding of a mean of zeros
        return "0"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


# =========================================================================== results page


def _cell(row: pd.Series) -> str:
    v, lo, hi = row["value"], row["ci_low"], row["ci_high"]
    if pd.isna(lo) or pd.isna(hi) or (lo == hi == v):
        return _fmt(float(v))
    return f"{_fmt(float(v))} [{_fmt(float(lo))}, {_fmt(float(hi))}]"


def _pivot(table: pd.DataFrame, index: Sequence[str] = ("condition",)) -> str:
    """Markdown table: one row per condition (and ``index`` columns), one column per metric,
    cells ``value [ci_low, ci_high]``."""
    if table.empty:
        return "_(no rows)_\n"
    index = [c for c in index if c in table.columns]
    keys = list(dict.fromkeys(tuple(r) for r in table[index].itertuples(index=False)))
    metrics = list(dict.fromkeys(table["metric"]))
    lines = ["| " + " | ".join([*index, *metrics]) + " |",
             "|" + "---|" * (len(index) + len(metrics))]
    for key in keys:
        sel = np.ones(len(table), dtype=bool)
        for column, value in zip(index, key):
            sel &= (table[column] == value).to_numpy()
        part = table[sel]
        cells = []
        for metric in metrics:
            got = part[part["metric"] == metric]
            cells.append(_cell(got.iloc[0]) if len(got) else "")
        shown = [(_fmt(float(k)) if isinstance(k, float) else str(k)) for k in key]
        lines.append("| " + " | ".join([*shown, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _settings_block(settings: Settings) -> str:
    lines = []
    for key, value in settings.to_dict().items():
        if key == "kind":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if k != "kind")
        elif isinstance(value, list):
            value = "; ".join(str(v) for v in value)
        lines.append(f"- `{key}`: {value}")
    return "\n".join(lines) + "\n"


_PAGE_INTRO = """\
# TR/TL paper: results

Generated by `{command}` from the saved results under `{root}` (never edited by hand).
Methods: [methods.md](../methods.md) ("TSLA", "Experiments of the TR/TL paper"); the code is
`icl_heads/experiments/trtl.py`. Every number is a mean with a seeded 95% percentile-bootstrap
interval: over prompts for behaviour, effects and contrasts, over heads for correlations
between maps.

**How a verdict is made.** Each claim predicts the sign of one or more statistics, listed in
the verdict table. It **holds** when every interval lies on the predicted side of its null
(0 for effects, contrasts and correlations; the chance overlap for overlaps), **does not
hold** when some interval lies on the opposite side or is exactly the null (no effect at
all: e.g. a label-space rate at its ceiling of 1 in every condition, or identical TR and TL
sets), and is **unclear** otherwise (an undefined statistic, NaN, is unclear too). The
steering claims are judged at alpha = {alpha:g}
against both the unsteered baseline and the random sets at the same alpha (adding any
vector may move the state). "all tasks": holds / does not hold on every task, else unclear.
The verdicts are computed from the saved tables by `trtl_verdicts`; nothing was tuned to
make a claim hold: one setting per experiment, listed under each model.
"""


def write_trtl_page(
    results_root: str | Path,
    page_path: str | Path,
    figure_dir: str | Path,
    *,
    command: str | None = None,
) -> Path:
    """Write the TR/TL results page from the saved results only (every model under
    ``results_root``; see :func:`reproduce_trtl`): the verdict table per claim and model, then
    per model and task each experiment's table, settings and figure. Figures are standalone
    HTML files in ``figure_dir`` (one shared ``plotly.min.js``), linked and embedded.

    Example::

        trtl.write_trtl_page("docs/results/data/trtl", "docs/results/trtl.md",
                             "docs/results/figures/trtl")

    Returns:
        The page's path.
    """
    all_results = load_results(results_root)
    if not all_results:
        raise FileNotFoundError(f"No saved results under {str(results_root)!r} (expected "
                                "<model>/<task>/<experiment>/result.json).")
    page_path, figure_dir = Path(page_path), Path(figure_dir)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    figure_dir.mkdir(parents=True, exist_ok=True)
    verdicts = trtl_verdicts(results_root)
    command = command or "icl-heads reproduce --models default gemma-3-270m --experiments trtl --pages --no-reports"
    parts = [_PAGE_INTRO.format(command=command, root=Path(results_root).as_posix(),
                                alpha=VERDICT_ALPHA)]
    parts.append("## Verdicts\n")
    for model, tasks in all_results.items():
        v = verdicts[verdicts["model"] == model]
        columns = [*tasks, "all tasks"]
        parts.append(f"### {model}\n")
        parts.append("| claim | " + " | ".join(columns) + " |")
        parts.append("|---|" + "---|" * len(columns))
        for claim, statement in CLAIMS.items():
            cells = []
            for task in columns:
                row = v[(v["claim"] == claim) & (v["task"] == task)]
                cells.append(f"**{row['verdict'].iloc[0]}**" if len(row) else "")
            parts.append(f"| {statement} | " + " | ".join(cells) + " |")
        parts.append("")
        parts.append("<details><summary>The statistics behind each verdict</summary>\n")
        parts.append("| claim | task | verdict | statistics (value [95% CI] vs null) |")
        parts.append("|---|---|---|---|")
        for _, row in v[v["task"] != "all tasks"].iterrows():
            parts.append(f"| {row['claim']} | {row['task']} | {row['verdict']} | "
                         f"{row['detail']} |")
        parts.append("\n</details>\n")
    for model, tasks in all_results.items():
        parts.append(f"## {model}\n")
        parts.append(_model_notes(tasks))
        for task, results in tasks.items():
            parts.append(f"### {model} / {task}\n")
            for experiment in [e for e in EXPERIMENTS if e in results] + \
                    [e for e in results if e not in EXPERIMENTS]:
                res = results[experiment]
                parts.append(f"#### {experiment}\n")
                fig_file = figure_dir / f"{model}__{task}__{experiment}.html"
                fig = res.plot()
                fig.write_html(fig_file, include_plotlyjs="directory", div_id=fig_file.stem)
                height = int(fig.layout.height or 450) + 40
                rel = os.path.relpath(fig_file, page_path.parent).replace(os.sep, "/")
                parts.append(_tables_md(res))
                parts.append(f"[Figure (interactive)]({rel})\n")
                parts.append(f'<iframe src="{rel}" width="100%" height="{height}" '
                             'frameborder="0"></iframe>\n')
                parts.append("<details><summary>Settings</summary>\n")
                parts.append(_settings_block(res.settings))
                parts.append("</details>\n")
    page_path.write_text("\n".join(parts), encoding="utf-8")
    return page_path


def _model_notes(tasks: Mapping[str, Mapping[str, ExperimentResult]]) -> str:
    any_result = next(iter(next(iter(tasks.values())).values()))
    notes = []
    if getattr(any_result.settings, "post_attention_norm", False):
        notes.append(
            "**Post-attention norm.** On this model each layer's summed head outputs pass "
            "through a post-attention RMSNorm before the residual stream. TSLA attributes "
            "through that norm's cached scale and weight at each run's own activations "
            "(a head's contribution is `w ⊙ a / s`, `s` the layer's cached scale on that "
            "prompt): the contributions add up exactly to the attention output, but `s` depends "
            "on all heads together, so per-head attribution is a linearisation, not exactly "
            "additive. The steering vectors are the heads' mean contributions in the same "
            "sense (after the norm), added after the norm.")
    found = next((r.get("find_task_heads") for r in tasks.values() if "find_task_heads" in r),
                 None)
    if found is not None:
        s = found.settings
        notes.append(f"TSLA: `normalize={s.normalize}`, `apply_ln={s.apply_ln}`, head sets of "
                     f"`top_k={s.top_k}` heads; prompts `k={s.prompts.k}`, `n={s.prompts.n}`, "
                     f"`seed={s.prompts.seed}`.")
    ablation = next((r.get("ablation") for r in tasks.values() if "ablation" in r), None)
    if ablation is not None:
        s = ablation.settings
        notes.append(f"Ablation: `mode={s.mode}`, `positions={s.positions}`, "
                     f"`n_random={s.n_random}` random sets per head set, "
                     f"`layer_matched={s.layer_matched}`.")
    correlation = next((r.get("correlation") for r in tasks.values() if "correlation" in r),
                       None)
    if correlation is not None:
        s = correlation.settings
        notes.append(f"Correlation: single-head `mode={s.mode}` ablation at "
                     f"`positions={s.positions}` (the exact fast sweep), every head.")
    steering = next((r.get(e) for r in tasks.values() for e in EXPERIMENTS
                     if e.startswith("steering") and e in r), None)
    if steering is not None:
        s = steering.settings
        notes.append(f"Steering: alphas {list(s.alphas)} at `positions={s.positions}`, "
                     f"`n_random={s.n_random}` random sets; source prompts k={s.source.k}, "
                     f"target prompts n={s.target.n}, seed {s.target.seed}.")
    reconciliation = next((r.get("reconciliation") for r in tasks.values()
                           if "reconciliation" in r), None)
    if reconciliation is not None:
        s = reconciliation.settings
        notes.append(f"Reconciliation: detectors on {s.n_sequences} random sequences of "
                     f"2 x {s.T} tokens (seed {s.seed}), top-k {s.top_k}; task vector at state "
                     f"{s.task_vector_layer} in the main table, every layer in its table.")
    notes.append("These are the only settings run: none was changed after seeing a result.")
    return "\n\n".join(notes) + "\n"


def _tables_md(result: ExperimentResult) -> str:
    t = result.table
    out = []
    if "kind" not in t.columns:
        return _pivot(t)
    if result.name == "steering":
        levels = t[t["kind"] == "level"]
        out.append("Levels (per alpha):\n")
        out.append(_pivot(levels[levels["condition"] != "baseline"], ("condition", "alpha")))
        out.append("Baseline (alpha = 0):\n")
        out.append(_pivot(levels[levels["condition"] == "baseline"]))
        for kind, title in (("effect", "Effects vs baseline"), ("contrast", "Contrasts")):
            part = t[t["kind"] == kind]
            if not part.empty:
                out.append(f"{title}:\n")
                out.append(_pivot(part, ("condition", "alpha")))
        return "\n".join(out)
    for kind in dict.fromkeys(t["kind"]):
        part = t[t["kind"] == kind]
        out.append(f"{kind.capitalize()}:\n")
        out.append(_pivot(part, ("condition",) if "layer" not in part.columns or
                          part["layer"].isna().all() else ("condition", "layer")))
    return "\n".join(out)


__all__ = [
    "find_task_heads", "head_sets", "mean_head_outputs",
    "ablation_experiment",
    "perturbation_experiment", "correlation_experiment", "steering_experiment",
    "reconciliation_experiment", "reproduce_trtl", "write_trtl_page", "trtl_verdicts",
    "claim_verdict", "load_results", "CLAIMS", "EXPERIMENTS", "FindTaskHeadsSettings",
    "AblationSettings", "PerturbationSettings", "CorrelationSettings", "SteeringSettings",
    "ReconciliationSettings",
]
