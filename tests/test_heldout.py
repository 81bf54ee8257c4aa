"""Held-out selection (issue 18 item 2) and the ablation sensitivity mode (item 1): disjoint
query splits, their record in the settings, the held-out grid, sensitivity rows beside
unchanged main rows, and default grid requests unchanged. Tiny models throughout."""

from __future__ import annotations

import pandas as pd
import pytest

import icl_heads as ih
from icl_heads.experiments import trtl
from icl_heads.experiments.splits import TaskSplit, heldout_split, split_prompts
from icl_heads.experiments.trtl import reproduce
from icl_heads.provenance import same_prompts, same_task
from icl_heads.results import ExperimentResult
from icl_heads.settings import Settings
from icl_heads.tasks import input_key

N_BOOT = 50


@pytest.fixture(scope="module")
def split(sentiment_task):
    return heldout_split(sentiment_task, 0.5, seed=0)


@pytest.fixture(scope="module")
def parts(tiny_llama, sentiment_task, split):
    return {
        part: split_prompts(tiny_llama, sentiment_task, 3, 12, 0, split=split, part=part)
        for part in ("selection", "evaluation")
    }


def test_split_is_disjoint_stratified_and_seeded(sentiment_task, split):
    sel, ev = set(split.selection), set(split.evaluation)
    assert not sel & ev and sel | ev == set(range(len(sentiment_task.examples)))
    keys = {p: {input_key(sentiment_task.examples[i][0]) for i in split.part(p)} for p in
            ("selection", "evaluation")}  # fmt: skip
    assert not keys["selection"] & keys["evaluation"]
    for label in sentiment_task.labels:
        n_sel = sum(sentiment_task.examples[i][1] == label for i in sel)
        n_ev = sum(sentiment_task.examples[i][1] == label for i in ev)
        assert n_sel >= 1 and n_ev >= 1 and abs(n_sel - n_ev) <= 1
    assert heldout_split(sentiment_task, 0.5, seed=0) == split
    assert heldout_split(sentiment_task, 0.5, seed=1).selection != split.selection
    quarter = heldout_split(sentiment_task, 0.25, seed=0)
    assert len(quarter.selection) < len(quarter.evaluation)
    assert Settings.from_dict(split.to_dict()) == split  # recordable as settings
    table = split.table()
    assert list(table.columns) == ["example", "part"] and len(table) == len(sel | ev)


def test_split_prompts_ask_only_their_parts_queries(tiny_llama, sentiment_task, split, parts):
    sel, ev = parts["selection"], parts["evaluation"]
    assert set(sel.query_examples) <= set(split.selection)
    assert set(ev.query_examples) <= set(split.evaluation)
    assert not set(sel.query_examples) & set(ev.query_examples)
    for p in (sel, ev):
        assert len(p) == 12 and p.k == 3
        assert len(set(p.query_examples)) == 12  # distinct queries while the part has them
        counts = p.gold.bincount(minlength=p.n_labels)
        assert int(counts.max() - counts.min()) <= 1  # balanced labels
        # each row is a row build_prompts made: its text ends with its query
        for q, text in zip(p.query_examples, p.texts):
            assert text.endswith(sentiment_task.render_query(sentiment_task.examples[q][0]))
    # recorded apart: same task, same recipe, different contents
    a, b = sel.info(), ev.info()
    assert same_task(a, b) and not same_prompts(a, b)
    assert a.prompts_digest != b.prompts_digest
    # deterministic, and the steering targets keep to the evaluation part
    again = split_prompts(tiny_llama, sentiment_task, 3, 12, 0, split=split, part="evaluation")
    assert again.info().prompts_digest == b.prompts_digest
    zero = split_prompts(
        tiny_llama, sentiment_task, 3, 12, 1, "zero_shot", split=split, part="evaluation"
    )
    assert zero.k == 0 and set(zero.query_examples) <= set(split.evaluation)
    # more prompts than the part has queries: repeats, still only the part's
    many = split_prompts(tiny_llama, sentiment_task, 3, 3 * len(split.selection), 0,
                         split=split, part="selection")  # fmt: skip
    assert set(many.query_examples) == set(split.selection)


def test_selection_heads_and_means_are_accepted_on_the_evaluation_prompts(tiny_llama, parts):
    sel, ev = parts["selection"], parts["evaluation"]
    found = trtl.find_task_heads(tiny_llama, sel, n_boot=N_BOOT, progress=False)
    means = ih.activation_means(tiny_llama, sel, "z", positions="all", progress=False)
    res = trtl.ablation_experiment(
        tiny_llama, ev, trtl.head_sets(found), n_random=1, means=means, n_boot=N_BOOT,
        progress=False,
    )  # fmt: skip
    s = res.settings
    assert s.prompts.prompts_digest == ev.info().prompts_digest
    assert s.heads_from.prompts_digest == sel.info().prompts_digest
    assert s.means.prompts_digest == sel.info().prompts_digest


