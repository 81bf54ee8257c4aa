"""The TR/TL grid's design of issue 18 (``trtl.MAIN``, the grid default): the normalised TL
score with the raw margin beside it, held-out selection, both steering protocols over the
alpha grid, the other ablation mode and the continuous metrics as sensitivity rows, one
grid per prompt seed; every cell records it, is resumable, replays and matches a
standalone call. Tiny models only."""

from __future__ import annotations

import inspect

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.experiments import kit, trtl
from icl_heads.experiments.replay import replay
from icl_heads.experiments.splits import heldout_split, split_prompts
from icl_heads.experiments.trtl import presets, reproduce
from icl_heads.metrics import CONTINUOUS, continuous
from icl_heads.pages.trtl import write_trtl_page
from icl_heads.results import ExperimentResult

N_BOOT = 50
SIZES = dict(quick=True, n=8, n_boot=N_BOOT, progress=False)


@pytest.fixture(scope="module")
def grid(tiny_llama, tmp_path_factory):
    """A two-seed grid with the default design: (out_dir, cell table)."""
    out = tmp_path_factory.mktemp("main-grid")
    cells = trtl.reproduce_trtl(tiny_llama, ["sentiment"], out, n_seeds=2, **SIZES)
    return out, cells


def _cells(out, seed: int, model) -> dict[str, ExperimentResult]:
    return kit.load_cells(out / f"seed{seed}")[model.cfg.model_name]["sentiment"]


def test_the_grid_default_is_the_issue_18_design():
    signature = inspect.signature(trtl.reproduce_trtl)
    assert signature.parameters["design"].default is None  # None: MAIN
    assert presets.check_design(None) == trtl.MAIN
    assert trtl.MAIN.tl_normalize == "tr" and trtl.MAIN.tl_floor == 0.01
    assert trtl.MAIN.tl_sensitivity == "none"
    assert trtl.MAIN.heldout and trtl.MAIN.split_fraction == 0.5
    assert trtl.MAIN.steering_protocols == ("query_matched", "task_mean")
    assert trtl.MAIN.sensitivity_mode == "zero" and trtl.MAIN.continuous
    # the full preset: n = 256 per cell, 3 prompt seeds, the alpha grid of issue 18
    assert trtl.FULL.n == 256 and trtl.FULL.n_seeds == 3
    assert trtl.FULL.alphas == (0, 0.5, 1, 2, 4, 8)
    assert trtl.QUICK.n_seeds == 1
    assert trtl.FIRST.n == 64 and trtl.FIRST.alphas == (0, 0.5, 1, 2, 4)
    # the library functions keep their defaults (saved results replay as before)
    assert inspect.signature(trtl.find_task_heads).parameters["normalize"].default == "none"
    assert inspect.signature(trtl.steering_experiment).parameters["protocol"].default == (
        "task_mean"
    )
    ablation = inspect.signature(trtl.ablation_experiment).parameters
    assert ablation["sensitivity_mode"].default is None and ablation["continuous"].default is False


def test_one_grid_per_seed_each_in_the_one_seed_layout(grid, tiny_llama):
    out, cells = grid
    assert sorted(set(cells["seed"])) == [0, 1] and set(cells["status"]) == {"computed"}
    names = [name for name, _, _ in presets.steering_cells(trtl.QUICK, trtl.MAIN)]
    assert names == ["steering_zero_shot", "steering_zero_shot_task_mean"]
    want = ["find_task_heads", "ablation", "perturbation", "correlation", *names, "reconciliation"]
    for seed in (0, 1):
        assert list(cells[cells["seed"] == seed]["experiment"]) == want
        done = _cells(out, seed, tiny_llama)
        assert sorted(done) == sorted(want)
        for name, result in done.items():
            assert result.request["seed"] == seed, name
            if name != "perturbation":
                assert result.request["heldout"] == {"fraction": 0.5, "seed": seed}, name
            assert result.request["tl_normalize"] == "tr", name
    assert not list(out.glob("*/sentiment"))  # no flat cells beside the seed folders
    # resumable per cell: a second run loads every cell
    again = trtl.reproduce_trtl(tiny_llama, ["sentiment"], out, n_seeds=2, **SIZES)
    assert set(again["status"]) == {"loaded"}


