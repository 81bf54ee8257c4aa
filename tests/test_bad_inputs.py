"""Every bad input gives a clear error at the public call: a TypeError / ValueError /
FileNotFoundError raised by icl-heads, whose one-line message names the bad value — never a
torch or TransformerLens error from deep inside, never a silently wrong result.

Sections: the analyses (heads, interventions, running the model, metrics and sweeps,
attribution, detectors) as one table of cases ``(id, call, exception type, regex the message
must match)``, the regex naming the bad value; then task files and prompts; then models and
the command line (every CLI error is one stderr line with exit code 2).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, skip_without_hooked

import icl_heads as ih
from icl_heads import cli, models
from icl_heads.activations import collect
from icl_heads.heads import Head, HeadScores, heads_to_mask
from icl_heads.pages.common import check_family
from icl_heads.pages.geometry import write_geometry_page
from icl_heads.pages.trtl import write_trtl_page
from icl_heads.prompts import (
    check_prompt_set,
    label_token_ids,
    shift_demo_labels,
    tokenizer_fingerprint,
)
from icl_heads.settings import Settings


@pytest.fixture(scope="module")
def other_model():
    """A tiny model whose tokenizer is not SmolLM2's (none at all): another model."""
    return make_tiny_model(None, kind="gpt", d_vocab=64)


@pytest.fixture(scope="module")
def env(tiny_llama, tiny_gpt, tiny_prompts, tmp_path_factory, other_model):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "corrupt.json").write_text("{not json")
    (tmp / "foreign.json").write_text(json.dumps({"scores": [[1.0]], "name": "x"}))
    (tmp / "garbage.parquet").write_bytes(b"PAR1 nonsense")
    (tmp / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    scores = HeadScores(torch.arange(8.0).reshape(2, 4), name="s")
    return dict(
        m=tiny_llama,
        gpt=tiny_gpt,
        p=tiny_prompts,
        tmp=tmp,
        s=scores,
        other=other_model,
        source=ih.shift_demo_labels(tiny_prompts),
    )


def _empty(p):
    return replace(p, tokens=p.tokens[:0], attention_mask=p.attention_mask[:0], gold=p.gold[:0])


def _single_label(p):
    return replace(
        p,
        label_token_ids=p.label_token_ids[:1],
        label_words=p.label_words[:1],
        gold=torch.zeros_like(p.gold),
    )


def _scalar_metric(logits, gold, labels):
    return logits.mean()


def _bare_patch(e):
    with ih.patch(e["m"], e["source"], site="resid_pre", layers=[0]):
        pass


CASES = [
    # ------------------------------------------------------------------ heads and maps
    ("HeadScores 1-D", lambda e: HeadScores(torch.zeros(5)), ValueError, r"shape \(5,\)"),
    (
        "HeadScores settings dict",
        lambda e: HeadScores(torch.zeros(2, 4), settings={"a": 1}),
        TypeError,
        "dict",
    ),
    (
        "HeadScores per_prompt shape",
        lambda e: HeadScores(torch.zeros(2, 4), per_prompt=torch.zeros(3, 4, 2)),
        ValueError,
        r"\(3, 4, 2\)",
    ),
    ("top(2.5)", lambda e: e["s"].top(2.5), TypeError, "2.5"),
    ("top(True)", lambda e: e["s"].top(True), TypeError, "True"),
    ("top(-1)", lambda e: e["s"].top(-1), ValueError, "-1"),
    ("HeadScores(top_k=0)", lambda e: HeadScores(torch.zeros(2, 4), top_k=0), ValueError, "0"),
    ("float head index", lambda e: heads_to_mask([(1.5, 0)], 2, 4), TypeError, "1.5"),
    (
        "float head index that looks whole",
        lambda e: heads_to_mask([(1.0, 0)], 2, 4),
        TypeError,
        r"1\.0",
    ),
    ("head as a string", lambda e: heads_to_mask("L0H1", 2, 4), TypeError, "L0H1"),
    ("head out of range", lambda e: ih.ablate(e["m"], [Head(2, 0)]), ValueError, "L2H0"),
    ("negative head", lambda e: ih.ablate(e["m"], [(0, -1)]), ValueError, "L0H-1"),
    (
        "head map of another shape",
        lambda e: ih.ablate(e["m"], HeadScores(torch.zeros(30, 9))),
        ValueError,
        r"\[30, 9\]",
    ),
    (
        "mask of another shape",
        lambda e: ih.ablate(e["m"], torch.ones(4, 2, dtype=torch.bool)),
        ValueError,
        r"\(4, 2\)",
    ),
    ("float mask", lambda e: ih.ablate(e["m"], torch.ones(2, 4)), TypeError, "float32"),
    (
        "load missing file",
        lambda e: HeadScores.load(e["tmp"] / "nope.json"),
        FileNotFoundError,
        "nope.json",
    ),
    (
        "load corrupt json",
        lambda e: HeadScores.load(e["tmp"] / "corrupt.json"),
        ValueError,
        "corrupt.json",
    ),
    (
        "load a json icl-heads did not write",
        lambda e: HeadScores.load(e["tmp"] / "foreign.json"),
        ValueError,
        "foreign.json.*not written by HeadScores.save",
    ),
    (
        "load a corrupt parquet",
        lambda e: HeadScores.load(e["tmp"] / "garbage.parquet"),
        ValueError,
        "garbage.parquet",
    ),
    (
        "load a non-UTF-8 json",
        lambda e: HeadScores.load(e["tmp"] / "latin1.json"),
        ValueError,
        "latin1.json",
    ),
    ("save as csv", lambda e: e["s"].save(e["tmp"] / "s.csv"), ValueError, "s.csv"),
    ("settings without kind", lambda e: Settings.from_dict({"a": 1}), ValueError, "kind"),
    (
        "settings of unknown kind",
        lambda e: Settings.from_dict({"kind": "Nope"}),
        ValueError,
        "Nope",
    ),
    # ------------------------------------------------------------------ interventions
    ("ablation mode", lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="noise"), ValueError, "noise"),
    (
        "positions word",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], positions="middle"),
        ValueError,
        "middle",
    ),
    (
        "positions floats",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], positions=[1.5]),
        TypeError,
        "1.5",
    ),
    (
        "positions empty",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], positions=[]),
        ValueError,
        "empty",
    ),
    (
        "position out of range at run time",
        lambda e: ih.evaluate(
            e["m"],
            e["p"],
            interventions=[ih.ablate(e["m"], [Head(0, 0)], positions=500)],
            progress=False,
        ),
        ValueError,
        "Position 500",
    ),
    (
        "mean ablation without means",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean"),
        ValueError,
        "means=",
    ),
    (
        "means of the wrong shape",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean", means=torch.zeros(3, 4, 8)),
        ValueError,
        r"\(3, 4, 8\)",
    ),
    (
        "means of another site",
        lambda e: ih.ablate(
            e["m"],
            [Head(0, 0)],
            mode="mean",
            means=ih.activation_means(e["m"], e["p"], "attn_out", progress=False),
        ),
        ValueError,
        "'attn_out'",
    ),
    (
        "means as a list",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean", means=[0.0]),
        TypeError,
        "list",
    ),
    (
        "resample without reference",
        lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="resample"),
        ValueError,
        "reference=",
    ),
    ("seed as a string", lambda e: ih.ablate(e["m"], [Head(0, 0)], seed="1"), TypeError, "'1'"),
    (
        "ablate_layers on heads",
        lambda e: ih.ablate_layers(e["m"], [0], site="z"),
        ValueError,
        "ablate",
    ),
    (
        "ablate_layers unknown site",
        lambda e: ih.ablate_layers(e["m"], [0], site="mlp"),
        ValueError,
        "'mlp'",
    ),
    (
        "ablate_layers: mode where the site was",
        lambda e: ih.ablate_layers(e["m"], [0], "attn_out"),
        ValueError,
        "'attn_out'",
    ),
    ("layer out of range", lambda e: ih.ablate_layers(e["m"], [5]), ValueError, "Layer 5"),
    ("float layer", lambda e: ih.ablate_layers(e["m"], [0.5]), TypeError, "0.5"),
    (
        "patch heads and layers",
        lambda e: ih.patch(e["m"], e["p"], heads=[(0, 0)], layers=[0]),
        ValueError,
        "heads= or layers=",
    ),
    (
        "patch a layer site with heads",
        lambda e: ih.patch(e["m"], e["p"], site="resid_pre", heads=[(0, 0)]),
        ValueError,
        "'resid_pre'",
    ),
    ("patch source a list", lambda e: ih.patch(e["m"], list(e["p"].texts)), TypeError, "list"),
    (
        "patch source of another length",
        lambda e: ih.evaluate(
            e["m"], e["p"], interventions=[ih.patch(e["m"], e["p"].select([0]))], progress=False
        ),
        ValueError,
        "Target prompt",
    ),
    ("bare `with patch`", _bare_patch, TypeError, "interventions="),
    ("steer a matrix", lambda e: ih.steer(e["m"], torch.zeros(2, 32), 0), ValueError, r"\(2, 32\)"),
    ("steer wrong width", lambda e: ih.steer(e["m"], torch.zeros(31), 0), ValueError, "31"),
    (
        "steer alpha string",
        lambda e: ih.steer(e["m"], torch.zeros(32), 0, alpha="2"),
        TypeError,
        "'2'",
    ),
    ("steer without layer", lambda e: ih.steer(e["m"], torch.zeros(32)), ValueError, "layer"),
    (
        "steer NaN vector",
        lambda e: ih.steer(e["m"], torch.full((32,), math.nan), 0),
        ValueError,
        "NaN",
    ),
    (
        "steer layer vs head",
        lambda e: ih.steer(e["m"], torch.zeros(32), 0, head=(1, 0)),
        ValueError,
        "layer=0",
    ),
    ("steer a string", lambda e: ih.steer(e["m"], "up", 0), TypeError, "str"),
    ("compose nothing", lambda e: ih.compose(), ValueError, "at least one"),
    ("compose a number", lambda e: ih.compose(3), TypeError, "3"),
    (
        "intervention that is not one",
        lambda e: ih.evaluate(e["m"], e["p"], interventions=[3], progress=False),
        TypeError,
        "3",
    ),
    (
        "interventions as a string",
        lambda e: ih.evaluate(e["m"], e["p"], interventions="ablate", progress=False),
        TypeError,
        "str",
    ),
    (
        "intervention built for another model",
        lambda e: ih.evaluate(
            e["gpt"], e["p"], interventions=[ih.ablate(e["m"], [(0, 0)])], progress=False
        ),
        ValueError,
        "another model",
    ),
    # ------------------------------------------------------------------ running the model
    ("batch_size 0", lambda e: collect(e["m"], e["p"], batch_size=0), ValueError, "0"),
    ("batch_size float", lambda e: ih.evaluate(e["m"], e["p"], batch_size=2.5), TypeError, "2.5"),
    ("batch_size bool", lambda e: ih.evaluate(e["m"], e["p"], batch_size=True), TypeError, "True"),
    (
        "collect positions",
        lambda e: collect(e["m"], e["p"], positions="middle"),
        ValueError,
        "middle",
    ),
    ("collect names", lambda e: collect(e["m"], e["p"], names=5), TypeError, "5"),
    ("prompts as a list", lambda e: ih.evaluate(e["m"], list(e["p"].texts)), TypeError, "list"),
    ("prompts as a string", lambda e: ih.tsla_scores(e["m"], "sentiment"), TypeError, "str"),
    ("empty prompt set", lambda e: ih.evaluate(e["m"], _empty(e["p"])), ValueError, "empty"),
    (
        "device cuda without CUDA",
        lambda e: ih.evaluate(e["m"], e["p"], device="cuda"),
        ValueError,
        "cuda",
    ),
    (
        "device that is not one",
        lambda e: ih.tsla_scores(e["m"], e["p"], device="gpu"),
        ValueError,
        "'gpu'",
    ),
    ("device a number", lambda e: ih.head_sweep(e["m"], e["p"], device=3.5), TypeError, "3.5"),
    (
        "prompts built for another model",
        lambda e: ih.evaluate(e["other"], e["p"]),
        ValueError,
        "tokenizer|d_vocab",
    ),
    # ------------------------------------------------------------------ metrics and sweeps
    ("unknown metric", lambda e: ih.head_sweep(e["m"], e["p"], "f1"), ValueError, "'f1'"),
    ("metric a number", lambda e: ih.head_sweep(e["m"], e["p"], 5), TypeError, "5"),
    (
        "metric returning one number",
        lambda e: ih.head_sweep(e["m"], e["p"], _scalar_metric, progress=False),
        ValueError,
        "_scalar_metric.*one value per prompt",
    ),
    ("sweep mode", lambda e: ih.head_sweep(e["m"], e["p"], mode="noise"), ValueError, "noise"),
    ("sweep method", lambda e: ih.head_sweep(e["m"], e["p"], method="quick"), ValueError, "quick"),
    (
        "patch sweep without source",
        lambda e: ih.head_sweep(e["m"], e["p"], mode="patch"),
        ValueError,
        "source=",
    ),
    (
        "source with zero ablation",
        lambda e: ih.head_sweep(e["m"], e["p"], source=e["p"]),
        ValueError,
        "'zero'",
    ),
    (
        "misaligned source",
        lambda e: ih.head_sweep(e["m"], e["p"], mode="patch", source=e["p"].select([0, 1])),
        ValueError,
        "2 prompts",
    ),
    (
        "rows_per_pass 0",
        lambda e: ih.head_sweep(e["m"], e["p"], rows_per_pass=0),
        ValueError,
        "rows_per_pass",
    ),
    ("sweep seed float", lambda e: ih.head_sweep(e["m"], e["p"], seed=1.5), TypeError, "1.5"),
    (
        "sweep heads out of range",
        lambda e: ih.head_sweep(e["m"], e["p"], heads=[(0, 9)]),
        ValueError,
        "L0H9",
    ),
    ("layer sweep on heads", lambda e: ih.layer_sweep(e["m"], e["p"], site="z"), ValueError, "'z'"),
    (
        "layer sweep layer out of range",
        lambda e: ih.layer_sweep(e["m"], e["p"], layers=[7]),
        ValueError,
        "Layer 7",
    ),
    (
        "position sweep layer out of range",
        lambda e: ih.position_sweep(e["m"], e["p"], layer=2),
        ValueError,
        "Layer 2",
    ),
    (
        "attribution patching of accuracy",
        lambda e: ih.attribution_patching(e["m"], e["p"], "accuracy"),
        ValueError,
        "'accuracy'",
    ),
    # ------------------------------------------------------------------ attribution
    (
        "tsla normalize",
        lambda e: ih.tsla_scores(e["m"], e["p"], normalize="cosine"),
        ValueError,
        "cosine",
    ),
    (
        "tsla floor",
        lambda e: ih.tsla_scores(e["m"], e["p"], normalize="norm", floor=1.5),
        ValueError,
        "1.5",
    ),
    ("tsla top_k 0", lambda e: ih.tsla_scores(e["m"], e["p"], top_k=0), ValueError, "0"),
    ("tsla top_k float", lambda e: ih.tsla_scores(e["m"], e["p"], top_k=2.5), TypeError, "2.5"),
    (
        "tsla top_k above the heads",
        lambda e: ih.tsla_scores(e["m"], e["p"], top_k=100),
        ValueError,
        "100",
    ),
    (
        "tsla one label",
        lambda e: ih.tsla_scores(e["m"], _single_label(e["p"])),
        ValueError,
        "1 label",
    ),
    ("dla target", lambda e: ih.dla_scores(e["m"], e["p"], target="margin"), ValueError, "margin"),
    (
        "dla unit",
        lambda e: ih.direct_logit_attribution(e["m"], e["p"], unit="neuron"),
        ValueError,
        "neuron",
    ),
    # ------------------------------------------------------------------ detectors
    (
        "random sequences too long",
        lambda e: ih.induction_scores(e["m"], T=200),
        ValueError,
        "T=200",
    ),
    ("random sequences n=0", lambda e: ih.induction_scores(e["m"], n_sequences=0), ValueError, "0"),
    (
        "random sequences n float",
        lambda e: ih.induction_scores(e["m"], n_sequences=2.5),
        TypeError,
        "2.5",
    ),
    (
        "detector normalize",
        lambda e: ih.induction_scores(e["m"], T=4, n_sequences=1, normalize="mul"),
        ValueError,
        "mul",
    ),
    (
        "unknown detector",
        lambda e: ih.token_detector_scores(
            e["m"], T=4, n_sequences=1, detectors=["induction_head"]
        ),
        ValueError,
        "induction_head",
    ),
    ("sequences as text", lambda e: ih.induction_scores(e["m"], ["some text"]), TypeError, "list"),
    (
        "float tokens",
        lambda e: ih.induction_scores(e["m"], torch.zeros(2, 5)),
        TypeError,
        "float32",
    ),
    (
        "token ids beyond the vocabulary",
        lambda e: ih.induction_scores(e["m"], torch.full((1, 5), 10**6)),
        ValueError,
        "1000000",
    ),
    (
        "attention mask not left-padded",
        lambda e: ih.induction_scores(
            e["m"], torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0, 1]])
        ),
        ValueError,
        "left-padded",
    ),
    (
        "label attention without demonstrations",
        lambda e: ih.label_attention_scores(
            e["m"], ih.build_prompts(e["m"], ih.load_task("sentiment"), k=0, n=2)
        ),
        ValueError,
        "k=0",
    ),
    (
        "detect_heads threshold kind",
        lambda e: ih.detect_heads(e["m"], T=4, n_sequences=1, thresholds={"induction_head": 0.5}),
        ValueError,
        "induction_head",
    ),
    (
        "detect_heads threshold string",
        lambda e: ih.detect_heads(e["m"], T=4, n_sequences=1, thresholds="high"),
        TypeError,
        "str",
    ),
    (
        "detect_heads negative top_k",
        lambda e: ih.detect_heads(e["m"], T=4, n_sequences=1, top_k={"induction": -1}),
        ValueError,
        "-1",
    ),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(call, error, match, env):
    with pytest.raises(error, match=match) as info:
        call(env)
    message = str(info.value)
    assert "\n" not in message.strip(), "the message should be one line"
    # raised by icl-heads itself, not from inside torch / TransformerLens / transformers
    frames = [tb.tb_frame.f_code.co_filename for tb in _walk(info.tb)]
    assert "icl_heads" in frames[-1].replace("\\", "/"), frames[-1]


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


