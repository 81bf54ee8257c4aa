"""The attention pattern of one head on one prompt (:func:`attention_pattern`), tokens on
both axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .style import display_token

#: Pixel size of the token labels, and the room each label needs across its line.
TICK_FONT = 11
TICK_ROOM = TICK_FONT + 3
#: Most characters of a token label (longer ones end in "…"; the hover has them whole).
LABEL_CHARS = 14

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
    apart). Labels are 11 px, newlines shown as ``⏎``; every token gets a row of 14 px up to
    64 tokens, beyond which every n-th token is labelled (the hover names all).

    Example::

        attention_pattern(example.patterns[3, 5], example.tokens, head=ih.Head(3, 5))

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
    T = len(tokens)
    step = max(1, math.ceil(T / 64))  # at most 64 labels of TICK_ROOM px per axis
    shown = positions[::step]
    short = [t if len(t) <= LABEL_CHARS else t[: LABEL_CHARS - 1] + "…" for t in labels]
    axis = dict(
        tickmode="array",
        tickvals=shown,
        ticktext=[short[i] for i in shown],
        tickfont=dict(size=TICK_FONT),
        showgrid=False,
        zeroline=False,
        automargin=True,
    )
    note = f" (1 in {step} tokens labelled)" if step > 1 else ""
    side = 16 + math.ceil(max((len(t) for t in short), default=1) * TICK_FONT * 0.62)
    name = f" of {head}" if head is not None else ""
    plot = TICK_ROOM * len(shown)  # pixels of the square plot area
    fig.update_layout(
        title=dict(
            text=title or f"Attention pattern{name}",
            x=0,
            xref="container",
            xanchor="left",
            y=1,
            yref="container",
            yanchor="top",
            pad=dict(t=34, l=8),  # below Plotly's mode bar, which sits at the top right
        ),
        xaxis=dict(axis, title="key (attended-to) token" + note, tickangle=-90),
        yaxis=dict(axis, title="query token" + note, autorange="reversed"),
        height=int(max(420, plot + side + 120)),
        width=int(max(480, plot + side + 160)),
        margin=dict(t=70),
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
