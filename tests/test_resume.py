"""Resumable grids (issue 22): a reproduction killed mid-cell resumes to the tables of an
uninterrupted run, no partial folder ever counts as a finished cell, a damaged cell is
recomputed and a stale one (made with other settings) is refused or, asked to, recomputed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from icl_heads.experiments import cells, kit, trtl
from icl_heads.results import ExperimentResult, make_table, table_row
from icl_heads.settings import PromptInfo

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sentiment"]
SIZES = dict(quick=True, n=8, n_boot=50, progress=False)

#: Runs the grid of the tests below in a child process that signals (a marker file) and
#: hangs at the chosen point of the second cell, so the test can SIGKILL it there.
CHILD = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.manual_seed(0)
from conftest import make_tiny_model
from icl_heads.models import load_tokenizer
from icl_heads.experiments import trtl
from icl_heads.experiments.trtl import reproduce

out, marker, when = sys.argv[1], sys.argv[2], sys.argv[3]
model = make_tiny_model(load_tokenizer("default"), kind="llama")


def hang():
    open(marker, "w").close()
    time.sleep(600)


if when == "computing":  # inside the ablation cell's computation
    real = reproduce.ablation_experiment

    def ablation(*args, **kwargs):
        real(*args, **kwargs)
        hang()

    reproduce.ablation_experiment = ablation
else:  # "saving": the ablation cell's folder is written, not yet renamed into place
    real_replace = os.replace

    def replace(src, dst):
        if "icl-heads-tmp" in str(src) and str(dst).endswith("ablation"):
            hang()
        return real_replace(src, dst)

    os.replace = replace
trtl.reproduce_trtl(model, {tasks!r}, out, **{sizes!r})
"""


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    trtl.reproduce_trtl(tiny_llama, TASKS, out, **SIZES)
    return kit.load_cells(out)


