"""The command line."""

from __future__ import annotations

import pytest

from icl_heads import cli


def test_parser_defaults():
    args = cli.build_parser().parse_args(["quickstart"])
    assert args.shots == [0, 1, 2, 4, 8] and args.task == "sentiment" and args.model == "default"


def test_clear_error_exit_code(capsys):
    assert cli.main(["quickstart", "--model", "no-such-model"]) == 2
    assert "Unknown model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_prints_table(smol, capsys, tmp_path):
    out = tmp_path / "q.csv"
    assert cli.main(["quickstart", "--shots", "0", "2", "--n", "6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "label_space_rate" in text and out.exists()