def test_each_cell_records_the_design(grid, tiny_llama, sentiment_task):
    out, _ = grid
    done = _cells(out, 0, tiny_llama)
    split = heldout_split(sentiment_task, 0.5, 0)
    sel = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, split=split, part="selection")
    ev = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, split=split, part="evaluation")
    found = done["find_task_heads"]
    assert found.settings.normalize == "tr" and found.settings.floor == 0.01
    assert found.settings.sensitivity_normalize == "none"
    assert found.settings.prompts.prompts_digest == sel.info().prompts_digest
    assert {"TR", "TL", "TL_raw"} <= set(found.maps)
    raw = found.tables["tl_sensitivity"]
    assert list(raw.columns) == [
        "set", "rank", "layer", "head", "label", "tl_score", "main_tl_score", "in_main"
    ]  # fmt: skip
    assert set(raw["set"]) == {"TL_raw"} and len(raw) == len(trtl.head_sets(found)["TL"])
    overlap = found.value("TL vs TL_raw", "overlap")
    assert overlap == raw["in_main"].mean()
    ablation = done["ablation"]
    s = ablation.settings
    assert s.mode == "mean" and s.sensitivity_mode == "zero" and s.continuous
    assert s.prompts.prompts_digest == ev.info().prompts_digest
    assert s.means.prompts_digest == sel.info().prompts_digest
    conditions = set(ablation.table["condition"])
    assert {"TR", "TL", "TL_raw", "TR (zero)", "TL_raw (zero)", "random_TL (zero)"} <= conditions
    assert "random_TL_raw" not in conditions  # the sensitivity set has no random sets
    assert set(CONTINUOUS) <= set(ablation.table["metric"])
    qm_cell, tm_cell = done["steering_zero_shot"], done["steering_zero_shot_task_mean"]
    assert qm_cell.settings.protocol == "query_matched" and tm_cell.settings.protocol == "task_mean"
    assert qm_cell.settings.source.prompts_digest == ev.info().prompts_digest
    twins = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, "zero_shot", split=split,
                          part="evaluation")  # fmt: skip
    assert qm_cell.settings.target.prompts_digest == twins.info().prompts_digest
    assert tm_cell.settings.source.prompts_digest == sel.info().prompts_digest
    later = split_prompts(tiny_llama, sentiment_task, 4, 8, 1, "zero_shot", split=split,
                          part="evaluation")  # fmt: skip
    assert tm_cell.settings.target.prompts_digest == later.info().prompts_digest
    for cell in (qm_cell, tm_cell):  # overall accuracy beside in-space accuracy, every alpha
        levels = cell.table[cell.table["kind"] == "level"]
        assert {"accuracy", "in_space_accuracy", *CONTINUOUS} <= set(levels["metric"])
        assert sorted(set(levels["alpha"])) == sorted(trtl.QUICK.alphas)
    assert qm_cell.request["protocol"] == "query_matched" and "protocol" not in tm_cell.request


