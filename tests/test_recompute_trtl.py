"""A saved TR/TL cell of the default model recomputes to the same numbers (within 1e-6)
from its saved settings alone, with today's code (issue 17: the split of the TR/TL module
must not change a number on the results page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tasks_v1 import load_v1_task

import icl_heads as ih
from icl_heads.experiments import trtl
from icl_heads.results import ExperimentResult

CELL = (Path(__file__).resolve().parent.parent / "docs" / "results" / "data" / "trtl"
        / "smollm2-135m-instruct" / "sentiment" / "ablation")  # fmt: skip


def _prompts(model, info: ih.PromptInfo, digest: str) -> ih.PromptSet:
    # the task file the cell was made from (the built-in data has grown since; issue 18)
    task = load_v1_task(info.task, digest=digest)
    return ih.build_prompts(model, task, info.k, info.n, info.seed, perturbation=info.perturbation)


def _same_rows(got: pd.DataFrame, saved: pd.DataFrame, what: str) -> None:
    assert list(got["condition"]) == list(saved["condition"]), what
    assert list(got["metric"]) == list(saved["metric"]), what
    for column in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(got[column].to_numpy(float), saved[column].to_numpy(float),
                                   rtol=0, atol=1e-6, equal_nan=True, err_msg=f"{what} {column}")  # fmt: skip


@pytest.mark.slow
def test_saved_ablation_cell_recomputes_from_its_settings(smol):
    torch.set_num_threads(2)
    saved = ExperimentResult.load(CELL)
    s = saved.settings
    assert s.model == smol.cfg.model_name and not s.interventions
    digest = saved.request["task_digest"]
    prompts = _prompts(smol, s.prompts, digest)
    assert prompts.task_digest == digest
    assert prompts.info() == s.prompts
    got = _recompute_ablation(smol, saved, prompts)
    # the saved cell predates conditions-as-data; everything else is the same
    assert got.settings.replace(conditions=(), intervention_specs=()) == s
    assert {c["condition"] for c in got.settings.conditions} >= {"TR", "TL"}
    _same_rows(got.table, saved.table, "table")
    _same_rows(got.tables["random_sets"], saved.tables["random_sets"], "random_sets")
    assert list(got.tables["random_sets"]["heads"]) == list(saved.tables["random_sets"]["heads"])


# ---- H2 (issue 19): one results-page cell recomputed on a TransformerBridge

FIND_CELL = CELL.parent / "find_task_heads"
#: The bridge's numbers must match the saved (HookedTransformer) cell to this, absolute.
BRIDGE_ATOL = 1e-4


def _close_table(got: pd.DataFrame, saved: pd.DataFrame, what: str) -> None:
    """Same columns and rows; text columns equal; every number within BRIDGE_ATOL."""
    assert list(got.columns) == list(saved.columns), what
    assert len(got) == len(saved), what
    for column in saved.columns:
        want = saved[column]
        if pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want):
            np.testing.assert_allclose(got[column].to_numpy(float), want.to_numpy(float),
                                       rtol=0, atol=BRIDGE_ATOL, equal_nan=True,
                                       err_msg=f"{what} {column}")  # fmt: skip
        else:
            assert list(got[column].fillna("")) == list(want.fillna("")), f"{what} {column}"


@pytest.mark.slow
def test_saved_find_task_heads_cell_recomputes_on_the_bridge(smol_bridge):
    """The sentiment find_task_heads cell of the results page (made on HookedTransformer)
    recomputes on the bridge from its saved settings: every number of its table, its
    ``sets`` and ``per_prompt`` tables and its TR/TL maps within 1e-4 (issue 19)."""
    torch.set_num_threads(1)
    assert ih.backends.is_bridge(smol_bridge)
    saved = ExperimentResult.load(FIND_CELL)
    s = saved.settings
    assert s.model == smol_bridge.cfg.model_name and not s.interventions
    digest = saved.request["task_digest"]
    prompts = _prompts(smol_bridge, s.prompts, digest)
    assert prompts.info() == s.prompts
    got = trtl.find_task_heads(
        smol_bridge,
        prompts,
        s.top_k,
        normalize=s.normalize,
        apply_ln=s.apply_ln,
        n_boot=s.n_boot,
        seed=s.seed,
        progress=False,
    )
    assert got.settings == s
    _close_table(got.table, saved.table, "table")
    for name in ("sets", "per_prompt"):
        _close_table(got.tables[name], saved.tables[name], name)
    assert set(got.maps) == set(saved.maps)
    for name, saved_map in saved.maps.items():
        np.testing.assert_allclose(got.maps[name].scores.numpy(), saved_map.scores.numpy(),
                                   rtol=0, atol=BRIDGE_ATOL, equal_nan=True,
                                   err_msg=f"map {name}")  # fmt: skip


@pytest.mark.slow
def test_saved_ablation_cell_recomputes_on_the_bridge(smol_bridge):
    """The sentiment ablation cell (mean ablation at all positions, TR/TL and 5 random sets
    each, made on HookedTransformer) on the bridge: every number within 1e-4 (measured
    2.8e-6; ~140 s on one thread), the same random head sets."""
    torch.set_num_threads(1)
    saved = ExperimentResult.load(CELL)
    s = saved.settings
    digest = saved.request["task_digest"]
    prompts = _prompts(smol_bridge, s.prompts, digest)
    got = _recompute_ablation(smol_bridge, saved, prompts)
    assert got.settings.replace(conditions=(), intervention_specs=()) == s
    _close_table(got.table, saved.table, "table")
    _close_table(got.tables["random_sets"], saved.tables["random_sets"], "random_sets")


def _recompute_ablation(model, saved: ExperimentResult, prompts):
    """The saved ablation cell's experiment run again on ``model`` from its settings."""
    s, digest = saved.settings, saved.request["task_digest"]
    return trtl.ablation_experiment(
        model,
        prompts,
        trtl.head_sets(saved),
        n_random=s.n_random,
        layer_matched=s.layer_matched,
        random_like=s.random_like,
        mode=s.mode,
        positions=s.positions,
        reference=_prompts(model, s.means, digest) if s.means is not None else None,
        seed=s.seed,
        n_boot=s.n_boot,
        progress=False,
    )