# =======================================================================================
# Tasks, task files and prompts
# =======================================================================================

# ---------------------------------------------------------------------------------------
# helpers


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def word_tokenizer():
    """A 10-word WordLevel tokenizer built in the test (no BOS, so TransformerLens keeps it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", "Input", ":", "Label", "positive", "negative", "good", "bad", "day"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]"
    )


@pytest.fixture(scope="module")
def two_labels():
    return ih.make_task(
        "two",
        [
            ("good day", "positive"),
            ("bad day", "negative"),
            ("fine day", "positive"),
            ("sad day", "negative"),
        ],
    )


# ---------------------------------------------------------------------------------------
# task files: encoding, missing files, empty files


def test_non_utf8_file_names_file_byte_and_fix(tmp_path):
    path = _write(tmp_path, "latin.csv", "input,label\ncafé,yes\nbad,no\n".encode("latin-1"))
    with pytest.raises(
        ValueError,
        match=r"latin\.csv is not valid UTF-8: byte b'\\xe9' at line 2"
        r".*re-save the file as UTF-8",
    ):
        ih.load_task(path)


def test_utf16_file_is_named_as_utf16(tmp_path):
    path = _write(tmp_path, "wide.csv", "input,label\na,yes\nb,no\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"wide\.csv is UTF-16.*re-save it as UTF-8"):
        ih.load_task(path)


def test_nul_byte_file_rejected(tmp_path):
    path = _write(tmp_path, "nul.csv", "input,label\na\x00b,yes\nc,no\n")
    with pytest.raises(ValueError, match=r"nul\.csv holds a NUL byte \(line 2\)"):
        ih.load_task(path)


@pytest.mark.parametrize("name", ["missing.csv", "missing.jsonl", "sub/missing"])
def test_missing_file_is_file_not_found_listing_builtins(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(str(path)) + r"' does not exist.*"
        r"antonym, capital, .*sentiment, topic",
    ):
        ih.load_task(str(path))


def test_unknown_name_suggests_close_builtin():
    with pytest.raises(ValueError, match=r"Unknown task 'sentimnet'.*Did you mean 'sentiment'"):
        ih.load_task("sentimnet")


@pytest.mark.parametrize("name_or_path", [None, 3, ["sentiment"]])
def test_load_task_wrong_type(name_or_path):
    with pytest.raises(
        TypeError, match=r"built-in task name or a file path, got " + type(name_or_path).__name__
    ):
        ih.load_task(name_or_path)


def test_directory_is_not_a_task_file(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + r"' is not a file"):
        ih.load_task(tmp_path)


@pytest.mark.parametrize("name,content", [("empty.csv", ""), ("empty.jsonl", "\n  \n")])
def test_empty_file(tmp_path, name, content):
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=re.escape(name) + " is empty"):
        ih.load_task(path)


def test_header_only_csv(tmp_path):
    path = _write(tmp_path, "header.csv", "input,label\n\n")
    with pytest.raises(ValueError, match=r"header\.csv has no examples \(only a header"):
        ih.load_task(path)


# ---------------------------------------------------------------------------------------
# CSV rows


@pytest.mark.parametrize(
    "row,key", [("lonely", "label"), ("lonely,", "label"), (",no", "input"), ("   ,no", "input")]
)
def test_csv_missing_or_empty_cell_names_file_and_line(tmp_path, row, key):
    path = _write(tmp_path, "cells.csv", f"input,label\ngood,yes\n{row}\nbad,no\n")
    with pytest.raises(
        ValueError,
        match=rf"cells\.csv, line 3: the {key} cell is missing or "
        "empty",
    ):
        ih.load_task(path)


def test_csv_unquoted_comma_is_not_split_silently(tmp_path):
    path = _write(tmp_path, "comma.csv", "input,label\ngood, fun day,yes\nbad,no\n")
    with pytest.raises(
        ValueError,
        match=r"comma\.csv, line 2: 3 cells but the header has 2 "
        r"columns; put .* in double quotes",
    ):
        ih.load_task(path)


def test_csv_header_with_label_twice(tmp_path):
    path = _write(tmp_path, "twice.csv", "input,label,label\na,x,y\n")
    with pytest.raises(
        ValueError,
        match=r"twice\.csv: the CSV needs a header with columns "
        r"'input' and 'label' once each",
    ):
        ih.load_task(path)


def test_csv_label_with_surrounding_space_names_line(tmp_path):
    path = _write(tmp_path, "space.csv", "input,label\ngood,yes\nbad, no\n")
    with pytest.raises(
        ValueError,
        match=r"space\.csv, line 3: label ' no' has surrounding "
        "whitespace",
    ):
        ih.load_task(path)


def test_labels_differing_only_in_case_in_file(tmp_path):
    path = _write(tmp_path, "case.csv", "input,label\na,positive\nb,Positive\nc,negative\n")
    with pytest.raises(
        ValueError,
        match=r"case\.csv: labels 'positive' \(line 2\), 'Positive' "
        r"\(line 3\) differ only in case",
    ):
        ih.load_task(path)


def test_labels_differing_only_in_case_in_make_task():
    with pytest.raises(ValueError, match=r"'Yes' \(example 1\) differ only in case"):
        ih.make_task("t", [("a", "yes"), ("b", "Yes"), ("c", "no")])
    with pytest.raises(ValueError, match=r"labels \['no', 'NO'\] differ only in case"):
        ih.make_task("t", [("a", "yes"), ("b", "no")], labels=["yes", "no", "NO"])


# ---------------------------------------------------------------------------------------
# JSONL rows


@pytest.mark.parametrize(
    "line,shown",
    [
        ('{"input": "a", "label": null}', r"'label' is None \(NoneType\)"),
        ('{"input": ["a"], "label": "x"}', r"'input' is \['a'\] \(list\)"),
        ('{"input": "a", "label": true}', r"'label' is True \(bool\)"),
        ('{"input": {"t": 1}, "label": "x"}', r"'input' is \{'t': 1\} \(dict\)"),
    ],
)
def test_jsonl_non_string_fields_name_line_and_value(tmp_path, line, shown):
    path = _write(tmp_path, "types.jsonl", '{"input": "z", "label": "y"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"types\.jsonl, line 2: " + shown):
        ih.load_task(path)


def test_jsonl_missing_key_is_named(tmp_path):
    path = _write(tmp_path, "keys.jsonl", '{"text": "a", "label": "x"}\n')
    with pytest.raises(ValueError, match=r"keys\.jsonl, line 1: no 'input' key"):
        ih.load_task(path)


def test_json_array_file_gets_jsonl_hint(tmp_path):
    path = _write(tmp_path, "array.json", '[\n{"input": "a", "label": "x"}\n]\n')
    with pytest.raises(
        ValueError,
        match=r"array\.json, line 1: not valid JSON.*JSON array; "
        r"write one object per line",
    ):
        ih.load_task(path)


# ---------------------------------------------------------------------------------------
# duplicate inputs


def test_duplicate_input_same_label_names_both_lines(tmp_path):
    path = _write(tmp_path, "dup.csv", "input,label\ngood,yes\nbad,no\ngood,yes\n")
    with pytest.raises(
        ValueError,
        match=r"dup\.csv: input 'good' is listed twice \(line 2 and "
        r"line 4, label 'yes' both times\)",
    ):
        ih.load_task(path)


def test_duplicate_input_different_labels_jsonl(tmp_path):
    path = _write(
        tmp_path,
        "dup.jsonl",
        '{"input": "good", "label": "yes"}\n\n'
        '{"input": "bad", "label": "no"}\n{"input": "good ", "label": "no"}\n',
    )
    with pytest.raises(
        ValueError,
        match=r"input 'good ' is listed twice \(line 1 and line 4, "
        r"labels 'yes' and 'no'\)",
    ):
        ih.load_task(path)


def test_duplicate_input_in_make_task():
    with pytest.raises(ValueError, match=r"input 'a' is listed twice \(example 0 and example 2"):
        ih.make_task("t", [("a", "x"), ("b", "y"), ("a", "y")])


# ---------------------------------------------------------------------------------------
# make_task arguments


@pytest.mark.parametrize(
    "examples,shown",
    [
        ([("a", None), ("b", "y")], r"example 0 label is None \(NoneType\)"),
        ([(["a"], "x"), ("b", "y")], r"example 0 input is \['a'\] \(list\)"),
        ([("a", "x"), ("b", True)], r"example 1 label is True \(bool\)"),
        (
            [("a", "x", "z"), ("b", "y")],
            r"example 0 is \('a', 'x', 'z'\); each example must be an "
            r"\(input, label\) pair",
        ),
        ({"a": "x", "b": "y"}, r"got a dict; pass list\(examples\.items\(\)\)"),
        ("ab", r"examples must be a list of \(input, label\) pairs, got str"),
    ],
)
def test_make_task_bad_examples(examples, shown):
    with pytest.raises(TypeError, match=shown):
        ih.make_task("t", examples)


def test_make_task_labels_given_as_one_string():
    with pytest.raises(TypeError, match=r"got the string 'xy'"):
        ih.make_task("t", [("a", "x"), ("b", "y")], labels="xy")


# ---------------------------------------------------------------------------------------
# templates (checked when the task is made, not at build_prompts)


@pytest.mark.parametrize(
    "template,shown",
    [
        ("Text: {text}\nLabel: {label}\n", r"an unknown field '\{text\}'.*Write '\{\{' and '\}\}'"),
        ("{} {input} {label}\n", r"a positional field '\{\}'"),
        ("{0} {input} {label}\n", r"a positional field '\{0\}'"),
        ("{input!r} {label}\n", r"'\{input!r\}' \(conversions and format specs are not supported"),
        ("{input} {label:>8}\n", r"'\{label:>8\}'"),
        ("set {a, b}: {input} {label}\n", r"unknown field '\{a, b\}'"),
        ("{input} -> { {label}\n", r"unmatched '\{' at position 11; write '\{\{' for a literal"),
        ("{input} } {label}\n", r"unmatched '\}' at position 8; write '\}\}' for a literal"),
        ("", r"exactly once"),
    ],
)
def test_bad_template_rejected_by_load_task_and_make_task(template, shown):
    with pytest.raises(ValueError, match=r"Template .*" + shown):
        ih.load_task("sentiment", template=template)
    with pytest.raises(ValueError, match=r"Template .*" + shown):
        ih.make_task("t", [("a", "x"), ("b", "y")], template=template)


def test_template_not_a_string():
    with pytest.raises(TypeError, match=r"template must be a str .* got bytes"):
        ih.load_task("sentiment", template=b"{input} {label}")


# ---------------------------------------------------------------------------------------
# build_prompts arguments


@pytest.mark.parametrize(
    "kwargs,shown",
    [
        (dict(k=True, n=2), r"k must be a non-negative integer, got bool True"),
        (dict(k=2.0, n=2), r"k must be a non-negative integer, got float 2\.0; write 2"),
        (dict(k="2", n=2), r"k must be a non-negative integer, got str '2'"),
        (dict(k=1, n=True), r"n must be a positive integer, got bool True"),
        (dict(k=1, n=3.0), r"n must be a positive integer, got float 3\.0"),
        (
            dict(k=1, n=2, seed="a"),
            r"seed must be a non-negative integer \(a random seed\), got str 'a'",
        ),
        (
            dict(k=1, n=2, seed=1.5),
            r"seed must be a non-negative integer \(a random seed\), got float 1\.5",
        ),
        (
            dict(k=1, n=2, seed=None),
            r"seed must be a non-negative integer \(a random seed\), got NoneType None",
        ),
        (dict(k=1, n=2, perturbation=3), r"perturbation must be None or one of .* got int 3"),
        (
            dict(k=1, n=2, prepend_bos="yes"),
            r"prepend_bos must be True, False or None .* str 'yes'",
        ),
        (dict(k=1, n=2, prepend_bos=1), r"prepend_bos must be True, False or None .* int 1"),
    ],
)
def test_build_prompts_wrong_argument_types(tiny_llama, two_labels, kwargs, shown):
    with pytest.raises(TypeError, match=shown):
        ih.build_prompts(tiny_llama, two_labels, **kwargs)


@pytest.mark.parametrize(
    "kwargs,shown",
    [
        (dict(k=-1, n=2), r"k must be a non-negative integer, got -1"),
        (dict(k=1, n=-3), r"n must be a positive integer, got -3"),
        (dict(k=1, n=2, perturbation="shuffle"), r"Unknown perturbation 'shuffle'"),
        (dict(k=4, n=2), r"k=4 demos need at least 5 examples; task 'two' has 4"),
    ],
)
def test_build_prompts_bad_argument_values(tiny_llama, two_labels, kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        ih.build_prompts(tiny_llama, two_labels, **kwargs)


def test_build_prompts_task_name_instead_of_task(tiny_llama):
    with pytest.raises(
        TypeError,
        match=r"got the str 'sentiment'; load it first: "
        r"build_prompts\(model, load_task\('sentiment'\)",
    ):
        ih.build_prompts(tiny_llama, "sentiment", 2, 4)


def test_build_prompts_other_object_as_task(tiny_llama):
    with pytest.raises(TypeError, match=r"task must be a Task .* got list"):
        ih.build_prompts(tiny_llama, [("a", "x")], 1, 2)


def test_build_prompts_model_not_hooked_transformer(smol_tokenizer, two_labels):
    with pytest.raises(
        TypeError,
        match=r"needs a HookedTransformer or a TransformerBridge as model .* got "
        + type(smol_tokenizer).__name__,
    ):
        ih.build_prompts(smol_tokenizer, two_labels, 1, 2)
    with pytest.raises(TypeError, match=r"got Task \(the arguments are \(model, task"):
        ih.build_prompts(two_labels, two_labels, 1, 2)


# ---------------------------------------------------------------------------------------
# PromptSet.select


@pytest.mark.parametrize(
    "index,bad", [([10], 10), ([0, -11], -11), (12, 12), (torch.tensor([3, 99]), 99)]
)
def test_select_out_of_range_names_index_and_size(tiny_prompts, index, bad):
    with pytest.raises(ValueError, match=rf"index {bad} is out of range for a set of 10 prompts"):
        tiny_prompts.select(index)


@pytest.mark.parametrize(
    "index,shown",
    [
        ([1.0], r"index 1\.0 \(float\) is not an int"),
        ([0, 1.5], r"index 1\.5 \(float\) is not an int"),
        (torch.tensor([0.0, 1.0]), r"got a torch\.float32 tensor \[0\.0, 1\.0\]"),
        ([True, 1], r"index True \(bool\) is not an int"),
        (True, r"got the single bool True"),
        ("3", r"got str '3'"),
    ],
)
def test_select_non_integer_indices(tiny_prompts, index, shown):
    with pytest.raises(TypeError, match=shown):
        tiny_prompts.select(index)


@pytest.mark.parametrize("mask", [[True, False, True], torch.ones(11, dtype=torch.bool)])
def test_select_bool_mask_of_wrong_length(tiny_prompts, mask):
    with pytest.raises(
        ValueError,
        match=rf"boolean mask has {len(mask)} entries but the set has "
        "10 prompts",
    ):
        tiny_prompts.select(mask)


def test_select_two_dimensional_index(tiny_prompts):
    with pytest.raises(ValueError, match=r"indices must be 1-D, got shape \(2, 1\)"):
        tiny_prompts.select(torch.tensor([[0], [1]]))


# ---------------------------------------------------------------------------------------
# check_prompt_set: a PromptSet, and one built for this model's tokenizer


@pytest.mark.parametrize("value", [[1, 2], None, "prompts"])
def test_check_prompt_set_rejects_non_prompt_sets(value):
    with pytest.raises(
        TypeError, match=r"source must be a PromptSet .* got " + type(value).__name__
    ):
        check_prompt_set(value, "source")


def test_prompts_from_another_tokenizer_are_rejected(tiny_prompts, word_tokenizer):
    other = make_tiny_model(word_tokenizer, process=False)
    with pytest.raises(
        ValueError,
        match=r"built for model 'custom''s tokenizer \(fingerprint "
        rf"{tiny_prompts.tokenizer_id}\), but model 'custom' has "
        r"a different tokenizer.*rebuild them with build_prompts",
    ):
        check_prompt_set(tiny_prompts, model=other)


def test_changed_tokenizer_fingerprint_is_rejected(tiny_prompts, tiny_llama):
    forged = replace(tiny_prompts, tokenizer_id="0123456789abcdef", model_name="gpt2")
    with pytest.raises(
        ValueError,
        match=r"built for model 'gpt2''s tokenizer \(fingerprint "
        r"0123456789abcdef\)",
    ):
        check_prompt_set(forged, "reference", model=tiny_llama)


def test_prompts_longer_than_model_context(tiny_prompts, smol_tokenizer):
    short = make_tiny_model(smol_tokenizer, n_ctx=16, process=False)
    with pytest.raises(
        ValueError,
        match=rf"are {tiny_prompts.seq_len} tokens long, more than "
        r"model 'custom''s context n_ctx=16",
    ):
        check_prompt_set(tiny_prompts, model=short)


def test_token_ids_beyond_model_vocabulary(tiny_prompts):
    small = make_tiny_model(None, d_vocab=64, process=False)  # no tokenizer: no fingerprint
    hi = int(tiny_prompts.tokens.max())
    with pytest.raises(
        ValueError,
        match=rf"hold token id {hi}, outside model 'custom''s "
        r"vocabulary \[0, d_vocab=64\)",
    ):
        check_prompt_set(tiny_prompts, model=small)


def test_check_prompt_set_model_not_hooked_transformer(tiny_prompts, smol_tokenizer):
    with pytest.raises(TypeError, match=r"check_prompt_set needs a HookedTransformer"):
        check_prompt_set(tiny_prompts, model=smol_tokenizer)


def test_tokenizer_fingerprint_differs_between_tokenizers(smol_tokenizer, word_tokenizer):
    assert tokenizer_fingerprint(smol_tokenizer) != tokenizer_fingerprint(word_tokenizer)
    assert re.fullmatch(r"[0-9a-f]{16}", tokenizer_fingerprint(word_tokenizer))


def test_tokenizer_fingerprint_of_a_model_says_pass_its_tokenizer(tiny_llama):
    with pytest.raises(
        TypeError,
        match=r"needs a Hugging Face tokenizer \(pass model\.tokenizer"
        rf"\), got {type(tiny_llama).__name__}",  # HookedTransformer; TL 4.x: TransformerBridge
    ):
        tokenizer_fingerprint(tiny_llama)


# ---------------------------------------------------------------------------------------
# shift_demo_labels and label_token_ids


@pytest.mark.parametrize(
    "shift,shown", [(1.0, r"float 1\.0"), (True, r"bool True"), ("1", r"str '1'")]
)
def test_shift_demo_labels_non_integer_shift(tiny_prompts, shift, shown):
    with pytest.raises(TypeError, match=r"shift must be an integer, got " + shown):
        shift_demo_labels(tiny_prompts, shift)


def test_shift_demo_labels_needs_a_prompt_set(tiny_prompts):
    with pytest.raises(TypeError, match=r"prompts must be a PromptSet .* got list"):
        shift_demo_labels([tiny_prompts])


def test_shift_demo_labels_needs_label_words(tiny_prompts):
    no_labels = replace(tiny_prompts, label_words=(), label_token_ids=torch.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"at least two label words; these have 0"):
        shift_demo_labels(no_labels)


@pytest.mark.parametrize(
    "words,error,shown",
    [
        ("positive", TypeError, r"words must be a list of label words.* got str 'positive'"),
        (None, TypeError, r"got NoneType None"),
        (["positive", None], TypeError, r"Label word None is a NoneType"),
        (["positive", 3], TypeError, r"Label word 3 is a int"),
        (
            [" positive"],
            ValueError,
            r"Label word ' positive' is empty or has surrounding whitespace",
        ),
        ([""], ValueError, r"Label word '' is empty"),
        ([], ValueError, r"got no words"),
    ],
)
def test_label_token_ids_bad_words(tiny_llama, words, error, shown):
    with pytest.raises(error, match=shown):
        label_token_ids(tiny_llama, words)


def test_label_token_ids_model_not_hooked_transformer(smol_tokenizer):
    with pytest.raises(TypeError, match=r"label_token_ids needs a HookedTransformer"):
        label_token_ids(smol_tokenizer, ["positive"])


# =======================================================================================
# Models and the command line
# =======================================================================================

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if a model gets loaded: every bad input is rejected before loading."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad input")

    for loader in ("_load_embedded", "_hf_from_gguf", "_load_cached", "convert_hf_model"):
        monkeypatch.setattr(models, loader, refuse)
    if ih.backends.hooked_available():  # TransformerLens 4.x has no HookedTransformer
        monkeypatch.setattr(models.HookedTransformer, "from_pretrained", refuse)
    if ih.backends.bridge_available():
        monkeypatch.setattr(models.TransformerBridge, "boot_transformers", refuse)


# --------------------------------------------------------------------------- resolve_device

DEVICE_CASES = [
    ("gpu", ValueError, "'gpu'"),
    ("tpu", ValueError, "'tpu'"),
    ("", ValueError, "''"),
    ("CPU", ValueError, "'CPU'"),
    ("cuda:x", ValueError, "'cuda:x'"),
    ("meta", ValueError, "'meta'"),
    (3.5, TypeError, "3.5"),
    (True, TypeError, "True"),
    (["cpu"], TypeError, "['cpu']"),
]
if NO_CUDA:
    DEVICE_CASES += [
        ("cuda", ValueError, "'cuda'"),
        ("cuda:1", ValueError, "'cuda:1'"),
        (torch.device("cuda"), ValueError, "cuda"),
    ]
if NO_MPS:
    DEVICE_CASES += [("mps", ValueError, "'mps'")]


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("device, error, named", DEVICE_CASES, ids=repr)
def test_resolve_device_rejects(device, error, named):
    with pytest.raises(error) as info:
        models.resolve_device(device)
    assert named in str(info.value)


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_unavailable_cuda_says_so_and_suggests_cpu():
    with pytest.raises(ValueError, match=r"CUDA is not available.*device='cpu'"):
        models.resolve_device("cuda")


# --------------------------------------------------------------------------- resolve_dtype


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    "dtype, error, named",
    [
        ("float8", ValueError, "'float8'"),
        ("int64", ValueError, "'int64'"),
        ("", ValueError, "''"),
        (torch.int64, ValueError, "torch.int64"),
        (torch.complex64, ValueError, "torch.complex64"),
        (None, TypeError, "None"),
        (16, TypeError, "16"),
        (float, TypeError, "float"),
    ],
    ids=repr,
)
def test_resolve_dtype_rejects_and_lists_the_choices(dtype, error, named):
    with pytest.raises(error) as info:
        models.resolve_dtype(dtype)
    message = str(info.value)
    assert named in message
    assert all(name in message for name in ("float32", "float16", "bfloat16", "float64"))


# --------------------------------------------------------------------------- load_model


def _a_file(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"GGUF")
    return path


def _a_dir_without_config(tmp_path):
    path = tmp_path / "empty-model"
    path.mkdir()
    return path


LOAD_MODEL_CASES = [
    # (kwargs, or a function of tmp_path giving them; error; text the message must contain)
    ({"name": 3}, TypeError, "3"),
    ({"name": None}, TypeError, "None"),
    ({"name": ["default"]}, TypeError, "['default']"),
    ({"name": ""}, ValueError, "''"),
    ({"name": "   "}, ValueError, "'   '"),
    ({"name": "not-a-model"}, ValueError, "'not-a-model'"),
    ({"name": "./no/such/model-dir"}, FileNotFoundError, "'./no/such/model-dir'"),
    (lambda tmp: {"name": str(_a_file(tmp))}, ValueError, "weights.gguf"),
    (lambda tmp: {"name": str(_a_dir_without_config(tmp))}, ValueError, "empty-model"),
    ({"name": "default", "device": "gpu"}, ValueError, "'gpu'"),
    ({"name": "default", "device": 3.5}, TypeError, "3.5"),
    ({"name": "default", "dtype": "float8"}, ValueError, "'float8'"),
    ({"name": "default", "dtype": torch.int32}, ValueError, "torch.int32"),
    ({"name": "default", "dtype": None}, TypeError, "None"),
    ({"name": "default", "cache_dir": 3}, TypeError, "3"),
    ({"name": "default", "cache_dir": ""}, ValueError, "''"),
    (lambda tmp: {"name": "default", "cache_dir": _a_file(tmp)}, ValueError, "weights.gguf"),
    (
        lambda tmp: {"name": "default", "cache_dir": _a_file(tmp) / "sub"},
        ValueError,
        "weights.gguf",
    ),
]


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("kwargs, error, named", LOAD_MODEL_CASES, ids=lambda v: repr(v)[:40])
def test_load_model_rejects(tmp_path, kwargs, error, named):
    if callable(kwargs):
        kwargs = kwargs(tmp_path)
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(error) as info:
        models.load_model(name, **kwargs)
    assert named in str(info.value)


@pytest.mark.usefixtures("no_model_loading")
def test_load_tokenizer_rejects_a_model_that_is_not_embedded():
    with pytest.raises(ValueError, match="'gpt2'.*embedded models"):
        models.load_tokenizer("gpt2")


# --------------------------------------------------------------------------- CLI


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    "argv, named",
    [
        (["quickstart", "--n", "0"], "'0'"),
        (["quickstart", "--n", "1.5"], "'1.5'"),
        (["quickstart", "--shots", "-2"], "'-2'"),
        (["quickstart", "--batch-size", "-1"], "'-1'"),
        (["quickstart", "--device", "gpu"], "'gpu'"),
        (["quickstart", "--device", "3.5"], "'3.5'"),
        (["quickstart", "--task", "no-such-task"], "'no-such-task'"),
        (["quickstart", "--task", "no/such/file.csv"], "no/such/file.csv"),
        (["quickstart", "--model", ""], "''"),
        (["quickstart", "--model", "not-a-model"], "'not-a-model'"),
        (["quickstart", "--model", "./no/such/model-dir"], "./no/such/model-dir"),
        (["quickstart", "--shots", "100000"], "100000"),
        (["quickstart", "--out", ""], "--out"),
        (["no-such-command"], "'no-such-command'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_cli_rejects_with_one_line_and_exit_code_2(capsys, argv, named):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("icl-heads: error: ") and err.count("\n") == 1, err
    assert named in err


@pytest.mark.usefixtures("no_model_loading")
def test_cli_out_under_a_file(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert cli.main(["quickstart", "--out", str(blocker / "q.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err


# ---- H2: provenance (issue 22 class 2: objects that must belong together, checked together)
# Each case was accepted before (a silently wrong result) or failed deep inside (IndexError
# from stats.py); now a ValueError names both origins. Positive cases: tests/test_provenance.py.


@pytest.fixture(scope="module")
def h2_found(tiny_llama, tiny_prompts):
    from icl_heads.experiments import trtl

    return trtl.find_task_heads(tiny_llama, tiny_prompts, n_boot=20, progress=False)


@pytest.fixture(scope="module")
def h2_topic(tiny_llama):
    return ih.build_prompts(tiny_llama, ih.load_task("topic"), k=3, n=8, seed=0)


def _h2_cases():
    from icl_heads.experiments import trtl
    from icl_heads.experiments.geometry import head_ablation_geometry, task_vector_experiment
    from icl_heads.geometry import alignment

    fast = dict(n_boot=20, progress=False)
    geo = dict(layers=[2], folds=2, n_boot=5, progress=False)
    return [
        (  # the head sets of find_task_heads on sentiment, ablated on topic prompts
            "ablation: head sets of another task",
            lambda m, p, f, t: trtl.ablation_experiment(m, t, trtl.head_sets(f), **fast),
            r"found on task 'sentiment'.*prompts here are task 'topic'",
        ),
        (
            "ablation: a TR map of another task",
            lambda m, p, f, t: trtl.ablation_experiment(m, t, {"TR": f.maps["TR"]}, **fast),
            r"heads\['TR'\] is a map scored on task 'sentiment'.*task 'topic'",
        ),
        (
            "ablation: a map of another model (same shape)",
            lambda m, p, f, t: trtl.ablation_experiment(
                m,
                p,
                {
                    "TR": replace(
                        f.maps["TR"], settings=f.maps["TR"].settings.replace(model="gpt-x")
                    )
                },
                **fast,
            ),
            r"made with model 'gpt-x'.*model here is 'custom'",
        ),
        (
            "correlation: maps of another task",
            lambda m, p, f, t: trtl.correlation_experiment(
                m, t, tr=f.maps["TR"], tl=f.maps["TL"], **fast
            ),
            r"tr= is a map scored on task 'sentiment'.*task 'topic'",
        ),
        (  # before: IndexError from stats.py (8 prompts paired with the map's 10 rows)
            "reconciliation: maps of other prompts of the task",
            lambda m, p, f, t: trtl.reconciliation_experiment(
                m,
                ih.build_prompts(m, ih.load_task("sentiment"), 3, 8, 1),
                tr=f.maps["TR"],
                tl=f.maps["TL"],
                **fast,
            ),
            r"tr= must be scored on these prompts.*n=10, seed=0.*\(10 per-prompt rows\).*n=8, seed=1",
        ),
        (
            "steering: target prompts of another task",
            lambda m, p, f, t: trtl.steering_experiment(
                m, p, ih.build_prompts(m, ih.load_task("topic"), 0, 8, 0), {"TR": [(1, 0)]}, **fast
            ),
            r"source_prompts are task 'sentiment'.*target_prompts are task 'topic'",
        ),
        (
            "steering: head sets of another task",
            lambda m, p, f, t: trtl.steering_experiment(
                m, t, ih.build_prompts(m, ih.load_task("topic"), 0, 8, 0), trtl.head_sets(f), **fast
            ),
            r"found on task 'sentiment'",
        ),
        (  # before: accepted, the "task vector" was a mean zero-shot state
            "task vectors: ICL and zero-shot prompts swapped",
            lambda m, p, f, t: task_vector_experiment(
                m, ih.build_prompts(m, ih.load_task("sentiment"), 0, 10, 0), p, **geo
            ),
            r"source_prompts have no demonstrations \(k=0.*look swapped",
        ),
        (
            "task vectors: a target with demonstrations",
            lambda m, p, f, t: task_vector_experiment(m, p, p, **geo),
            r"target_prompts have k=3 demonstrations",
        ),
        (  # same label words (same label tokens), another task
            "task vectors: a zero-shot set of another task",
            lambda m, p, f, t: task_vector_experiment(
                m,
                p,
                ih.build_prompts(
                    m,
                    ih.make_task(
                        "reviews", [(f"r{i}", ("positive", "negative")[i % 2]) for i in range(8)]
                    ),
                    0,
                    10,
                    0,
                ),
                **geo,
            ),
            r"task 'sentiment'.*target_prompts are task 'reviews'.*same task",
        ),
        (  # before: accepted (a smaller map's top heads ablated on this model)
            "head ablation geometry: a map of another model's shape",
            lambda m, p, f, t: head_ablation_geometry(
                m, p, {"X": HeadScores(torch.rand(1, 4))}, n_random=0, **geo
            ),
            r"\[1 layers, 4 heads\].*\[2 layers, 4 heads\]",
        ),
        (
            "head ablation geometry: a TR map of another task",
            lambda m, p, f, t: head_ablation_geometry(m, t, {"TR": f.maps["TR"]}, **geo),
            r"heads\['TR'\] is a map scored on task 'sentiment'",
        ),
        (
            "ablation: means at other positions",
            lambda m, p, f, t: trtl.ablation_experiment(
                m,
                p,
                {"S": [(1, 0)]},
                means=ih.activation_means(m, p, positions="query", progress=False),
                **fast,
            ),
            r"means= were taken at positions='query'.*positions='all'",
        ),
        (
            "ablation: means of another task",
            lambda m, p, f, t: trtl.ablation_experiment(
                m, p, {"S": [(1, 0)]}, means=ih.activation_means(m, t, positions="all"), **fast
            ),
            r"means= were computed over task 'topic'.*prompts here are task 'sentiment'",
        ),
        (
            "ablation: means of another model",
            lambda m, p, f, t: trtl.ablation_experiment(
                m,
                p,
                {"S": [(1, 0)]},
                means=replace(ih.activation_means(m, p, positions="all"), model="gpt-x"),
                **fast,
            ),
            r"means= was made with model 'gpt-x'",
        ),
        (
            "ablation: means not of the given reference",
            lambda m, p, f, t: trtl.ablation_experiment(
                m,
                p,
                {"S": [(1, 0)]},
                means=ih.activation_means(m, p, positions="all"),
                reference=t,
                **fast,
            ),
            r"means= were computed over task 'sentiment'.*reference= is task 'topic'",
        ),  # fmt: skip
        (
            "correlation: means of another task",
            lambda m, p, f, t: trtl.correlation_experiment(
                m, p, means=ih.activation_means(m, t, positions="query"), **fast
            ),
            r"means= were computed over task 'topic'",
        ),
        (  # same name, same queries, another template: the prompts' task differs
            "perturbation: task= is not the prompts' task",
            lambda m, p, f, t: trtl.perturbation_experiment(
                m, p, task=ih.load_task("sentiment", template="Q: {input}\nA: {label}\n"), **fast
            ),
            r"built from task 'sentiment' \(digest [0-9a-f]+.*not from the given task "
            r"'sentiment' \(digest [0-9a-f]+",
        ),
        (
            "perturbation: gold= of other prompts names both",
            lambda m, p, f, t: trtl.perturbation_experiment(
                m, ih.build_prompts(m, ih.load_task("sentiment"), 3, 10, 7), gold=f, **fast
            ),
            r"gold: task 'sentiment'.*seed=0.*here: task 'sentiment'.*seed=7",
        ),
        (
            "perturbation: gold= of another model",
            lambda m, p, f, t: trtl.perturbation_experiment(
                m, p, gold=replace(f, settings=f.settings.replace(model="gpt-x")), **fast
            ),
            r"other model .*gold: model 'gpt-x'; here: model 'custom'",
        ),
        (  # before: accepted, NaN cosines for the zero label difference
            "alignment: a label token listed twice",
            lambda m, p, f, t: alignment(
                torch.randn(10, 32), p.gold, m, [int(p.label_token_ids[0])] * 2, n_boot=5
            ),
            r"repeat token\(s\) \[\d+\]",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_h2_cases())), ids=[c[0] for c in _h2_cases()])
def test_h2_objects_that_do_not_belong_together_are_refused(
    tiny_llama, tiny_prompts, h2_found, h2_topic, case
):
    _, call, named = _h2_cases()[case]
    with pytest.raises(ValueError, match=named):
        call(tiny_llama, tiny_prompts, h2_found, h2_topic)


def test_h2_case_variants_with_different_labels_are_refused_naming_both(tmp_path):
    with pytest.raises(ValueError, match=r"'Great film' \(example 0.*'great  FILM' \(example 2"):
        ih.make_task(
            "v", [("Great film", "positive"), ("bad", "negative"), ("great  FILM", "negative")]
        )
    path = tmp_path / "variants.csv"
    path.write_text("input,label\nGreat film,positive\nbad,negative\ngreat film,negative\n")
    with pytest.raises(ValueError, match=r"variants.csv.*'Great film' \(line 2.*\(line 4"):
        ih.load_task(path)


# ---- H6: head maps (issue 21): scale= and disagreements()


def test_head_maps_name_a_bad_scale():
    from icl_heads import viz

    scores = HeadScores(torch.arange(6.0).reshape(2, 3), name="tr_score")
    with pytest.raises(ValueError, match="scale: use one of .*got 'log'"):
        viz.head_heatmap(scores, scale="log")
    with pytest.raises(ValueError, match="got 'Rank'"):
        viz.head_heatmaps({"TR": scores}, scale="Rank")


def test_disagreements_name_a_bad_bottom_share():
    from icl_heads.viz.agreement import disagreements

    scores = HeadScores(torch.arange(6.0).reshape(2, 3), name="tr_score")
    with pytest.raises(ValueError, match=r"bottom is a share in \(0, 1\), got 1.5"):
        disagreements({"TR": scores, "TL": scores}, bottom=1.5)


# ---- H4: order and presentation of CLI errors
# The model names of the command line are checked before any model loads, each error naming
# the bad name and the option; the CLI's other new checks, one line and exit code 2 each.


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    "name, error, named",
    [
        ("", ValueError, "--models ''"),
        ("nope", ValueError, "Unknown model 'nope'"),
        ("./no/such/model-dir", FileNotFoundError, "'./no/such/model-dir'"),
    ],
)
def test_cli_model_name_check_names_the_name_and_the_option(name, error, named):
    with pytest.raises(error, match=re.escape(named)):
        cli._check_model_name(name, "--models")


@pytest.mark.usefixtures("no_model_loading")
def test_cli_model_name_check_refuses_a_file_and_a_directory_without_config(tmp_path):
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"'.*weights\.gguf' is a file"):
        cli._check_model_name(str(weights))
    with pytest.raises(ValueError, match=r"--model '.*' is a directory without config\.json"):
        cli._check_model_name(str(tmp_path))


@pytest.mark.usefixtures("no_model_loading")
def test_cli_model_name_check_refuses_an_unreachable_hub_model(monkeypatch):
    monkeypatch.setattr(cli, "_hub_problem", lambda repo: "ConnectError: no DNS")
    with pytest.raises(ConnectionError, match=r"--model 'gpt2'.*no DNS.*--model default"):
        cli._check_model_name("gpt2")


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    "argv, named",
    [
        (["reproduce", "--models", "default", "not-a-model"], "'not-a-model'"),
        (["reproduce", "--models", "default", "./no/such/dir"], "./no/such/dir"),
        (["reproduce", "--n", "1"], "--n 1"),
        (["reproduce", "--seed", "-1"], "'-1'"),
        (["reproduce", "--tasks", "capital", "--experiments", "geometry"], "'capital'"),
        (["perturb", "--perturbations", "zero_shot"], "zero_shot"),
        (["perturb", "--perturbations", "gold", "zero_shot", "zero_shot"], "'zero_shot'"),
        (["perturb", "--n", "2"], "--n 2"),
        (["geometry", "--n", "5"], "--n 5"),
        (["geometry", "--folds", "0"], "'0'"),
        (["task-vectors", "--n", "4", "--folds", "3"], "--n 4"),
        (["find-heads", "--seed", "-3"], "'-3'"),
        (["find-heads", "--model", "not-a-model"], "'not-a-model'"),
        (["quickstart", "--device", "tpu"], "--device 'tpu'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_cli_checks_before_loading_give_one_line(capsys, tmp_path, argv, named):
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icl-heads: error: ") and err.count("\n") == 1, err
    assert named in err


@pytest.mark.usefixtures("no_model_loading")
def test_cli_page_dir_under_a_file_names_page_dir(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = ["reproduce", "--pages", "--page-dir", str(blocker / "pages"), "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--page-dir" in err and str(blocker) in err


# ---- H1: where outputs go, in the Python API (issue 22, class 4)


def _h1_result():
    from icl_heads.results import ExperimentResult, make_table, table_row

    info = ih.PromptInfo(task="sentiment", k=4, n=8, seed=0, perturbation="gold", model="m")
    return ExperimentResult(
        "x", make_table([table_row("baseline", "accuracy", 0.5, 0.4, 0.6, 8)]), info
    )


def _h1_writers():
    from icl_heads.report import write_report

    scores = HeadScores(torch.zeros(2, 3), name="s")
    return {
        "ExperimentResult.save": lambda p: _h1_result().save(p),
        "HeadScores.save": lambda p: scores.save(p.with_suffix(".json")),
        "write_report": lambda p: write_report(p.with_suffix(".html"), scores),
    }


@pytest.mark.parametrize("writer", ["ExperimentResult.save", "HeadScores.save", "write_report"])
def test_api_writers_refuse_a_path_under_a_file_naming_it(tmp_path, writer):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=re.escape(repr(str(blocker))) + ".* is a file") as err:
        _h1_writers()[writer](blocker / "sub" / "out")
    assert writer in str(err.value)
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("writer", ["HeadScores.save", "write_report"])
def test_api_file_writers_refuse_a_directory_naming_it(tmp_path, writer):
    target = tmp_path / ("out.json" if writer == "HeadScores.save" else "out.html")
    target.mkdir()
    with pytest.raises(ValueError, match=re.escape(repr(str(target))) + " is a directory"):
        _h1_writers()[writer](tmp_path / "out")


def test_experiment_result_save_refuses_a_file_an_empty_path_and_a_nameless_one(tmp_path):
    target = tmp_path / "r"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match=re.escape(repr(str(target))) + " is a file"):
        _h1_result().save(target)
    with pytest.raises(ValueError, match="ExperimentResult.save: directory is empty"):
        _h1_result().save("")
    with pytest.raises(ValueError, match="names no directory of its own"):
        _h1_result().save(tmp_path / "sub" / "..")
    with pytest.raises(TypeError, match="str or Path, got int"):
        _h1_result().save(3)


def test_reproduce_out_dir_under_a_file_is_refused_before_any_work(tiny_llama, tmp_path):
    from icl_heads.experiments import geometry, trtl

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"reproduce_trtl: out_dir .*file\.txt' is a file"):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], blocker / "out", progress=False)
    with pytest.raises(ValueError, match=r"reproduce_geometry: out_dir .*file\.txt' is a file"):
        geometry.reproduce_geometry(tiny_llama, ["sentiment"], blocker, progress=False)
    with pytest.raises(TypeError, match="rerun_stale must be True or False, got 'yes'"):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], tmp_path, rerun_stale="yes")


# ---- H3: NaN and infinities (issue 22, class 3; the policy: docs/api.md, "NaN and
# infinities"). NaN is never ranked and never a class; a map never becomes an empty head
# set; non-finite logits, states, terms or patterns are never scored; +-inf is refused
# where a mean is taken and ranked where only order matters.


from icl_heads import metrics, stats  # noqa: E402
from icl_heads.attribution import subspace_basis  # noqa: E402
from icl_heads.detectors.scoring import detection_patterns, score_patterns  # noqa: E402
from icl_heads.experiments import kit, trtl  # noqa: E402


class _NaNStream:
    """An intervention that writes NaN into the residual stream (a broken run)."""

    model = None

    def fwd_hooks(self, batch=None, index=None):
        return [("blocks.0.hook_resid_pre", lambda act, hook: act * math.nan)]

    def describe(self) -> str:
        return "nan_stream()"


def _blank(name="tl_score"):
    return HeadScores(torch.full((2, 4), math.nan), name=name)


H3_CASES = [
    (
        "mask of an all-NaN map",
        lambda e: _blank().mask(1),
        ValueError,
        r"'tl_score' has no rankable head",
    ),
    (
        "ablate the mask of an all-NaN map",
        lambda e: ih.ablate(e["m"], _blank().mask()),
        ValueError,
        r"tl_score.mask: the HeadScores map 'tl_score' has no rankable head",
    ),
    (
        "ablate an all-NaN map itself (not its mask)",
        lambda e: ih.ablate(e["m"], _blank()),
        ValueError,
        r"Heads: the HeadScores map 'tl_score' has no rankable head",
    ),
    (
        "named set from an all-NaN map",
        lambda e: kit.named_sets(e["m"], {"TL": _blank()}),
        ValueError,
        r"Head set 'TL': the HeadScores map 'tl_score' has no rankable head",
    ),
    (
        "named set from a map with top_k=0",
        lambda e: kit.named_sets(e["m"], {"TR": e["s"]}, top_k=0),
        ValueError,
        r"Head set 'TR': the HeadScores map 's' gives no head set: k must be >= 1, got 0",
    ),
    (
        "head_set from a map of another shape",
        lambda e: kit.head_set(e["m"], HeadScores(torch.ones(3, 4), name="big"), "TR"),
        ValueError,
        r"Head set 'TR': the HeadScores map 'big' has shape \[3, 4\]",
    ),
    (
        "ablation experiment with an all-NaN map",
        lambda e: trtl.ablation_experiment(e["m"], e["p"], {"TR": e["s"], "TL": _blank()}),
        ValueError,
        r"Head set 'TL'.*'tl_score'",
    ),
    (
        "random controls of an empty set",
        lambda e: kit.check_random(2, ["none"], {"TR": [Head(0, 0)], "none": []}),
        ValueError,
        r"random_like names 'none', an empty head set",
    ),
    (
        "separability with NaN labels",
        lambda e: ih.separability(
            torch.randn(20, 4), [0.0, 1.0] * 9 + [math.nan, 1.0], folds=2, n_boot=5
        ),
        ValueError,
        r"labels hold 1 missing value\(s\) .*prompt 18 = nan",
    ),
    (
        "separability with None labels",
        lambda e: ih.separability(torch.randn(20, 4), ["a", "b"] * 9 + [None, "a"], folds=2),
        ValueError,
        r"prompt 18 = None",
    ),
    (
        "alignment with NaN labels",
        lambda e: ih.alignment(
            torch.randn(10, 32), [0.0, 1.0] * 4 + [math.nan, 1.0], e["m"], e["p"].label_token_ids
        ),
        ValueError,
        r"labels hold 1 missing value",
    ),
    (
        "separability with an inf state",
        lambda e: ih.separability(
            torch.randn(20, 4).index_put_(
                (torch.tensor([7]), torch.tensor([2])), torch.tensor(math.inf)
            ),
            [0, 1] * 10,
            folds=2,
        ),
        ValueError,
        r"states contain NaN or inf values in 1 of 20 prompts \(first: prompt 7\)",
    ),
    (
        "steer alpha NaN",
        lambda e: ih.steer(e["m"], torch.ones(32), 0, alpha=math.nan),
        ValueError,
        r"steer: alpha must be a finite number, got nan",
    ),
    (
        "steer alpha inf",
        lambda e: ih.steer(e["m"], torch.ones(32), head=(1, 2), alpha=-math.inf),
        ValueError,
        r"alpha must be a finite number, got -inf",
    ),
    (
        "steer alpha overflowing float32",
        lambda e: ih.steer(e["m"], torch.full((32,), 10.0), 0, alpha=1e38),
        ValueError,
        r"alpha=1e\+38 times the vector for resid_pre of layer 0 overflows",
    ),
    (
        "steer NaN vector of a head",
        lambda e: ih.steer(
            e["m"], torch.ones(32).index_fill_(0, torch.tensor([5]), math.nan), head=(1, 2)
        ),
        ValueError,
        r"steer: vector for head L1H2 holds 1 NaN or inf value\(s\) .*entry 5",
    ),
    (
        "steer inf z vector of a head",
        lambda e: ih.steer(e["m"], torch.full((8,), math.inf), head=(0, 3)),
        ValueError,
        r"vector for head L0H3 holds 8 NaN or inf",
    ),
    (
        "steering experiment with a NaN head vector",
        lambda e: trtl.steering_experiment(
            e["m"],
            e["p"],
            e["p"],
            {"TR": [(1, 0)]},
            (0, 1),
            n_random=1,
            vectors=torch.zeros(2, 4, 32).index_fill_(2, torch.tensor([3]), math.nan),
            progress=False,
        ),
        ValueError,
        r"steer: vector for head L1H0 holds 1 NaN or inf value\(s\) .*entry 3",
    ),
    (
        "inject NaN task vector",
        lambda e: ih.inject_task_vector(e["m"], torch.full((32,), math.nan), 1),
        ValueError,
        r"inject_task_vector: vector for state 1 holds 32 NaN",
    ),
    (
        "inject task vector with scale NaN",
        lambda e: ih.inject_task_vector(e["m"], torch.ones(32), 1, scale=math.nan),
        ValueError,
        r"scale must be a finite number, got nan",
    ),
    (
        "accuracy of NaN logits",
        lambda e: metrics.accuracy(
            torch.full((4, 6), math.nan), torch.tensor([0, 1, 0, 1]), torch.tensor([2, 4])
        ),
        ValueError,
        r"accuracy: the logits of 4 of 4 prompts hold NaN",
    ),
    (
        "logit_diff of inf label logits",
        lambda e: metrics.logit_diff(
            torch.zeros(3, 6).index_fill_(1, torch.tensor([4]), math.inf),
            torch.tensor([0, 1, 0]),
            torch.tensor([2, 4]),
        ),
        ValueError,
        r"logit_diff: the logits of 3 of 3 prompts hold inf",
    ),
    (
        "label-space rate of a NaN logit outside the labels",
        lambda e: metrics.label_space_rate(
            torch.zeros(2, 6).index_fill_(1, torch.tensor([5]), math.nan),
            torch.tensor([0, 1]),
            torch.tensor([2, 4]),
        ),
        ValueError,
        r"label_space_rate: .*NaN",
    ),
    (
        "custom metric on NaN logits",
        lambda e: metrics.get_metric(_gold_logit)(
            torch.full((2, 6), math.nan), torch.tensor([0, 1]), torch.tensor([2, 4])
        ),
        ValueError,
        r"_gold_logit: the logits of 2 of 2 prompts hold NaN",
    ),
    (
        "evaluate a run that makes NaN logits",
        lambda e: ih.evaluate(e["m"], e["p"], interventions=[_NaNStream()], progress=False),
        ValueError,
        r"the logits of 10 of 10 prompts hold NaN",
    ),
    (
        "tsla_scores of a run with NaN activations",
        lambda e: ih.tsla_scores(e["m"], e["p"], interventions=[_NaNStream()], progress=False),
        ValueError,
        r"'head' term holds NaN or inf \(first: prompt 0, head L0H0\)",
    ),
    (
        "task_vector of a run with NaN states",
        lambda e: ih.task_vector(e["m"], e["p"], 1, interventions=[_NaNStream()], progress=False),
        ValueError,
        r"task_vector: the query states contain NaN or inf values in 10 of 10 prompts",
    ),
    (
        "detectors on a run with NaN patterns",
        lambda e: ih.induction_scores(
            e["m"], T=4, n_sequences=2, interventions=[_NaNStream()], progress=False
        ),
        ValueError,
        r"blocks.0.attn.hook_pattern: the attention of 2 of 2 sequences is zero in a whole",
    ),
    (
        "label attention on a run with NaN patterns",
        lambda e: ih.label_attention_scores(
            e["m"], e["p"], interventions=[_NaNStream()], progress=False
        ),
        ValueError,
        r"label_attention_scores: the attention of 10 of 10 sequences is zero",
    ),
    (
        "score_patterns with a NaN at a kept entry",
        lambda e: score_patterns(
            torch.full((1, 2, 4, 4), 0.25).index_put_(
                (torch.tensor([0]), torch.tensor([1]), torch.tensor([3]), torch.tensor([0])),
                torch.tensor(math.nan),
            ),
            detection_patterns(torch.tensor([[1, 2, 1, 2]])),
            torch.ones(1, 4, 4, dtype=torch.bool),
        ),
        ValueError,
        r"attention patterns of 1 of 1 sequences hold NaN or inf at real positions",
    ),
    (
        "detect_heads threshold NaN",
        lambda e: ih.detect_heads(e["m"], T=4, n_sequences=1, thresholds=math.nan),
        ValueError,
        r"thresholds must be a finite number, got nan",
    ),
    (
        "detect_heads threshold of a kind inf",
        lambda e: ih.detect_heads(e["m"], T=4, n_sequences=1, thresholds={"induction": math.inf}),
        ValueError,
        r"thresholds\['induction'\] must be a finite number, got inf",
    ),
    (
        "subspace of NaN directions",
        lambda e: subspace_basis(torch.ones(32, 3).index_fill_(1, torch.tensor([1]), math.nan)),
        ValueError,
        r"directions hold 32 NaN or inf value\(s\) in column\(s\) \[1\]",
    ),
    (
        "mean_ci of inf",
        lambda e: stats.mean_ci([1.0, 2.0, math.inf]),
        ValueError,
        r"values holds 1 infinite value\(s\) \(first: flat index 2 = inf\)",
    ),
    (
        "paired difference with an inf baseline",
        lambda e: stats.paired_difference_ci([1.0, 2.0], [0.0, -math.inf]),
        ValueError,
        r"baseline holds 1 infinite value",
    ),
    (
        "independent difference with an inf sample",
        lambda e: stats.independent_difference_ci([math.inf, 2.0], [0.0, 1.0]),
        ValueError,
        r"treated holds 1 infinite value",
    ),
    (
        "Pearson correlation of inf",
        lambda e: stats.correlation_ci([1.0, 2.0, 3.0, math.inf], [1, 2, 3, 4], method="pearson"),
        ValueError,
        r"x holds 1 infinite value",
    ),
    (
        "Pearson correlation difference of inf",
        lambda e: stats.correlation_difference_ci(
            [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, -math.inf], method="pearson"
        ),
        ValueError,
        r"y2 holds 1 infinite value",
    ),
    (
        "top-k overlap of an all-NaN map",
        lambda e: stats.top_k_overlap([math.nan] * 4, [1.0, 2.0, 3.0, 4.0], 2),
        ValueError,
        r"map a has no rankable value",
    ),
    (
        "top-k overlap interval of inf per-prompt scores",
        lambda e: stats.top_k_overlap_ci(
            torch.ones(3, 2, 2),
            torch.ones(3, 2, 2).index_fill_(1, torch.tensor([1]), math.inf),
            1,
            paired=True,
        ),
        ValueError,
        r"per_prompt_b holds 6 infinite value",
    ),
]


def _gold_logit(logits, gold, labels):
    return logits[:, 0]


@pytest.mark.parametrize(
    "call, error, match", [c[1:] for c in H3_CASES], ids=[c[0] for c in H3_CASES]
)
def test_h3_nan_and_inf_give_a_clear_error(call, error, match, env):
    with pytest.raises(error, match=match) as info:
        call(env)
    assert "\n" not in str(info.value).strip(), "the message should be one line"
    frames = [tb.tb_frame.f_code.co_filename for tb in _walk(info.tb)]
    assert "icl_heads" in frames[-1].replace("\\", "/"), frames[-1]


def test_h3_nan_and_minus_inf_ties_rank_only_the_rankable_heads():
    # the issue's case: NaN before -inf in row-major order; NaN was ranked 3 of 2
    scores = HeadScores(torch.tensor([[math.nan, -math.inf], [1.0, math.nan]]), name="x")
    assert scores.top(2) == [Head(1, 0), Head(0, 1)]
    with pytest.warns(UserWarning, match="only 2 are rankable"):
        assert scores.top(3) == [Head(1, 0), Head(0, 1)]  # never a NaN head
    rank = scores.rank()
    assert rank[1, 0] == 1 and rank[0, 1] == 2
    assert torch.isnan(rank[0, 0]) and torch.isnan(rank[1, 1])
    assert scores.to_frame()["rank"].max() == 2


def test_h3_an_empty_list_stays_an_explicit_empty_set(env):
    assert kit.named_sets(env["m"], {"none": [], "TR": env["s"]})["none"] == []


def test_h3_steering_a_zero_shot_set_never_scores_nan_logits(env):
    # alpha = NaN used to give NaN logits scored as accuracy 0.5; now it stops at steer()
    with pytest.raises(ValueError, match="alpha"):
        trtl_steer = ih.steer(env["m"], torch.ones(32), head=(1, 0), alpha=float("nan"))
        ih.evaluate(env["m"], env["p"], interventions=[trtl_steer], progress=False)


def test_a_negative_seed_is_named_at_the_call(tiny_llama, tiny_prompts, sentiment_task):
    """numpy's generators need a seed >= 0: the error names it at the public call, not
    from inside numpy ("expected non-negative integer")."""
    from icl_heads import stats  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"seed must be a non-negative integer.*got -1"):
        ih.build_prompts(tiny_llama, sentiment_task, k=1, n=2, seed=-1)
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer.*got -3"):
        stats.mean_ci(torch.arange(5.0), seed=-3)
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer.*got -1"):
        trtl.find_task_heads(tiny_llama, tiny_prompts, seed=-1)


def test_perturbation_needs_a_label_with_two_prompts(tiny_llama, sentiment_task):
    """Before: an IndexError from the split-half code when every label had one prompt."""
    prompts = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=8, seed=0)
    one_each = prompts.select([prompts.gold.tolist().index(c) for c in (0, 1)])
    with pytest.raises(ValueError, match=r"some label needs >= 2 prompts; got 2 prompt\(s\)"):
        trtl.perturbation_experiment(tiny_llama, one_each, n_boot=10, progress=False)


def test_a_class_with_too_few_prompts_is_named_as_a_plain_number():
    """Before: ``class np.int64(1) has 1 prompts`` (numpy's repr in a user message)."""
    states = torch.randn(7, 4)
    with pytest.raises(ValueError, match=r"class 1 has 1 prompts, fewer than folds=2"):
        ih.separability(states, [0, 0, 0, 0, 0, 0, 1], folds=2, n_boot=5)


def test_detect_heads_refuses_a_top_k_beyond_the_heads(tiny_llama):
    """Before: top_k=1000 was accepted and every head got every kind."""
    with pytest.raises(ValueError, match=r"top_k = 1000 is more than the model's 8 heads"):
        ih.detect_heads(tiny_llama, top_k=1000)
    with pytest.raises(ValueError, match=r"top_k\['induction'\] = 9 is more than"):
        ih.detect_heads(tiny_llama, top_k={"induction": 9})


def test_kit_head_set_refuses_a_map_of_another_model(tiny_llama, tiny_prompts):
    """Every experiment that takes named sets (kit.named_sets) checks a map's model, not
    only the TR/TL experiments that call the provenance checks themselves."""
    tr, _ = ih.tsla_scores(tiny_llama, tiny_prompts, progress=False)
    other = replace(tr, settings=tr.settings.replace(model="gpt-x"))
    with pytest.raises(ValueError, match=r"Head set 'TR'.*gpt-x"):
        kit.named_sets(tiny_llama, {"TR": other})
    assert kit.named_sets(tiny_llama, {"TR": tr}) == {"TR": sorted(tr.top())}


def test_ablate_refuses_means_of_another_model(tiny_llama, tiny_prompts):
    """The primitive too (before: only the TR/TL experiments checked the means' model)."""
    means = ih.activation_means(tiny_llama, tiny_prompts, "z", progress=False)
    other = replace(means, model="gpt-x")
    with pytest.raises(ValueError, match=r"Mean ablation: means= was made with model 'gpt-x'"):
        ih.ablate(tiny_llama, [(0, 1)], mode="mean", means=other)
    ih.ablate(tiny_llama, [(0, 1)], mode="mean", means=means)  # its own model: fine


# ---- H5: a results page writer pointed at the other family's results folder
# (issue 22 class 2): it raised nothing and wrote a page of "–" and "unclear" verdicts.

_DOCS_DATA = Path(__file__).resolve().parents[1] / "docs" / "results" / "data"


def _cells_folder(tmp_path, *cells):
    """A results folder ``tmp_path/results/m/t/<name>`` with copies of saved cells
    ``(family, experiment, name)`` from docs/results/data (smollm2-135m-instruct, topic)."""
    root = tmp_path / "results"
    for family, experiment, name in cells:
        source = _DOCS_DATA / family / "smollm2-135m-instruct" / "topic" / experiment
        shutil.copytree(source, root / "m" / "t" / name)
    return root


@pytest.mark.parametrize(
    "writer, folder, other",
    [
        (write_trtl_page, "geometry", "write_geometry_page"),
        (write_geometry_page, "trtl", "write_trtl_page"),
    ],
    ids=["trtl page from geometry results", "geometry page from trtl results"],
)
def test_page_writer_rejects_the_other_familys_results(tmp_path, writer, folder, other):
    root = _DOCS_DATA / folder
    page = tmp_path / "page.md"
    with pytest.raises(ValueError, match=re.escape(root.as_posix()) + ".*" + other) as info:
        writer(root, page, tmp_path / "figures")
    assert "holds no" in str(info.value)
    assert not page.exists() and not (tmp_path / "figures").exists()


@pytest.mark.parametrize("writer", [write_trtl_page, write_geometry_page])
def test_page_writer_rejects_a_folder_without_its_familys_cells(tmp_path, writer):
    root = _cells_folder(tmp_path, ("trtl", "ablation", "my_experiment"))
    with pytest.raises(ValueError, match=re.escape(root.as_posix()) + ".*m/t/my_experiment"):
        writer(root, tmp_path / "page.md", tmp_path / "figures")
    assert not (tmp_path / "page.md").exists()


def test_trtl_page_writer_rejects_a_folder_mixing_both_families(tmp_path):
    root = _cells_folder(
        tmp_path, ("trtl", "ablation", "ablation"), ("geometry", "task_vector", "task_vector")
    )
    with pytest.raises(ValueError, match="also holds geometry results.*m/t/task_vector"):
        write_trtl_page(root, tmp_path / "page.md", tmp_path / "figures")


def test_check_family_rejects_an_unknown_family():
    with pytest.raises(ValueError, match="'trtl'.*'TR/TL'"):
        check_family({}, "results", "trtl")


# ---- H10: verdict rules (icl_heads.experiments.verdict_rules)


def test_verdict_rules_name_the_bad_value():
    from icl_heads.experiments import verdict_rules as vr
    from icl_heads.experiments.geometry.verdicts import geometry_claim_verdict

    with pytest.raises(TypeError, match="3"):
        vr.margin_for(3)
    with pytest.raises(ValueError, match="sign must be \\+1 or -1, got 0"):
        vr.judge(0.1, 0.0, 0.2, sign=0, null=0.0)
    with pytest.raises(ValueError, match="'mostly holds'"):
        vr.pool_verdicts(["holds", "mostly holds"])
    with pytest.raises(ValueError, match="2 values, 1 lows, 2 highs"):
        vr.grid_mean([0.1, 0.2], [0.0], [0.3, 0.4])
    with pytest.raises(ValueError, match="to_level must lie strictly between 0 and 1, got 95"):
        vr.rescale_interval(0.0, -1.0, 1.0, 0.99, 95)
    with pytest.raises(ValueError, match="2 values, 1 lows"):
        vr.pool_estimates([0.1, 0.2], [0.0], [0.3])
    with pytest.raises(ValueError, match="Unknown claim 'speed'"):
        geometry_claim_verdict("speed", {})


@pytest.mark.parametrize(
    "family, folder, expected",
    [("trtl", "geometry", "TR/TL"), ("geometry", "trtl", "geometry")],
)
def test_verdicts_refuse_the_other_familys_folder(family, folder, expected):
    """Before: every claim came out "unclear" (the page writers check too; these are the
    functions under them)."""
    from icl_heads.experiments.geometry.verdicts import geometry_verdicts  # noqa: PLC0415
    from icl_heads.experiments.trtl.verdicts import trtl_verdicts  # noqa: PLC0415

    verdicts = trtl_verdicts if family == "trtl" else geometry_verdicts
    root = f"docs/results/data/{folder}"
    with pytest.raises(ValueError, match=rf"{root!s}' holds no {expected} results"):
        verdicts(root)


# ---- H7: backends (load_model(backend=...), the model check of icl_heads.backends)


@pytest.mark.parametrize("bad", ["torch", "HOOKED", "", None, 4])
def test_load_model_refuses_an_unknown_backend_before_loading(bad):
    with pytest.raises(ValueError, match=rf"backend={re.escape(repr(bad))} is not a backend"):
        ih.load_model("default", device="cpu", backend=bad)


def test_check_backend_names_the_analysis_and_the_type():
    from icl_heads.backends import check_backend

    with pytest.raises(TypeError, match=r"tsla_scores needs a HookedTransformer .* got str"):
        check_backend("gpt2", "tsla_scores")


def test_check_backend_refuses_a_bridge_without_compatibility_mode(smol_tokenizer):
    from icl_heads import backends

    if not backends.bridge_available():
        pytest.skip("the installed TransformerLens has no TransformerBridge")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=smol_tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    raw = backends.TransformerBridge.boot_transformers(
        "raw", hf_model=LlamaForCausalLM(config), tokenizer=smol_tokenizer, device="cpu"
    )
    with pytest.raises(ValueError, match=r"head_sweep needs a TransformerBridge in compat.*"):
        backends.check_backend(raw, "head_sweep")


# ---- H12: held-out split, TL normaliser and ablation sensitivity mode (issue 18)


def test_h12_bad_split_and_option_inputs_name_the_value(tiny_llama, tiny_prompts, tmp_path):
    from icl_heads.experiments import trtl  # noqa: PLC0415
    from icl_heads.experiments.splits import heldout_split, split_prompts  # noqa: PLC0415

    task = ih.load_task("sentiment")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\).*1\.5"):
        heldout_split(task, 1.5)
    with pytest.raises(TypeError, match="fraction must be a number.*'half'"):
        heldout_split(task, "half")
    with pytest.raises(TypeError, match=r"needs a Task .*got str 'sentiment'; load it first"):
        heldout_split("sentiment")
    one = ih.make_task("tiny", [("a", "yes"), ("b", "yes"), ("c", "no")], labels=["yes", "no"])
    with pytest.raises(ValueError, match="label 'no' of task 'tiny' has 1 distinct input"):
        heldout_split(one)
    split = heldout_split(task)
    with pytest.raises(ValueError, match="Unknown split part 'test'"):
        split_prompts(tiny_llama, task, 2, 4, split=split, part="test")
    with pytest.raises(ValueError, match="made for task 'sentiment'.*not for task 'topic'"):
        split_prompts(tiny_llama, ih.load_task("topic"), 2, 4, split=split, part="selection")
    with pytest.raises(TypeError, match="split must be a TaskSplit.*dict"):
        split_prompts(tiny_llama, task, 2, 4, split={}, part="selection")
    with pytest.raises(ValueError, match="sensitivity_mode='mean' must be None or another"):
        trtl.ablation_experiment(
            tiny_llama, tiny_prompts, {"TR": [(1, 0)]}, sensitivity_mode="mean", progress=False
        )
    with pytest.raises(ValueError, match="sensitivity_mode='half'"):
        trtl.ablation_experiment(
            tiny_llama, tiny_prompts, {"TR": [(1, 0)]}, sensitivity_mode="half", progress=False
        )
    with pytest.raises(ValueError, match="Unknown tl_normalize 'cosine'"):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], tmp_path, tl_normalize="cosine")
    with pytest.raises(ValueError, match="sensitivity_mode='mean': the grid's ablation mode"):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], tmp_path, sensitivity_mode="mean")
    with pytest.raises(TypeError, match="heldout"):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], tmp_path, heldout="yes")
    assert not any(tmp_path.iterdir())  # refused before anything was written


