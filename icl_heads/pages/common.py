"""What both results pages share: one number format (:func:`icl_heads.experiments.kit.fmt`), intervals, figures written through
:func:`icl_heads.viz.save_figure`, relative links."""

from __future__ import annotations

import math
import os
from pathlib import Path

import plotly.graph_objects as go

from ..experiments.kit import fmt
from ..viz import save_figure


def fmt_ci(value: float, low: float, high: float) -> str:
    """``value [low, high]``, or the value alone when the interval is missing or a point."""
    if (
        low is None
        or high is None
        or any(isinstance(x, float) and math.isnan(x) for x in (low, high))
        or low == high == value
    ):
        return fmt(value)
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def write_figure(fig: go.Figure, path: Path) -> Path:
    """A page's figure: standalone HTML sharing one ``plotly.min.js`` in its folder, with a
    fixed element id (the file's stem) so regenerated pages are identical."""
    return save_figure(fig, path, include_plotlyjs="directory", div_id=path.stem)


def relpath(target: Path, start: Path) -> str:
    """``target`` relative to the folder ``start`` (for links in a page), POSIX separators."""
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()
