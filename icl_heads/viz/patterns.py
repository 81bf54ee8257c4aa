"""The attention pattern of one head on one prompt (:func:`attention_pattern`), tokens on
both axes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .style import display_token

if TYPE_CHECKING:
    import plotly.graph_objects as go


def attention_pattern(
    pattern,
    tokens: Sequence[str],
    *,
    head: object | None = None,
    title: str | None = None,
) -> go.Figure:
    """The attention pattern of one head on one prompt: query position down, key position
    across, the prompt's tokens on both axes (positions are numeric, so repeated tokens stay
    apart).

    Args:
        pattern: ``[query, key]`` attention weights (tensor or array), rows summing to 1.
        tokens: the prompt's tokens (``model.to_str_tokens``), one per position.
        head: the head, for the title (e.g. ``Head(3, 5)``).
        title: the figure's title.
    """
    import plotly.graph_objects as go

    z = _to_numpy(pattern)
    if z.ndim != 2 or z.shape[0] != z.shape[1] or z.shape[0] != len(tokens):
        raise ValueError(
            f"attention_pattern needs a square [query, key] pattern with one "
            f"token per position; got shape {tuple(z.shape)} and {len(tokens)} "
            "tokens."
        )
    labels = [display_token(t) for t in tokens]
    positions = np.arange(len(tokens))
    custom = np.stack(np.meshgrid(positions, positions, indexing="ij"), axis=-1).astype(object)
    query_tok = np.array(labels, dtype=object)[:, None].repeat(len(labels), 1)
    key_tok = np.array(labels, dtype=object)[None, :].repeat(len(labels), 0)
    custom = np.concatenate([custom, query_tok[..., None], key_tok[..., None]], axis=-1)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale="Blues",
            zmin=0,
            zmax=max(float(np.nanmax(z)) if z.size else 1, 1e-6),
            customdata=custom,
            colorbar=dict(title=dict(text="attention"), thickness=12),
            hovertemplate=(
                "query %{customdata[0]} %{customdata[2]} → key %{customdata[1]} "
                "%{customdata[3]}<br>weight %{z:.3f}<extra></extra>"
            ),
        )
    )
    axis = dict(
        tickmode="array",
        tickvals=positions,
        ticktext=labels,
        tickfont=dict(size=9),
        showgrid=False,
        zeroline=False,
    )
    name = f" of {head}" if head is not None else ""
    fig.update_layout(
        title=title or f"Attention pattern{name}",
        xaxis=dict(axis, title="key (attended-to) token", tickangle=-90),
        yaxis=dict(axis, title="query token", autorange="reversed"),
        height=max(420, 11 * len(tokens) + 200),
        width=max(480, 11 * len(tokens) + 260),
        plot_bgcolor="white",
    )
    return fig


def _to_numpy(values) -> np.ndarray:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            return values.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(values, dtype=float)
