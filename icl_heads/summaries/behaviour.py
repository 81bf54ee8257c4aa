"""Summaries without an experiment result: the quickstart's behaviour over k and the
detect command's heads of each kind."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from ..experiments.kit import fmt
from ..heads import HeadScores
from .numbers import difference_interval, is_nan, metric_label, side, wilson_interval, with_ci


def behaviour_lines(table: pd.DataFrame) -> list[str]:
    """Accuracy and label-space rate with 95% Wilson intervals per k (one line each), and
    one sentence on how they moved from the smallest to the largest k, written from the
    numbers (a change counts when its Newcombe interval excludes 0).

    Args:
        table: one row per k with ``k, n, accuracy, label_space_rate, in_space_accuracy,
            chance`` (what :func:`icl_heads.evaluate` returns, concatenated).

    Example::

        behaviour_lines(pd.concat([ih.evaluate(model, p) for p in prompt_sets]))
    """
    table = table.sort_values("k")
    out = ["Accuracy and label-space rate per k (95% Wilson intervals):"]
    for _, row in table.iterrows():
        n = int(row["n"])
        acc = with_ci(row["accuracy"], *wilson_interval(row["accuracy"], n))
        space = with_ci(row["label_space_rate"], *wilson_interval(row["label_space_rate"], n))
        out.append(f"  k={int(row['k'])}: accuracy {acc}, label-space rate {space} (n={n})")
    if len(table) < 2:
        return out
    first, last = table.iloc[0], table.iloc[-1]
    moves = {}
    for metric in ("accuracy", "label_space_rate"):
        a = (float(last[metric]), *wilson_interval(last[metric], int(last["n"])))
        b = (float(first[metric]), *wilson_interval(first[metric], int(first["n"])))
        low, high = difference_interval(a, b)
        moves[metric] = (side(low, high), a[0] - b[0], low, high, b[0], a[0])
    return out + [_behaviour_sentence(moves, first, last)]


def _behaviour_sentence(moves: dict, first, last) -> str:
    k0, k1 = int(first["k"]), int(last["k"])

    def part(metric: str) -> str:
        s, d, low, high, a, b = moves[metric]
        verb = {1: "rose", -1: "fell", 0: "did not change clearly"}[s]
        return (
            f"{metric_label(metric)} {verb} ({fmt(a)} -> {fmt(b)}, change "
            f"{with_ci(d, low, high, signed=True)})"
        )

    acc, space = moves["accuracy"][0], moves["label_space_rate"][0]
    text = f"From k={k0} to k={k1}, {part('accuracy')} and {part('label_space_rate')}"
    why = {
        (-1, 1): "the demonstrations make the model answer with a label word more often, but "
        "among the labels it picks the gold one less often: it recognises the task's labels "
        "without mapping inputs to them better (accuracy compares the label words only)",
        (-1, 0): "the model picks the gold label less often among the labels, although it "
        "answers with a label word about as often",
        (-1, -1): "the model answers with a label word less often and picks the gold label "
        "less often",
        (1, 1): "the demonstrations make the model answer with a label word more often and "
        "pick the gold one more often",
        (1, 0): "the model picks the gold label more often among the labels while answering "
        "with a label word about as often: the gain is in the mapping, not in recognising "
        "the labels",
        (1, -1): "the model picks the gold label more often, though it answers with a label "
        "word less often",
        (0, 1): "the demonstrations make the model answer with a label word more often, "
        "without a clear change in which label it picks",
        (0, -1): "the model answers with a label word less often, without a clear change in "
        "which label it picks",
        (0, 0): "neither changed clearly at this n; more prompts (--n) narrow the intervals",
    }[(acc, space)]
    chance = float(last.get("chance", math.nan))
    low, high = wilson_interval(float(last["accuracy"]), int(last["n"]))
    at_chance = (
        f" At k={k1} accuracy is not clearly above chance ({fmt(chance)})."
        if not is_nan(chance) and low <= chance
        else ""
    )
    return f"{text}: {why}.{at_chance}"


# --------------------------------------------------------------------------- detect


def detector_lines(maps: Mapping[str, HeadScores], kinds: Sequence[str], top_k: int) -> list[str]:
    """The heads of each kind by the rule the detect report outlines: the ``top_k`` best of
    every map, with their scores, and how many of them reach 0.5.

    Example::

        detector_lines(maps, ["previous_token", "induction"], top_k=8)
    """
    out = [
        f"Heads of each kind: the top {top_k} of every map (--top-k; the report outlines the "
        "same heads and table.csv's kind column names them), with their scores:"
    ]
    for name, scores in maps.items():
        tops = scores.top(top_k)
        strong = sum(scores[h] >= 0.5 for h in tops)
        kind = "" if name in kinds else " (not a kind)"
        listed = " ".join(f"{h}={scores[h]:.2f}" for h in tops)
        out.append(f"  {name}{kind}: {listed}  ({strong} of {len(tops)} score 0.5 or more)")
    return out


__all__ = ["behaviour_lines", "detector_lines"]
