"""Bad inputs to tasks and prompts: each raises a clear error that names the bad value.

Task files (``load_task``), ``make_task``, templates, ``build_prompts`` arguments,
``PromptSet.select``, ``check_prompt_set`` (prompts built for another model),
``shift_demo_labels``, ``label_token_ids`` and ``tokenizer_fingerprint``.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_model

import icl_heads as ih
from icl_heads.prompts import (
    check_prompt_set,
    label_token_ids,
    shift_demo_labels,
    tokenizer_fingerprint,
)

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

    words = ["[UNK]", "[EOS]", "Input", ":", "Label", "positive", "negative", "good", "bad",
             "day"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                   eos_token="[EOS]", pad_token="[EOS]")


@pytest.fixture(scope="module")
def two_labels():
    return ih.make_task("two", [("good day", "positive"), ("bad day", "negative"),
                                ("fine day", "positive"), ("sad day", "negative")])


# ---------------------------------------------------------------------------------------
# task files: encoding, missing files, empty files


def test_non_utf8_file_names_file_byte_and_fix(tmp_path):
    path = _write(tmp_path, "latin.csv", "input,label\ncafé,yes\nbad,no\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not valid UTF-8: byte b'\\xe9' at line 2"
                                         r".*re-save the file as UTF-8"):
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
    with pytest.raises(FileNotFoundError, match=re.escape(str(path)) + r"' does not exist.*"
                                                 r"antonym, capital, .*sentiment, topic"):
        ih.load_task(str(path))


def test_unknown_name_suggests_close_builtin():
    with pytest.raises(ValueError, match=r"Unknown task 'sentimnet'.*Did you mean 'sentiment'"):
        ih.load_task("sentimnet")


@pytest.mark.parametrize("name_or_path", [None, 3, ["sentiment"]])
def test_load_task_wrong_type(name_or_path):
    with pytest.raises(TypeError, match=r"built-in task name or a file path, got "
                                        + type(name_or_path).__name__):
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


@pytest.mark.parametrize("row,key", [("lonely", "label"), ("lonely,", "label"),
                                     (",no", "input"), ("   ,no", "input")])
def test_csv_missing_or_empty_cell_names_file_and_line(tmp_path, row, key):
    path = _write(tmp_path, "cells.csv", f"input,label\ngood,yes\n{row}\nbad,no\n")
    with pytest.raises(ValueError, match=rf"cells\.csv, line 3: the {key} cell is missing or "
                                         "empty"):
        ih.load_task(path)


def test_csv_unquoted_comma_is_not_split_silently(tmp_path):
    path = _write(tmp_path, "comma.csv", "input,label\ngood, fun day,yes\nbad,no\n")
    with pytest.raises(ValueError, match=r"comma\.csv, line 2: 3 cells but the header has 2 "
                                         r"columns; put .* in double quotes"):
        ih.load_task(path)


def test_csv_header_with_label_twice(tmp_path):
    path = _write(tmp_path, "twice.csv", "input,label,label\na,x,y\n")
    with pytest.raises(ValueError, match=r"twice\.csv: the CSV needs a header with columns "
                                         r"'input' and 'label' once each"):
        ih.load_task(path)


def test_csv_label_with_surrounding_space_names_line(tmp_path):
    path = _write(tmp_path, "space.csv", "input,label\ngood,yes\nbad, no\n")
    with pytest.raises(ValueError, match=r"space\.csv, line 3: label ' no' has surrounding "
                                         "whitespace"):
        ih.load_task(path)


def test_labels_differing_only_in_case_in_file(tmp_path):
    path = _write(tmp_path, "case.csv", "input,label\na,positive\nb,Positive\nc,negative\n")
    with pytest.raises(ValueError, match=r"case\.csv: labels 'positive' \(line 2\), 'Positive' "
                                         r"\(line 3\) differ only in case"):
        ih.load_task(path)


def test_labels_differing_only_in_case_in_make_task():
    with pytest.raises(ValueError, match=r"'Yes' \(example 1\) differ only in case"):
        ih.make_task("t", [("a", "yes"), ("b", "Yes"), ("c", "no")])
    with pytest.raises(ValueError, match=r"labels \['no', 'NO'\] differ only in case"):
        ih.make_task("t", [("a", "yes"), ("b", "no")], labels=["yes", "no", "NO"])


# ---------------------------------------------------------------------------------------
# JSONL rows


@pytest.mark.parametrize("line,shown", [
    ('{"input": "a", "label": null}', r"'label' is None \(NoneType\)"),
    ('{"input": ["a"], "label": "x"}', r"'input' is \['a'\] \(list\)"),
    ('{"input": "a", "label": true}', r"'label' is True \(bool\)"),
    ('{"input": {"t": 1}, "label": "x"}', r"'input' is \{'t': 1\} \(dict\)"),
])
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
    with pytest.raises(ValueError, match=r"array\.json, line 1: not valid JSON.*JSON array; "
                                         r"write one object per line"):
        ih.load_task(path)


# ---------------------------------------------------------------------------------------
# duplicate inputs


def test_duplicate_input_same_label_names_both_lines(tmp_path):
    path = _write(tmp_path, "dup.csv", "input,label\ngood,yes\nbad,no\ngood,yes\n")
    with pytest.raises(ValueError, match=r"dup\.csv: input 'good' is listed twice \(line 2 and "
                                         r"line 4, label 'yes' both times\)"):
        ih.load_task(path)


def test_duplicate_input_different_labels_jsonl(tmp_path):
    path = _write(tmp_path, "dup.jsonl", '{"input": "good", "label": "yes"}\n\n'
                  '{"input": "bad", "label": "no"}\n{"input": "good ", "label": "no"}\n')
    with pytest.raises(ValueError, match=r"input 'good ' is listed twice \(line 1 and line 4, "
                                         r"labels 'yes' and 'no'\)"):
        ih.load_task(path)


def test_duplicate_input_in_make_task():
    with pytest.raises(ValueError, match=r"input 'a' is listed twice \(example 0 and example 2"):
        ih.make_task("t", [("a", "x"), ("b", "y"), ("a", "y")])


# ---------------------------------------------------------------------------------------
# make_task arguments


@pytest.mark.parametrize("examples,shown", [
    ([("a", None), ("b", "y")], r"example 0 label is None \(NoneType\)"),
    ([(["a"], "x"), ("b", "y")], r"example 0 input is \['a'\] \(list\)"),
    ([("a", "x"), ("b", True)], r"example 1 label is True \(bool\)"),
    ([("a", "x", "z"), ("b", "y")], r"example 0 is \('a', 'x', 'z'\); each example must be an "
                                    r"\(input, label\) pair"),
    ({"a": "x", "b": "y"}, r"got a dict; pass list\(examples\.items\(\)\)"),
    ("ab", r"examples must be a list of \(input, label\) pairs, got str"),
])
def test_make_task_bad_examples(examples, shown):
    with pytest.raises(TypeError, match=shown):
        ih.make_task("t", examples)


def test_make_task_labels_given_as_one_string():
    with pytest.raises(TypeError, match=r"got the string 'xy'"):
        ih.make_task("t", [("a", "x"), ("b", "y")], labels="xy")


# ---------------------------------------------------------------------------------------
# templates (checked when the task is made, not at build_prompts)


@pytest.mark.parametrize("template,shown", [
    ("Text: {text}\nLabel: {label}\n", r"an unknown field '\{text\}'.*Write '\{\{' and '\}\}'"),
    ("{} {input} {label}\n", r"a positional field '\{\}'"),
    ("{0} {input} {label}\n", r"a positional field '\{0\}'"),
    ("{input!r} {label}\n", r"'\{input!r\}' \(conversions and format specs are not supported"),
    ("{input} {label:>8}\n", r"'\{label:>8\}'"),
    ("set {a, b}: {input} {label}\n", r"unknown field '\{a, b\}'"),
    ("{input} -> { {label}\n", r"unmatched '\{' at position 11; write '\{\{' for a literal"),
    ("{input} } {label}\n", r"unmatched '\}' at position 8; write '\}\}' for a literal"),
    ("", r"exactly once"),
])
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


@pytest.mark.parametrize("kwargs,shown", [
    (dict(k=True, n=2), r"k must be a non-negative integer, got bool True"),
    (dict(k=2.0, n=2), r"k must be a non-negative integer, got float 2\.0; write 2"),
    (dict(k="2", n=2), r"k must be a non-negative integer, got str '2'"),
    (dict(k=1, n=True), r"n must be a positive integer, got bool True"),
    (dict(k=1, n=3.0), r"n must be a positive integer, got float 3\.0"),
    (dict(k=1, n=2, seed="a"), r"seed must be an integer, got str 'a'"),
    (dict(k=1, n=2, seed=1.5), r"seed must be an integer, got float 1\.5"),
    (dict(k=1, n=2, seed=None), r"seed must be an integer, got NoneType None"),
    (dict(k=1, n=2, perturbation=3), r"perturbation must be None or one of .* got int 3"),
    (dict(k=1, n=2, prepend_bos="yes"), r"prepend_bos must be True, False or None .* str 'yes'"),
    (dict(k=1, n=2, prepend_bos=1), r"prepend_bos must be True, False or None .* int 1"),
])
def test_build_prompts_wrong_argument_types(tiny_llama, two_labels, kwargs, shown):
    with pytest.raises(TypeError, match=shown):
        ih.build_prompts(tiny_llama, two_labels, **kwargs)


@pytest.mark.parametrize("kwargs,shown", [
    (dict(k=-1, n=2), r"k must be a non-negative integer, got -1"),
    (dict(k=1, n=-3), r"n must be a positive integer, got -3"),
    (dict(k=1, n=2, perturbation="shuffle"), r"Unknown perturbation 'shuffle'"),
    (dict(k=4, n=2), r"k=4 demos need at least 5 examples; task 'two' has 4"),
])
def test_build_prompts_bad_argument_values(tiny_llama, two_labels, kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        ih.build_prompts(tiny_llama, two_labels, **kwargs)


def test_build_prompts_task_name_instead_of_task(tiny_llama):
    with pytest.raises(TypeError, match=r"got the str 'sentiment'; load it first: "
                                        r"build_prompts\(model, load_task\('sentiment'\)"):
        ih.build_prompts(tiny_llama, "sentiment", 2, 4)


def test_build_prompts_other_object_as_task(tiny_llama):
    with pytest.raises(TypeError, match=r"task must be a Task .* got list"):
        ih.build_prompts(tiny_llama, [("a", "x")], 1, 2)


def test_build_prompts_model_not_hooked_transformer(smol_tokenizer, two_labels):
    with pytest.raises(TypeError, match=r"needs a HookedTransformer as model .* got "
                                        + type(smol_tokenizer).__name__):
        ih.build_prompts(smol_tokenizer, two_labels, 1, 2)
    with pytest.raises(TypeError, match=r"got Task \(the arguments are \(model, task"):
        ih.build_prompts(two_labels, two_labels, 1, 2)


# ---------------------------------------------------------------------------------------
# PromptSet.select


@pytest.mark.parametrize("index,bad", [([10], 10), ([0, -11], -11), (12, 12),
                                       (torch.tensor([3, 99]), 99)])
def test_select_out_of_range_names_index_and_size(tiny_prompts, index, bad):
    with pytest.raises(ValueError, match=rf"index {bad} is out of range for a set of 10 prompts"):
        tiny_prompts.select(index)


@pytest.mark.parametrize("index,shown", [
    ([1.0], r"index 1\.0 \(float\) is not an int"),
    ([0, 1.5], r"index 1\.5 \(float\) is not an int"),
    (torch.tensor([0.0, 1.0]), r"got a torch\.float32 tensor \[0\.0, 1\.0\]"),
    ([True, 1], r"index True \(bool\) is not an int"),
    (True, r"got the single bool True"),
    ("3", r"got str '3'"),
])
def test_select_non_integer_indices(tiny_prompts, index, shown):
    with pytest.raises(TypeError, match=shown):
        tiny_prompts.select(index)


@pytest.mark.parametrize("mask", [[True, False, True], torch.ones(11, dtype=torch.bool)])
def test_select_bool_mask_of_wrong_length(tiny_prompts, mask):
    with pytest.raises(ValueError, match=rf"boolean mask has {len(mask)} entries but the set has "
                                         "10 prompts"):
        tiny_prompts.select(mask)


def test_select_two_dimensional_index(tiny_prompts):
    with pytest.raises(ValueError, match=r"indices must be 1-D, got shape \(2, 1\)"):
        tiny_prompts.select(torch.tensor([[0], [1]]))


# ---------------------------------------------------------------------------------------
# check_prompt_set: a PromptSet, and one built for this model's tokenizer


@pytest.mark.parametrize("value", [[1, 2], None, "prompts"])
def test_check_prompt_set_rejects_non_prompt_sets(value):
    with pytest.raises(TypeError, match=r"source must be a PromptSet .* got "
                                        + type(value).__name__):
        check_prompt_set(value, "source")


def test_prompts_from_another_tokenizer_are_rejected(tiny_prompts, word_tokenizer):
    other = make_tiny_model(word_tokenizer, process=False)
    with pytest.raises(ValueError, match=r"built for model 'custom''s tokenizer \(fingerprint "
                                         rf"{tiny_prompts.tokenizer_id}\), but model 'custom' has "
                                         r"a different tokenizer.*rebuild them with build_prompts"):
        check_prompt_set(tiny_prompts, model=other)


def test_changed_tokenizer_fingerprint_is_rejected(tiny_prompts, tiny_llama):
    forged = replace(tiny_prompts, tokenizer_id="0123456789abcdef", model_name="gpt2")
    with pytest.raises(ValueError, match=r"built for model 'gpt2''s tokenizer \(fingerprint "
                                         r"0123456789abcdef\)"):
        check_prompt_set(forged, "reference", model=tiny_llama)


def test_prompts_longer_than_model_context(tiny_prompts, smol_tokenizer):
    short = make_tiny_model(smol_tokenizer, n_ctx=16, process=False)
    with pytest.raises(ValueError, match=rf"are {tiny_prompts.seq_len} tokens long, more than "
                                         r"model 'custom''s context n_ctx=16"):
        check_prompt_set(tiny_prompts, model=short)


def test_token_ids_beyond_model_vocabulary(tiny_prompts):
    small = make_tiny_model(None, d_vocab=64, process=False)  # no tokenizer: no fingerprint
    hi = int(tiny_prompts.tokens.max())
    with pytest.raises(ValueError, match=rf"hold token id {hi}, outside model 'custom''s "
                                         r"vocabulary \[0, d_vocab=64\)"):
        check_prompt_set(tiny_prompts, model=small)


def test_check_prompt_set_model_not_hooked_transformer(tiny_prompts, smol_tokenizer):
    with pytest.raises(TypeError, match=r"check_prompt_set needs a HookedTransformer"):
        check_prompt_set(tiny_prompts, model=smol_tokenizer)


def test_tokenizer_fingerprint_differs_between_tokenizers(smol_tokenizer, word_tokenizer):
    assert tokenizer_fingerprint(smol_tokenizer) != tokenizer_fingerprint(word_tokenizer)
    assert re.fullmatch(r"[0-9a-f]{16}", tokenizer_fingerprint(word_tokenizer))


def test_tokenizer_fingerprint_of_a_model_says_pass_its_tokenizer(tiny_llama):
    with pytest.raises(TypeError, match=r"needs a Hugging Face tokenizer \(pass model\.tokenizer"
                                        r"\), got HookedTransformer"):
        tokenizer_fingerprint(tiny_llama)


# ---------------------------------------------------------------------------------------
# shift_demo_labels and label_token_ids


@pytest.mark.parametrize("shift,shown", [(1.0, r"float 1\.0"), (True, r"bool True"),
                                         ("1", r"str '1'")])
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


@pytest.mark.parametrize("words,error,shown", [
    ("positive", TypeError, r"words must be a list of label words.* got str 'positive'"),
    (None, TypeError, r"got NoneType None"),
    (["positive", None], TypeError, r"Label word None is a NoneType"),
    (["positive", 3], TypeError, r"Label word 3 is a int"),
    ([" positive"], ValueError, r"Label word ' positive' is empty or has surrounding whitespace"),
    ([""], ValueError, r"Label word '' is empty"),
    ([], ValueError, r"got no words"),
])
def test_label_token_ids_bad_words(tiny_llama, words, error, shown):
    with pytest.raises(error, match=shown):
        label_token_ids(tiny_llama, words)


def test_label_token_ids_model_not_hooked_transformer(smol_tokenizer):
    with pytest.raises(TypeError, match=r"label_token_ids needs a HookedTransformer"):
        label_token_ids(smol_tokenizer, ["positive"])
