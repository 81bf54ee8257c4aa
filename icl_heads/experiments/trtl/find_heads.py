"""Experiment 1 of the TR/TL paper: the TR and TL maps (TSLA), the head sets and their
overlap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ...attribution import tsla_scores
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...checks import check_seed
from ...heads import Head, HeadScores, check_top_k
from ...hooks import check_interventions
from ...metrics import behaviour
from ...prompts import PromptSet
from ...provenance import TracedHeadSets, settings_prompts
from ...results import ExperimentResult, make_table, table_row
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import N_BOOT, correlation_ci, mean_ci, top_k_overlap_ci
from ..kit import (
    BASELINE,
    chance_row,
    check_boot,
    check_model,
    check_prompts,
    heads_label,
    level_rows,
    parse_heads,
    post_attention_norm,
)
from .passes import tsla_pass


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
    #: The TR floor of a normalised TL map (fraction of the largest mean TR below which a
    #: head's TL is NaN, never ranked); ``None`` with ``normalize="none"``.
    floor: float | None = None
    #: The TL score also computed as a sensitivity analysis (``"none"``: the raw margin),
    #: with its own map (``maps["TL_raw"]``) and top-k set (``tables["tl_sensitivity"]``);
    #: ``None``: none.
    sensitivity_normalize: str | None = None


#: The name of the sensitivity TL map and set of each normaliser
#: (``find_task_heads(sensitivity_normalize=)``).
SENSITIVITY_SETS = {"none": "TL_raw", "norm": "TL_norm", "tr": "TL_tr"}


def find_task_heads(
    model: HookedTransformer,
    prompts: PromptSet,
    top_k: int | None = None,
    *,
    normalize: Literal["none", "norm", "tr"] = "none",
    floor: float = 0.01,
    sensitivity_normalize: Literal["none", "norm", "tr"] | None = None,
    apply_ln: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """TR and TL maps (TSLA, :func:`~icl_heads.tsla_scores`), the TR and TL head sets (the
    ``top_k`` best heads of each map; default 3% of heads, at least 1) and their overlap.

    One forward pass over the prompts gives the maps and the prompts' behaviour (the
    baseline rows).

    ``normalize`` picks the TL score (``docs/methods.md``, "Held-out selection, TL
    normalisation and ablation modes"): ``"none"`` (default, the raw gold-label margin),
    ``"norm"`` (the margin divided by ``||P a||``) or ``"tr"`` (divided by ``||P a||^2``, the
    TR score: the paper's normalised form in the only formula text we could read, a
    third-party summary; our reconstruction). With a normalisation, heads whose
    mean TR is below ``floor`` times the largest mean TR get TL = NaN and are never ranked
    (the settings record ``normalize`` and ``floor``). The library default stays
    ``"none"`` (results and calls made before the option existed are unchanged); the
    reproduction grid's main setting is ``"tr"`` with the 1% floor
    (:data:`~icl_heads.experiments.trtl.reproduce.MAIN`).

    ``sensitivity_normalize`` (default ``None``): also score TL with this other normaliser
    (one more query-position pass), as a sensitivity analysis: its map
    (``maps["TL_raw"]`` for ``"none"``, ``"TL_norm"`` / ``"TL_tr"``), its top-``k`` set
    with each head's score under both maps (``tables["tl_sensitivity"]``: ``set, rank,
    layer, head, label, tl_score, main_tl_score, in_main``), and two rows ``"TL vs TL_raw"``
    x ``overlap`` (the fraction of the main TL set in the sensitivity set, paired bootstrap
    over prompts) and x ``spearman`` (over heads both maps rank), after the other rows.

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
    check_model(model, "find_task_heads")
    check_prompts(model, prompts)
    seed, n_boot = check_seed(seed), check_boot(n_boot)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k, L, H)
    if top_k > L * H:
        raise ValueError(f"top_k={top_k} exceeds the model's {L * H} heads.")
    interventions = check_interventions(interventions, model)
    if sensitivity_normalize is not None and sensitivity_normalize not in SENSITIVITY_SETS:
        raise ValueError(
            f"Unknown sensitivity_normalize {sensitivity_normalize!r}; choose None or one of "
            f"{list(SENSITIVITY_SETS)} (another TL score than normalize={normalize!r})."
        )
    if sensitivity_normalize is not None and sensitivity_normalize == normalize:
        raise ValueError(
            f"sensitivity_normalize={sensitivity_normalize!r} equals normalize: a "
            "sensitivity analysis needs another TL score; choose another one or None."
        )
    tr, tl, logits, _ = tsla_pass(
        model,
        prompts,
        top_k=top_k,
        normalize=normalize,
        floor=floor,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    measured = behaviour(logits, prompts)
    rows = level_rows(BASELINE, measured, n_boot=n_boot, seed=seed)
    rows.append(chance_row(prompts))
    sets = {"TR": tr.top(top_k), "TL": tl.top(top_k)}
    every = [Head(layer, head) for layer in range(L) for head in range(H)]
    for name, heads in [*sets.items(), ("all heads", every)]:
        for score_name, scores in (("tr_score", tr), ("tl_score", tl)):
            idx = torch.tensor([[h.layer, h.head] for h in heads])
            per = scores.per_prompt[:, idx[:, 0], idx[:, 1]]
            per = torch.nanmean(per, 1) if torch.isnan(per).any() else per.mean(1)
            v, lo, hi, n = mean_ci(per, n_boot=n_boot, seed=seed)
            label = heads_label(heads) if name != "all heads" else ""
            rows.append(table_row(name, score_name, v, lo, hi, n, kind="score", heads=label))
    v, lo, hi, _ = top_k_overlap_ci(
        tr.per_prompt, tl.per_prompt, top_k, paired=True, n_boot=n_boot, seed=seed
    )
    common = heads_label(sorted(set(sets["TR"]) & set(sets["TL"])))
    rows.append(table_row("TR∩TL", "overlap", v, lo, hi, top_k, kind="overlap", heads=common))
    chance = top_k / (L * H)
    rows.append(table_row("TR∩TL", "chance_overlap", chance, chance, chance, top_k, kind="overlap"))
    r, lo, hi, n = correlation_ci(tr.scores, tl.scores, method="spearman", n_boot=n_boot, seed=seed)
    rows.append(table_row("TR vs TL", "spearman", r, lo, hi, n, kind="correlation"))
    maps = {"TR": tr, "TL": tl}
    tables = {}
    if sensitivity_normalize is not None:
        name = SENSITIVITY_SETS[sensitivity_normalize]
        _, other = tsla_scores(
            model,
            prompts,
            top_k=top_k,
            normalize=sensitivity_normalize,
            floor=floor,
            apply_ln=apply_ln,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
        )
        maps[name] = other
        rows += _sensitivity_rows(tl, other, name, top_k, n_boot=n_boot, seed=seed)
        tables["tl_sensitivity"] = _sensitivity_table(tl, other, name, top_k)
    set_rows = [
        {
            "set": name,
            "rank": rank,
            "layer": h.layer,
            "head": h.head,
            "label": str(h),
            "tr_score": tr[h],
            "tl_score": tl[h],
        }
        for name, heads in sets.items()
        for rank, h in enumerate(heads, 1)
    ]
    settings = FindTaskHeadsSettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        top_k=top_k,
        normalize=normalize,
        apply_ln=bool(apply_ln),
        n_boot=n_boot,
        seed=seed,
        post_attention_norm=post_attention_norm(model),
        interventions=describe_interventions(interventions),
        floor=tl.settings.floor,
        sensitivity_normalize=sensitivity_normalize,
    )
    per_prompt = pd.DataFrame(
        {"prompt": np.arange(len(prompts)), **{m: v.double().numpy() for m, v in measured.items()}}
    )
    return ExperimentResult(
        "find_task_heads",
        make_table(rows),
        settings,
        maps=maps,
        tables={"sets": pd.DataFrame(set_rows), "per_prompt": per_prompt, **tables},
    )