# ---- H11: steering protocols (issue 18 item 1)


@pytest.fixture(scope="module")
def _h11_prompts(tiny_llama, sentiment_task):
    icl = ih.build_prompts(tiny_llama, sentiment_task, k=3, n=6, seed=0)
    return icl, ih.build_prompts(tiny_llama, sentiment_task, k=0, n=6, seed=0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(protocol="matched"), ValueError, r"Unknown steering protocol 'matched'"),
        (dict(seed=1), ValueError, r"target prompt \d+ asks task example \d+ but source prompt"),
        (dict(n=5), ValueError, r"source_prompts has 6 prompts and target_prompts 5"),
        (dict(positions="all"), ValueError, r"positions='all' is not supported"),
        (dict(vectors=True), ValueError, r"drop vectors="),
    ],
)
def test_query_matched_steering_refuses_unpaired_or_unsupported_input(
    tiny_llama, sentiment_task, _h11_prompts, change, error, match
):
    icl, twins = _h11_prompts
    change = dict(change)
    if "seed" in change or "n" in change:
        twins = ih.build_prompts(
            tiny_llama, sentiment_task, k=0, n=change.pop("n", 6), seed=change.pop("seed", 0)
        )
    if change.pop("vectors", False):
        change["vectors"] = trtl.mean_head_outputs(tiny_llama, icl, progress=False)
    kwargs = dict(protocol="query_matched", n_random=0, n_boot=10, progress=False)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        trtl.steering_experiment(tiny_llama, icl, twins, {"TR": [(1, 0)]}, (0, 1), **kwargs)


