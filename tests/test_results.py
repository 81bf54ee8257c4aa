"""ExperimentResult: the table contract, reading rows, saving and loading, figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.results import ExperimentResult, make_table, per_head_maps, table_row
from icl_heads.settings import PromptInfo


@pytest.fixture
def result():
    info = PromptInfo(task="sentiment", k=4, n=32, seed=0, perturbation="gold", model="m")
    table = make_table(
        [
            table_row("baseline", "accuracy", 0.8, 0.7, 0.9, 32),
            table_row("TR", "accuracy", 0.5, 0.4, 0.6, 32),
            table_row("TR", "logit_diff", -1.0, -1.5, -0.5, 32),
        ]
    )
    maps = {
        "TR": ih.HeadScores(
            torch.arange(6.0).reshape(2, 3),
            name="tr_score",
            settings=info,
            per_prompt=torch.ones(4, 2, 3),
            top_k=2,
        )
    }
    heads = pd.DataFrame({"layer": [0, 1], "head": [2, 0], "effect": [0.1, -0.2]})
    return ExperimentResult("ablation", table, info, maps=maps, tables={"heads": heads})


def test_rows_are_read_by_condition_and_metric(result):
    assert result.value("TR", "accuracy") == 0.5
    assert result.conditions == ["baseline", "TR"] and result.metrics == ["accuracy", "logit_diff"]
    assert len(result.select(condition=["TR", "baseline"], metric="accuracy")) == 2
    with pytest.raises(ValueError, match="0 rows"):
        result.value("TL", "accuracy")
    with pytest.raises(ValueError, match="No column 'layer'"):
        result.select(layer=3)


def test_save_and_load_round_trip_everything(result, tmp_path):
    loaded = ExperimentResult.load(result.save(tmp_path / "r"))
    pd.testing.assert_frame_equal(loaded.table, result.table)
    assert loaded.settings == result.settings and loaded.name == "ablation"
    assert torch.equal(loaded.maps["TR"].scores, result.maps["TR"].scores)
    assert loaded.maps["TR"].top() == result.maps["TR"].top()
    pd.testing.assert_frame_equal(loaded.tables["heads"], result.tables["heads"])
    header = json.loads((tmp_path / "r" / "result.json").read_text())
    assert header["settings"]["kind"] == "PromptInfo"


def test_the_table_contract_and_bad_files_give_clear_errors(result, tmp_path):
    with pytest.raises(ValueError, match="ci_low"):
        ExperimentResult(
            "x", pd.DataFrame({"condition": [], "metric": [], "value": []}), result.settings
        )
    with pytest.raises(TypeError, match="Settings"):
        ExperimentResult("x", result.table, {"model": "m"})
    with pytest.raises(FileNotFoundError, match="result.json"):
        ExperimentResult.load(tmp_path)
    (tmp_path / "result.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="not written by"):
        ExperimentResult.load(tmp_path)


def test_plot_draws_bars_or_curves_with_intervals(result):
    fig = result.plot()
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert list(fig.data[1].error_y.array) == pytest.approx([0.1, 0.5])
    rows = [
        table_row(c, "separability", v, v - 0.1, v + 0.1, 10, layer=layer)
        for c in ("clean", "ablated")
        for layer, v in enumerate([0.5, 0.7, 0.9])
    ]
    curves = ExperimentResult("layer_geometry", make_table(rows), result.settings).plot()
    lines = [t for t in curves.data if t.mode == "lines+markers"]
    assert len(lines) == 2 and list(lines[0].x) == [0, 1, 2]


def test_per_head_maps_read_full_per_head_tables_only():
    positive = ih.HeadScores(torch.arange(12.0).reshape(4, 3) / 11, name="induction_score")
    frame = positive.to_frame().rename(columns={"induction_score": "effect"})
    sets = pd.DataFrame({"layer": [0], "head": [1], "tr_score": [3.0]})
    info = PromptInfo(task="sentiment", k=4, n=8, seed=0, perturbation="gold", model="tiny")
    result = ExperimentResult(
        "x", make_table([]), info, maps={"IH": positive}, tables={"heads": frame, "sets": sets}
    )
    maps = per_head_maps(result)
    assert set(maps) == {"IH", "effect"}
    assert maps["IH"] is positive
    assert torch.equal(maps["effect"].scores, positive.scores)
    assert maps["effect"].name == "effect" and maps["effect"].settings is None
