"""The few numbers that decide a result's claim, as lines of text: what the command line
prints before it points to the full table (a result in, lines out; nothing is printed
here).

* :func:`summary_lines`: any :class:`~icl_heads.results.ExperimentResult` of the TR/TL or
  the geometry experiments: the contrasts (or onsets, or changes from clean) with their
  95% intervals, and one sentence per claim with its verdict (:mod:`.trtl`,
  :mod:`.geometry`; the verdict word is printed as the verdicts modules give it).
* :func:`behaviour_lines`: the quickstart's behaviour over k (accuracy and label-space rate
  with Wilson intervals) and one sentence written from the numbers.
* :func:`detector_lines`: the heads of each kind, by the one rule the detect report
  outlines.

Example::

    from icl_heads.summaries import summary_lines
    print("\\n".join(summary_lines(ih.ExperimentResult.load("results/ablate"))))
"""

from __future__ import annotations

from ..results import ExperimentResult
from .behaviour import behaviour_lines, detector_lines
from .geometry import head_ablation_lines, layer_geometry_lines, task_vector_lines
from .numbers import difference_interval, side, wilson_interval, with_ci
from .trtl import (
    ablation_lines,
    claim_lines,
    correlation_lines,
    find_heads_lines,
    perturbation_lines,
    reconciliation_lines,
    steering_lines,
)


def summary_lines(result: ExperimentResult) -> list[str]:
    """The lines that decide ``result``'s claim: for the TR/TL experiments the contrasts
    (or correlations, stabilities, overlaps) the claims use, with 95% intervals, and one
    sentence per claim with its verdict; for the geometry experiments the onset per metric,
    the change from clean per ablated set, or the task vector's largest effect. An
    experiment without a summary gives ``[]``.

    Example::

        summary_lines(ih.ExperimentResult.load("results/ablate"))
        # ['Contrasts (95% CI; change under ablation of A minus that of B):', ...]
    """
    make = {
        "ablation": ablation_lines,
        "steering": steering_lines,
        "find_task_heads": find_heads_lines,
        "perturbation": perturbation_lines,
        "correlation": correlation_lines,
        "reconciliation": reconciliation_lines,
        "layer_geometry": layer_geometry_lines,
        "head_ablation_geometry": head_ablation_lines,
        "task_vector": task_vector_lines,
    }.get(result.name)
    return make(result) if make is not None else []


__all__ = [
    "behaviour_lines",
    "claim_lines",
    "detector_lines",
    "difference_interval",
    "side",
    "summary_lines",
    "wilson_interval",
    "with_ci",
]
