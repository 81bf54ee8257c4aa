"""Numbers as the summaries print them: intervals of proportions and of differences,
``value [low, high]`` text, which side of a null an interval lies on, and small aligned
text tables (:mod:`icl_heads.summaries`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..experiments.kit import fmt
from ..results import ExperimentResult

Z95 = 1.959963984540054

#: Human names of the metrics the summaries mention.
LABELS = {
    "accuracy": "accuracy",
    "label_space_rate": "label-space rate",
    "in_space_accuracy": "in-space accuracy",
    "logit_diff": "logit difference",
    "alignment": "subspace alignment",
    "rotation": "rotation toward the gold label",
    "probe_accuracy": "probe accuracy (separability)",
    "mean_diff_cosine": "label-direction cosine (alignment)",
    "logit_lens_accuracy": "logit-lens accuracy",
}


# --------------------------------------------------------------------------- numbers


def wilson_interval(p: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` of ``n`` trials (NaN when
    ``n`` is 0 or ``p`` is NaN); unlike ``p ± 1.96 se`` it never collapses at 0 or 1.

    Example::

        wilson_interval(0.6, 40)     # (0.446, 0.737)
    """
    if not n or p is None or math.isnan(p):
        return math.nan, math.nan
    z2 = Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    a: tuple[float, float, float], b: tuple[float, float, float]
) -> tuple[float, float]:
    """An approximate 95% interval of ``a - b`` from each estimate's own interval
    (``(value, low, high)``), treating them as independent (MOVER, Zou & Donner 2008;
    with Wilson intervals this is Newcombe's interval). For the same prompts measured twice
    it is conservative (too wide).

    Example::

        difference_interval((0.6, 0.45, 0.74), (0.85, 0.71, 0.93))   # about (-0.43, -0.06)
    """
    (x, xl, xh), (y, yl, yh) = a, b
    d = x - y
    low = d - math.sqrt((x - xl) ** 2 + (yh - y) ** 2)
    high = d + math.sqrt((xh - x) ** 2 + (y - yl) ** 2)
    return low, high


def with_ci(value: float, low: float, high: float, *, signed: bool = False) -> str:
    """``"-0.31 [-0.4, -0.22]"``: a value and its interval (``–`` for a missing one)."""

    def num(x: float) -> str:
        text = fmt(x)
        return "+" + text if signed and text not in ("–", "0") and float(x) > 0 else text

    if is_nan(value):
        return "–"
    if is_nan(low) or is_nan(high):
        return num(value)
    return f"{num(value)} [{num(low)}, {num(high)}]"


def side(low: float, high: float, null: float = 0.0) -> int:
    """+1 when the interval lies above ``null``, -1 below, 0 when it includes it (or is
    missing)."""
    if is_nan(low) or is_nan(high) or is_nan(null):
        return 0
    return 1 if low > null else -1 if high < null else 0


def is_nan(x) -> bool:
    """Whether ``x`` is missing (None or NaN).

    Example::

        is_nan(float("nan")), is_nan(0.0)      # True, False
    """
    return x is None or (isinstance(x, float) and math.isnan(x))


def metric_label(metric: str) -> str:
    """A metric's human name, without ``delta_`` (:data:`LABELS`; else the name).

    Example::

        metric_label("delta_label_space_rate")      # "label-space rate"
    """
    return LABELS.get(metric.removeprefix("delta_"), metric.removeprefix("delta_"))


def select_rows(result: ExperimentResult, **where) -> pd.DataFrame:
    """The rows of ``result.table`` whose columns equal ``where`` (none when a column is
    missing).

    Example::

        select_rows(result, kind="contrast", alpha=1.0)
    """
    frame = result.table
    for column, value in where.items():
        if column not in frame.columns:
            return frame.iloc[0:0]
        frame = frame[frame[column] == value]
    return frame


def value_ci(result: ExperimentResult, **where) -> tuple[float, float, float]:
    """``(value, ci_low, ci_high)`` of the one row matching ``where`` (NaNs when not exactly
    one does).

    Example::

        value_ci(result, condition="TR - TL", metric="delta_label_space_rate")
    """
    rows = select_rows(result, **where)
    if len(rows) != 1:
        return math.nan, math.nan, math.nan
    row = rows.iloc[0]
    return float(row["value"]), float(row["ci_low"]), float(row["ci_high"])


def text_table(title: str, rows: Sequence[str], columns: Sequence[str], cell) -> list[str]:
    """An aligned text table, indented two spaces: ``cell(row, column)`` gives each entry.

    Example::

        text_table("set", ["TR", "TL"], ["Δ accuracy"], lambda r, c: "0.1")
    """
    cells = [[cell(r, c) for c in columns] for r in rows]
    first = max([len(title), *map(len, rows)])
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    out = [f"  {title:<{first}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(columns, widths))]
    for name, line in zip(rows, cells):
        out.append(f"  {name:<{first}}  " + "  ".join(f"{x:<{w}}" for x, w in zip(line, widths)))
    return out