def test_the_grid_cells_are_the_numbers_of_standalone_calls(grid, tiny_llama, sentiment_task):
    out, _ = grid
    done = _cells(out, 0, tiny_llama)
    split = heldout_split(sentiment_task, 0.5, 0)
    sel = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, split=split, part="selection")
    ev = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, split=split, part="evaluation")
    found = trtl.find_task_heads(tiny_llama, sel, n_boot=N_BOOT, normalize="tr",
                                 sensitivity_normalize="none", progress=False)  # fmt: skip
    saved = ExperimentResult.load(found.save(out / "alone" / "find"))
    pd.testing.assert_frame_equal(done["find_task_heads"].table, saved.table)
    ablation = trtl.ablation_experiment(
        tiny_llama,
        ev,
        trtl.head_sets(found, sensitivity=True),
        random_like=("TR", "TL"),
        n_random=2,
        reference=sel,
        sensitivity_mode="zero",
        continuous=True,
        n_boot=N_BOOT,
        progress=False,
    )
    ablation = ExperimentResult.load(ablation.save(out / "alone" / "ablation"))
    pd.testing.assert_frame_equal(done["ablation"].table, ablation.table)
    twins = split_prompts(tiny_llama, sentiment_task, 4, 8, 0, "zero_shot", split=split,
                          part="evaluation")  # fmt: skip
    steer = trtl.steering_experiment(tiny_llama, ev, twins, trtl.head_sets(found),
                                     trtl.QUICK.alphas, n_random=2, n_boot=N_BOOT,
                                     batch_size=64, progress=False,
                                     protocol="query_matched")  # fmt: skip
    steer = ExperimentResult.load(steer.save(out / "alone" / "steering"))
    pd.testing.assert_frame_equal(done["steering_zero_shot"].table, steer.table)


def test_no_intervention_reproduces_the_baseline_in_the_grid_cells(grid, tiny_llama):
    out, _ = grid
    done = _cells(out, 0, tiny_llama)
    for name in ("steering_zero_shot", "steering_zero_shot_task_mean"):  # alpha = 0
        t = done[name].table
        base = t[(t["condition"] == "baseline") & (t["metric"] != "chance")]
        cols = ["metric", "value", "ci_low", "ci_high", "n"]
        for condition in ("TR", "TL", "random_TR", "random_TL"):
            rows = t[(t["condition"] == condition) & (t["alpha"] == 0) & (t["kind"] == "level")]
            pd.testing.assert_frame_equal(
                rows[cols].reset_index(drop=True), base[cols].reset_index(drop=True), obj=name
            )


def test_a_saved_query_matched_cell_replays_on_its_heldout_prompts(grid, tiny_llama):
    out, _ = grid
    saved = _cells(out, 0, tiny_llama)["steering_zero_shot"]
    records = saved.settings.to_dict()["conditions"]
    assert {r["spec"]["kind"] for r in records} == {"query_matched_steer"}
    for condition, alpha in (("TL", 1.0), ("random_TR#1", 4.0)):
        again = replay(saved, tiny_llama, condition, alpha=alpha).set_index("metric")
        table = saved.table if "#" not in condition else saved.tables["random_sets"]
        want = table[
            (table["condition"] == condition)
            & (table["alpha"] == alpha)
            & (table["kind"] == "level")
        ].set_index("metric")
        assert list(again.index) == ["accuracy", "label_space_rate", "in_space_accuracy",
                                     "logit_diff", *CONTINUOUS]  # fmt: skip
        for metric in again.index:
            for column in ("value", "ci_low", "ci_high"):
                assert again.loc[metric, column] == pytest.approx(
                    want.loc[metric, column], abs=1e-5, nan_ok=True
                ), (condition, metric, column)


def test_a_saved_continuous_ablation_cell_replays_with_its_continuous_rows(grid, tiny_llama):
    out, _ = grid
    saved = _cells(out, 1, tiny_llama)["ablation"]
    for condition in ("TL_raw", "TR (zero)"):
        again = replay(saved, tiny_llama, condition).set_index("metric")
        t = saved.table
        want = t[(t["condition"] == condition) & (t["kind"] == "level")].set_index("metric")
        assert set(CONTINUOUS) <= set(again.index)
        for metric in again.index:
            assert again.loc[metric, "value"] == pytest.approx(
                want.loc[metric, "value"], abs=1e-6, nan_ok=True
            )


def test_the_results_page_and_verdicts_read_a_seed_of_the_grid(grid, tiny_llama, tmp_path):
    out, _ = grid
    page = write_trtl_page(out / "seed0", tmp_path / "page.md", tmp_path / "figures")
    text = page.read_text()
    assert "## Verdicts" in text and "steering_zero_shot_task_mean" in text
    verdicts = trtl.trtl_verdicts(out / "seed0")
    assert set(verdicts["verdict"]) <= set(trtl.VERDICTS)