def _kill_mid_cell(out: Path, when: str, tmp_path: Path) -> None:
    marker = tmp_path / f"marker-{when}"
    script = CHILD.format(tests=str(ROOT / "tests"), tasks=TASKS, sizes=SIZES)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(out), str(marker), when],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if child.poll() is not None:
                raise AssertionError(f"the child ended early:\n{child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("the child never reached the second cell")
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def _assert_same_cells(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for model in want:
        assert got[model].keys() == want[model].keys()
        for task in want[model]:
            assert got[model][task].keys() == want[model][task].keys()
            for name, expected in want[model][task].items():
                result = got[model][task][name]
                pd.testing.assert_frame_equal(result.table, expected.table, check_exact=True)
                assert result.tables.keys() == expected.tables.keys()
                for key, frame in expected.tables.items():
                    pd.testing.assert_frame_equal(result.tables[key], frame, check_exact=True)
                for key, scores in expected.maps.items():
                    assert torch.equal(result.maps[key].scores.isnan(), scores.scores.isnan())
                    assert torch.equal(
                        result.maps[key].scores.nan_to_num(), scores.scores.nan_to_num()
                    )
                assert result.settings == expected.settings and result.request == expected.request


@pytest.mark.parametrize("when", ["computing", "saving"])
def test_a_grid_killed_mid_cell_resumes_to_the_uninterrupted_tables(
    tiny_llama, uninterrupted, tmp_path, when
):
    out = tmp_path / "data"
    _kill_mid_cell(out, when, tmp_path)
    # only the first cell is finished; the killed one never looks finished
    visible = sorted(p.name for p in out.glob("*/sentiment/*") if not p.name.startswith("."))
    assert visible == ["find_task_heads"]
    hidden = list(out.glob("*/sentiment/.*"))
    if when == "saving":  # complete but not renamed into place: hidden, never a cell
        assert len(hidden) == 1 and (hidden[0] / "result.json").is_file()
    else:
        assert not hidden
    loaded = kit.load_cells(out)
    assert list(next(iter(loaded.values()))["sentiment"]) == ["find_task_heads"]

    resumed = trtl.reproduce_trtl(tiny_llama, TASKS, out, **SIZES)
    assert list(resumed["status"]) == ["loaded"] + ["computed"] * (len(resumed) - 1)
    assert not list(out.glob("*/sentiment/.*"))  # the dead run's leftovers are gone
    _assert_same_cells(kit.load_cells(out), uninterrupted)

    # a second grid asking for other sizes is refused before anything is computed
    with pytest.raises(ValueError, match=r"n: saved 8, asked 10") as err:
        trtl.reproduce_trtl(tiny_llama, TASKS, out, **{**SIZES, "n": 10})
    assert "rerun_stale=True" in str(err.value) and "find_task_heads" in str(err.value)


# --------------------------------------------------------------------------- run_cell


def _result(value: float = 0.5) -> ExperimentResult:
    info = PromptInfo(task="sentiment", k=4, n=8, seed=0, perturbation="gold", model="m")
    rows = [table_row("baseline", "accuracy", value, value - 0.1, value + 0.1, 8)]
    return ExperimentResult("x", make_table(rows), info, tables={"t": pd.DataFrame({"a": [1, 2]})})


def _maker(calls: list, value: float = 0.5):
    def make():
        calls.append(value)
        return _result(value)

    return make


REQUEST = {"model": "m", "task": "sentiment", "experiment": "x", "n": 8, "seed": 0}


def test_run_cell_loads_a_verified_cell_with_the_same_request(tmp_path):
    calls: list = []
    result, status, _ = cells.run_cell(tmp_path / "c", _maker(calls), request=REQUEST)
    assert status == "computed" and result.request == REQUEST
    again, status, _ = cells.run_cell(tmp_path / "c", _maker(calls), request=dict(REQUEST))
    assert status == "loaded" and len(calls) == 1 and again.request == REQUEST


@pytest.mark.parametrize("damage", ["truncate", "empty", "remove", "no_result_json"])
def test_run_cell_recomputes_a_damaged_cell_and_says_why(tmp_path, damage, caplog):
    calls: list = []
    cell = tmp_path / "c"
    cells.run_cell(cell, _maker(calls), request=REQUEST)
    table = cell / "table.csv"
    if damage == "truncate":
        table.write_bytes(table.read_bytes()[:-7])  # cut mid-row
    elif damage == "empty":
        table.write_bytes(b"")
    elif damage == "remove":
        table.unlink()
    else:
        (cell / "result.json").unlink()
    with caplog.at_level(logging.WARNING, logger="icl_heads.experiments.cells"):
        result, status, _ = cells.run_cell(cell, _maker(calls, 0.25), request=REQUEST)
    assert status == "computed" and len(calls) == 2
    assert "recomputing" in caplog.text and str(cell) in caplog.text
    assert ExperimentResult.load(cell).value("baseline", "accuracy") == 0.25


def test_run_cell_refuses_a_stale_cell_naming_the_fields_unless_asked_to_rerun(tmp_path, caplog):
    calls: list = []
    cell = tmp_path / "c"
    cells.run_cell(cell, _maker(calls), request=REQUEST)
    other = {**REQUEST, "n": 16, "n_random": 2}
    with pytest.raises(
        ValueError, match=r"n: saved 8, asked 16; n_random: saved \(none\), asked 2"
    ):
        cells.run_cell(cell, _maker(calls), request=other)
    with pytest.raises(ValueError, match="rerun_stale=True"):
        cells.check_cells([(cell, other)])
    cells.check_cells([(cell, REQUEST), (tmp_path / "not-yet", other)])  # passes
    with caplog.at_level(logging.WARNING):
        _, status, _ = cells.run_cell(cell, _maker(calls, 0.3), request=other, rerun_stale=True)
    assert status == "computed" and len(calls) == 2 and "stale" in caplog.text
    assert ExperimentResult.load(cell).request == other


def test_a_cell_saved_without_a_request_is_stale(tmp_path):
    cell = tmp_path / "c"
    _result().save(cell)  # no request recorded (as results saved before requests)
    with pytest.raises(ValueError, match="without a request record"):
        cells.run_cell(cell, _maker([]), request=REQUEST)


def test_cell_request_records_the_task_content(sentiment_task):
    request = cells.cell_request("m", sentiment_task, "ablation", k=4, alphas=(0, 0.5))
    assert request["alphas"] == [0, 0.5] and request["task"] == "sentiment"
    changed = type(sentiment_task)(
        sentiment_task.name, sentiment_task.examples[:-1], sentiment_task.labels
    )
    assert changed.digest != request["task_digest"]


def test_load_cells_skips_temporary_folders(tmp_path):
    _result().save(tmp_path / "m" / "t" / "x")
    leftover = tmp_path / "m" / "t" / ".y.icl-heads-tmp-1-abc"
    _result().save(leftover)  # a complete-looking folder a killed run left unrenamed
    assert list(kit.load_cells(tmp_path)["m"]["t"]) == ["x"]
