"""Experiment 6 of the TR/TL paper: TR/TL heads against the classic head types, and the task
vector's share of the task subspace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...attribution import label_unembeddings, subspace_basis, tsla_scores
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...checks import check_int, check_seed
from ...detectors import label_attention_scores, token_detector_scores
from ...geometry import normalized_states
from ...heads import HeadScores, check_top_k
from ...hooks import check_interventions
from ...prompts import PromptSet
from ...provenance import check_map
from ...results import ExperimentResult, make_table, table_row
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import N_BOOT, correlation_ci, top_k_overlap_ci
from ..kit import check_boot, check_model, check_prompts, heads_label, post_attention_norm
from .passes import QueryTap

#: The map pairs compared: the paper's pairings, then the crossed pairs as controls.
PAIRS = (
    ("TL", "induction"),
    ("TL", "label_attention"),
    ("TR", "previous_token"),
    ("TR", "induction"),
    ("TL", "previous_token"),
)


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
    n_boot: int = N_BOOT,
    batch_size: BatchSize = 16,
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

    ``tr``, ``tl``: the TSLA maps of these very prompts (their per-prompt values are paired
    with the label-attention map's over the prompts), e.g. ``find_task_heads(model,
    prompts).maps``; maps of other prompts or another model are refused
    (:func:`~icl_heads.provenance.check_map`); default (or without per-prompt values, e.g.
    loaded from disk): computed here (the given maps must still be of this task and model),
    with the given TL map's own score (its settings' ``normalize``, ``floor``, ``apply_ln``),
    so a resumed grid gives the numbers of an uninterrupted one.

    Example::

        res = trtl.reconciliation_experiment(model, prompts)
        res.select(condition="TL vs induction")
    """
    check_model(model, "reconciliation_experiment")
    check_prompts(model, prompts, need_demos=True)
    seed, n_boot = check_seed(seed), check_boot(n_boot)
    T, n_sequences = check_int(T, "T", 1), check_int(n_sequences, "n_sequences", 1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(
        top_k if top_k is not None else (tr.top_k if tr is not None else None), L, H
    )
    if top_k > L * H:
        raise ValueError(f"top_k={top_k} exceeds the model's {L * H} heads.")
    if task_vector_layer is None:
        task_vector_layer = L // 2
    task_vector_layer = check_int(task_vector_layer, "task_vector_layer", 0)
    if task_vector_layer > L:
        raise ValueError(
            f"task_vector_layer={task_vector_layer} is out of range: states run from 0 (the "
            f"embeddings) to {L} (after the last block)."
        )
    interventions = check_interventions(interventions, model)
    # maps with per-prompt values are paired with these prompts' (the same prompts); maps
    # without are recomputed here, so only their model and task are checked
    paired = all(m is not None and getattr(m, "per_prompt", None) is not None for m in (tr, tl))
    for name, m in (("tr", tr), ("tl", tl)):
        if m is not None and (not isinstance(m, HeadScores) or m.scores.shape != (L, H)):
            raise ValueError(f"{name}= must be a HeadScores of this model's shape [{L}, {H}].")
        check_map(
            m,
            model,
            prompts,
            fn="reconciliation_experiment",
            what=f"{name}=",
            need="prompts" if paired else "task",
        )
    if tr is None or tl is None or tr.per_prompt is None or tl.per_prompt is None:
        tr, tl = tsla_scores(
            model,
            prompts,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
            **_score_options(tl),
        )
    detectors = token_detector_scores(
        model,
        detectors=("previous_token", "induction"),
        T=T,
        n_sequences=n_sequences,
        seed=seed,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(L)]
    tap = QueryTap(names[1:] + names[:1])
    label_attention = label_attention_scores(
        model,
        prompts,
        batch_size=batch_size,
        device=device,
        interventions=[*interventions, tap.capture],
        progress=progress,
    ).mass
    label_attention.settings = label_attention.settings.replace(
        interventions=describe_interventions(interventions)
    )
    # [n, L + 1, d]; each layer's rows on its block's device (n_devices > 1): moved first
    states = torch.stack([tap.stacked(name).to("cpu") for name in names], 1)
    maps = {
        "TR": tr,
        "TL": tl,
        "induction": detectors["induction"],
        "previous_token": detectors["previous_token"],
        "label_attention": label_attention,
    }
    rows = []
    chance = top_k / (L * H)
    for a, b in PAIRS:
        cond = f"{a} vs {b}"
        v, lo, hi, _ = top_k_overlap_ci(
            maps[a].per_prompt,
            maps[b].per_prompt,
            top_k,
            paired=b == "label_attention",
            n_boot=n_boot,
            seed=seed,
        )
        common = heads_label(sorted(set(maps[a].top(top_k)) & set(maps[b].top(top_k))))
        rows.append(
            table_row(
                cond,
                "top_k_overlap",
                v,
                lo,
                hi,
                top_k,
                kind="overlap",
                heads=common,
                layer=math.nan,
            )
        )
        rows.append(
            table_row(
                cond,
                "chance_overlap",
                chance,
                chance,
                chance,
                top_k,
                kind="overlap",
                heads="",
                layer=math.nan,
            )
        )
        r, lo, hi, n = correlation_ci(
            maps[a].scores, maps[b].scores, method="spearman", n_boot=n_boot, seed=seed
        )
        rows.append(
            table_row(cond, "spearman", r, lo, hi, n, kind="correlation", heads="", layer=math.nan)
        )
    tv_rows = _task_vector_rows(model, prompts, states, n_boot=n_boot, seed=seed)
    rows += [dict(r) for r in tv_rows if r["layer"] == task_vector_layer]
    settings = ReconciliationSettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        top_k=top_k,
        T=T,
        n_sequences=n_sequences,
        task_vector_layer=task_vector_layer,
        seed=seed,
        n_boot=n_boot,
        post_attention_norm=post_attention_norm(model),
        interventions=describe_interventions(interventions),
    )
    return ExperimentResult(
        "reconciliation",
        make_table(rows),
        settings,
        maps=maps,
        tables={"task_vector": make_table(tv_rows)},
    )


