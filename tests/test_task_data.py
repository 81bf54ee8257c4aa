"""The built-in classification data (issue 18 item 7): every classification task has at
least 300 distinct, balanced examples whose labels are single tokens for both embedded
tokenizers; the examples the committed results were made from stay available
(tests/data/tasks_v1), and a saved cell of the old data is refused, naming the task digest,
when a grid would reuse it for today's data."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
from tasks_v1 import V1_DIR, load_v1_task

import icl_heads as ih
from icl_heads.experiments.cells import check_cells
from icl_heads.models import EMBEDDED_MODELS, load_tokenizer
from icl_heads.tasks import input_key

CLASSIFICATION = ("sentiment", "topic", "question", "category")
MIN_EXAMPLES = 300
MAX_WORDS = 14  # inputs stay short: a demonstration is a line of a prompt
#: Inputs of the version-1 files corrected in version 2 (v1 input -> v2 input), with why.
V1_FIXES = {
    # the input held its own label's word ("businesses" -> label "business")
    "Small businesses struggle with rising rents": "Small firms struggle with rising rents",
}
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "data"


def _catalog() -> dict:
    text = resources.files("icl_heads.data").joinpath("catalog.json").read_text(encoding="utf-8")
    return json.loads(text)


def _single_token_problems(tokenizer, task: ih.Task) -> list[str]:
    """Labels that are not one token with their leading space, alone (as
    ``label_token_ids`` encodes them) or after a query (as a demonstration holds them)."""
    bad = []
    for label in task.labels:
        ids = tokenizer.encode(" " + label, add_special_tokens=False)
        if len(ids) != 1:
            bad.append(f"{label!r} -> {tokenizer.convert_ids_to_tokens(ids)}")
            continue
        x = next(x for x, y in task.examples if y == label)
        query = tokenizer.encode(task.render_query(x), add_special_tokens=False)
        demo = tokenizer.encode(task.render_query(x) + " " + label, add_special_tokens=False)
        if demo != [*query, ids[0]]:
            bad.append(f"{label!r} after {task.render_query(x)!r} -> {demo[len(query) :]}")
    return bad


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_a_classification_task_has_enough_balanced_distinct_examples(name):
    task = ih.load_task(name)
    counts = Counter(y for _, y in task.examples)
    assert len(task.examples) >= MIN_EXAMPLES, (name, len(task.examples))
    assert len(set(counts.values())) == 1, counts  # equal count per label
    assert set(counts) == set(task.labels)
    keys = Counter(input_key(x) for x, _ in task.examples)  # the project's input identity
    assert [k for k, n in keys.items() if n > 1] == []


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_a_classification_task_matches_its_catalog_entry(name):
    entry = _catalog()[name]
    task = ih.load_task(name)
    assert list(task.labels) == entry["labels"]
    assert len(task.examples) == entry["n_examples"]
    # the description states the counts too
    per_label = len(task.examples) // len(task.labels)
    assert f"{per_label} each, {len(task.examples)} examples" in entry["description"]


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_inputs_are_short_plain_and_never_name_their_own_label(name):
    task = ih.load_task(name)
    for x, y in task.examples:
        assert x == x.strip() and x.isascii() and "  " not in x, x
        assert len(x.split()) <= MAX_WORDS, x
        assert y.casefold() not in x.casefold(), (x, y)
        if name in ("sentiment", "question"):  # lowercase, no punctuation
            assert re.fullmatch(r"[a-z ]+", x), x


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_the_version_1_examples_come_first_unchanged_but_for_the_listed_fixes(name):
    old = load_v1_task(name)
    new = ih.load_task(name)
    assert old.labels == new.labels  # class ids keep their meaning
    head = new.examples[: len(old.examples)]
    assert head == tuple((V1_FIXES.get(x, x), y) for x, y in old.examples)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_labels_are_single_tokens_for_the_smollm2_tokenizer(name, smol_tokenizer):
    assert _single_token_problems(smol_tokenizer, ih.load_task(name)) == []


@pytest.mark.slow
def test_labels_are_single_tokens_for_the_gemma_tokenizer():
    spec = EMBEDDED_MODELS["gemma-3-270m"]
    if importlib.util.find_spec(spec.package) is None:
        pytest.skip(f"the optional Gemma 3 270M model is not installed ({spec.install_command})")
    tokenizer = load_tokenizer("gemma-3-270m")
    problems = {n: _single_token_problems(tokenizer, ih.load_task(n)) for n in CLASSIFICATION}
    assert problems == {n: [] for n in CLASSIFICATION}


def _saved_requests() -> list[tuple[Path, dict]]:
    cells = []
    for meta in sorted(RESULTS.glob("*/*/*/*/result.json")):
        cells.append((meta.parent, json.loads(meta.read_text(encoding="utf-8"))["request"]))
    return cells


def test_the_committed_cells_were_made_from_the_version_1_files():
    """tests/data/tasks_v1 holds the exact files of the committed results: every saved
    cell's task digest is the digest of its version-1 file (so the recompute tests, which
    load those files, rebuild the cells' own prompts)."""
    cells = _saved_requests()
    assert len(cells) >= 66
    digests = {name: load_v1_task(name).digest for name in CLASSIFICATION}
    for path, request in cells:
        assert request["task_digest"] == digests[request["task"]], path
    assert (V1_DIR / "catalog.json").is_file()


def test_a_grid_refuses_to_reuse_a_cell_made_from_the_old_data(caplog):
    """What a user of an old results folder sees when a grid (icl-heads reproduce) asks
    for the same cells with today's built-in data: a ValueError naming the task digest,
    before anything is computed."""
    path, request = next(c for c in _saved_requests() if c[1]["task"] == "sentiment")
    today = {**request, "task_digest": ih.load_task("sentiment").digest}
    assert today["task_digest"] != request["task_digest"]
    check_cells([(path, request)])  # the request it was made with: fine
    with pytest.raises(ValueError, match=r"made with other settings.*task_digest"):
        check_cells([(path, today)])


def test_load_v1_task_refuses_a_file_that_is_not_the_recorded_one():
    with pytest.raises(ValueError, match=r"sentiment\.jsonl has digest .* not the recorded 0{16}"):
        load_v1_task("sentiment", digest="0" * 16)
    with pytest.raises(ValueError, match="No version-1 task 'capital'"):
        load_v1_task("capital")
