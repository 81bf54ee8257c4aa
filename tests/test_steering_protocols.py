"""Steering protocols (issue 18 items 1 and 6): the default task-mean protocol is unchanged
(its rows equal a table saved from the code before the protocols existed), the
query-matched protocol adds each target prompt's own k-shot twin's head outputs (checked
against a direct computation with hooks), and the continuous metrics equal direct
computations from the logits. Tiny models only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import needs_hooked
from tasks_v1 import load_v1_task

import icl_heads as ih
from icl_heads.experiments import trtl
from icl_heads.experiments.trtl import query_matched as qm
from icl_heads.heads import Head
from icl_heads.interventions import from_spec
from icl_heads.metrics import CONTINUOUS, get_metric, gold_margin, label_mass, logit_diff
from icl_heads.settings import Settings

DATA = Path(__file__).resolve().parent / "data"
N_BOOT = 50
SETS = {"TR": [(1, 0)], "TL": [(0, 2), (1, 2)]}
NEW = ("label_mass", "gold_margin")


@pytest.fixture(scope="module")
def icl(tiny_llama, sentiment_task):
    return ih.build_prompts(tiny_llama, sentiment_task, k=3, n=10, seed=0)


@pytest.fixture(scope="module")
def twins(tiny_llama, sentiment_task):
    """The zero-shot twins of ``icl``: the same n and seed, so the same queries."""
    return ih.build_prompts(tiny_llama, sentiment_task, k=0, n=10, seed=0)


@pytest.fixture(scope="module")
def matched(tiny_llama, icl, twins):
    return trtl.steering_experiment(
        tiny_llama,
        icl,
        twins,
        SETS,
        (0, 0.5, 1, 2, 4, 8),
        n_random=2,
        n_boot=N_BOOT,
        progress=False,
        protocol="query_matched",
    )


def _logits(model, prompts, hooks=()) -> torch.Tensor:
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        return model(prompts.tokens, attention_mask=prompts.attention_mask)[:, -1].float()


def _direct_outputs(model, prompts, heads) -> dict[Head, torch.Tensor]:
    """Each head's output z W_O at the query of every prompt, from run_with_cache."""
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.tokens, attention_mask=prompts.attention_mask)
    return {
        Head(*h): cache[f"blocks.{h[0]}.attn.hook_z"][:, -1, h[1]] @ model.W_O[h[0], h[1]]
        for h in heads
    }


def _direct_steered(model, source, target, heads, alpha) -> torch.Tensor:
    """The target's query logits with every head's own-twin output added at the query of
    its layer's attention output, by plain hooks (no experiment code)."""
    outs = _direct_outputs(model, source, heads)
    hooks = []
    for h, out in outs.items():

        def hook(act, hook, out=out):
            act = act.clone()
            act[:, -1] += alpha * out
            return act

        hooks.append((f"blocks.{h.layer}.hook_attn_out", hook))
    return _logits(model, target, hooks)


def _level(result, condition, metric, alpha, table=None) -> float:
    t = result.table if table is None else result.tables[table]
    rows = t[
        (t["condition"] == condition)
        & (t["metric"] == metric)
        & (t["kind"] == "level")
        & np.isclose(t["alpha"], alpha)
    ]
    assert len(rows) == 1, (condition, metric, alpha)
    return float(rows["value"].iloc[0])


# ----------------------------------------------------------------------------- task mean


@needs_hooked(
    "tests/data holds numbers saved from the hooked tiny model (the bridge twin has other weights)"
)
def test_default_call_keeps_every_existing_row_and_setting(tiny_llama):
    """The default (task-mean) call gives exactly the rows the code before the protocols
    gave (tests/data: saved from main's code path on this tiny model, on the version-1
    sentiment examples they were made from), plus the new continuous-metric rows; its
    settings equal the saved ones (protocol='task_mean')."""
    sentiment_task = load_v1_task("sentiment")
    icl = ih.build_prompts(tiny_llama, sentiment_task, k=3, n=10, seed=0)
    zs = ih.build_prompts(tiny_llama, sentiment_task, k=0, n=10, seed=1)
    res = trtl.steering_experiment(
        tiny_llama, icl, zs, SETS, (0, 1, 3), n_random=2, n_boot=N_BOOT, progress=False
    )
    for name in ("table", "geometry", "random_sets"):
        got = res.table if name == "table" else res.tables[name]
        old = got[~got["metric"].str.endswith(NEW)].reset_index(drop=True)
        saved = pd.read_csv(DATA / f"steering_task_mean_{name}.csv")
        assert list(old.columns) == list(saved.columns), name
        for column in saved.columns:
            if saved[column].dtype.kind == "f":
                np.testing.assert_allclose(
                    old[column].to_numpy(float),
                    saved[column].to_numpy(float),
                    rtol=0,
                    atol=1e-6,
                    equal_nan=True,
                    err_msg=f"{name} {column}",
                )
            else:
                assert list(old[column].astype(str)) == list(saved[column].astype(str)), column
    saved_settings = Settings.from_dict(
        json.loads((DATA / "steering_task_mean_settings.json").read_text())
    )
    assert res.settings == saved_settings
    assert res.settings.protocol == "task_mean" and res.settings.steer_descriptions == ()
    # the new rows: every level has its continuous metrics and their deltas
    t = res.table
    for condition in ("TR", "TL", "random_TR", "random_TL"):
        here = set(t[(t["condition"] == condition) & np.isclose(t["alpha"], 3)]["metric"])
        assert {"accuracy", "in_space_accuracy", *NEW, *(f"delta_{m}" for m in NEW)} <= here