def test_the_results_page_of_the_whole_grid_pools_its_seeds(grid, tiny_llama, tmp_path):
    out, _ = grid
    page = write_trtl_page(out, tmp_path / "page.md", tmp_path / "figures")
    text = page.read_text()
    assert "**Prompt seeds: 0, 1.**" in text and "(2 seeds)" in text  # wall time summed
    assert "The experiments' designs changed too" in text  # the cells are of trtl.MAIN
    assert "are not yet in these saved results" not in text
    verdicts = trtl.trtl_verdicts(out)
    per_task = verdicts[verdicts["task"] == "sentiment"]
    assert per_task["detail"].str.contains("pooled over 2 prompt seeds").all()
    # each pooled statistic is the mean of the two seeds' statistics
    results = kit.load_cells(out)[tiny_llama.cfg.model_name]["sentiment"]
    checked = 0
    for claim in trtl.CLAIMS:
        seeds = [trtl.claim_verdict(claim, _cells(out, s, tiny_llama)) for s in (0, 1)]
        for i, test in enumerate(trtl.claim_verdict(claim, results)["tests"]):
            if test.get("seeds") == 2:
                values = [got["tests"][i]["value"] for got in seeds]
                assert test["value"] == pytest.approx(sum(values) / 2)
                checked += 1
    assert checked  # at least one statistic was testable in both seeds


def test_the_raw_margin_set_is_the_raw_tsla_map(tiny_llama, tiny_prompts):
    found = trtl.find_task_heads(tiny_llama, tiny_prompts, normalize="tr",
                                 sensitivity_normalize="none", n_boot=N_BOOT,
                                 progress=False)  # fmt: skip
    plain = trtl.find_task_heads(tiny_llama, tiny_prompts, normalize="tr", n_boot=N_BOOT,
                                 progress=False)  # fmt: skip
    # the main rows and sets are those of a call without the sensitivity analysis
    n = len(plain.table)
    pd.testing.assert_frame_equal(found.table.iloc[:n], plain.table)
    assert trtl.head_sets(found) == trtl.head_sets(plain)
    _, raw = ih.tsla_scores(tiny_llama, tiny_prompts, progress=False)
    assert torch.equal(found.maps["TL_raw"].scores, raw.scores)
    sets = trtl.head_sets(found, sensitivity=True)
    assert list(sets) == ["TR", "TL", "TL_raw"] and sets["TL_raw"] == raw.top()
    assert list(found.table["condition"].iloc[n:]) == ["TL vs TL_raw", "TL vs TL_raw"]


def test_continuous_ablation_rows_leave_the_behaviour_rows_unchanged(tiny_llama, tiny_prompts):
    sets = {"TR": [(1, 0)], "TL": [(0, 2)], "none": []}
    plain = trtl.ablation_experiment(tiny_llama, tiny_prompts, sets, n_random=2,
                                     random_like=("TR", "TL"), n_boot=N_BOOT,
                                     progress=False)  # fmt: skip
    both = trtl.ablation_experiment(tiny_llama, tiny_prompts, sets, n_random=2,
                                    random_like=("TR", "TL"), n_boot=N_BOOT, continuous=True,
                                    progress=False)  # fmt: skip
    new = {*CONTINUOUS, *(f"delta_{m}" for m in CONTINUOUS)}
    kept = both.table[~both.table["metric"].isin(new)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, plain.table)
    assert both.settings.continuous and not plain.settings.continuous
    # no intervention (the empty set) reproduces the baseline exactly, continuous rows too
    t = both.table
    cols = ["metric", "value", "ci_low", "ci_high", "n"]
    base = t[(t["condition"] == "baseline") & (t["metric"] != "chance")][cols]
    none = t[(t["condition"] == "none") & (t["kind"] == "level")][cols]
    pd.testing.assert_frame_equal(none.reset_index(drop=True), base.reset_index(drop=True))
    # the baseline's continuous levels are the clean logits' metrics
    with torch.no_grad():
        logits = tiny_llama(tiny_prompts.tokens, attention_mask=tiny_prompts.attention_mask)
    direct = continuous(logits[:, -1].float(), tiny_prompts)
    for metric in CONTINUOUS:
        assert both.value("baseline", metric) == pytest.approx(
            float(direct[metric].mean()), abs=1e-4
        )


