"""Behaviour metrics on hand-made logits, and evaluate()."""

from __future__ import annotations

import math

import pytest
import torch

import icl_heads as ih
from icl_heads import metrics


def _logits():
    # vocab of 6; labels are tokens 2 and 4; gold = [0, 1, 0]
    logits = torch.zeros(3, 6)
    logits[0, 2], logits[0, 4] = 3.0, 1.0  # in space (argmax=2), correct
    logits[1, 2], logits[1, 4] = 2.0, 1.0  # in space (argmax=2), wrong (gold is token 4)
    logits[2, 2], logits[2, 4], logits[2, 5] = 1.0, 0.5, 9.0  # out of space, label-correct
    return logits, torch.tensor([0, 1, 0]), torch.tensor([2, 4])


def test_metric_values():
    logits, gold, labels = _logits()
    assert metrics.accuracy(logits, gold, labels).tolist() == [1.0, 0.0, 1.0]
    assert metrics.label_space_rate(logits, gold, labels).tolist() == [1.0, 1.0, 0.0]
    ins = metrics.in_space_accuracy(logits, gold, labels)
    assert ins[:2].tolist() == [1.0, 0.0] and math.isnan(ins[2])
    assert metrics.logit_diff(logits, gold, labels).tolist() == [2.0, -1.0, 0.5]


def test_logit_diff_multiclass_is_gold_minus_mean_of_others():
    logits = torch.tensor([[1.0, 4.0, 2.0, 0.0]])
    assert metrics.logit_diff(logits, torch.tensor([1]), torch.tensor([0, 1, 2, 3])).item() == 3.0


def test_get_metric():
    assert metrics.get_metric("accuracy") is metrics.accuracy
    fn = lambda l, g, y: l.sum(-1)  # noqa: E731
    wrapped = metrics.get_metric(fn)
    logits, gold, labels = torch.randn(3, 7), torch.tensor([0, 1, 0]), torch.tensor([2, 5])
    assert torch.equal(wrapped(logits, gold, labels), fn(logits, gold, labels))
    bad = metrics.get_metric(lambda l, g, y: l.sum())  # one number for the batch
    with pytest.raises(ValueError, match="one value per prompt"):
        bad(logits, gold, labels)
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        metrics.get_metric("f1")


def test_evaluate_one_row(tiny_llama, tiny_prompts):
    table = ih.evaluate(tiny_llama, tiny_prompts, batch_size=4, progress=False)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["k"] == 3 and row["n"] == 10 and row["chance"] == 0.5
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["label_space_rate"] <= 1.0


@pytest.mark.slow
def test_default_model_recognises_the_task_with_demos(smol):
    task = ih.load_task("sentiment")
    zero = ih.evaluate(smol, ih.build_prompts(smol, task, k=0, n=16, seed=0), progress=False)
    four = ih.evaluate(smol, ih.build_prompts(smol, task, k=4, n=16, seed=0), progress=False)
    assert four.label_space_rate[0] > zero.label_space_rate[0]
    assert four.label_space_rate[0] > 0.9 and four.accuracy[0] > 0.5


# ---- NaN and infinities (docs/api.md): non-finite logits are never scored


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_no_metric_scores_nan_logits(name):
    # an argmax over NaN used to count as a prediction (accuracy 0.5 on NaN logits)
    logits, gold, labels = _logits()
    logits[1] = math.nan
    with pytest.raises(ValueError, match=f"^{name}: the logits of 1 of 3 prompts hold NaN"):
        metrics.METRICS[name](logits, gold, labels)


def test_check_logits_passes_finite_logits_unchanged():
    logits, gold, labels = _logits()
    assert metrics.check_logits(logits, "x") is logits
    assert metrics.accuracy(logits, gold, labels).tolist() == [1.0, 0.0, 1.0]


def test_check_logits_finds_every_non_finite_row_and_passes_sums_that_overflow():
    """The check reads row sums first: a NaN or inf anywhere makes a row's sum non-finite
    (+inf and -inf in one row sum to NaN), and finite rows whose sum overflows float32 are
    looked at value by value, so they pass; half-precision rows sum in float32."""
    big = torch.full((2, 8), 3e38)  # finite, but each row sums to inf in float32
    assert metrics.check_logits(big, "x") is big
    half = torch.full((3, 4096), 60000.0, dtype=torch.float16)  # sums past float16's range
    assert metrics.check_logits(half, "x") is half
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        logits = torch.zeros(3, 6)
        logits[1, : len(bad)] = torch.tensor(bad)
        kind = "NaN" if math.isnan(bad[0]) else "inf"
        with pytest.raises(ValueError, match=rf"1 of 3 prompts hold {kind} \(first: batch row 1\)"):
            metrics.check_logits(logits, "accuracy")
