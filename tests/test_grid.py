"""The grid-runner abstraction (``icl_heads.experiments.grid``) without Ray: which cells a
grid has, the one stale-cell check before any cell runs, the local runner (each model
loaded once, errors raised or, with ``keep_going``, recorded per cell), the progress and
failure lines; and the Ray runner's refusal where Ray is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from icl_heads.experiments import cells, grid, ray_runner
from icl_heads.experiments.grid import CellOutcome, GridCell, LocalRunner, plan_grid, run_grid
from icl_heads.results import ExperimentResult, make_table, table_row
from icl_heads.settings import PromptInfo


class FakeJob:
    """A CellJob that records what it was asked to do; a cell "runs" by returning one
    computed record per experiment (``fail``: the labels of cells that raise)."""

    def __init__(self, root: Path, fail=(), requests_n: int = 8):
        self.root, self.fail, self.n = root, set(fail), requests_n
        self.calls: list[tuple] = []

    def load(self, model):
        self.calls.append(("load", model))
        return f"loaded:{model}"

    def check(self, model, loaded):
        self.calls.append(("check", model, loaded))
        return f"name-{model}"

    def requests(self, cell, name):
        path = self.root / cell.family / name / cell.task / "exp"
        return [(path, {"model": name, "task": cell.task, "n": self.n})]

    def run(self, cell, loaded):
        self.calls.append(("run", cell.label, loaded))
        if cell.label in self.fail:
            raise ValueError(f"cell {cell.label} broke\nsecond line")
        return [{"experiment": "exp", "status": "computed"}]


def test_plan_grid_orders_model_family_task_and_drops_repeats():
    got = plan_grid(["a", "b", "a"], ["x", "y"], ["trtl", "geometry"])
    assert [c.label for c in got] == [
        "trtl a/x",
        "trtl a/y",
        "geometry a/x",
        "geometry a/y",
        "trtl b/x",
        "trtl b/y",
        "geometry b/x",
        "geometry b/y",
    ]


def test_local_runner_loads_a_one_model_grid_once_checks_it_then_runs_every_cell(tmp_path):
    job = FakeJob(tmp_path)
    done = []
    outcomes = run_grid(
        job,
        plan_grid(["m"], ["x", "y"], ["trtl"]),
        LocalRunner(),
        on_done=lambda o, d, t: done.append((o.cell.label, d, t)),
    )
    assert job.calls == [
        ("load", "m"),
        ("check", "m", "loaded:m"),
        ("run", "trtl m/x", "loaded:m"),
        ("run", "trtl m/y", "loaded:m"),
    ]
    assert done == [("trtl m/x", 1, 2), ("trtl m/y", 2, 2)]
    assert [o.ok for o in outcomes] == [True, True]
    assert outcomes[0].counts() == {"computed": 1}


def test_local_runner_checks_every_model_before_the_first_cell(tmp_path):
    job = FakeJob(tmp_path)
    run_grid(job, plan_grid(["a", "b"], ["x"], ["trtl"]), LocalRunner())
    kinds = [c[0] for c in job.calls]
    assert kinds.index("run") > max(i for i, k in enumerate(kinds) if k == "check")
    # the last model is checked first, so the first model's cells find it loaded
    assert [c for c in job.calls if c[0] == "load"] == [("load", "b"), ("load", "a"), ("load", "b")]


def test_a_stale_cell_anywhere_in_the_grid_stops_it_before_any_cell_runs(tmp_path):
    first = FakeJob(tmp_path)
    for path, request in first.requests(GridCell("b", "y", "trtl"), "name-b"):
        cells.run_cell(path, lambda: _result(), request=request)
    job = FakeJob(tmp_path, requests_n=16)  # asks another n than the saved cell has
    with pytest.raises(ValueError, match=r"n: saved 8, asked 16"):
        run_grid(job, plan_grid(["a", "b"], ["x", "y"], ["trtl"]), LocalRunner())
    assert not [c for c in job.calls if c[0] == "run"]
    # asked to, the stale cell is recomputed
    outcomes = run_grid(
        job, plan_grid(["a", "b"], ["x", "y"], ["trtl"]), LocalRunner(), rerun_stale=True
    )
    assert all(o.ok for o in outcomes)


def test_local_runner_raises_a_cell_error_unchanged_by_default(tmp_path):
    job = FakeJob(tmp_path, fail={"trtl m/x"})
    with pytest.raises(ValueError, match="cell trtl m/x broke"):
        run_grid(job, plan_grid(["m"], ["x", "y"], ["trtl"]), LocalRunner())
    assert ("run", "trtl m/y", "loaded:m") not in job.calls


def test_keep_going_records_the_failed_cell_and_runs_the_others(tmp_path):
    job = FakeJob(tmp_path, fail={"trtl m/x"})
    lines = []
    outcomes = run_grid(
        job,
        plan_grid(["m"], ["x", "y"], ["trtl"]),
        LocalRunner(keep_going=True),
        on_done=lambda o, d, t: lines.append(grid.progress_line(o, d, t)),
    )
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].error == "ValueError: cell trtl m/x broke"
    assert lines[0] == "[1/2] trtl m/x: FAILED (ValueError: cell trtl m/x broke)"
    assert lines[1].startswith("[2/2] trtl m/y: 1 computed, ")
    summary = grid.failure_summary(outcomes)
    assert summary.startswith("1 of 2 cells failed: trtl m/x (ValueError: cell trtl m/x broke)")
    assert "run the same command again" in summary
    assert grid.failure_summary(outcomes[1:]) is None


def test_progress_line_counts_loaded_and_computed_experiments():
    cell = GridCell("m", "x", "geometry")
    records = ({"status": "loaded"}, {"status": "loaded"}, {"status": "computed"})
    assert grid.progress_line(CellOutcome(cell, records, 12.4), 3, 4) == (
        "[3/4] geometry m/x: 1 computed, 2 loaded, 12 s"
    )


def test_describe_error_keeps_the_type_and_first_line():
    assert grid.describe_error(OSError("disk full\nmore")) == "OSError: disk full"
    assert grid.describe_error(RuntimeError()) == "RuntimeError"


def test_ray_runner_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setattr(ray_runner, "ray", None)
    assert not ray_runner.ray_available()
    with pytest.raises(ImportError, match=r'pip install "icl-heads\[ray\]"'):
        ray_runner.RayRunner()


def _result() -> ExperimentResult:
    info = PromptInfo(task="x", k=4, n=8, seed=0, perturbation="gold", model="m")
    return ExperimentResult("exp", make_table([table_row("c", "accuracy", 0.5, 0.4, 0.6, 8)]), info)


def test_reproduce_on_ray_sends_absolute_paths_to_the_workers(capsys, monkeypatch, tmp_path):
    if not ray_runner.ray_available():
        pytest.skip('Ray is not installed (pip install "icl-heads[ray]")')
    from icl_heads import cli

    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    rows = [f"good film {i},yes" for i in range(6)] + [f"bad film {i},no" for i in range(6)]
    (tmp_path / "mine.csv").write_text("input,label\n" + "\n".join(rows) + "\n")
    seen = []
    monkeypatch.setattr(grid, "run_grid", lambda job, cells, runner, **kw: seen.append(job) or [])
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--backend", "ray", "--models", "my-model", "default"]
    argv += ["--tasks", "mine.csv", "sentiment", "--experiments", "trtl", "--quick"]
    assert cli.main([*argv, "--out", "grid"]) == 0, capsys.readouterr().err
    (job,) = seen
    assert job.out == tmp_path / "grid"
    assert job.args.models == [str(tmp_path / "my-model"), "default"]
    assert job.args.tasks == [str(tmp_path / "mine.csv"), "sentiment"]