def test_legacy_grid_requests_are_those_of_the_first_grid(tiny_llama, sentiment_task):
    sizes = dict(k=4, n=12, seed=0, n_random=2, n_boot=200)
    legacy = reproduce.cell_requests(
        tiny_llama, sentiment_task, trtl.QUICK, **sizes, **presets.request_options(trtl.LEGACY)
    )
    assert legacy == reproduce.cell_requests(tiny_llama, sentiment_task, trtl.QUICK, **sizes)
    main = reproduce.cell_requests(
        tiny_llama,
        sentiment_task,
        trtl.QUICK,
        **sizes,
        split=heldout_split(sentiment_task, 0.5, 0),
        **presets.request_options(trtl.MAIN),
    )
    assert main["find_task_heads"]["tl_sensitivity"] == "none"
    assert main["ablation"]["continuous"] is True
    assert main["steering_zero_shot"]["protocol"] == "query_matched"
    assert "protocol" not in main["steering_zero_shot_task_mean"]
    assert list(main) == ["find_task_heads", "ablation", "perturbation", "correlation",
                          "steering_zero_shot", "steering_zero_shot_task_mean",
                          "reconciliation"]  # fmt: skip


def test_reconciliation_recomputes_loaded_maps_with_their_own_tl_score(tiny_llama, tmp_path):
    """A resumed grid loads compact maps (no per-prompt values): reconciliation recomputes
    them with the TL score they were made with, so its numbers equal a fresh run's (they
    used to be recomputed with the raw margin)."""
    prompts = ih.build_prompts(tiny_llama, ih.load_task("sentiment"), 4, 8, 0)
    found = trtl.find_task_heads(tiny_llama, prompts, normalize="tr", n_boot=N_BOOT,
                                 progress=False)  # fmt: skip
    loaded = ExperimentResult.load(reproduce.compact(found).save(tmp_path / "found"))
    assert loaded.maps["TL"].per_prompt is None
    kwargs = dict(n_sequences=8, n_boot=N_BOOT, progress=False)
    fresh = trtl.reconciliation_experiment(tiny_llama, prompts, tr=found.maps["TR"],
                                           tl=found.maps["TL"], **kwargs)  # fmt: skip
    resumed = trtl.reconciliation_experiment(tiny_llama, prompts, tr=loaded.maps["TR"],
                                             tl=loaded.maps["TL"], **kwargs)  # fmt: skip
    pd.testing.assert_frame_equal(resumed.table, fresh.table)


def test_cli_reproduce_runs_the_main_design_and_refuses_a_task_it_cannot_split(capsys, tmp_path):
    import csv

    from icl_heads import cli

    args = cli.build_parser().parse_args(["reproduce"])
    assert args.design == "main" and args.seeds is None
    assert cli._grid_seeds(args) == [0, 1, 2]  # the full preset: 3 prompt seeds
    quick = cli.build_parser().parse_args(["reproduce", "--quick", "--seed", "4"])
    assert cli._grid_seeds(quick) == [4]
    two = cli.build_parser().parse_args(["reproduce", "--quick", "--seeds", "2"])
    assert [p.name for p in cli._seed_roots(two, tmp_path)] == ["seed0", "seed1"]
    task = tmp_path / "lonely.csv"  # label "no": one input, in three letter cases
    with task.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "label"])
        writer.writerows(
            [(f"good {i}", "yes") for i in range(8)] + [("bad", "no"), ("Bad", "no"), ("BAD", "no")]
        )
    code = cli.main(["reproduce", "--quick", "--n", "8", "--experiments", "trtl", "--tasks",
                     str(task), "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cannot be split for the held-out design" in err, err
    assert "--design legacy" in err and "'no'" in err
