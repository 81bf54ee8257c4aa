"""What the results pages add under their verdicts (icl_heads.pages.evidence): each cell's
wall time (recorded by run_cell beside the request, "not recorded" for old cells), the
power table and the replication table, read from the saved cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from icl_heads.experiments import cells as grid
from icl_heads.experiments import power as pw
from icl_heads.experiments import trtl
from icl_heads.experiments.kit import load_cells
from icl_heads.pages.evidence import (
    ALL_TASKS,
    design_n,
    geometry_power,
    geometry_replication_md,
    power_md,
    trtl_power,
    trtl_replication_md,
    wall_time_md,
)
from icl_heads.prompt_set import PromptInfo
from icl_heads.results import ExperimentResult, make_table, table_row

DATA = Path(__file__).resolve().parents[1] / "docs" / "results" / "data"
REQUEST = {"model": "m", "task": "sentiment", "experiment": "x", "n": 8, "seed": 0}


def _result() -> ExperimentResult:
    info = PromptInfo(task="sentiment", k=4, n=8, seed=0, perturbation="gold", model="m")
    rows = [table_row("baseline", "accuracy", 0.5, 0.4, 0.6, 8)]
    return ExperimentResult("x", make_table(rows), info, tables={"t": pd.DataFrame({"a": [1]})})


# --------------------------------------------------------------------------- wall time


def test_run_cell_records_the_wall_time_beside_the_request(tmp_path):
    cell = tmp_path / "m" / "sentiment" / "x"
    result, status, seconds = grid.run_cell(cell, _result, request=REQUEST)
    assert status == "computed" and result.wall_seconds is not None
    assert 0 <= result.wall_seconds <= seconds
    header = json.loads((cell / "result.json").read_text())
    assert header["wall_seconds"] == result.wall_seconds
    assert header["request"] == REQUEST  # the request is unchanged: no wall time in it
    loaded, status, _ = grid.run_cell(cell, _result, request=dict(REQUEST))
    assert status == "loaded" and loaded.wall_seconds == result.wall_seconds


def test_run_cell_records_the_wall_time_in_a_prepared_copy(tmp_path):
    def prepare(result):
        return ExperimentResult(result.name, result.table, result.settings)

    cell = tmp_path / "c"
    result, _, _ = grid.run_cell(cell, _result, request=REQUEST, prepare=prepare)
    assert ExperimentResult.load(cell).wall_seconds == result.wall_seconds is not None


def test_an_old_cell_without_a_wall_time_loads_verified_and_is_reused(tmp_path):
    cell = tmp_path / "m" / "sentiment" / "x"
    old = _result()
    old.request = REQUEST
    old.save(cell)  # as before: no wall_seconds in result.json
    assert "wall_seconds" not in json.loads((cell / "result.json").read_text())
    calls = []
    loaded, status, _ = grid.run_cell(cell, lambda: calls.append(1) or _result(), request=REQUEST)
    assert status == "loaded" and not calls and loaded.wall_seconds is None
    grid.check_cells([(cell, REQUEST)])  # not stale
    lines = wall_time_md(load_cells(tmp_path))
    assert "| m | sentiment | x | not recorded |" in lines


def test_the_page_shows_recorded_wall_times(tmp_path):
    grid.run_cell(tmp_path / "m" / "sentiment" / "x", _result, request=REQUEST)
    seconds = load_cells(tmp_path)["m"]["sentiment"]["x"].wall_seconds
    assert f"| m | sentiment | x | {seconds:.1f} |" in wall_time_md(load_cells(tmp_path))


def test_a_saved_cell_of_the_repository_still_verifies_and_has_no_wall_time():
    cell = DATA / "trtl" / "smollm2-135m-instruct" / "topic" / "ablation"
    if not cell.is_dir():
        pytest.skip(f"the saved results {cell} are not in this checkout")
    result = ExperimentResult.load(cell)
    assert result.wall_seconds is None and design_n(result) == 64


# --------------------------------------------------------------------------- saved pages


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The repository's saved cells of one model (a copy, so nothing is written there)."""
    out = {}
    for family in ("trtl", "geometry"):
        source = DATA / family / "smollm2-135m-instruct"
        if not source.is_dir():
            pytest.skip(f"the saved results {source} are not in this checkout")
        root = tmp_path_factory.mktemp(family)
        shutil.copytree(source, root / "smollm2-135m-instruct")
        out[family] = load_cells(root)
    return out


def test_the_trtl_power_table_covers_every_statistic_with_a_rule(saved):
    frame = trtl_power(saved["trtl"])
    assert set(frame["task"]) == {"category", "sentiment", "topic", ALL_TASKS}
    assert set(frame["status"]) <= set(pw.STATUSES)
    # resolved exactly where the verdict settles it; intervals over heads are not by n
    settled = frame["verdict"].isin(["holds", "does not hold", "no effect larger than the margin"])
    assert (frame.loc[settled, "status"] == pw.RESOLVED).all()
    heads = frame[frame["unit"] == "heads"]
    assert len(heads) and set(heads["status"]) <= {pw.RESOLVED, pw.NO_N_WILL, pw.NOT_BY_N,
                                                   pw.POWER_UNTESTABLE, pw.UNDEFINED}  # fmt: skip
    # issue 18's example: SmolLM2 topic TR - TL label-space rate, about 130 prompts
    row = frame[
        (frame["task"] == "topic") & (frame["statistic"] == "TR - TL delta_label_space_rate")
    ]
    assert row["status"].iloc[0] == pw.NEEDS_N and 120 <= row["n_needed"].iloc[0] <= 140
    text = "\n".join(power_md(frame, {}))
    assert "n ≈ " in text and "no n will" in text and "resolved at this n" in text


def test_the_geometry_power_table_has_one_statistic_per_claim_and_task(saved):
    frame = geometry_power(saved["geometry"])
    assert len(frame) == 5 * 4  # 5 claims x (3 tasks + all tasks)
    assert (frame.loc[frame["task"] != ALL_TASKS, "n"] == 96).all()


def test_the_replication_tables_read_our_numbers_from_the_saved_tables(saved):
    trtl_cells = saved["trtl"]["smollm2-135m-instruct"]
    text = "\n".join(trtl_replication_md(saved["trtl"]))
    table = trtl_cells["topic"]["ablation"].table
    tr = table[(table["condition"] == "TR") & (table["metric"] == "label_space_rate")]
    assert f"→ {float(tr['value'].iloc[0]):.3g}" in text
    assert "not in our sources" in text and "Llama-3-8B" in text
    assert "mean ablation" in text and "top 8 of each map" in text
    text = "\n".join(geometry_replication_md(saved["geometry"]))
    assert "zero ablation" in text and "PTH" in text


def test_the_trtl_grid_records_each_computed_cell_s_wall_time(tiny_llama, tmp_path):
    out = tmp_path / "grid"
    cells_run = trtl.reproduce_trtl(
        tiny_llama, ["sentiment"], out, quick=True, n=8, n_boot=50, progress=False
    )
    saved = load_cells(out)
    for row in cells_run.itertuples():
        result = saved[row.model][row.task][row.experiment]
        assert result.wall_seconds is not None and 0 <= result.wall_seconds <= row.seconds
        assert "wall_seconds" not in (result.request or {})
    shown = "\n".join(wall_time_md(saved))
    assert "| not recorded |" not in shown
