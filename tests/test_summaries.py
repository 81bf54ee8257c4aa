"""The summaries the command line prints: the contrasts with their intervals, one sentence
per claim whose direction follows the numbers, the verdict from the verdicts module, and
the quickstart's sentence written from the numbers (synthetic results, no model)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from icl_heads.experiments.trtl import claim_verdict
from icl_heads.heads import HeadScores
from icl_heads.results import ExperimentResult, make_table, table_row
from icl_heads.settings import Settings
from icl_heads.summaries import (
    behaviour_lines,
    detector_lines,
    difference_interval,
    summary_lines,
    wilson_interval,
    with_ci,
)


@dataclass(frozen=True)
class _SummarySettings(Settings):
    seed: int = 0
    heads: tuple = ()


def ablation_result(tr_space: float, tl_space: float) -> ExperimentResult:
    """An ablation table: TR and TL change the label-space rate by ``tr_space`` and
    ``tl_space`` (random sets by -0.01), each with a +-0.05 interval; contrasts follow."""
    effects = {"TR": tr_space, "TL": tl_space, "random_TR": -0.01, "random_TL": -0.01}
    rows = [table_row("baseline", "label_space_rate", 0.7, 0.6, 0.8, 40, kind="level")]
    for name, d in effects.items():
        for metric in ("delta_label_space_rate", "delta_in_space_accuracy"):
            rows.append(table_row(name, metric, d, d - 0.05, d + 0.05, 40, kind="effect"))
    for a, b in (("TR", "random_TR"), ("TR", "TL"), ("TL", "random_TL"), ("TL", "TR")):
        d = effects[a] - effects[b]
        for metric in ("delta_label_space_rate", "delta_in_space_accuracy"):
            rows.append(table_row(f"{a} - {b}", metric, d, d - 0.04, d + 0.04, 40, kind="contrast"))
    heads = (("TR", ("L1H2",)), ("TL", ("L0H3",)))
    return ExperimentResult("ablation", make_table(rows), _SummarySettings(heads=heads))


def test_ablation_summary_prints_every_contrast_with_its_interval():
    text = "\n".join(summary_lines(ablation_result(-0.05, -0.31)))
    for contrast in ("TR - random_TR", "TL - random_TL", "TR - TL", "TL - TR"):
        assert contrast in text
    # TR - TL = -0.05 - (-0.31) = +0.26, interval +-0.04
    assert "+0.26 [+0.22, +0.3]" in text
    assert "-0.31 [-0.36, -0.26]" in text  # TL's own change


def test_claim_sentence_says_the_opposite_when_tl_lowers_label_space_more():
    result = ablation_result(-0.05, -0.31)
    lines = summary_lines(result)
    verdict = claim_verdict("tr_ablation_label_space", {"ablation": result})["verdict"]
    claim = next(i for i, line in enumerate(lines) if "TR ablation lowers label-space" in line)
    assert lines[claim].endswith(f"verdict: {verdict}")
    tr_vs_tl = next(line for line in lines[claim:] if "TR - TL =" in line)
    assert "left the label-space rate higher than TL" in tr_vs_tl
    assert "the opposite of the claim" in tr_vs_tl


def test_claim_sentence_agrees_when_the_numbers_support_the_claim():
    result = ablation_result(-0.31, -0.05)
    lines = summary_lines(result)
    tr_vs_tl = next(line for line in lines if "TR - TL =" in line)
    assert "left the label-space rate lower than TL" in tr_vs_tl
    assert "as the claim predicts" in tr_vs_tl
    assert "-0.26 [-0.3, -0.22]" in tr_vs_tl


def test_the_verdict_word_is_printed_as_the_verdicts_module_gives_it(monkeypatch):
    from icl_heads.summaries import trtl as summaries_trtl

    def new_vocabulary(claim, results):
        got = claim_verdict(claim, results)
        return {**got, "verdict": "no effect larger than 0.05"}

    monkeypatch.setattr(summaries_trtl, "claim_verdict", new_vocabulary)
    text = "\n".join(summary_lines(ablation_result(-0.05, -0.31)))
    assert "verdict: no effect larger than 0.05" in text


def test_geometry_ablation_summary_shows_changes_from_clean_not_clean_rows():
    summary = []
    levels = {"baseline": 0.85, "PTH": 0.92, "random_PTH": 0.65, "IH": 0.8, "random_IH": 0.8}
    for condition, v in levels.items():
        for metric in ("probe_accuracy", "mean_diff_cosine"):
            for span in ("early", "late"):
                summary.append(
                    table_row(condition, metric, v, v - 0.03, v + 0.03, 64, span=span, layers="1")
                )
    table = make_table([table_row("baseline", "probe_accuracy", 0.85, 0.8, 0.9, 64, layer=1)])
    result = ExperimentResult(
        "head_ablation_geometry",
        table,
        _SummarySettings(),
        tables={"summary": make_table(summary)},
    )
    lines = summary_lines(result)
    text = "\n".join(lines)
    assert "Change from clean per ablated set" in text
    pth = next(line for line in lines if line.strip().startswith("PTH "))
    assert "+0.07" in pth  # 0.92 - 0.85
    rand = next(line for line in lines if line.strip().startswith("random_PTH"))
    assert "-0.2" in rand  # 0.65 - 0.85
    claim = next(line for line in lines if line.startswith("Claim: PTH ablation"))
    assert "higher than with random sets: the opposite of the claim" in claim
    assert len(lines) < 12


def quickstart_table(acc0, space0, acc1, space1, n=40) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"k": 0, "n": n, "accuracy": acc0, "label_space_rate": space0, "chance": 0.5},
            {"k": 4, "n": n, "accuracy": acc1, "label_space_rate": space1, "chance": 0.5},
        ]
    )


def test_quickstart_lines_give_intervals_per_k_and_a_sentence_from_the_numbers():
    lines = behaviour_lines(quickstart_table(0.85, 0.70, 0.60, 1.00))
    low, high = wilson_interval(0.85, 40)
    assert f"k=0: accuracy {with_ci(0.85, low, high)}" in lines[1]
    sentence = lines[-1]
    assert "accuracy fell" in sentence and "label-space rate rose" in sentence
    assert "label word more often" in sentence and "gold one less often" in sentence


def test_quickstart_sentence_follows_the_sign_of_the_changes():
    rising = behaviour_lines(quickstart_table(0.55, 0.70, 0.95, 1.00))[-1]
    assert "accuracy rose" in rising and "label-space rate rose" in rising
    unclear = behaviour_lines(quickstart_table(0.5, 0.5, 0.55, 0.5, n=10))[-1]
    assert "did not change clearly" in unclear and "more prompts" in unclear


def test_wilson_and_difference_intervals():
    low, high = wilson_interval(1.0, 40)
    assert high == 1.0 and 0.9 < low < 0.92  # never collapses at 1
    assert all(math.isnan(x) for x in wilson_interval(0.5, 0))
    d_low, d_high = difference_interval((0.6, 0.45, 0.74), (0.85, 0.71, 0.93))
    assert d_low < -0.25 < d_high < 0


def test_with_ci_formats_signed_and_missing_values():
    assert with_ci(-0.31, -0.4, -0.22, signed=True) == "-0.31 [-0.4, -0.22]"
    assert with_ci(0.26, 0.18, 0.35, signed=True) == "+0.26 [+0.18, +0.35]"
    assert with_ci(math.nan, 0, 1) == "–"


def test_detector_lines_list_the_top_k_of_every_map():
    scores = torch.tensor([[0.9, 0.1], [0.6, 0.2]])
    maps = {"previous_token": HeadScores(scores, name="previous_token_score", settings=None)}
    lines = detector_lines(maps, ["previous_token"], top_k=2)
    assert "top 2 of every map" in lines[0]
    assert "L0H0=0.90 L1H0=0.60" in lines[1] and "2 of 2 score 0.5 or more" in lines[1]


@pytest.mark.parametrize("name", ["nothing_known", "quickstart"])
def test_a_result_without_a_summary_gives_no_lines(name):
    result = ExperimentResult(name, make_table([]), _SummarySettings())
    assert summary_lines(result) == []