def _sensitivity_rows(
    main: HeadScores, other: HeadScores, name: str, top_k: int, *, n_boot: int, seed: int
) -> list[dict]:
    """``"TL vs <name>"`` x ``overlap`` (paired over prompts) and x ``spearman`` (heads)."""
    condition = f"TL vs {name}"
    v, lo, hi, _ = top_k_overlap_ci(
        main.per_prompt, other.per_prompt, top_k, paired=True, n_boot=n_boot, seed=seed
    )
    common = heads_label(sorted(set(main.top(top_k)) & set(other.top(top_k))))
    rows = [table_row(condition, "overlap", v, lo, hi, top_k, kind="overlap", heads=common)]
    r, lo, hi, n = correlation_ci(
        main.scores, other.scores, method="spearman", n_boot=n_boot, seed=seed
    )
    rows.append(table_row(condition, "spearman", r, lo, hi, n, kind="correlation"))
    return rows


def _sensitivity_table(main: HeadScores, other: HeadScores, name: str, top_k: int) -> pd.DataFrame:
    """The sensitivity TL set, best first, with each head's score under both maps."""
    chosen = set(main.top(top_k))
    return pd.DataFrame(
        [
            {
                "set": name,
                "rank": rank,
                "layer": h.layer,
                "head": h.head,
                "label": str(h),
                "tl_score": other[h],
                "main_tl_score": main[h],
                "in_main": h in chosen,
            }
            for rank, h in enumerate(other.top(top_k), 1)
        ],
        columns=["set", "rank", "layer", "head", "label", "tl_score", "main_tl_score", "in_main"],
    )


