"""``icl-heads reproduce --backend ray`` (issue 20, item 5) on a local Ray instance
(``ray.init(num_cpus=2)``): a 2 x 2 quick grid (tasks x families, a tiny Llama saved as a
Hugging Face directory so every Ray worker loads it by name) gives the tables of the local
backend in the same tree; a worker killed mid-grid, or a cell that raises, is reported with
the cell named while the other cells finish, leaves no half-written folder, and the re-run
resumes to the same tables. Skipped where Ray is not installed."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_hf import tiny_hf_llama

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "icl-heads[ray]")')

from icl_heads import cli  # noqa: E402
from icl_heads.experiments import kit  # noqa: E402
from icl_heads.experiments.grid import plan_grid, progress_line, run_grid  # noqa: E402
from icl_heads.experiments.ray_runner import RayRunner  # noqa: E402

#: Starting Ray and its workers (each imports icl-heads) alone takes 20 s or more here; the
#: grids take minutes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sentiment", "topic"]
#: Set (in every Ray worker, by the runtime env) to a file whose presence makes the next
#: TR/TL ablation cell kill its own worker (once: the file is removed first).
KILL_ENV = "ICL_HEADS_TEST_KILL_MARKER"


def _kill_once_hook() -> None:
    """A Ray worker setup hook: the worker that first reaches an ablation while the marker
    file exists removes it and dies with SIGKILL (after computing, before saving)."""
    from icl_heads.experiments.trtl import reproduce

    real = reproduce.ablation_experiment

    def ablation(*args, **kwargs):
        result = real(*args, **kwargs)
        try:
            os.remove(os.environ[KILL_ENV])
        except (KeyError, FileNotFoundError):
            return result
        os.kill(os.getpid(), signal.SIGKILL)

    reproduce.ablation_experiment = ablation


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    marker = tmp_path_factory.mktemp("kill") / "kill-next-ablation"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook, by value
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": path, KILL_ENV: str(marker)},  # this tree's icl_heads
            "worker_process_setup_hook": _kill_once_hook,
        },
    )
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama saved as a Hugging Face directory: loadable by name anywhere."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_hf_llama(smol_tokenizer.vocab_size, seed=0).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "reproduce",
        "--models",
        str(model),
        "--tasks",
        *TASKS,
        "--quick",
        "--n",
        "8",
        "--no-reports",
        "--out",
        str(out),
        *extra,
    ]


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def local_grid(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert cli.main(_argv(tiny_dir, out)) == 0
    return out


def _cells(out: Path) -> dict:
    return {family: kit.load_cells(out / family) for family in ("trtl", "geometry")}


def _tree(out: Path) -> list[str]:
    """Every file of a grid but the wall-time log (``timings.csv``)."""
    return sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "timings.csv"
    )


def _assert_same_cells(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for family in want:
        assert got[family].keys() == want[family].keys()
        for model in want[family]:
            assert got[family][model].keys() == want[family][model].keys()
            for task in want[family][model]:
                assert got[family][model][task].keys() == want[family][model][task].keys()
                for name, expected in want[family][model][task].items():
                    result = got[family][model][task][name]
                    pd.testing.assert_frame_equal(result.table, expected.table, check_exact=True)
                    assert result.tables.keys() == expected.tables.keys()
                    for key, frame in expected.tables.items():
                        pd.testing.assert_frame_equal(result.tables[key], frame, check_exact=True)
                    assert result.maps.keys() == expected.maps.keys()
                    for key, scores in expected.maps.items():
                        a, b = result.maps[key].scores, scores.scores
                        assert torch.equal(a.isnan(), b.isnan())
                        assert torch.equal(a.nan_to_num(), b.nan_to_num())
                    assert result.settings == expected.settings
                    assert result.request == expected.request


def _progress(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def test_ray_backend_gives_the_local_tables_in_the_same_tree(
    capsys, ray_instance, tiny_dir, local_grid, tmp_path
):
    out = tmp_path / "ray"
    code, text, err = _run(capsys, _argv(tiny_dir, out, "--backend", "ray"))
    assert code == 0, err
    lines = _progress(text)
    assert len(lines) == 4 and all("computed" in line for line in lines), text
    assert {line.split(":")[0].split("] ")[1] for line in lines} == {
        f"{family} {tiny_dir}/{task}" for family in ("trtl", "geometry") for task in TASKS
    }
    assert _tree(out) == _tree(local_grid)
    _assert_same_cells(_cells(out), _cells(local_grid))
    # a re-run on Ray loads every cell, computes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    code, text, err = _run(capsys, _argv(tiny_dir, out, "--backend", "ray"))
    assert code == 0, err
    assert all("loaded" in line and "computed" not in line for line in _progress(text)), text
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    # and so does the local backend over the Ray tree: the two resume the same way
    code, text, err = _run(capsys, _argv(tiny_dir, out))
    assert code == 0, err
    assert all("computed" not in line for line in _progress(text)), text


def test_a_worker_killed_mid_grid_is_named_and_the_rerun_resumes_to_the_same_tables(
    capsys, ray_instance, tiny_dir, local_grid, tmp_path
):
    out = tmp_path / "ray"
    ray_instance.touch()  # the next TR/TL ablation kills its worker
    code, text, err = _run(capsys, _argv(tiny_dir, out, "--backend", "ray"))
    assert code == 2 and not ray_instance.exists()
    failed = [line for line in _progress(text) if "FAILED" in line]
    assert len(failed) == 1 and "WorkerCrashedError" in failed[0], text
    task = next(t for t in TASKS if f"trtl {tiny_dir}/{t}:" in failed[0])
    assert f"1 of 4 cells failed: trtl {tiny_dir}/{task}" in err
    assert sum("computed" in line for line in _progress(text)) == 3  # the others finished
    # the killed experiment left no folder (at most a hidden temporary one); the one
    # before it is complete and verifies
    task_dir = next(out.glob(f"trtl/*/{task}"))
    visible = {p.name for p in task_dir.iterdir() if not p.name.startswith(".")}
    assert "ablation" not in visible and "find_task_heads" in visible
    # the re-run computes only what is missing and ends where an uninterrupted run does
    code, text, err = _run(capsys, _argv(tiny_dir, out, "--backend", "ray"))
    assert code == 0, err
    assert sum("computed" in line for line in _progress(text)) == 1, text
    assert _tree(out) == _tree(local_grid)
    _assert_same_cells(_cells(out), _cells(local_grid))


def test_a_cell_that_raises_is_named_and_the_other_cells_finish(
    capsys, ray_instance, tiny_dir, local_grid, tmp_path
):
    out = tmp_path / "ray"
    (out / "trtl" / "tiny-llama").mkdir(parents=True)
    blocker = out / "trtl" / "tiny-llama" / "topic"
    blocker.write_text("not a folder")  # the TR/TL topic cell cannot save its results
    code, text, err = _run(capsys, _argv(tiny_dir, out, "--backend", "ray"))
    assert code == 2
    failed = [line for line in _progress(text) if "FAILED" in line]
    assert len(failed) == 1 and f"trtl {tiny_dir}/topic" in failed[0], text
    assert str(blocker) in failed[0]  # the error names what went wrong
    assert f"1 of 4 cells failed: trtl {tiny_dir}/topic" in err and "run the same command" in err
    blocker.unlink()
    code, text, err = _run(capsys, _argv(tiny_dir, out, "--backend", "ray"))
    assert code == 0, err
    assert sum("computed" in line for line in _progress(text)) == 1, text
    _assert_same_cells(_cells(out), _cells(local_grid))


class _Job:
    """A CellJob without a model (pickled by value to the workers): model ``bad`` fails
    its check, task ``x`` fails its run."""

    def load(self, model):
        return model

    def check(self, model, loaded):
        if model == "bad":
            raise ValueError("--models 'bad': its context is too short")
        return model

    def requests(self, cell, name):
        return []

    def run(self, cell, loaded):
        if cell.task == "x":
            raise OSError(f"disk full under {cell.label}")
        return [{"experiment": "e", "status": "computed"}]


def test_ray_runner_raises_a_model_check_as_is_and_reports_cell_errors_per_cell(
    ray_instance, monkeypatch
):
    cancelled = []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kwargs: cancelled.append(ref))
    with pytest.raises(ValueError, match=r"^--models 'bad': its context is too short$"):
        run_grid(_Job(), plan_grid(["good", "bad"], ["x"], ["trtl"]), RayRunner())
    # both probes had returned: force-cancelling a finished task aborted the driver in Ray
    assert cancelled == []
    monkeypatch.undo()
    lines = []
    outcomes = run_grid(
        _Job(),
        plan_grid(["good"], ["x", "y"], ["trtl", "geometry"]),
        RayRunner(),
        on_done=lambda o, d, t: lines.append(progress_line(o, d, t)),
    )
    assert [o.cell.label for o in outcomes] == [
        "trtl good/x",
        "trtl good/y",
        "geometry good/x",
        "geometry good/y",
    ]
    assert [o.error for o in outcomes] == [
        "OSError: disk full under trtl good/x",
        None,
        "OSError: disk full under geometry good/x",
        None,
    ]
    assert sorted(int(line[1]) for line in lines) == [1, 2, 3, 4]  # one line per cell
    assert sum("FAILED (OSError: disk full under" in line for line in lines) == 2
    assert ray.is_initialized()  # an instance the runner joined is left running
