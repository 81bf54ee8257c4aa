"""Layer x head maps: :func:`head_heatmap` (one map) and :func:`head_heatmaps` (several
side by side with shared axes), top heads outlined (:func:`top_heads`). Colours follow a
``scale`` (:mod:`~icl_heads.viz.scales`: by default linear where that spreads the heads,
else symlog); the colour bar's ticks, the hover (value and rank) and the caption tell the
true values. Signed maps get a diverging ``RdBu`` scale centred at 0, maps without negative
values a sequential ``Blues``; heads not scored (NaN) are grey. Titles and the caption that
defines each score come from :func:`~icl_heads.viz.scores.score_info`. Every cell carries
``customdata = [layer, head, rank]`` for the linked report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .agreement import disagreements, top_heads
from .protocols import HeadMap
from .scales import NAN_COLOUR, Scale, check_scale, colour_scale, tick_label
from .scores import score_info, wrap
from .style import OUTLINE, describe_settings, escape, format_number

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["head_heatmap", "head_heatmaps", "top_heads"]
#: Pixels per caption line under a map.
CAPTION_LINE = 15
#: Characters per caption line.
CAPTION_WIDTH = 120


def head_heatmap(
    scores: HeadMap,
    *,
    title: str | None = None,
    diverging: bool | None = None,
    highlight_top: int | None = 0,
    scale: Scale = "auto",
) -> go.Figure:
    """Layer x head heatmap of one map (layer 0 at the top, heads along x).

    Example::

        tr.plot()  # = head_heatmap(tr); head_heatmap(tr, scale="rank")

    Args:
        scores: the map.
        title: default: the score's title, its name and how it was made (model, task,
            k, n), e.g. ``"TR score (tr_score, model=..., task=sentiment, k=4, n=64)"``.
        diverging: symmetric ``RdBu`` scale centred at 0 (default when the map has
            negative values), else sequential ``Blues``.
        highlight_top: outline the top-k heads (0: none; ``None``: the map's default
            ``top()``, 3% of heads unless the map says otherwise).
        scale: ``"auto"`` (default: ``"linear"`` where that spreads the heads, else
            ``"symlog"``), ``"linear"``, ``"symlog"`` or ``"rank"``
            (:mod:`~icl_heads.viz.scales`).

    Returns:
        A figure with one ``heatmap`` trace; hover shows layer, head, the raw score and its
        rank, and ``customdata[i][j] = [layer, head, rank]``.
    """
    human = score_info(scores.name).title
    details = [scores.name] if scores.name != human else []  # the name code uses
    details += [describe_settings(scores.settings)]
    details = [d for d in details if d]
    default_title = human + (f" ({', '.join(details)})" if details else "")
    return head_heatmaps(
        [scores],
        diverging=diverging,
        highlight_top=highlight_top,
        title=title or default_title,
        subplot_titles=False,
        scale=scale,
    )


def head_heatmaps(
    maps: Mapping[str, HeadMap] | Sequence[HeadMap],
    *,
    title: str | None = None,
    diverging: bool | Sequence[bool] | None = None,
    highlight_top: int | None = 0,
    shared_scale: bool = False,
    subplot_titles: bool = True,
    height: int | None = None,
    scale: Scale = "auto",
    caption: bool = True,
) -> go.Figure:
    """Several layer x head maps side by side with shared layer and head axes.

    Example::

        tr, tl = ih.tsla_scores(model, prompts)
        ih.viz.head_heatmaps({"TR": tr, "TL": tl, "induction": ih.induction_scores(model)})

    Args:
        maps: ``{title: HeadScores}`` (or a list, titled by each score's human title); all
            of the same ``[n_layers, n_heads]`` shape.
        title: the figure's title (default: the maps' titles and the first one's settings).
        diverging: per map (or one value for all): ``RdBu`` centred at 0, or ``Blues``;
            default: diverging where the map has negative values.
        highlight_top: outline each map's top-k heads (0: none; ``None``: each map's
            default ``top()``); the outline is named in the legend.
        shared_scale: one colour range (and scale) for all maps (only sensible for maps of
            one kind).
        subplot_titles: write each map's title above it.
        height: pixels of the maps (default: grows with the number of layers); the
            caption adds its lines below.
        scale: ``"auto"`` (default), ``"linear"``, ``"symlog"`` or ``"rank"`` for every map
            (:func:`~icl_heads.viz.scales.colour_scale`); each map's colour bar ticks real
            values either way.
        caption: write under the maps what each score is and its unit
            (:func:`~icl_heads.viz.scores.score_info`), how the colours were made, what
            grey cells are, and where two maps disagree
            (:func:`~icl_heads.viz.agreement.disagreements`).

    Returns:
        A figure with one ``heatmap`` trace per map, trace ``i`` on axes ``x{i+1}/y{i+1}``
        with its own colour bar (below it when there are several).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_scale(scale)
    named = _named_maps(maps)
    if not named:
        raise ValueError("head_heatmaps needs at least one HeadScores map.")
    shapes = {(m.n_layers, m.n_heads) for m in named.values()}
    if len(shapes) != 1:
        raise ValueError(
            f"All maps must have one [n_layers, n_heads] shape to share axes, got {sorted(shapes)}."
        )
    ((n_layers, n_heads),) = shapes
    n = len(named)
    flags = _per_map(diverging, n, "diverging")
    grids = [m.scores.numpy().astype(float) for m in named.values()]
    reference = np.concatenate([z.ravel() for z in grids]) if shared_scale else None
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_yaxes=True,
        horizontal_spacing=0.04 if n > 1 else 0,
        subplot_titles=list(named) if (subplot_titles and n > 1) else None,
    )
    notes, outlined = [], 0
    for i, ((name, scores), z, flag) in enumerate(zip(named.items(), grids, flags)):
        info = score_info(scores.name)
        colours = colour_scale(z, scale=scale, diverging=flag, reference=reference)
        notes.append((name, colours))
        custom = np.stack(
            [
                np.broadcast_to(np.arange(n_layers)[:, None], z.shape),
                np.broadcast_to(np.arange(n_heads)[None, :], z.shape),
                scores.rank().numpy(),
            ],
            axis=-1,
        )
        bar = dict(title=dict(text=info.title, side="top"), thickness=12)
        if n > 1:  # a horizontal colour bar under each facet (titled by the facet above)
            domain = fig.layout[f"xaxis{i + 1 if i else ''}"].domain
            bar = dict(
                orientation="h",
                x=(domain[0] + domain[1]) / 2,
                xanchor="center",
                y=0,
                yanchor="top",
                ypad=45,
                len=(domain[1] - domain[0]) * 0.95,
                thickness=10,
            )
        if colours.tickvals is not None:
            bar.update(tickmode="array", tickvals=colours.tickvals, ticktext=colours.ticktext)
        label = escape(info.title) + (
            f" ({escape(scores.name)})" if scores.name != info.title else ""
        )
        fig.add_trace(
            go.Heatmap(
                z=_nan_to_none(colours.z),
                text=[[_hover_value(v) for v in row] for row in z.tolist()],
                customdata=custom,
                name=str(name),
                colorbar=bar,
                hovertemplate=(
                    "<b>L%{customdata[0]}H%{customdata[1]}</b><br>layer %{customdata[0]}, "
                    f"head %{{customdata[1]}}<br>{label} = %{{text}}"
                    f"<br>rank %{{customdata[2]}} of {z.size}<extra>{escape(name)}"
                    "</extra>"
                ),
                xgap=1,
                ygap=1,
                **colours.trace_kwargs(),
            ),
            row=1,
            col=i + 1,
        )
        if highlight_top != 0:
            heads = top_heads(scores, highlight_top)
            for head in heads:
                fig.add_shape(
                    type="rect",
                    x0=head.head - 0.5,
                    x1=head.head + 0.5,
                    y0=head.layer - 0.5,
                    y1=head.layer + 0.5,
                    line=dict(color=OUTLINE, width=2),
                    name=_outline_name(len(heads) if highlight_top is None else highlight_top, n),
                    legendgroup="top",
                    showlegend=outlined == 0,
                    row=1,
                    col=i + 1,
                )
                outlined += 1
    fig.update_yaxes(
        autorange="reversed",
        tickprefix="L",
        dtick=1 if n_layers <= 40 else None,
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(title_text="Layer", row=1, col=1)
    fig.update_xaxes(
        tickprefix="H",
        dtick=1 if n_heads <= 16 else None,
        showgrid=False,
        zeroline=False,
        title_text="Head",
    )
    if n > 3:
        fig.update_annotations(font_size=max(9, 14 - n))
    meta = describe_settings(next(iter(named.values())).settings)
    lines = _caption(named, notes, grids) if caption else []
    _lay_out(fig, n, n_layers, height, outlined, lines)
    fig.update_layout(
        title=dict(
            text=title or (" | ".join(named) + (f" ({meta})" if meta else "")),
            x=0,
            xref="container",
            xanchor="left",
            y=1,
            yref="container",
            yanchor="top",
            pad=dict(t=30, l=12),  # below Plotly's mode bar (top right), never under it
        ),
    )
    return fig


def _lay_out(fig, n: int, n_layers: int, height, outlined: int, lines: list[str]) -> None:
    """Height and margins; the legend (outlines) and the caption under the maps, below the
    x axis title and (for facets) the colour bars."""
    below = 108 if n > 1 else 50
    legend_px = 26 if outlined else 0
    base_bottom = 120 if n > 1 else 60
    maps_height = height or max(320, 18 * n_layers + (200 if n > 1 else 120))
    bottom = max(base_bottom, below + legend_px + CAPTION_LINE * len(lines) + 12)
    total = maps_height + bottom - base_bottom
    top = 96 if n > 1 else 72
    plot_height = max(1, total - top - bottom)
    fig.update_layout(
        height=total,
        margin=dict(t=top, b=bottom),
        plot_bgcolor=NAN_COLOUR,  # shows through the cells not scored (NaN) and the gaps
        showlegend=bool(outlined),
        legend=dict(orientation="h", x=0, xanchor="left", y=-below / plot_height, yanchor="top"),
    )
    if lines:
        fig.add_annotation(
            text="<br>".join(lines),
            xref="paper",
            yref="paper",
            x=0,
            y=0,
            xanchor="left",
            yanchor="top",
            yshift=-(below + legend_px),
            align="left",
            showarrow=False,
            font=dict(size=11, color="#444"),
            name="caption",
        )


def _caption(named: Mapping[str, HeadMap], notes, grids) -> list[str]:
    """The caption's lines: each score's definition and unit, the colour scale, grey cells,
    and the disagreements between maps."""
    lines, seen = [], set()
    for scores in named.values():
        if scores.name not in seen:
            seen.add(scores.name)
            lines.append(wrap(score_info(scores.name).describe(), CAPTION_WIDTH))
    kinds = {colours.kind for _, colours in notes}
    if kinds == {"symlog"} and len(notes) > 1:
        constants = ", ".join(f"{tick_label(c.constant)} for {name}" for name, c in notes)
        text = f"Colours: symlog scales, linear below c and logarithmic above (c = {constants})."
        lines.append(wrap(text, CAPTION_WIDTH))
    elif len({colours.note for _, colours in notes}) == 1 and kinds != {"linear"}:
        lines.append(wrap(f"Colours: {notes[0][1].note}.", CAPTION_WIDTH))
    elif kinds != {"linear"}:
        shown = "; ".join(f"{name}: {c.note or 'linear scale'}" for name, c in notes)
        lines.append(wrap(f"Colours ({shown}).", CAPTION_WIDTH))
    lines.append("Hover a cell for the head's value and rank.")
    if any(np.isnan(z).any() for z in grids):
        lines.append("Grey cells: heads not scored (NaN).")
    if len(named) > 1:
        found = disagreements(named)
        lines += [f"Disagreement: {d.describe()}" for d in found[:3]]
        if len(found) > 3:
            lines.append(f"... and {len(found) - 3} more top heads at the bottom of another map.")
    return "<br>".join(lines).split("<br>")


def _outline_name(k: int | None, n_maps: int) -> str:
    what = f"top {k} heads" if k else "top heads"
    return f"outlined: {what}" + (" of each map" if n_maps > 1 else "")


def _hover_value(value: float) -> str:
    return "not scored (NaN)" if value != value else format_number(value)


def _named_maps(maps) -> dict[str, HeadMap]:
    if isinstance(maps, HeadMap):
        maps = [maps]
    if isinstance(maps, Mapping):  # a key that is the score's own name gets its title
        items = [
            (score_info(k).title if k == getattr(m, "name", None) else k, m)
            for k, m in maps.items()
        ]
    else:
        items = []
        for m in maps:
            base = score_info(getattr(m, "name", "map")).title
            name, i = base, 2
            while name in dict(items):
                name, i = f"{base} ({i})", i + 1
            items.append((name, m))
    for key, value in items:
        if not isinstance(value, HeadMap):
            raise TypeError(
                f"head_heatmaps: {key!r} is a {type(value).__name__}, not a HeadScores map."
            )
    return {str(k): v for k, v in items}


def _per_map(value, n: int, what: str) -> list:
    if value is None or isinstance(value, bool):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what}: give one value or one per map ({n}), got {len(values)}.")
    return values


def _nan_to_none(z: np.ndarray) -> list:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in z.tolist()]
