"""A saved geometry cell of the default model recomputes from its saved settings alone, with
the current code, to the saved numbers (within 1e-6): the results page's numbers still hold
after a refactor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tasks_v1 import load_v1_task

import icl_heads as ih
from icl_heads.experiments.geometry import layer_geometry
from icl_heads.results import ExperimentResult
from icl_heads.settings import model_name

CELL = (
    Path(__file__).resolve().parents[1]
    / "docs"
    / "results"
    / "data"
    / "geometry"
    / "smollm2-135m-instruct"
    / "category"
    / "layer_geometry_k4"
)
TOLERANCE = 1e-6


def _assert_same_numbers(saved: pd.DataFrame, new: pd.DataFrame, what: str) -> None:
    assert len(saved) == len(new), what
    labels = [c for c in ("condition", "metric", "layer") if c in saved.columns]
    for column in labels:
        assert list(saved[column]) == list(new[column]), f"{what}: {column}"
    for column in ("value", "ci_low", "ci_high"):
        a, b = saved[column].to_numpy(float), new[column].to_numpy(float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN pattern of {column}"
        ok = ~np.isnan(a)
        assert np.max(np.abs(a[ok] - b[ok]), initial=0.0) <= TOLERANCE, f"{what}: {column}"


@pytest.mark.slow
def test_a_saved_layer_geometry_cell_recomputes_from_its_settings(smol):
    saved = ExperimentResult.load(CELL)
    s = saved.settings
    assert s.model == model_name(smol)
    info = s.prompts
    # the task file the cell was made from (the built-in data has grown since; issue 18)
    task = load_v1_task(info.task, digest=saved.request["task_digest"])
    prompts = ih.build_prompts(smol, task, k=info.k, n=info.n, seed=info.seed)
    assert prompts.task_digest == saved.request["task_digest"]
    assert prompts.info() == info and tuple(prompts.label_words) == s.labels
    assert not s.interventions
    new = layer_geometry(
        smol,
        prompts,
        list(s.layers),
        folds=s.folds,
        seed=s.seed,
        n_boot=s.n_boot,
        C=s.C,
        progress=False,
    )
    assert new.settings == s
    _assert_same_numbers(saved.table, new.table, "table")
    _assert_same_numbers(saved.tables["onset"], new.tables["onset"], "onset")
    per_saved, per_new = saved.tables["per_prompt"], new.tables["per_prompt"]
    assert list(per_saved.columns) == list(per_new.columns)
    numeric = per_saved.select_dtypes("number").columns
    np.testing.assert_allclose(
        per_new[numeric].to_numpy(float), per_saved[numeric].to_numpy(float), rtol=0, atol=TOLERANCE
    )
