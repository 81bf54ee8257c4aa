"""Every bad input gives a clear error at the public call: a TypeError / ValueError /
FileNotFoundError raised by icl-heads, whose one-line message names the bad value — never a
torch or TransformerLens error from deep inside, never a silently wrong result.

One case per row: ``(id, call, exception type, regex the message must match)``. The regex
names the bad value (or, where the value is a whole object, what is wrong with it). Task,
prompt, model and CLI cases are at the end of the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_model

import icl_heads as ih
from icl_heads.heads import Head, HeadScores, heads_to_mask
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
    (tmp / "latin1.json").write_bytes("{\"name\": \"caf\xe9\"}".encode("latin-1"))
    scores = HeadScores(torch.arange(8.0).reshape(2, 4), name="s")
    return dict(m=tiny_llama, gpt=tiny_gpt, p=tiny_prompts, tmp=tmp, s=scores,
                other=other_model, source=ih.shift_demo_labels(tiny_prompts))


def _empty(p):
    return replace(p, tokens=p.tokens[:0], attention_mask=p.attention_mask[:0], gold=p.gold[:0])


def _single_label(p):
    return replace(p, label_token_ids=p.label_token_ids[:1], label_words=p.label_words[:1],
                   gold=torch.zeros_like(p.gold))


def _scalar_metric(logits, gold, labels):
    return logits.mean()


def _bare_patch(e):
    with ih.patch(e["m"], e["source"], site="resid_pre", layers=[0]):
        pass


CASES = [
    # ------------------------------------------------------------------ heads and maps
    ("HeadScores 1-D", lambda e: HeadScores(torch.zeros(5)), ValueError, r"shape \(5,\)"),
    ("HeadScores settings dict", lambda e: HeadScores(torch.zeros(2, 4), settings={"a": 1}),
     TypeError, "dict"),
    ("HeadScores per_prompt shape", lambda e: HeadScores(torch.zeros(2, 4),
                                                          per_prompt=torch.zeros(3, 4, 2)),
     ValueError, r"\(3, 4, 2\)"),
    ("top(2.5)", lambda e: e["s"].top(2.5), TypeError, "2.5"),
    ("top(True)", lambda e: e["s"].top(True), TypeError, "True"),
    ("top(-1)", lambda e: e["s"].top(-1), ValueError, "-1"),
    ("HeadScores(top_k=0)", lambda e: HeadScores(torch.zeros(2, 4), top_k=0), ValueError, "0"),
    ("float head index", lambda e: heads_to_mask([(1.5, 0)], 2, 4), TypeError, "1.5"),
    ("float head index that looks whole", lambda e: heads_to_mask([(1.0, 0)], 2, 4),
     TypeError, r"1\.0"),
    ("head as a string", lambda e: heads_to_mask("L0H1", 2, 4), TypeError, "L0H1"),
    ("head out of range", lambda e: ih.ablate(e["m"], [Head(2, 0)]), ValueError, "L2H0"),
    ("negative head", lambda e: ih.ablate(e["m"], [(0, -1)]), ValueError, "L0H-1"),
    ("head map of another shape", lambda e: ih.ablate(e["m"], HeadScores(torch.zeros(30, 9))),
     ValueError, r"\[30, 9\]"),
    ("mask of another shape", lambda e: ih.ablate(e["m"], torch.ones(4, 2, dtype=torch.bool)),
     ValueError, r"\(4, 2\)"),
    ("float mask", lambda e: ih.ablate(e["m"], torch.ones(2, 4)), TypeError, "float32"),
    ("load missing file", lambda e: HeadScores.load(e["tmp"] / "nope.json"),
     FileNotFoundError, "nope.json"),
    ("load corrupt json", lambda e: HeadScores.load(e["tmp"] / "corrupt.json"), ValueError,
     "corrupt.json"),
    ("load a json icl-heads did not write", lambda e: HeadScores.load(e["tmp"] / "foreign.json"),
     ValueError, "foreign.json.*not written by HeadScores.save"),
    ("load a corrupt parquet", lambda e: HeadScores.load(e["tmp"] / "garbage.parquet"),
     ValueError, "garbage.parquet"),
    ("load a non-UTF-8 json", lambda e: HeadScores.load(e["tmp"] / "latin1.json"), ValueError,
     "latin1.json"),
    ("save as csv", lambda e: e["s"].save(e["tmp"] / "s.csv"), ValueError, "s.csv"),
    ("settings without kind", lambda e: Settings.from_dict({"a": 1}), ValueError, "kind"),
    ("settings of unknown kind", lambda e: Settings.from_dict({"kind": "Nope"}), ValueError,
     "Nope"),
    # ------------------------------------------------------------------ interventions
    ("ablation mode", lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="noise"), ValueError,
     "noise"),
    ("positions word", lambda e: ih.ablate(e["m"], [Head(0, 0)], positions="middle"),
     ValueError, "middle"),
    ("positions floats", lambda e: ih.ablate(e["m"], [Head(0, 0)], positions=[1.5]),
     TypeError, "1.5"),
    ("positions empty", lambda e: ih.ablate(e["m"], [Head(0, 0)], positions=[]), ValueError,
     "empty"),
    ("position out of range at run time",
     lambda e: ih.evaluate(e["m"], e["p"], interventions=[
         ih.ablate(e["m"], [Head(0, 0)], positions=500)], progress=False),
     ValueError, "Position 500"),
    ("mean ablation without means", lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean"),
     ValueError, "means="),
    ("means of the wrong shape",
     lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean", means=torch.zeros(3, 4, 8)),
     ValueError, r"\(3, 4, 8\)"),
    ("means of another site",
     lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean",
                         means=ih.activation_means(e["m"], e["p"], "attn_out", progress=False)),
     ValueError, "'attn_out'"),
    ("means as a list", lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="mean", means=[0.0]),
     TypeError, "list"),
    ("resample without reference", lambda e: ih.ablate(e["m"], [Head(0, 0)], mode="resample"),
     ValueError, "reference="),
    ("seed as a string", lambda e: ih.ablate(e["m"], [Head(0, 0)], seed="1"), TypeError, "'1'"),
    ("ablate_layers on heads", lambda e: ih.ablate_layers(e["m"], [0], site="z"), ValueError,
     "ablate"),
    ("ablate_layers unknown site", lambda e: ih.ablate_layers(e["m"], [0], site="mlp"),
     ValueError, "'mlp'"),
    ("ablate_layers: mode where the site was", lambda e: ih.ablate_layers(e["m"], [0], "attn_out"),
     ValueError, "'attn_out'"),
    ("layer out of range", lambda e: ih.ablate_layers(e["m"], [5]), ValueError, "Layer 5"),
    ("float layer", lambda e: ih.ablate_layers(e["m"], [0.5]), TypeError, "0.5"),
    ("patch heads and layers", lambda e: ih.patch(e["m"], e["p"], heads=[(0, 0)], layers=[0]),
     ValueError, "heads= or layers="),
    ("patch a layer site with heads",
     lambda e: ih.patch(e["m"], e["p"], site="resid_pre", heads=[(0, 0)]), ValueError,
     "'resid_pre'"),
    ("patch source a list", lambda e: ih.patch(e["m"], list(e["p"].texts)), TypeError, "list"),
    ("patch source of another length",
     lambda e: ih.evaluate(e["m"], e["p"], interventions=[ih.patch(e["m"], e["p"].select([0]))],
                           progress=False),
     ValueError, "Target prompt"),
    ("bare `with patch`", _bare_patch, TypeError, "interventions="),
    ("steer a matrix", lambda e: ih.steer(e["m"], torch.zeros(2, 32), 0), ValueError,
     r"\(2, 32\)"),
    ("steer wrong width", lambda e: ih.steer(e["m"], torch.zeros(31), 0), ValueError, "31"),
    ("steer alpha string", lambda e: ih.steer(e["m"], torch.zeros(32), 0, alpha="2"), TypeError,
     "'2'"),
    ("steer without layer", lambda e: ih.steer(e["m"], torch.zeros(32)), ValueError, "layer"),
    ("steer NaN vector", lambda e: ih.steer(e["m"], torch.full((32,), math.nan), 0), ValueError,
     "NaN"),
    ("steer layer vs head", lambda e: ih.steer(e["m"], torch.zeros(32), 0, head=(1, 0)),
     ValueError, "layer=0"),
    ("steer a string", lambda e: ih.steer(e["m"], "up", 0), TypeError, "str"),
    ("compose nothing", lambda e: ih.compose(), ValueError, "at least one"),
    ("compose a number", lambda e: ih.compose(3), TypeError, "3"),
    ("intervention that is not one",
     lambda e: ih.evaluate(e["m"], e["p"], interventions=[3], progress=False), TypeError, "3"),
    ("interventions as a string",
     lambda e: ih.evaluate(e["m"], e["p"], interventions="ablate", progress=False), TypeError,
     "str"),
    ("intervention built for another model",
     lambda e: ih.evaluate(e["gpt"], e["p"], interventions=[ih.ablate(e["m"], [(0, 0)])],
                           progress=False),
     ValueError, "another model"),
    # ------------------------------------------------------------------ running the model
    ("batch_size 0", lambda e: ih.collect(e["m"], e["p"], batch_size=0), ValueError, "0"),
    ("batch_size float", lambda e: ih.evaluate(e["m"], e["p"], batch_size=2.5), TypeError, "2.5"),
    ("batch_size bool", lambda e: ih.evaluate(e["m"], e["p"], batch_size=True), TypeError,
     "True"),
    ("collect positions", lambda e: ih.collect(e["m"], e["p"], positions="middle"), ValueError,
     "middle"),
    ("collect names", lambda e: ih.collect(e["m"], e["p"], names=5), TypeError, "5"),
    ("prompts as a list", lambda e: ih.evaluate(e["m"], list(e["p"].texts)), TypeError, "list"),
    ("prompts as a string", lambda e: ih.tsla_scores(e["m"], "sentiment"), TypeError, "str"),
    ("empty prompt set", lambda e: ih.evaluate(e["m"], _empty(e["p"])), ValueError, "empty"),
    ("device cuda without CUDA", lambda e: ih.evaluate(e["m"], e["p"], device="cuda"),
     ValueError, "cuda"),
    ("device that is not one", lambda e: ih.tsla_scores(e["m"], e["p"], device="gpu"),
     ValueError, "'gpu'"),
    ("device a number", lambda e: ih.head_sweep(e["m"], e["p"], device=3.5), TypeError, "3.5"),
    ("prompts built for another model", lambda e: ih.evaluate(e["other"], e["p"]), ValueError,
     "tokenizer|d_vocab"),
    # ------------------------------------------------------------------ metrics and sweeps
    ("unknown metric", lambda e: ih.head_sweep(e["m"], e["p"], "f1"), ValueError, "'f1'"),
    ("metric a number", lambda e: ih.head_sweep(e["m"], e["p"], 5), TypeError, "5"),
    ("metric returning one number",
     lambda e: ih.head_sweep(e["m"], e["p"], _scalar_metric, progress=False), ValueError,
     "_scalar_metric.*one value per prompt"),
    ("sweep mode", lambda e: ih.head_sweep(e["m"], e["p"], mode="noise"), ValueError, "noise"),
    ("sweep method", lambda e: ih.head_sweep(e["m"], e["p"], method="quick"), ValueError,
     "quick"),
    ("patch sweep without source", lambda e: ih.head_sweep(e["m"], e["p"], mode="patch"),
     ValueError, "source="),
    ("source with zero ablation", lambda e: ih.head_sweep(e["m"], e["p"], source=e["p"]),
     ValueError, "'zero'"),
    ("misaligned source",
     lambda e: ih.head_sweep(e["m"], e["p"], mode="patch", source=e["p"].select([0, 1])),
     ValueError, "2 prompts"),
    ("rows_per_pass 0", lambda e: ih.head_sweep(e["m"], e["p"], rows_per_pass=0), ValueError,
     "rows_per_pass"),
    ("sweep seed float", lambda e: ih.head_sweep(e["m"], e["p"], seed=1.5), TypeError, "1.5"),
    ("sweep heads out of range", lambda e: ih.head_sweep(e["m"], e["p"], heads=[(0, 9)]),
     ValueError, "L0H9"),
    ("layer sweep on heads", lambda e: ih.layer_sweep(e["m"], e["p"], site="z"), ValueError,
     "'z'"),
    ("layer sweep layer out of range", lambda e: ih.layer_sweep(e["m"], e["p"], layers=[7]),
     ValueError, "Layer 7"),
    ("position sweep layer out of range", lambda e: ih.position_sweep(e["m"], e["p"], layer=2),
     ValueError, "Layer 2"),
    ("attribution patching of accuracy",
     lambda e: ih.attribution_patching(e["m"], e["p"], "accuracy"), ValueError, "'accuracy'"),
    # ------------------------------------------------------------------ attribution
    ("tsla normalize", lambda e: ih.tsla_scores(e["m"], e["p"], normalize="cosine"), ValueError,
     "cosine"),
    ("tsla floor", lambda e: ih.tsla_scores(e["m"], e["p"], normalize="norm", floor=1.5),
     ValueError, "1.5"),
    ("tsla top_k 0", lambda e: ih.tsla_scores(e["m"], e["p"], top_k=0), ValueError, "0"),
    ("tsla top_k float", lambda e: ih.tsla_scores(e["m"], e["p"], top_k=2.5), TypeError, "2.5"),
    ("tsla top_k above the heads", lambda e: ih.tsla_scores(e["m"], e["p"], top_k=100),
     ValueError, "100"),
    ("tsla one label", lambda e: ih.tsla_scores(e["m"], _single_label(e["p"])), ValueError,
     "1 label"),
    ("dla target", lambda e: ih.dla_scores(e["m"], e["p"], target="margin"), ValueError,
     "margin"),
    ("dla unit", lambda e: ih.direct_logit_attribution(e["m"], e["p"], unit="neuron"),
     ValueError, "neuron"),
    # ------------------------------------------------------------------ detectors
    ("random sequences too long", lambda e: ih.induction_scores(e["m"], T=200), ValueError,
     "T=200"),
    ("random sequences n=0", lambda e: ih.induction_scores(e["m"], n=0), ValueError, "0"),
    ("random sequences n float", lambda e: ih.induction_scores(e["m"], n=2.5), TypeError, "2.5"),
    ("detector normalize", lambda e: ih.induction_scores(e["m"], T=4, n=1, normalize="mul"),
     ValueError, "mul"),
    ("unknown detector",
     lambda e: ih.token_detector_scores(e["m"], T=4, n=1, detectors=["induction_head"]),
     ValueError, "induction_head"),
    ("sequences as text", lambda e: ih.induction_scores(e["m"], ["some text"]), TypeError,
     "list"),
    ("float tokens", lambda e: ih.induction_scores(e["m"], torch.zeros(2, 5)), TypeError,
     "float32"),
    ("token ids beyond the vocabulary",
     lambda e: ih.induction_scores(e["m"], torch.full((1, 5), 10**6)), ValueError, "1000000"),
    ("attention mask not left-padded",
     lambda e: ih.induction_scores(e["m"], torch.ones(1, 4, dtype=torch.long),
                                   attention_mask=torch.tensor([[1, 1, 0, 1]])),
     ValueError, "left-padded"),
    ("label attention without demonstrations",
     lambda e: ih.label_attention_scores(e["m"], ih.build_prompts(
         e["m"], ih.load_task("sentiment"), k=0, n=2)), ValueError, "k=0"),
    ("detect_heads threshold kind",
     lambda e: ih.detect_heads(e["m"], T=4, n=1, thresholds={"induction_head": 0.5}),
     ValueError, "induction_head"),
    ("detect_heads threshold string", lambda e: ih.detect_heads(e["m"], T=4, n=1,
                                                                thresholds="high"),
     TypeError, "str"),
    ("detect_heads negative top_k", lambda e: ih.detect_heads(e["m"], T=4, n=1,
                                                              top_k={"induction": -1}),
     ValueError, "-1"),
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
