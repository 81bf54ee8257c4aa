"""Prompt building: layout, demos, perturbations, errors."""

from __future__ import annotations

import pytest
import torch

import icl_heads as ih
from icl_heads.prompts import label_token_ids


@pytest.fixture(scope="module")
def task():
    return ih.load_task("topic")


def test_layout_query_last_and_left_padded(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=4, n=12, seed=1)
    assert len(ps) == 12 and ps.tokens.shape == ps.attention_mask.shape
    assert (ps.attention_mask[:, -1] == 1).all()  # the query is the last token of every row
    # left padding: once a row starts, it never has padding again
    assert (ps.attention_mask.diff(dim=1) >= 0).all()
    tok = tiny_llama.tokenizer
    for i in range(len(ps)):
        real = ps.tokens[i][ps.attention_mask[i].bool()].tolist()
        assert real[0] == tok.bos_token_id
        assert tok.decode(real[1:]) == ps.texts[i]
        assert ps.texts[i].endswith(task.query_template.split("{input}")[1])


def test_demo_label_positions_hold_label_tokens(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=5, n=8, seed=2)
    at = ps.tokens.gather(1, ps.demo_label_positions)
    assert torch.equal(at, ps.label_token_ids[ps.demo_labels])
    assert ps.demo_label_positions.shape == (8, 5)


def test_demos_never_include_query_and_gold_is_correct(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=8, n=30, seed=3)
    for i, q in enumerate(ps.query_examples):
        x, y = task.examples[q]
        assert task.labels[int(ps.gold[i])] == y
        demo_part = ps.texts[i][: ps.texts[i].rfind(task.render_query(x))]
        assert task.render_query(x) + " " not in demo_part  # the query is not among the demos


def test_queries_are_balanced_and_seeded(tiny_llama, task):
    a = ih.build_prompts(tiny_llama, task, k=2, n=20, seed=5)
    b = ih.build_prompts(tiny_llama, task, k=2, n=20, seed=5)
    c = ih.build_prompts(tiny_llama, task, k=2, n=20, seed=6)
    assert a.texts == b.texts and a.texts != c.texts
    assert torch.bincount(a.gold, minlength=task.n_labels).tolist() == [5, 5, 5, 5]


def test_random_labels_keep_label_space_but_break_mapping(tiny_llama, task):
    gold = ih.build_prompts(tiny_llama, task, k=6, n=30, seed=0)
    rand = ih.build_prompts(tiny_llama, task, k=6, n=30, seed=0, perturbation="random_labels")
    assert rand.label_words == gold.label_words
    assert torch.equal(rand.label_token_ids, gold.label_token_ids)
    assert set(rand.demo_labels.flatten().tolist()) <= set(range(task.n_labels))
    assert torch.equal(rand.gold, gold.gold)
    # true demo labels vs shown ones: a random mapping disagrees often
    true = torch.tensor([[task.label_index(task.examples[q][1])] for q in gold.query_examples])
    assert (rand.demo_labels != gold.demo_labels).float().mean() > 0.4
    assert true.shape[0] == 30
    at = rand.tokens.gather(1, rand.demo_label_positions)
    assert torch.equal(at, rand.label_token_ids[rand.demo_labels])


def test_abstract_labels_leave_no_original_label_word(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=6, n=10, seed=0, perturbation="abstract_labels")
    assert not set(ps.label_words) & set(task.labels)
    original_ids = set(label_token_ids(tiny_llama, task.labels))
    assert not original_ids & set(ps.label_token_ids.tolist())
    for text in ps.texts:
        for word in task.labels:
            assert f": {word}\n" not in text
    assert torch.equal(
        ps.tokens.gather(1, ps.demo_label_positions), ps.label_token_ids[ps.demo_labels]
    )


def test_abstract_labels_for_large_label_sets(tiny_llama):
    capital = ih.load_task("capital")
    ps = ih.build_prompts(tiny_llama, capital, k=2, n=4, seed=0, perturbation="abstract_labels")
    assert len(ps.label_words) == capital.n_labels
    assert len(set(ps.label_token_ids.tolist())) == capital.n_labels


def test_zero_shot(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=4, n=5, perturbation="zero_shot")
    assert ps.k == 0 and ps.demo_label_positions.shape == (5, 0)
    assert ps.texts[0].count("Topic:") == 1


def test_select_trims_padding_and_shifts_positions(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=3, n=10, seed=0)
    shortest = int(ps.lengths.argmin())
    sub = ps.select([shortest])
    assert sub.seq_len == int(ps.lengths[shortest]) and sub.attention_mask.all()
    assert torch.equal(
        sub.tokens.gather(1, sub.demo_label_positions), sub.label_token_ids[sub.demo_labels]
    )
    with pytest.raises(ValueError, match="empty"):
        ps.select([])