def head_sets(result: ExperimentResult, *, sensitivity: bool = False) -> dict[str, list[Head]]:
    """The named head sets of a result: ``{"TR": [...], "TL": [...]}`` from
    :func:`find_task_heads` (its ``tables["sets"]``, best first), or the sets an ablation or
    steering result evaluated (its settings' ``heads``).

    The sets of a ``find_task_heads`` result are a
    :class:`~icl_heads.provenance.TracedHeadSets` (a dict that remembers the prompts and
    model they were found on), so the experiments refuse them on another task's prompts or
    another model; ``dict(sets)`` drops that record, to use them there on purpose.

    ``sensitivity=True`` adds the sensitivity TL set of a ``find_task_heads`` result made
    with ``sensitivity_normalize`` (``"TL_raw"``, from ``tables["tl_sensitivity"]``) after
    TR and TL; a result without one is a ValueError.

    Example::

        sets = trtl.head_sets(trtl.find_task_heads(model, prompts))
    """
    if not isinstance(result, ExperimentResult):
        raise TypeError(f"head_sets needs an ExperimentResult, got {type(result).__name__}.")
    if "sets" in result.tables:
        frame = result.tables["sets"].sort_values(["set", "rank"], kind="stable")
        out: dict[str, list[Head]] = {}
        for name in dict.fromkeys(result.tables["sets"]["set"]):
            rows = frame[frame["set"] == name]
            out[str(name)] = [Head(int(a), int(b)) for a, b in zip(rows["layer"], rows["head"])]
        if sensitivity:
            extra = result.tables.get("tl_sensitivity")
            if extra is None:
                raise ValueError(
                    f"head_sets(sensitivity=True): the {result.name!r} result holds no "
                    "sensitivity TL set; make it with find_task_heads(..., "
                    "sensitivity_normalize='none')."
                )
            for name in dict.fromkeys(extra["set"]):
                rows = extra[extra["set"] == name].sort_values("rank", kind="stable")
                out[str(name)] = [Head(int(a), int(b)) for a, b in zip(rows["layer"], rows["head"])]
        if result.name != "find_task_heads":
            return out
        first = next(iter(result.maps.values()), None)
        return TracedHeadSets(
            out,
            prompts=settings_prompts(result.settings),
            model=getattr(result.settings, "model", None),
            shape=(first.n_layers, first.n_heads) if first is not None else None,
            source="find_task_heads",
        )
    heads = getattr(result.settings, "heads", None)
    if heads:
        return {str(name): parse_heads(" ".join(labels)) for name, labels in heads}
    raise ValueError(
        f"The {result.name!r} result holds no head sets (find_task_heads, ablation and "
        "steering results do)."
    )


def settings_heads(named: dict[str, list[Head]]) -> tuple:
    """The named sets as settings keep them: ``(("TR", ("L3H5", ...)), ...)``."""
    return tuple((k, tuple(str(h) for h in v)) for k, v in named.items())