# ----------------------------------------------------------------------------- query matched


def test_same_seed_and_n_give_the_same_queries_at_every_k(tiny_llama, sentiment_task):
    base = ih.build_prompts(tiny_llama, sentiment_task, k=4, n=24, seed=3)
    for k, perturbation in ((0, None), (2, None), (4, "abstract_labels"), (4, "random_labels")):
        other = ih.build_prompts(tiny_llama, sentiment_task, k, 24, 3, perturbation=perturbation)
        assert other.query_examples == base.query_examples
        assert torch.equal(other.gold, base.gold)
        torch.testing.assert_close(qm.check_query_pairs(base, other), torch.arange(24))


def test_query_matched_alpha_zero_is_the_baseline_exactly(matched):
    t = matched.table
    base = t[(t["condition"] == "baseline") & (t["metric"] != "chance")]
    cols = ["metric", "value", "ci_low", "ci_high", "n"]
    for condition in ("TR", "TL", "random_TR", "random_TL"):
        rows = t[(t["condition"] == condition) & (t["alpha"] == 0) & (t["kind"] == "level")]
        pd.testing.assert_frame_equal(
            rows[cols].reset_index(drop=True), base[cols].reset_index(drop=True)
        )
    assert matched.settings.protocol == "query_matched"
    assert matched.settings.vector == qm.VECTOR_TEXT["query_matched"]
    assert matched.settings.alphas == (0, 0.5, 1, 2, 4, 8)  # alpha 8 runs


@pytest.mark.parametrize("alpha", [1.0, 8.0])
def test_query_matched_adds_each_prompts_own_head_outputs(matched, tiny_llama, icl, twins, alpha):
    logits = _direct_steered(tiny_llama, icl, twins, SETS["TL"], alpha)
    gold, ids = twins.gold, twins.label_token_ids
    for metric, fn in (("logit_diff", logit_diff), ("label_mass", label_mass)):
        want = float(fn(logits, gold, ids).mean())
        assert _level(matched, "TL", metric, alpha) == pytest.approx(want, abs=1e-5)
    acc = float((logits[:, ids].argmax(-1) == gold).float().mean())
    assert _level(matched, "TL", "accuracy", alpha) == pytest.approx(acc, abs=1e-6)
    # a random control set gets the same treatment (its own heads' own-twin outputs)
    rs = matched.tables["random_sets"]
    row = rs[(rs["condition"] == "random_TL#1") & (rs["metric"] == "logit_diff")]
    row = row[np.isclose(row["alpha"], alpha)].iloc[0]
    heads = [(int(a), int(b)) for a, b in re.findall(r"L(\d+)H(\d+)", row["heads"])]
    assert len(heads) == 2
    direct = _direct_steered(tiny_llama, icl, twins, heads, alpha)
    assert row["value"] == pytest.approx(float(logit_diff(direct, gold, ids).mean()), abs=1e-5)


def test_query_matched_differs_from_task_mean_and_pairing_is_by_row(
    matched, tiny_llama, icl, twins
):
    """A shuffled source (other queries per row) is refused; the task-mean protocol on the
    same prompts adds another vector (the mean), so the numbers differ."""
    mean = trtl.steering_experiment(
        tiny_llama, icl, twins, SETS, (0, 0.5, 1, 2, 4, 8), n_random=2, n_boot=N_BOOT,
        progress=False,
    )  # fmt: skip
    assert _level(mean, "TL", "logit_diff", 4.0) != pytest.approx(
        _level(matched, "TL", "logit_diff", 4.0), abs=1e-6
    )
    assert _level(mean, "baseline", "logit_diff", 0.0) == _level(
        matched, "baseline", "logit_diff", 0.0
    )


