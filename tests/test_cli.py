"""The command line: one-line errors with exit code 2, argument checks before any model
loading, help texts. Models are replaced by the tiny test model (``models.load_model`` is
patched), so only the test marked ``slow`` loads the embedded model."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads import cli, models


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


@pytest.fixture
def tiny_model(monkeypatch, tiny_llama):
    """Serve the tiny Llama (real SmolLM2 tokenizer, n_ctx=256) for any --model."""
    loaded = []

    def fake_load_model(name, *, device=None, **kwargs):
        loaded.append((name, device))
        return tiny_llama

    monkeypatch.setattr(models, "load_model", fake_load_model)
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

    monkeypatch.setattr(cli.tempfile, "NamedTemporaryFile", refuse)
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
        "heads.csv",
        "settings.json",
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
    if command == "detect":
        frame = pd.read_csv(out / "heads.csv")
        assert {"induction_score", "previous_token_score", "kind"} <= set(frame.columns)
        assert json.loads((out / "settings.json").read_text())["kind"] == "DetectorSettings"
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


def test_reproduce_checks_every_task_before_loading(capsys, no_model, tmp_path):
    code, _, err = run(
        capsys, "reproduce", "--tasks", "sentiment", "nope", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "'nope'")


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