def _task_vector_rows(
    model: HookedTransformer, prompts: PromptSet, states: Tensor, *, n_boot: int, seed: int
) -> list[dict]:
    """Share of the mean query state (per layer) in the task subspace, with a bootstrap over
    prompts (the mean is recomputed on each resample)."""
    label_dirs = label_unembeddings(model, prompts.label_token_ids).float().cpu()
    basis = subspace_basis(label_dirs).double()  # [d, rank]
    n, n_states, d = states.shape
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.integers(0, n, size=(n_boot, n)))
    weights = torch.zeros(n_boot, n, dtype=torch.float64)
    weights.scatter_add_(1, idx, torch.full(idx.shape, 1.0 / n, dtype=torch.float64))
    chance = basis.shape[1] / d

    def parts(v: Tensor) -> tuple[Tensor, Tensor]:
        normed = normalized_states(model, v.float()).double()
        inside = (normed @ basis).norm(dim=-1)
        total = normed.norm(dim=-1)
        return inside, (total**2 - inside**2).clamp_min(0).sqrt()

    rows = []
    for layer in range(n_states):
        x = states[:, layer].double()
        inside, outside = parts(x.mean(0, keepdim=True))
        values = {
            "task_subspace_share": (inside**2 / (inside**2 + outside**2)),
            "task_subspace_norm": inside,
            "orthogonal_norm": outside,
        }
        boots = None
        if n_boot > 1:
            bi, bo = parts(weights @ x)  # [n_boot, d]: resampled means
            boots = {
                "task_subspace_share": bi**2 / (bi**2 + bo**2),
                "task_subspace_norm": bi,
                "orthogonal_norm": bo,
            }
        for metric, value in values.items():
            v = float(value[0])
            if boots is not None:
                lo, hi = np.quantile(boots[metric].numpy(), [0.025, 0.975])
            else:
                lo = hi = v
            rows.append(
                table_row(
                    "task_vector",
                    metric,
                    v,
                    float(lo),
                    float(hi),
                    n,
                    kind="task_vector",
                    heads="",
                    layer=layer,
                )
            )
        rows.append(
            table_row(
                "task_vector",
                "chance_share",
                chance,
                chance,
                chance,
                n,
                kind="task_vector",
                heads="",
                layer=layer,
            )
        )
    return rows


def _score_options(tl: HeadScores | None) -> dict:
    """The TL score a map given without per-prompt values was made with (``normalize``,
    ``floor``, ``apply_ln`` of its TSLA settings), so that the maps recomputed here are
    that map again (e.g. the loaded, compact maps of a resumed grid); none for no map."""
    recorded = getattr(tl, "settings", None)
    normalize = getattr(recorded, "normalize", None)
    if normalize is None:
        return {}
    options = {"normalize": normalize, "apply_ln": bool(getattr(recorded, "apply_ln", False))}
    if getattr(recorded, "floor", None) is not None:
        options["floor"] = float(recorded.floor)
    return options