def test_sensitivity_rows_are_added_and_the_main_rows_are_unchanged(tiny_llama, tiny_prompts):
    heads = {"TR": [(1, 0)], "TL": [(1, 2)]}
    kw = dict(n_random=2, n_boot=N_BOOT, progress=False)
    main = trtl.ablation_experiment(tiny_llama, tiny_prompts, heads, **kw)
    both = trtl.ablation_experiment(tiny_llama, tiny_prompts, heads, sensitivity_mode="zero", **kw)
    zero = trtl.ablation_experiment(tiny_llama, tiny_prompts, heads, mode="zero", **kw)
    assert main.settings.sensitivity_mode is None and both.settings.sensitivity_mode == "zero"
    n = len(main.table)
    pd.testing.assert_frame_equal(both.table.iloc[:n].reset_index(drop=True), main.table)
    extra = both.table.iloc[n:]
    assert "baseline" not in set(extra["condition"])
    for name in ("TR", "TL", "random_TR", "TR - random_TR", "TR - TL"):
        mine = zero.table[zero.table["condition"] == name].reset_index(drop=True)
        name = name.replace("TR", "TR (zero)").replace("TL", "TL (zero)")
        got = extra[extra["condition"] == name].reset_index(drop=True)
        assert len(got) == len(mine) > 0, name
        pd.testing.assert_frame_equal(
            got.drop(columns="condition"), mine.drop(columns="condition"), obj=name
        )
    conditions = {c["condition"] for c in both.settings.conditions}
    assert {"TR", "TR (zero)", "random_TR (zero)#0"} <= conditions
    modes = {c["condition"]: c["spec"]["mode"] for c in both.settings.conditions}
    assert modes["TR"] == "mean" and modes["TR (zero)"] == "zero"
    assert set(both.tables["random_sets"]["set"]) == {"TR", "TL", "TR (zero)", "TL (zero)"}


def test_default_grid_requests_are_unchanged(tiny_llama, sentiment_task):
    sizes = dict(k=4, n=12, seed=0, n_random=2, n_boot=200)
    requests = reproduce.cell_requests(tiny_llama, sentiment_task, trtl.QUICK, **sizes)
    common = {"model", "task", "task_digest", "experiment", "k", "n", "seed", "n_boot"}
    expected = {
        "find_task_heads": common,
        "ablation": common | {"n_random"},
        "perturbation": common,
        "correlation": common,
        "steering_zero_shot": common | {"n_random", "alphas"},
        "reconciliation": common | {"n_sequences"},
    }
    assert {name: set(r) for name, r in requests.items()} == expected
    split = heldout_split(sentiment_task)
    held = reproduce.cell_requests(
        tiny_llama, sentiment_task, trtl.QUICK, **sizes, split=split, tl_normalize="norm",
        sensitivity_mode="zero",
    )  # fmt: skip
    assert "heldout" not in held["perturbation"] and held["ablation"]["heldout"] == {
        "fraction": 0.5,
        "seed": 0,
    }
    assert all(r["tl_normalize"] == "norm" for r in held.values())
    assert held["ablation"]["sensitivity_mode"] == "zero"


def test_heldout_grid_selects_on_one_part_and_measures_on_the_other(
    tiny_llama, sentiment_task, tmp_path
):
    cells = trtl.reproduce_trtl(
        tiny_llama, ["sentiment"], tmp_path, quick=True, progress=False, n=8, n_boot=N_BOOT,
        design=trtl.LEGACY, heldout=True, tl_normalize="norm", sensitivity_mode="zero",
    )  # fmt: skip
    done = {e: ExperimentResult.load(p) for e, p in zip(cells["experiment"], cells["path"])}
    split = heldout_split(sentiment_task, 0.5, 0)
    sel = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, split=split, part="selection")
    ev = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, split=split, part="evaluation")
    found = done["find_task_heads"]
    assert found.settings.prompts.prompts_digest == sel.info().prompts_digest
    assert found.settings.normalize == "norm" and found.settings.floor == 0.01
    assert TaskSplit is type(split) and set(found.tables["split"]["part"]) == {
        "selection",
        "evaluation",
    }
    ablation = done["ablation"].settings
    assert ablation.prompts.prompts_digest == ev.info().prompts_digest
    assert ablation.heads_from.prompts_digest == sel.info().prompts_digest
    assert ablation.means.prompts_digest == sel.info().prompts_digest
    assert "TR (zero)" in set(done["ablation"].table["condition"])
    steering = done["steering_zero_shot"].settings
    assert steering.source.prompts_digest == sel.info().prompts_digest
    target = split_prompts(tiny_llama, sentiment_task, 4, 8, 1, "zero_shot", split=split,
                           part="evaluation")  # fmt: skip
    assert steering.target.prompts_digest == target.info().prompts_digest
    assert done["correlation"].settings.prompts.prompts_digest == ev.info().prompts_digest
    # perturbation has no selection step: the usual prompts, with the chosen TL score
    gold = ih.build_prompts(tiny_llama, sentiment_task, 4, 8, 0)
    assert done["perturbation"].settings.prompts.prompts_digest == gold.info().prompts_digest
    assert done["perturbation"].settings.normalize == "norm"
    assert all(r.request["tl_normalize"] == "norm" for r in done.values())
    # a grid without held-out selection in the same folder is refused (stale), never mixed in
    with pytest.raises(ValueError, match="heldout"):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], tmp_path, quick=True, progress=False,
                            n=8, n_boot=N_BOOT, design=trtl.LEGACY)  # fmt: skip
