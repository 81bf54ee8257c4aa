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
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_model

import icl_heads as ih
from icl_heads import cli, models
from icl_heads.activations import collect
from icl_heads.heads import Head, HeadScores, heads_to_mask
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
        (dict(k=1, n=2, seed="a"), r"seed must be an integer, got str 'a'"),
        (dict(k=1, n=2, seed=1.5), r"seed must be an integer, got float 1\.5"),
        (dict(k=1, n=2, seed=None), r"seed must be an integer, got NoneType None"),
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
        match=r"needs a HookedTransformer as model .* got " + type(smol_tokenizer).__name__,
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
        r"\), got HookedTransformer",
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
    monkeypatch.setattr(models.HookedTransformer, "from_pretrained", refuse)


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