def test_query_head_outputs_average_to_the_task_mean_vectors(tiny_llama, icl):
    heads = [Head(0, 2), Head(1, 0), Head(1, 3)]
    per = qm.query_head_outputs(tiny_llama, icl, heads, batch_size=4, progress=False)
    assert per.shape == (len(icl), 3, tiny_llama.cfg.d_model)
    means = trtl.mean_head_outputs(tiny_llama, icl, progress=False)
    for j, h in enumerate(heads):
        torch.testing.assert_close(per[:, j].mean(0), means[h.layer, h.head], atol=1e-5, rtol=1e-5)
    direct = _direct_outputs(tiny_llama, icl, heads)
    for j, h in enumerate(heads):
        torch.testing.assert_close(per[:, j], direct[h].float(), atol=1e-5, rtol=1e-5)


def test_query_matched_steer_is_recorded_as_an_opaque_spec(matched, tiny_llama, icl, twins):
    heads = [Head(0, 2)]
    out = qm.query_head_outputs(tiny_llama, icl, heads, progress=False)
    iv = qm.matched_steer(
        tiny_llama, out, heads, qm.check_query_pairs(icl, twins), alpha=2.0, source=icl.info()
    )
    spec = iv.to_spec()
    assert spec["kind"] == "opaque" and "steer_query_matched" in spec["description"]
    assert "alpha=2" in spec["description"] and "k=3 n=10 seed=0" in spec["description"]
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        from_spec(tiny_llama, json.loads(json.dumps(spec)))
    with pytest.raises(TypeError, match="bare `with` block"):
        with iv:
            pass
    # the settings record every run's description; the intervention runs through evaluate
    assert any(d.startswith("TL, alpha=8:") for d in matched.settings.steer_descriptions)
    got = ih.evaluate(tiny_llama, twins, interventions=[iv], progress=False)
    direct = _direct_steered(tiny_llama, icl, twins, heads, 2.0)
    want = float(logit_diff(direct, twins.gold, twins.label_token_ids).mean())
    assert float(got["logit_diff"].iloc[0]) == pytest.approx(want, abs=1e-5)


def test_query_matched_result_round_trips(matched, tmp_path):
    back = ih.ExperimentResult.load(matched.save(tmp_path / "steering"))
    assert back.settings == matched.settings
    assert back.settings.protocol == "query_matched"


# ----------------------------------------------------------------------------- metrics


def test_continuous_metrics_equal_direct_computations(tiny_llama, twins):
    logits = _logits(tiny_llama, twins)
    ids, gold = twins.label_token_ids, twins.gold
    probs = torch.softmax(logits.double(), -1)
    want_mass = probs[:, ids].sum(-1)
    torch.testing.assert_close(
        label_mass(logits, gold, ids).double(), want_mass, atol=1e-6, rtol=1e-5
    )
    want_margin = []
    for i in range(len(gold)):
        lab = logits[i, ids]
        others = [float(lab[j]) for j in range(len(ids)) if j != int(gold[i])]
        want_margin.append(float(lab[gold[i]]) - max(others))
    torch.testing.assert_close(
        gold_margin(logits, gold, ids), torch.tensor(want_margin), atol=1e-6, rtol=0
    )
    # three labels: margin over the best other, positive exactly where accuracy is 1
    lab3 = torch.tensor([[2.0, 1.0, 3.0], [5.0, 1.0, 0.0]])
    ids3, gold3 = torch.tensor([0, 1, 2]), torch.tensor([0, 0])
    torch.testing.assert_close(gold_margin(lab3, gold3, ids3), torch.tensor([-1.0, 4.0]))
    assert get_metric("label_mass") is label_mass
    assert CONTINUOUS == ("label_mass", "gold_margin")


def test_steering_baseline_continuous_rows_equal_the_plain_run(matched, tiny_llama, twins):
    logits = _logits(tiny_llama, twins)
    ids, gold = twins.label_token_ids, twins.gold
    for metric, fn in (("label_mass", label_mass), ("gold_margin", gold_margin)):
        want = float(fn(logits, gold, ids).mean())
        assert _level(matched, "baseline", metric, 0.0) == pytest.approx(want, abs=1e-5)
    t = matched.table
    delta = t[(t["condition"] == "TL") & (t["metric"] == "delta_label_mass")]
    delta = float(delta[np.isclose(delta["alpha"], 2.0)]["value"].iloc[0])
    assert delta == pytest.approx(
        _level(matched, "TL", "label_mass", 2.0) - _level(matched, "baseline", "label_mass", 0.0),
        abs=1e-6,
    )
