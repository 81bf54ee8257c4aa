"""Tasks: built-in data, user files, validation."""

from __future__ import annotations

from collections import Counter

import pytest

import icl_heads as ih
from icl_heads.prompts import label_token_ids
from icl_heads.tasks import Task, check_template


def test_six_builtin_tasks():
    names = ih.builtin_tasks()
    assert {"sentiment", "topic", "question", "capital", "antonym", "category"} <= set(names)


@pytest.mark.parametrize(
    "name", ["sentiment", "topic", "question", "capital", "antonym", "category"]
)
def test_builtin_task_loads_balanced_single_token_labels(name, tiny_llama):
    task = ih.load_task(name)
    assert len(task.examples) >= 60
    assert len({x for x, _ in task.examples}) == len(task.examples)  # no duplicate inputs
    counts = Counter(y for _, y in task.examples)
    if len(task.labels) <= 10:  # classification tasks: balanced label counts
        assert len(set(counts.values())) == 1, counts
    ids = label_token_ids(tiny_llama, task.labels)  # raises if any label is multi-token
    assert len(ids) == len(task.labels)
    assert " {label}" in task.template


def test_topic_has_at_least_four_labels():
    assert ih.load_task("topic").n_labels >= 4
    assert set(ih.load_task("sentiment").labels) == {"positive", "negative"}


def test_user_csv_and_jsonl(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("input,label\ngood day,yes\nbad day,no\nfine day,yes\n")
    task = ih.load_task(csv)
    assert task.name == "mine" and task.labels == ("yes", "no") and len(task.examples) == 3
    jsonl = tmp_path / "mine2.jsonl"
    jsonl.write_text('{"input": "a", "label": "x"}\n\n{"input": "b", "label": "y"}\n')
    assert ih.load_task(jsonl, template="Q: {input}\nA: {label}\n").template.startswith("Q:")


def test_empty_task_rejected(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("input,label\n")
    with pytest.raises(ValueError, match="no examples"):
        ih.load_task(empty)


def test_one_label_task_rejected():
    with pytest.raises(ValueError, match="at least two distinct labels"):
        ih.make_task("one", [("a", "x"), ("b", "x")])


def test_bad_files_and_names(tmp_path):
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        ih.load_task("nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,answer\na,b\n")
    with pytest.raises(ValueError, match="columns 'input' and 'label'"):
        ih.load_task(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "label": \n')
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        ih.load_task(broken)
    other = tmp_path / "x.txt"
    other.write_text("hi")
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        ih.load_task(other)


def test_template_validation():
    with pytest.raises(ValueError, match="exactly once"):
        check_template("{input} {label} {label}")
    with pytest.raises(ValueError, match="one space before it"):
        check_template("{input}:{label}\n")
    with pytest.raises(ValueError, match="surrounding whitespace"):
        Task("t", (("a", " x"), ("b", "y")), (" x", "y"))


def test_multi_token_label_error_names_label_and_tokens(tiny_llama):
    task = ih.make_task("t", [("a", "positive"), ("b", "supercalifragilistic")])
    with pytest.raises(ValueError, match="'supercalifragilistic' -> \\["):
        ih.build_prompts(tiny_llama, task, k=1, n=2)


def test_query_template_and_suffix():
    task = ih.load_task("sentiment")
    assert task.render_query("great") + " positive" + task.demo_suffix == task.render_demo(
        "great", "positive"
    )


def test_escaped_braces_are_literal_and_renderers_agree():
    task = ih.make_task("t", [("a", "x"), ("b", "y")], template="{{Q}} {input} => {label} }}\n")
    assert task.render_demo("a", "x") == "{Q} a => x }\n"
    assert task.render_query("a") == "{Q} a =>"
    assert task.demo_suffix == " }\n"
    assert task.render_query("a") + " x" + task.demo_suffix == task.render_demo("a", "x")
    # braces inside an input are text, not fields
    assert task.render_query("{input}") == "{Q} {input} =>"


def test_user_files_numbers_bom_extra_columns_blank_rows_and_quotes(tmp_path):
    jsonl = tmp_path / "nums.jsonl"
    jsonl.write_text('{"input": 1, "label": 2, "id": 7}\n{"input": 2.5, "label": "3"}\n')
    assert ih.load_task(jsonl).examples == (("1", "2"), ("2.5", "3"))
    csv = tmp_path / "excel.csv"
    csv.write_bytes(
        '\ufeffid, Input ,Label,note\n1,"good, fun",yes,x\n,,,\n\n2,bad,no\n'.encode("utf-8")
    )
    task = ih.load_task(csv)
    assert task.examples == (("good, fun", "yes"), ("bad", "no"))


def test_task_file_error_comes_with_the_file_name(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("input,label\na,x\nb,x\n")
    with pytest.raises(ValueError, match=r"one\.csv: Task 'one' has 1 label\(s\)"):
        ih.load_task(one)
