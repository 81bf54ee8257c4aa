"""Experiment 4 of the TR/TL paper: every head's single-head ablation effect against its
TR and TL score."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ...activations import ActivationMeans
from ...attribution import tsla_scores
from ...backends import HookedTransformer
from ...batching import BatchSize, check_batch_size
from ...checks import check_seed
from ...heads import HeadScores
from ...hooks import Positions, check_interventions, check_positions
from ...interventions import ABLATION_MODES
from ...metrics import accuracy, in_label_space, logit_diff
from ...patching import head_sweep
from ...prompts import PromptSet
from ...provenance import check_map, check_means
from ...results import ExperimentResult, make_table, table_row
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import N_BOOT, correlation_ci, mean_ci
from ..kit import BASELINE, check_boot, check_model, check_prompts, post_attention_norm

log = logging.getLogger(__name__)

#: The metrics whose single-head ablation effects are correlated with the scores.
EFFECT_METRICS = ("label_space_rate", "in_space_accuracy", "logit_diff")


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
    n_boot: int = N_BOOT,
    seed: int = 0,
    batch_size: BatchSize = 16,
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
        tr, tl: TSLA maps of this task and model (default: computed here on these
            prompts, one pass); a map scored on another task's prompts or with another
            model is refused (:func:`~icl_heads.provenance.check_map`).
        mode, positions, means, reference: the ablation of the sweep (``means`` checked as
            in :func:`~icl_heads.experiments.trtl.ablation_experiment`).
        batch_size: prompts per forward pass, or ``"auto"``: the largest batch that fits the
            device's memory, chosen by each pass (:mod:`icl_heads.batching`).

    Table: ``baseline`` x metrics (``kind="level"``, the clean run); ``TR`` / ``TL`` x
    ``spearman_drop_<metric>`` and ``pearson_drop_<metric>`` (CI over heads; columns
    ``score``, ``effect``, ``method``). ``tables["heads"]``: one row per head (``layer, head,
    label, tr_score, tl_score, delta_label_space_rate, delta_in_space_accuracy,
    delta_logit_diff``) for a scatter plot.

    Example::

        res = trtl.correlation_experiment(model, prompts)
        res.value("TR", "spearman_drop_label_space_rate")
    """
    check_model(model, "correlation_experiment")
    check_prompts(model, prompts)
    seed, n_boot = check_seed(seed), check_boot(n_boot)
    batch_size = check_batch_size(batch_size)  # "auto" is resolved by each pass
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}.")
    positions = check_positions(positions)
    interventions = check_interventions(interventions, model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for name, m in (("tr", tr), ("tl", tl)):
        if m is not None and (not isinstance(m, HeadScores) or m.scores.shape != (L, H)):
            raise ValueError(
                f"{name}= must be a HeadScores of this model's shape [{L}, {H}] (from "
                f"tsla_scores(model, prompts)), got {m!r}."
            )
        check_map(m, model, prompts, fn="correlation_experiment", what=f"{name}=", need="task")
    if mode == "mean":
        check_means(
            means,
            model,
            prompts,
            positions=positions,
            reference=reference,
            fn="correlation_experiment",
        )
    scores_from = "given"
    if tr is None or tl is None:
        tr, tl = tsla_scores(
            model,
            prompts,
            normalize=normalize,
            apply_ln=apply_ln,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
        )
        scores_from = "computed"
    effects, clean = _all_metrics_sweep(
        model,
        prompts,
        mode=mode,
        positions=positions,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    rows = []
    for metric in EFFECT_METRICS:
        if metric in clean:
            v, lo, hi, n = mean_ci(clean[metric], n_boot=n_boot, seed=seed)
        else:
            v, lo, hi, n = effects[metric].baseline, math.nan, math.nan, len(prompts)
        rows.append(
            table_row(BASELINE, metric, v, lo, hi, n, kind="level", score="", effect="", method="")
        )
    for score_name, scores in (("TR", tr), ("TL", tl)):
        for metric in EFFECT_METRICS:
            drop = -effects[metric].scores
            for method in ("spearman", "pearson"):
                r, lo, hi, n = correlation_ci(
                    scores.scores, drop, method=method, n_boot=n_boot, seed=seed
                )
                rows.append(
                    table_row(
                        score_name,
                        f"{method}_drop_{metric}",
                        r,
                        lo,
                        hi,
                        n,
                        kind="correlation",
                        score=score_name,
                        effect=metric,
                        method=method,
                    )
                )
    heads = tr.to_frame()[["layer", "head", "label"]].copy()
    heads["tr_score"] = tr.scores.flatten().numpy()
    heads["tl_score"] = tl.scores.flatten().numpy()
    for metric in EFFECT_METRICS:
        heads[f"delta_{metric}"] = effects[metric].scores.flatten().numpy()
    settings = CorrelationSettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        mode=mode,
        positions=positions,
        method="fast",
        scores=scores_from,
        normalize=getattr(tr.settings, "normalize", normalize),
        apply_ln=bool(getattr(tr.settings, "apply_ln", apply_ln)),
        n_boot=n_boot,
        seed=seed,
        post_attention_norm=post_attention_norm(model),
        interventions=describe_interventions(interventions),
    )
    maps = {"TR": tr, "TL": tl, **{f"delta_{m}": effects[m] for m in EFFECT_METRICS}}
    return ExperimentResult(
        "correlation", make_table(rows), settings, maps=maps, tables={"heads": heads}
    )


def _all_metrics_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    mode: str,
    positions: Positions,
    means: ActivationMeans | Tensor | None,
    reference: PromptSet | None,
    seed: int,
    batch_size: BatchSize,
    device: str | torch.device | None,
    interventions: Sequence,
    progress: bool,
) -> tuple[dict[str, HeadScores], dict[str, Tensor]]:
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
            1.0 + accuracy(logits, gold, label_token_ids)
        )  # 0 out, 1 in & wrong, 2 in & right
        calls.append((ld.detach().float().cpu(), code.detach().float().cpu()))
        return ld

    recorded.__name__ = "logit_diff"

    def sweep(metric) -> HeadScores:
        return head_sweep(
            model,
            prompts,
            metric,
            mode=mode,
            positions=positions,
            means=means,
            reference=reference,
            seed=seed,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
        )

    ld_map = sweep(recorded)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    decoded = _decode_calls(calls, len(prompts), L * H)
    ok = decoded is not None
    if ok:
        ld_int, ld_clean, code_int, code_clean = decoded
        effect = (ld_int - ld_clean[:, None]).reshape(len(prompts), L, H)
        ok = torch.equal(effect, ld_map.per_prompt)
    if not ok:
        log.warning(
            "correlation_experiment: the one-sweep recording did not match; running one "
            "head_sweep per metric instead."
        )
        return {"logit_diff": ld_map, **{m: sweep(m) for m in EFFECT_METRICS[:2]}}, {}
    base_lsr = (code_clean > 0).float()
    base_isa = torch.where(code_clean > 0, (code_clean == 2).float(), torch.nan)
    int_lsr = (code_int > 0).float()
    int_isa = torch.where(code_int > 0, (code_int == 2).float(), torch.nan)
    out = {"logit_diff": ld_map}
    for metric, clean, intervened in (
        ("label_space_rate", base_lsr, int_lsr),
        ("in_space_accuracy", base_isa, int_isa),
    ):
        per_prompt = (intervened - clean[:, None]).reshape(len(prompts), L, H)
        out[metric] = HeadScores(
            torch.nanmean(per_prompt, 0),
            name=f"delta_{metric}",
            settings=ld_map.settings.replace(metric=metric),
            per_prompt=per_prompt,
            baseline=float(torch.nanmean(clean)),
        )
    clean_values = {
        "label_space_rate": base_lsr,
        "in_space_accuracy": base_isa,
        "logit_diff": ld_clean,
    }
    return out, clean_values


def _decode_calls(
    calls: list[tuple[Tensor, Tensor]], n: int, n_items: int
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """The recorded metric calls of a fast head sweep as ``[prompt, item]`` tensors.

    Per group of prompts (in prompt order): the clean call (its length is the group's
    size ``G``, whatever batch size ran: ``"auto"``, or a group halved after running out
    of memory), then item calls of ``r * G`` rows (item-major) until ``n_items * G`` rows.
    ``None`` when the calls do not follow this pattern."""
    ld_int = torch.full((n, n_items), math.nan)
    code_int = torch.full((n, n_items), math.nan)
    ld_clean, code_clean = torch.full((n,), math.nan), torch.full((n,), math.nan)
    i = g0 = 0
    while g0 < n:
        if i >= len(calls):
            return None
        G = calls[i][0].numel()
        if not 0 < G <= n - g0:
            return None
        ld_clean[g0 : g0 + G], code_clean[g0 : g0 + G] = calls[i]
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
        ld_int[g0 : g0 + G] = torch.cat(parts_ld).reshape(n_items, G).T
        code_int[g0 : g0 + G] = torch.cat(parts_code).reshape(n_items, G).T
        g0 += G
    if i != len(calls):
        return None
    return ld_int, ld_clean, code_int, code_clean