# ---- H4: power table and wall time
from icl_heads.experiments import power as power_rules  # noqa: E402
from icl_heads.results import make_table, table_row  # noqa: E402


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "se": 0.1, "distance": 0.1}, r"n must be a positive integer.*0"),
        ({"n": 64, "se": -1.0, "distance": 0.1}, r"se must be.*-1"),
        ({"n": 64, "se": 0.1, "distance": 0.0}, r"distance must be.*0"),
        ({"n": 64, "se": 0.1, "distance": 0.1, "power": 1.5}, r"power.*1\.5"),
    ],
)
def test_required_n_names_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        power_rules.required_n(**kwargs)


def test_resolving_n_names_a_bad_verdict_or_n():
    with pytest.raises(ValueError, match=r"unknown verdict 'maybe'"):
        power_rules.resolving_n(0.1, 0.0, 0.2, 64, verdict="maybe")
    with pytest.raises(ValueError, match=r"n must be a positive integer.*None"):
        power_rules.resolving_n(0.1, -0.1, 0.3, None, verdict="unclear")
    with pytest.raises(ValueError, match=r"entry 0 lacks \['n'\]"):
        power_rules.power_table([{"model": "m", "claim": "c", "task": "t", "statistic": "s",
                                  "test": {}}])  # fmt: skip


