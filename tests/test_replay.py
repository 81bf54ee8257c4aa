"""A saved condition replays from its JSON spec to the same numbers (experiments.replay)."""

from __future__ import annotations

import json

import pytest

import icl_heads as ih
from icl_heads.experiments import trtl
from icl_heads.experiments.replay import prompts_from_info, replay
from icl_heads.results import ExperimentResult


def _saved_levels(result: ExperimentResult, condition: str):
    table = result.table
    if condition not in set(table["condition"]):
        table = result.tables["random_sets"]
    rows = table[(table["condition"] == condition) & (table["kind"] == "level")]
    return rows.set_index("metric")[["value", "ci_low", "ci_high", "n"]]


@pytest.mark.parametrize(
    ("mode", "positions"), [("mean", "all"), ("zero", "query"), ("mean", [-2, -1])]
)
def test_a_saved_ablation_condition_replays_from_its_spec_to_the_same_numbers(
    tiny_llama, tiny_prompts, tmp_path, mode, positions
):
    result = trtl.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"A": [(1, 0), (1, 2)], "B": [(0, 3)]},
        n_random=2,
        mode=mode,
        positions=positions,
        n_boot=50,
        progress=False,
    )
    result.save(tmp_path / "cell")
    saved = ExperimentResult.load(tmp_path / "cell")
    records = {c["condition"]: c for c in saved.settings.to_dict()["conditions"]}
    assert set(records) == {"A", "B", "random_A#0", "random_A#1", "random_B#0", "random_B#1"}
    json.dumps(saved.settings.to_dict())  # the specs are plain JSON
    for condition in ("A", "B", "random_A#1"):
        again = replay(saved, tiny_llama, condition).set_index("metric")
        want = _saved_levels(saved, condition)
        for metric in want.index:
            for column in ("value", "ci_low", "ci_high"):
                assert again.loc[metric, column] == pytest.approx(
                    want.loc[metric, column], abs=1e-9, nan_ok=True
                )


def test_a_replayed_condition_with_background_interventions_rebuilds_them_too(
    tiny_llama, tiny_prompts
):
    background = ih.ablate(tiny_llama, [(0, 0)], "zero")
    result = trtl.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"A": [(1, 1)]},
        n_random=1,
        n_boot=20,
        interventions=[background],
        progress=False,
    )
    again = replay(result, tiny_llama, "A").set_index("metric")
    assert again.loc["accuracy", "value"] == pytest.approx(result.value("A", "accuracy"))


def test_replay_names_what_is_missing(tiny_llama, tiny_prompts):
    result = trtl.ablation_experiment(
        tiny_llama, tiny_prompts, {"A": [(1, 1)]}, n_random=1, n_boot=20, progress=False
    )
    with pytest.raises(ValueError, match=r"No condition 'C'.*'A'"):
        replay(result, tiny_llama, "C")
    old = ExperimentResult(
        result.name, result.table, result.settings.replace(conditions=()), tables=result.tables
    )
    with pytest.raises(ValueError, match="records no conditions"):
        replay(old, tiny_llama, "A")
    with pytest.raises(TypeError, match="ExperimentResult"):
        replay(result.table, tiny_llama, "A")


def test_prompts_rebuild_from_their_recorded_identity(tiny_llama, tiny_prompts):
    again = prompts_from_info(tiny_llama, tiny_prompts.info())
    assert again.texts == tiny_prompts.texts and again.info() == tiny_prompts.info()
    with pytest.raises(ValueError, match="differ"):
        prompts_from_info(tiny_llama, tiny_prompts.info().replace(tokenizer="0123456789abcdef"))


def test_prompts_of_a_heldout_split_are_not_rebuilt_as_ordinary_ones(tiny_llama, sentiment_task):
    """Same recipe (task, k, n, seed), other queries: the recorded digest tells them apart,
    so a replay never runs quietly on the wrong prompts."""
    from icl_heads.experiments.splits import heldout_split, split_prompts

    split = heldout_split(sentiment_task, 0.5, 0)
    held = split_prompts(tiny_llama, sentiment_task, 2, 6, 0, split=split, part="evaluation")
    with pytest.raises(ValueError, match="prompts_digest"):
        prompts_from_info(tiny_llama, held.info(), task=sentiment_task)


def test_a_cell_without_prompt_digests_is_checked_against_its_requests_task_digest(
    tiny_llama, tiny_prompts
):
    # cells saved before prompt sets recorded their task's digest (the first saved
    # results) carry it only in the grid's request: replaying one on an edited task must be
    # refused, not run on other prompts
    result = trtl.ablation_experiment(
        tiny_llama, tiny_prompts, {"A": [(1, 0)]}, n_random=1, n_boot=20, progress=False
    )
    info = result.settings.prompts
    old = info.replace(task_digest=None, prompts_digest=None)
    settings = result.settings.replace(prompts=old)
    assert settings.to_dict()["prompts"].get("task_digest") is None
    task = tiny_prompts.info().task
    for digest, refused in (("0123456789abcdef", True), (info.task_digest, False)):
        request = {"task": task, "task_digest": digest}
        cell = ExperimentResult(result.name, result.table, settings, tables=result.tables,
                                request=request)  # fmt: skip
        if refused:
            with pytest.raises(ValueError, match="task_digest"):
                replay(cell, tiny_llama, "A")
        else:
            assert len(replay(cell, tiny_llama, "A"))
