"""Where objects came from (icl_heads.provenance, issue 22 class 2): prompt and task
identity, and the positive side of every check where two objects meet (matching objects
still work). The refusals are in tests/test_bad_inputs.py ("H2: provenance")."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import icl_heads as ih
from icl_heads import provenance
from icl_heads.experiments import trtl
from icl_heads.experiments.geometry import head_ablation_geometry
from icl_heads.settings import PromptInfo, Settings

N_BOOT = 20


@pytest.fixture(scope="module")
def found(tiny_llama, tiny_prompts):
    return trtl.find_task_heads(tiny_llama, tiny_prompts, n_boot=N_BOOT, progress=False)


# ----------------------------------------------------------------------------- identity


def test_prompt_info_records_task_content_and_prompt_digest(tiny_llama, sentiment_task):
    prompts = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=6, seed=0)
    info = prompts.info()
    assert info.task_digest == sentiment_task.digest
    assert info.task_source == "builtin:sentiment.jsonl"
    assert info.prompts_digest == ih.prompt_set.prompts_digest(prompts)
    # same recipe, same content: equal and the same digest
    again = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=6, seed=0).info()
    assert again == info and again.prompts_digest == info.prompts_digest
    # another seed: another digest; a subset: another digest
    other = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=6, seed=1).info()
    assert other.prompts_digest != info.prompts_digest
    assert prompts.select([0, 1]).info().prompts_digest != info.prompts_digest
    # padding does not count: one more padding column gives the same digest
    padded = dataclasses.replace(
        prompts,
        tokens=torch.cat([torch.zeros(6, 1, dtype=torch.long), prompts.tokens], 1),
        attention_mask=torch.cat([torch.zeros(6, 1, dtype=torch.long), prompts.attention_mask], 1),
    )
    assert ih.prompt_set.prompts_digest(padded) == info.prompts_digest
    # the digest fields survive a save and a load, and old settings without them load
    back = Settings.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == info and back.prompts_digest == info.prompts_digest
    old = {k: v for k, v in info.to_dict().items() if not k.endswith(("digest", "source"))}
    loaded = Settings.from_dict(old)
    assert loaded.task_digest is None and loaded == info
    assert provenance.same_prompts(loaded, info)  # unknown is not a mismatch


def test_task_digest_follows_content_and_source_names_the_file(tmp_path):
    task = ih.load_task("sentiment")
    assert task.digest == ih.load_task("sentiment").digest
    assert ih.load_task("sentiment", template="Q: {input}\nA: {label}\n").digest != task.digest
    path = tmp_path / "mine.csv"
    path.write_text("input,label\na cat,animal\na car,vehicle\n", encoding="utf-8")
    mine = ih.load_task(path)
    assert mine.source == str(path.resolve())
    path.write_text("input,label\na cat,animal\na bus,vehicle\n", encoding="utf-8")
    edited = ih.load_task(path)
    assert edited.name == mine.name and edited.digest != mine.digest
    assert ih.make_task("t", [("a", "x"), ("b", "y")]).source is None


def test_same_task_and_same_prompts():
    a = PromptInfo("t", 4, 8, 0, "gold", task_digest="aa", prompts_digest="p1")
    assert provenance.same_task(a, a.replace(k=0, n=3, prompts_digest="p2"))
    assert not provenance.same_task(a, a.replace(task_digest="bb"))
    assert provenance.same_task(a, a.replace(task_digest=None))  # unknown: by name
    assert not provenance.same_task(a, a.replace(task="u", task_digest=None))
    assert provenance.same_prompts(a, a.replace(prompts_digest=None))
    assert not provenance.same_prompts(a, a.replace(prompts_digest="p2"))
    assert not provenance.same_prompts(a, a.replace(seed=1))


# ----------------------------------------------------------------------------- case variants


def test_case_variants_with_one_label_are_never_each_others_demos(tiny_llama):
    task = ih.make_task(
        "variants",
        [
            ("Good movie", "positive"),
            ("good  MOVIE", "positive"),
            ("bad movie", "negative"),
            ("awful plot", "negative"),
            ("nice cast", "positive"),
            ("dull film", "negative"),
        ],
    )
    # k = every other example but the query's variant: before, the variant was a demo
    prompts = ih.build_prompts(tiny_llama, task, k=4, n=12, seed=0)
    for text, q in zip(prompts.texts, prompts.query_examples):
        query = task.examples[q][0]
        if ih.tasks.input_key(query) == "good movie":
            other = "good  MOVIE" if query == "Good movie" else "Good movie"
            assert f"Input: {other}\n" not in text
    with pytest.raises(ValueError, match="k=5 demos"):
        ih.build_prompts(tiny_llama, task, k=5, n=12, seed=0)


# ----------------------------------------------------------------------------- meeting points


def test_maps_and_head_sets_of_the_same_task_on_other_prompts_are_accepted(
    tiny_llama, sentiment_task, found
):
    # other prompts of the same task (held-out seed): allowed for task-specific maps
    held_out = ih.build_prompts(tiny_llama, sentiment_task, k=3, n=8, seed=5)
    sets = trtl.head_sets(found)
    assert isinstance(sets, provenance.TracedHeadSets)
    assert sets.prompts == found.settings.prompts and sets.shape == (2, 4)
    res = trtl.ablation_experiment(
        tiny_llama, held_out, sets, n_random=1, n_boot=N_BOOT, progress=False
    )
    assert res.settings.heads == (
        ("TR", tuple(map(str, sets["TR"]))),
        ("TL", tuple(map(str, sets["TL"]))),
    )
    assert res.settings.heads_from == found.settings.prompts  # where the heads were found
    res = trtl.ablation_experiment(
        tiny_llama, held_out, {"TR": found.maps["TR"]}, n_random=1, n_boot=N_BOOT, progress=False
    )
    assert res.settings.heads[0][0] == "TR"
    assert res.settings.heads_from == found.maps["TR"].settings.prompts
    by_hand = trtl.ablation_experiment(
        tiny_llama, held_out, {"S": [(1, 0)]}, n_random=1, n_boot=N_BOOT, progress=False
    )
    assert by_hand.settings.heads_from is None
    # another task's sets, copied into a plain dict: the user's explicit choice
    topic = ih.build_prompts(tiny_llama, ih.load_task("topic"), k=3, n=8, seed=0)
    trtl.ablation_experiment(
        tiny_llama, topic, dict(sets), n_random=1, n_boot=N_BOOT, progress=False
    )


def test_detector_maps_are_task_independent(tiny_llama, sentiment_task):
    detected = ih.token_detector_scores(
        tiny_llama, detectors=["previous_token"], T=6, n_sequences=2, progress=False
    )
    pth = detected["previous_token"]
    assert provenance.map_origin(pth).kind == "model"
    prompts = ih.build_prompts(tiny_llama, sentiment_task, k=1, n=6, seed=0)
    res = head_ablation_geometry(
        tiny_llama, prompts, {"PTH": pth}, n_random=0, layers=[2], folds=2, n_boot=5,
        progress=False,
    )  # fmt: skip
    assert res.conditions == ["baseline", "PTH"]


def test_reconciliation_and_correlation_accept_the_maps_of_their_prompts(
    tiny_llama, tiny_prompts, found
):
    for fn in (
        lambda tr, tl: trtl.correlation_experiment(
            tiny_llama, tiny_prompts, tr=tr, tl=tl, n_boot=N_BOOT, progress=False
        ),
        lambda tr, tl: trtl.reconciliation_experiment(
            tiny_llama, tiny_prompts, tr=tr, tl=tl, T=5, n_sequences=2, n_boot=N_BOOT,
            progress=False,
        ),
    ):  # fmt: skip
        res = fn(found.maps["TR"], found.maps["TL"])
        assert torch.equal(res.maps["TR"].scores, found.maps["TR"].scores)


def test_means_over_a_named_reference_of_another_task_are_accepted(tiny_llama, tiny_prompts):
    topic = ih.build_prompts(tiny_llama, ih.load_task("topic"), k=3, n=6, seed=0)
    means = ih.activation_means(tiny_llama, topic, positions="all", progress=False)
    assert means.model == tiny_llama.cfg.model_name
    res = trtl.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"S": [(1, 0)]},
        n_random=0,
        random_like=(),
        means=means,
        reference=topic,
        n_boot=N_BOOT,
        progress=False,
    )
    assert res.settings.means == topic.info()


def test_perturbation_records_the_gold_prompts(tiny_llama, sentiment_task):
    prompts = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=4, seed=0)
    res = trtl.perturbation_experiment(
        tiny_llama, prompts, ("gold",), task=sentiment_task, n_boot=N_BOOT, progress=False
    )
    assert res.settings.prompts == prompts.info()
    assert res.settings.prompts.prompts_digest == prompts.info().prompts_digest
