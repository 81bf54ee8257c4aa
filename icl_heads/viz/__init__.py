"""Plotly figures of the toolkit. Every function returns a ``go.Figure`` and never calls
``.show()``: the figure is interactive in Jupyter, ``fig.write_html(path)`` (or
:func:`save_figure`) makes a standalone page, and PNG export works where ``kaleido`` is
installed (optional).

Figures and what they show:

- :func:`head_heatmap` / :func:`head_heatmaps`: layer x head maps of any
  :class:`~icl_heads.heads.HeadScores` (layer 0 at the top, heads along x), one map or
  several side by side with shared axes (e.g. TR | TL | induction | previous-token). Signed
  maps get a diverging ``RdBu`` scale centred at 0 (Plotly's RdBu: negative red, positive
  blue, as in TransformerLens's demos), maps without negative values a sequential
  ``Blues``. Hover shows layer, head, score and rank; the top-k heads are outlined.
- :func:`score_scatter`: one map against another over all heads (e.g. TR vs TL), coloured
  by layer, top heads labelled; with ``fit=True`` (and in :func:`effect_scatter`) the
  least-squares line and Spearman's rho.
- :func:`layer_curves`: a metric over layers (or alpha, or k), one curve per condition with
  its confidence band, one panel per metric.
- :func:`condition_bars`: bars per condition and metric with confidence error bars, the
  baseline and chance as dashed lines.
- :func:`attention_pattern`: the attention pattern of one head on one prompt, tokens on
  both axes.
- :func:`experiment_figure`: the figure an :class:`~icl_heads.results.ExperimentResult`
  draws with ``.plot()``, chosen from what its table and maps hold (never from its name,
  so a new experiment plots without a change here).

This package draws and imports none of the types it draws: a map is anything shaped like
:class:`HeadMap` and a result anything shaped like :class:`ResultLike` (``HeadScores`` and
``ExperimentResult`` are; their ``.plot()`` methods call in here, never the other way).

Rooms: :mod:`~icl_heads.viz.maps` (head maps), :mod:`~icl_heads.viz.scatter` (score,
effect and correlation scatters), :mod:`~icl_heads.viz.curves` (curves and bars of tidy
tables), :mod:`~icl_heads.viz.patterns` (attention patterns),
:mod:`~icl_heads.viz.experiment` (a result's figure), :mod:`~icl_heads.viz.save` (files),
:mod:`~icl_heads.viz.style` (palette and text helpers), :mod:`~icl_heads.viz.protocols`
(what the figures read). Import the figures from here: ``from icl_heads.viz import
head_heatmap``.

Every figure that shows heads carries ``customdata = [layer, head, ...]`` on its points,
so a click handler (the linked report, :mod:`icl_heads.report`) can tell which head was
clicked.
"""

from __future__ import annotations

from .agreement import top_heads
from .curves import CURVE_AXES, condition_bars, layer_curves
from .experiment import experiment_figure
from .maps import head_heatmap, head_heatmaps
from .patterns import attention_pattern
from .protocols import HeadMap, ResultLike
from .save import save_figure
from .scatter import correlation_scatter, effect_scatter, score_scatter
from .style import (
    BASELINE_CONDITIONS,
    CONDITION_COLOURS,
    OUTLINE,
    PALETTE,
    describe_settings,
    display_token,
)

__all__ = [
    "BASELINE_CONDITIONS",
    "CONDITION_COLOURS",
    "CURVE_AXES",
    "OUTLINE",
    "PALETTE",
    "HeadMap",
    "ResultLike",
    "attention_pattern",
    "condition_bars",
    "correlation_scatter",
    "describe_settings",
    "display_token",
    "effect_scatter",
    "experiment_figure",
    "head_heatmap",
    "head_heatmaps",
    "layer_curves",
    "save_figure",
    "score_scatter",
    "top_heads",
]
