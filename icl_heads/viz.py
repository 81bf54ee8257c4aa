"""Plotly figures. Every function returns a ``go.Figure`` and never calls ``.show()``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .heads import HeadScores


def head_heatmap(
    scores: HeadScores,
    *,
    title: str | None = None,
    diverging: bool | None = None,
    highlight_top: int | None = 0,
) -> go.Figure:
    """Layer x head heatmap (layer 0 at the top, heads along x) with hover labels.

    Args:
        scores: the map.
        title: default: the score name and metadata.
        diverging: symmetric ``RdBu`` scale centred at 0 (default when the map has
            negative values), else sequential ``Blues``.
        highlight_top: outline the top-k heads (0: none; ``None``: the default 3%).
    """
    import plotly.graph_objects as go

    z = scores.scores.numpy()
    finite = z[np.isfinite(z)]
    if diverging is None:
        diverging = bool(finite.size) and float(finite.min()) < 0
    L, H = z.shape
    text = [[f"L{l}H{h}" for h in range(H)] for l in range(L)]
    kwargs = {}
    if diverging:
        m = float(np.abs(finite).max()) if finite.size else 1.0
        kwargs = dict(colorscale="RdBu", zmid=0.0, zmin=-m, zmax=m)
    else:
        kwargs = dict(colorscale="Blues")
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)], customdata=text,
        hovertemplate="%{customdata}<br>" + scores.name + "=%{z:.4g}<extra></extra>",
        colorbar=dict(title=scores.name), **kwargs))
    if highlight_top != 0:
        for head in scores.top(highlight_top):
            fig.add_shape(type="rect", x0=head.head - 0.5, x1=head.head + 0.5,
                          y0=head.layer - 0.5, y1=head.layer + 0.5,
                          line=dict(color="black", width=2))
    meta = _describe_settings(scores.settings)
    fig.update_layout(title=title or f"{scores.name}" + (f" ({meta})" if meta else ""),
                      xaxis_title="Head", yaxis_title="Layer",
                      yaxis=dict(autorange="reversed"), height=max(300, 18 * L + 120))
    return fig


def _describe_settings(settings) -> str:
    """A short title suffix from a result's settings: model, task, k, n."""
    if settings is None:
        return ""
    parts = []
    model = getattr(settings, "model", None)
    if model:
        parts.append(f"model={model}")
    prompts = getattr(settings, "prompts", None)
    if prompts is None and hasattr(settings, "task"):
        prompts = settings
    if prompts is not None:
        parts.append(f"task={prompts.task}, k={prompts.k}, n={prompts.n}")
    return ", ".join(parts)
