"""ExperimentResult: the table contract, reading rows, saving and loading, figures."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.results import (
    ExperimentResult,
    check_result_dir,
    make_table,
    per_head_maps,
    table_row,
)
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


# --------------------------------------------------------------------------- integrity (issue 22)


def _damaged(result, tmp_path, damage):
    cell = result.save(tmp_path / "r")
    table = cell / "table.csv"
    if damage == "cut mid-row":
        table.write_bytes(table.read_bytes()[:-9])
    elif damage == "emptied":
        table.write_bytes(b"")
    elif damage == "missing":
        table.unlink()
    elif damage == "replaced":
        table.write_text("a,b\n1,2\n")
    elif damage == "extra table cut":
        extra = cell / "tables" / "heads.csv"
        extra.write_bytes(extra.read_bytes()[:-3])
        return extra
    elif damage == "map changed":
        m = cell / "maps" / "TR.json"
        m.write_text(m.read_text().replace("2.0", "2.5", 1))
        return m
    return table


@pytest.mark.parametrize(
    "damage, says",
    [
        ("cut mid-row", "truncated"),
        ("emptied", "emptied"),
        ("missing", "is missing"),
        ("replaced", "bytes|SHA-256"),
        ("extra table cut", "truncated"),
        ("map changed", "SHA-256"),
    ],
)
def test_load_names_the_damaged_file(result, tmp_path, damage, says):
    path = _damaged(result, tmp_path, damage)
    with pytest.raises(ValueError, match=says) as err:
        ExperimentResult.load(tmp_path / "r")
    assert str(path) in str(err.value)


def test_result_json_records_rows_sizes_and_hashes(result, tmp_path):
    header = json.loads((result.save(tmp_path / "r") / "result.json").read_text())
    assert header["format"] == "icl-heads.ExperimentResult/2"
    files = header["files"]
    assert set(files) == {"table.csv", "maps/TR.json", "tables/heads.csv"}
    assert files["table.csv"]["rows"] == 3 and files["tables/heads.csv"]["rows"] == 2
    data = (tmp_path / "r" / "table.csv").read_bytes()
    assert files["table.csv"]["bytes"] == len(data)
    assert files["table.csv"]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("field", ["name", "settings", "maps", "tables", "files"])
def test_load_names_a_missing_field_of_result_json(result, tmp_path, field):
    meta = result.save(tmp_path / "r") / "result.json"
    header = json.loads(meta.read_text())
    del header[field]
    meta.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=f"lacks the field.*'{field}'") as err:
        ExperimentResult.load(tmp_path / "r")
    assert str(meta) in str(err.value)


def _legacy(result, tmp_path):
    """The result as icl-heads wrote it before the integrity record (format /1)."""
    cell = result.save(tmp_path / "old")
    meta = cell / "result.json"
    header = json.loads(meta.read_text())
    header["format"] = "icl-heads.ExperimentResult/1"
    del header["files"], header["request"]
    meta.write_text(json.dumps(header))
    return cell


def test_a_result_saved_before_the_integrity_record_loads_with_a_warning(result, tmp_path):
    cell = _legacy(result, tmp_path)
    with pytest.warns(UserWarning, match="cannot be verified"):
        loaded = ExperimentResult.load(cell)
    pd.testing.assert_frame_equal(loaded.table, result.table)
    (cell / "table.csv").write_bytes((cell / "table.csv").read_bytes()[:-9])  # cut mid-row
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="cut short") as err:
        ExperimentResult.load(cell)
    assert str(cell / "table.csv") in str(err.value)
    (cell / "table.csv").write_text("a,b\n1,2\n")  # another tool's table
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="lacks the columns") as err:
        ExperimentResult.load(cell)
    assert str(cell / "table.csv") in str(err.value)


def test_save_replaces_a_previous_result_whole_and_only_once_complete(result, tmp_path):
    cell = result.save(tmp_path / "r")
    (cell / "report.html").write_text("<html></html>")  # the CLI's report beside it
    smaller = ExperimentResult("ablation", result.table, result.settings)
    smaller.save(cell)
    assert sorted(p.name for p in cell.iterdir()) == ["result.json", "table.csv"]

    class Broken(ih.HeadScores):
        def save(self, path):
            raise RuntimeError("disk full")

    broken = ExperimentResult(
        "ablation", result.table, result.settings, maps={"TR": Broken(torch.zeros(2, 3))}
    )
    with pytest.raises(RuntimeError, match="disk full"):
        broken.save(cell)
    assert sorted(p.name for p in cell.iterdir()) == ["result.json", "table.csv"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    assert ExperimentResult.load(cell).maps == {}
    with pytest.raises(RuntimeError):
        broken.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_save_refuses_a_directory_holding_other_files(result, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files") as err:
        result.save(tmp_path)
    assert str(tmp_path) in str(err.value) and "notes.txt" in str(err.value)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match=r"^--out .*notes\.txt"):  # the CLI's check, up front
        check_result_dir(tmp_path, what="--out")
    assert check_result_dir(tmp_path / "new") == tmp_path / "new"


def test_head_scores_save_is_atomic(tmp_path):
    scores = ih.HeadScores(torch.arange(6.0).reshape(2, 3), name="s")
    path = scores.save(tmp_path / "s.json")
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    assert torch.equal(ih.HeadScores.load(path).scores, scores.scores)