def test_prompt_longer_than_context(tiny_llama, task):
    from conftest import make_tiny_model

    short = make_tiny_model(tiny_llama.tokenizer, kind="llama", n_ctx=40)
    with pytest.raises(ValueError, match="longer than the model's context.*n_ctx=40"):
        ih.build_prompts(short, task, k=8, n=2)


def test_bad_arguments(tiny_llama, task):
    with pytest.raises(ValueError, match="Unknown perturbation"):
        ih.build_prompts(tiny_llama, task, k=1, n=1, perturbation="shuffle")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ih.build_prompts(tiny_llama, task, k=1, n=0)
    with pytest.raises(ValueError, match="k must be a non-negative"):
        ih.build_prompts(tiny_llama, task, k=-1, n=1)
    with pytest.raises(ValueError, match="need at least"):
        ih.build_prompts(tiny_llama, task, k=1000, n=1)


def test_shift_demo_labels_changes_only_demo_label_tokens(tiny_llama, task):
    from icl_heads.prompts import shift_demo_labels

    ps = ih.build_prompts(tiny_llama, task, k=4, n=6, seed=0)
    shifted = shift_demo_labels(ps)
    changed = shifted.tokens != ps.tokens
    expected = torch.zeros_like(changed)
    expected.scatter_(1, ps.demo_label_positions, True)
    assert torch.equal(changed, expected)
    assert torch.equal(shifted.demo_labels, (ps.demo_labels + 1) % task.n_labels)
    assert torch.equal(shifted.gold, ps.gold)
    with pytest.raises(ValueError, match="multiple of the 4 labels"):
        shift_demo_labels(ps, shift=4)
    with pytest.raises(ValueError, match="k >= 1"):
        shift_demo_labels(ih.build_prompts(tiny_llama, task, k=0, n=2))


def test_prompt_set_records_model_and_tokenizer(tiny_llama, tiny_gpt, smol_tokenizer, task):
    from icl_heads.prompts import check_prompt_set, tokenizer_fingerprint

    ps = ih.build_prompts(tiny_llama, task, k=2, n=4, seed=0)
    assert ps.model_name == tiny_llama.cfg.model_name
    assert ps.tokenizer_id == tokenizer_fingerprint(smol_tokenizer)
    assert ps.info().model == ps.model_name
    assert ps.info().tokenizer == ps.tokenizer_id
    assert ps.select([0]).tokenizer_id == ps.tokenizer_id
    check_prompt_set(ps, model=tiny_llama)
    check_prompt_set(ps, model=tiny_gpt)  # another model with the same tokenizer: accepted


def test_select_python_negative_indices_masks_and_one_int(tiny_llama, task):
    ps = ih.build_prompts(tiny_llama, task, k=2, n=6, seed=0)
    assert ps.select([-1]).query_examples == ps.select([5]).query_examples
    assert ps.select(-2).texts == ps.select([4]).texts
    mask = [True, False, True, False, False, True]
    assert ps.select(mask).query_examples == ps.select([0, 2, 5]).query_examples
    assert ps.select(torch.tensor(mask)).texts == ps.select(torch.tensor([0, 2, 5])).texts
    assert ps.select(slice(1, 3)).texts == ps.texts[1:3]


def test_demos_never_share_the_query_input_text(tiny_llama):
    task = ih.make_task("t", [("a b", "x"), ("c d", "y"), ("e f", "x"), ("g h", "y")])
    # a Task refuses repeated inputs; force one past the checks to test build_prompts itself
    object.__setattr__(task, "examples", task.examples + (("a b", "y"),))
    ps = ih.build_prompts(tiny_llama, task, k=3, n=20, seed=0)
    for text, q in zip(ps.texts, ps.query_examples):
        query_input = task.examples[q][0]
        assert text.endswith(f"Input: {query_input}\nLabel:")
        assert f"Input: {query_input}\n" not in text[: text.rfind("Input:")]  # the demos


def test_template_with_escaped_braces_builds_literal_braces(tiny_llama):
    task = ih.make_task(
        "t",
        [("a b", "positive"), ("c d", "negative"), ("e f", "positive")],
        template="{{{input}}} -> {label};\n",
    )
    ps = ih.build_prompts(tiny_llama, task, k=2, n=3, seed=0)
    for i, text in enumerate(ps.texts):
        assert "{{" not in text and text.endswith("} ->") and text.startswith("{")
        real = ps.tokens[i][ps.attention_mask[i].bool()].tolist()
        assert tiny_llama.tokenizer.decode(real[1:]) == text


def test_prompts_serves_the_prompt_set_names():
    """The type and its checks live in prompt_set; prompts keeps exporting them."""
    from icl_heads import prompt_set, prompts

    for name in ("PromptSet", "FINGERPRINT_PROBE", "tokenizer_fingerprint", "check_prompt_set"):
        assert getattr(prompts, name) is getattr(prompt_set, name)
        assert name in prompts.__all__
    assert ih.PromptSet is prompt_set.PromptSet