def test_a_bad_wall_time_is_refused_on_saving_and_loading(tmp_path):
    info = ih.PromptInfo(task="t", k=4, n=8, seed=0, perturbation="gold")
    table = make_table([table_row("baseline", "accuracy", 0.5, 0.4, 0.6, 8)])
    with pytest.raises(ValueError, match=r"wall_seconds must be a finite number >= 0, got -1"):
        ih.ExperimentResult("x", table, info, wall_seconds=-1.0)
    with pytest.raises(TypeError, match=r"wall_seconds must be a number of seconds.*str"):
        ih.ExperimentResult("x", table, info, wall_seconds="3 s")
    ih.ExperimentResult("x", table, info, wall_seconds=2.5).save(tmp_path / "cell")
    meta = tmp_path / "cell" / "result.json"
    header = json.loads(meta.read_text())
    header["wall_seconds"] = "slow"
    meta.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"wall_seconds in .*result\.json.* is 'slow'"):
        ih.ExperimentResult.load(tmp_path / "cell")


# ---- H8: the grid runners (issue 20 item 5: reproduce --backend ray)


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    "extra, named",
    [
        (["--address", "auto"], "--address auto is for --backend ray"),
        (["--gpus-per-cell", "1"], "--gpus-per-cell 1.0 is for --backend ray"),
        (["--backend", "ray", "--gpus-per-cell", "-1"], "'-1'"),
        (["--backend", "dask"], "'dask'"),
    ],
)
def test_reproduce_backend_options_are_checked_before_any_model_loads(
    capsys, tmp_path, extra, named
):
    assert cli.main(["reproduce", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icl-heads: error: ") and err.count("\n") == 1, err
    assert named in err


@pytest.mark.usefixtures("no_model_loading")
def test_reproduce_on_ray_without_ray_names_the_extra(capsys, monkeypatch, tmp_path):
    from icl_heads.experiments import ray_runner

    monkeypatch.setattr(ray_runner, "ray", None)
    assert cli.main(["reproduce", "--backend", "ray", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "icl-heads[ray]"' in err, err


def test_grid_runners_refuse_bad_arguments_naming_them(tmp_path):
    from icl_heads.experiments import grid, ray_runner

    with pytest.raises(ValueError, match=r"plan_grid: models must be a non-empty list, got \[\]"):
        grid.plan_grid([], ["sentiment"], ["trtl"])
    with pytest.raises(ValueError, match=r"plan_grid: tasks .* got 'sentiment'"):
        grid.plan_grid(["default"], "sentiment", ["trtl"])
    with pytest.raises(TypeError, match=r"keep_going must be True or False, got 'yes'"):
        grid.LocalRunner(keep_going="yes")
    with pytest.raises(ValueError, match="run_grid: no cells"):
        grid.run_grid(object(), [], grid.LocalRunner())
    if ray_runner.ray_available():
        with pytest.raises(ValueError, match=r"address=''"):
            ray_runner.RayRunner(address="")
        with pytest.raises(ValueError, match=r"gpus_per_cell=-1"):
            ray_runner.RayRunner(gpus_per_cell=-1)
        with pytest.raises(ValueError, match=r"cpus_per_cell='2'"):
            ray_runner.RayRunner(cpus_per_cell="2")


# ---- H6: model names (icl_heads.model_names.check_model_name), backends


def test_model_name_check_names_the_bad_value():
    from icl_heads.model_names import check_model_name

    with pytest.raises(TypeError, match=r"name must be a model name.*got 3 of type int"):
        check_model_name(3)
    with pytest.raises(ValueError, match=r"Unknown model 'nope-x' \(name\)"):
        check_model_name("nope-x")
    with pytest.raises(ConnectionError, match=r"name 'gpt2'.*no DNS.*Use 'default'"):
        check_model_name("gpt2", probe=lambda repo: "ConnectError: no DNS")


def test_backend_hooked_on_transformer_lens_4_names_the_fix(monkeypatch):
    from icl_heads import backends

    monkeypatch.setattr(backends, "HookedTransformerConfig", None)  # as on TL 4.x
    with pytest.raises(ValueError, match=r"backend='hooked' needs TransformerLens 3\.x"):
        backends.resolve_backend("hooked")


# ---- H7 (s25): batch_size="auto" and the benchmark shapes (issue 20)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size="big"), ValueError, r"batch_size='big' is not a batch size.*'auto'"),
        (
            dict(batch_size=2.5),
            TypeError,
            r"batch_size must be a positive integer or 'auto', got 2.5",
        ),
        (dict(batch_size=0), ValueError, r"batch_size must be >= 1 \(or 'auto'\), got 0"),
        (dict(rows_per_pass="most"), ValueError, r"rows_per_pass='most' is not a batch size"),
    ],
)
def test_bad_batch_sizes_name_the_value_and_the_choices(
    tiny_llama, tiny_prompts, kwargs, error, match
):
    with pytest.raises(error, match=match):
        ih.head_sweep(tiny_llama, tiny_prompts, progress=False, **kwargs)


def test_an_unknown_batching_kind_or_benchmark_shape_is_named():
    import importlib.util
    from pathlib import Path

    from icl_heads import batching

    with pytest.raises(ValueError, match=r"kind='rows' is not a batching kind"):
        batching.row_bytes(make_tiny_model(d_vocab=64).cfg, 10, "rows")
    skip_without_hooked("benchmarks/bench_gpu.py imports HookedTransformer")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(ValueError, match=r"Unknown shape 'Llama-2-7B'"):
        bench.shape_config("Llama-2-7B")


# ---- H5: the grid's design (issue 18 items 1, 2, 4, 5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(design="main"), TypeError, r"design must be a trtl Design .*got str"),
        (
            dict(
                tl_normalize="tr",
                design=trtl.LEGACY.__class__(**{**vars(trtl.LEGACY), "tl_sensitivity": "tr"}),
            ),
            ValueError,
            r"tl_sensitivity='tr' must be None or "
            r"another TL score",
        ),  # fmt: skip
        (
            dict(design=trtl.LEGACY.__class__(**{**vars(trtl.LEGACY), "steering_protocols": ()})),
            ValueError,
            r"steering_protocols must be a non-empty tuple",
        ),  # fmt: skip
        (
            dict(
                design=trtl.LEGACY.__class__(
                    **{**vars(trtl.LEGACY), "steering_protocols": ("mean_of_all",)}
                )
            ),
            ValueError,
            r"Unknown steering protocol 'mean_of_all'",
        ),  # fmt: skip
        (dict(n_seeds=0), ValueError, r"n_seeds"),
    ],
)
def test_grid_design_errors_name_the_bad_setting(tiny_llama, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        trtl.reproduce_trtl(tiny_llama, ["sentiment"], tmp_path, quick=True, progress=False,
                            **kwargs)  # fmt: skip
    assert not list(tmp_path.rglob("result.json"))


def test_tl_sensitivity_errors_name_the_value_and_the_fix(tiny_llama, tiny_prompts):
    with pytest.raises(ValueError, match=r"Unknown sensitivity_normalize 'raw'"):
        trtl.find_task_heads(tiny_llama, tiny_prompts, sensitivity_normalize="raw",
                             progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"sensitivity_normalize='none' equals normalize"):
        trtl.find_task_heads(tiny_llama, tiny_prompts, sensitivity_normalize="none",
                             progress=False)  # fmt: skip
    found = trtl.find_task_heads(tiny_llama, tiny_prompts, n_boot=10, progress=False)
    with pytest.raises(ValueError, match=r"sensitivity_normalize='none'"):
        trtl.head_sets(found, sensitivity=True)
    with pytest.raises(TypeError, match=r"continuous must be True or False, got 'yes'"):
        trtl.ablation_experiment(tiny_llama, tiny_prompts, {"TR": [(1, 0)]}, n_random=0,
                                 random_like=(), continuous="yes", progress=False)  # fmt: skip


def test_replaying_a_steering_cell_needs_its_alpha(tiny_llama, sentiment_task):
    from icl_heads.experiments.replay import replay

    icl = ih.build_prompts(tiny_llama, sentiment_task, k=3, n=6, seed=0)
    twins = ih.build_prompts(tiny_llama, sentiment_task, k=0, n=6, seed=0)
    res = trtl.steering_experiment(tiny_llama, icl, twins, {"TR": [(1, 0)]}, (0, 1),
                                   protocol="query_matched", n_random=0, random_like=(), n_boot=10,
                                   progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"pass alpha="):
        replay(res, tiny_llama, "TR")
    with pytest.raises(ValueError, match=r"No condition 'TR' at alpha=2.0"):
        replay(res, tiny_llama, "TR", alpha=2.0)
    plain = trtl.steering_experiment(tiny_llama, icl, twins, {"TR": [(1, 0)]}, (0, 1),
                                     n_random=0, random_like=(), n_boot=10, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"protocol='query_matched' only"):
        replay(plain, tiny_llama, "TR", alpha=1.0)


def test_head_ablation_geometry_refuses_a_bad_mode_or_reference(tiny_llama, tiny_prompts):
    from icl_heads.experiments.geometry import head_ablation_geometry, reproduce_geometry

    with pytest.raises(ValueError, match=r"Unknown ablation mode 'average'"):
        head_ablation_geometry(tiny_llama, tiny_prompts, {"PTH": [(0, 1)]}, mode="average",
                               n_random=0, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"sensitivity_mode='median'"):
        head_ablation_geometry(tiny_llama, tiny_prompts, {"PTH": [(0, 1)]},
                               sensitivity_mode="median", n_random=0, progress=False)  # fmt: skip
    other = ih.build_prompts(tiny_llama, ih.load_task("topic"), k=2, n=6, seed=0)
    with pytest.raises(ValueError, match=r"reference prompts of task 'topic'"):
        head_ablation_geometry(tiny_llama, tiny_prompts, {"PTH": [(0, 1)]}, reference=other,
                               n_random=0, progress=False)  # fmt: skip
    from icl_heads.experiments import geometry

    bad = geometry.Design(heldout=False, split_fraction=0.5, sensitivity_mode="zero")
    with pytest.raises(ValueError, match=r"sensitivity_mode='zero': the geometry grid's"):
        reproduce_geometry(tiny_llama, ["sentiment"], "unused-out", design=bad)


# ---- H1: the docs hook that executes the notebooks (docs/reference/notebooks.py)


def test_docs_notebooks_hook_names_a_bad_mode(tmp_path, monkeypatch):
    import importlib.util

    from mkdocs.exceptions import PluginError

    path = Path(__file__).resolve().parents[1] / "docs" / "reference" / "notebooks.py"
    spec = importlib.util.spec_from_file_location("icl_heads_docs_notebooks_hook", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    monkeypatch.setenv("ICL_HEADS_DOCS_NOTEBOOKS", "always")
    with pytest.raises(
        PluginError, match=r"ICL_HEADS_DOCS_NOTEBOOKS='always'.*cached, fresh, skip"
    ):
        hook.on_pre_build({"docs_dir": str(tmp_path)})


# ---- H1 (s26): batch_size="auto" everywhere (issue 20)


@pytest.mark.parametrize("bad", ["big", 0, 2.5, True])
def test_a_recorded_batch_size_that_is_no_batch_size_names_the_field(tiny_llama, tiny_prompts, bad):
    iv = ih.ablate(tiny_llama, [(0, 1)], "resample", reference=tiny_prompts, progress=False)
    spec = json.loads(json.dumps(iv.to_spec()))
    spec["reference"]["batch_size"] = bad
    with pytest.raises(
        ValueError,
        match=rf"'reference.batch_size'.*positive whole number or 'auto', got {re.escape(repr(bad))}",
    ):
        ih.interventions.from_spec(tiny_llama, spec, prompts=[tiny_prompts])


@pytest.mark.parametrize(
    "call",
    [
        lambda m, p, b: ih.attribution_patching(m, p, batch_size=b, progress=False),
        lambda m, p, b: trtl.correlation_experiment(m, p, batch_size=b, n_boot=5, progress=False),
    ],
    ids=["attribution_patching", "correlation_experiment"],
)
def test_a_bad_batch_size_is_named_at_the_public_call(tiny_llama, tiny_prompts, call):
    with pytest.raises(ValueError, match=r"batch_size='most' is not a batch size.*'auto'"):
        call(tiny_llama, tiny_prompts, "most")
    with pytest.raises(
        TypeError, match=r"batch_size must be a positive integer or 'auto', got 1.5"
    ):
        call(tiny_llama, tiny_prompts, 1.5)


# ---- H3 (s26): bridge fixes (issue 19)


@pytest.mark.skipif(
    not ih.backends.bridge_available(),
    reason="the installed TransformerLens has no transformer_lens.model_bridge (needs >= 3.9)",
)
def test_tokenizer_fingerprint_of_a_bridge_says_pass_its_tokenizer(smol_tokenizer):
    from tiny_hf import tiny_hf_llama

    bridge = models.bridge_from_hf_model(tiny_hf_llama(smol_tokenizer.vocab_size), smol_tokenizer)
    with pytest.raises(
        TypeError,
        match=r"needs a Hugging Face tokenizer \(pass model\.tokenizer\), got TransformerBridge",
    ):
        tokenizer_fingerprint(bridge)


def test_attribution_patching_without_a_gradient_names_the_hook_point(tiny_llama, tiny_prompts):
    class Overwrite:  # replaces layer 0's z with values that do not depend on it
        def fwd_hooks(self, batch, index):
            return [("blocks.0.attn.hook_z", lambda act, hook: torch.zeros_like(act))]

    with pytest.raises(
        ValueError,
        match=r"no gradient of the metric with respect to blocks\.0\.attn\.hook_z .*"
        r"an intervention that overwrites hook_z",
    ):
        ih.attribution_patching(
            tiny_llama, tiny_prompts, positions="all", interventions=[Overwrite()], progress=False
        )


# ---- lead (s27): hooks after the last block; pattern hooks on packed bridge rows (issue 19)


class _FinalNormHook:  # a user's intervention at the final norm's input
    def fwd_hooks(self, batch, index):
        return [("ln_final.hook_in", lambda act, hook: act * 2)]


@pytest.mark.parametrize("analysis", ["run_conditions", "head_sweep"])
def test_an_intervention_after_the_last_block_is_refused(tiny_llama, tiny_prompts, analysis):
    """It acted in a bridge's clean full passes and nowhere else (the engines read the
    final residual stream): a silently different number between backends and runs."""
    from icl_heads.last_token import Run, run_conditions

    with pytest.raises(
        ValueError,
        match=r"hooks ln_final\.hook_in, after the last block.*"
        r"blocks\.1\.hook_resid_post",
    ):
        if analysis == "run_conditions":
            run_conditions(
                tiny_llama,
                tiny_prompts,
                {"x": Run((), start=1)},
                query_only=True,
                background=[_FinalNormHook()],
                progress=False,
            )
        else:
            ih.head_sweep(
                tiny_llama, tiny_prompts, interventions=[_FinalNormHook()], progress=False
            )


def test_a_pattern_hook_on_packed_bridge_rows_is_refused():
    from icl_heads import bridge_engine

    with pytest.raises(
        ValueError,
        match=r"blocks\.1\.attn\.hook_pattern cannot act on the "
        r"bridge engine's query rows.*positions='all'",
    ):
        bridge_engine.row_view("blocks.1.attn.hook_pattern", lambda act, hook: act, 3, 2)
    _, fn = bridge_engine.row_view(lambda name: True, lambda act, hook: act, 3, 2)

    class Hook:
        name = "blocks.1.attn.hook_z"

    with pytest.raises(ValueError, match=r"activation \(3, 4, 5\) is not \[prompt, row"):
        fn(torch.zeros(3, 4, 5), Hook())


def test_an_intervention_after_the_last_block_is_refused_by_collect(tiny_llama, tiny_prompts):
    """Was: applied once on a HookedTransformer (in the unembedding) and twice on a bridge."""
    with pytest.raises(ValueError, match=r"hooks ln_final\.hook_in, after the last block"):
        ih.evaluate(tiny_llama, tiny_prompts, interventions=[_FinalNormHook()], progress=False)
