"""The figure of head ablations over states (:func:`ablation_differences`): each ablated
set's difference from the baseline in its own panel, against its random controls, with
paired bands, the baseline and chance lines in the legend, and an x axis that says state 0
is the embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .style import BASELINE_CONDITIONS, chance_for, colours_for, escape, rgba

if TYPE_CHECKING:
    import plotly.graph_objects as go


#: The x axis title of curves over state indices.
STATE_AXIS_TITLE = "state (0 = embeddings, i = after block i)"
#: Metrics measured on the residual states (a ``layer`` axis of these is a state index).
STATE_METRICS = ("probe_accuracy", "fisher_ratio", "mean_diff_cosine", "logit_lens_accuracy")


def ablated_sets(table: pd.DataFrame) -> list[str]:
    """The named sets of a head-ablation table: conditions ``X`` that have their random
    controls ``random_X`` beside them and a baseline condition (empty when it is not one).

    Example::

        ablated_sets(result.table)    # ["PTH", "IH"] for head_ablation_geometry
    """
    if "condition" not in table.columns:
        return []
    conditions = [str(c) for c in dict.fromkeys(table["condition"])]
    if not any(c in BASELINE_CONDITIONS for c in conditions):
        return []
    return [c for c in conditions if f"random_{c}" in conditions]


def ablation_differences(
    table: pd.DataFrame,
    *,
    effect: pd.DataFrame | None = None,
    metrics: Sequence[str] | None = None,
    sets: Sequence[str] | None = None,
    chance: float | Mapping[str, float] | None = None,
    x: str = "layer",
    x_title: str = STATE_AXIS_TITLE,
    title: str | None = None,
) -> go.Figure:
    """Each ablated set's curve minus the baseline's, one panel per metric (rows) and set
    (columns): the set's difference with its band, its random controls' mean difference
    with theirs (the spread over random sets and prompts), the baseline (zero) and the
    chance level (minus the baseline), each a legend entry.

    Bands: from ``effect`` (rows ``condition, metric, layer`` of ablated minus baseline with
    paired intervals, e.g. ``tables["effect"]`` of ``head_ablation_geometry``) where given;
    otherwise the condition's own interval shifted by the baseline value (the legend says
    which).

    Example::

        result = ih.head_ablation_geometry(model, prompts)
        ablation_differences(result.table, effect=result.tables["effect"])

    Returns:
        A figure with, per panel, the set's band and curve, the random sets' band and
        curve, a zero line and (accuracies) a chance line, as traces.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sets = list(sets or ablated_sets(table))
    if not sets:
        raise ValueError(
            "ablation_differences: the table has no ablated set with its random controls "
            f"(conditions X and random_X beside a baseline); its conditions are "
            f"{list(dict.fromkeys(table['condition']))}."
        )
    baseline = next(c for c in BASELINE_CONDITIONS if c in set(table["condition"]))
    metrics = list(metrics or dict.fromkeys(table["metric"]))
    base = table[table["condition"] == baseline].set_index(["metric", x])["value"]
    paired = effect is not None and not effect.empty
    n_rows, cols = len(metrics), len(sets)
    fig = make_subplots(
        rows=n_rows,
        cols=cols,
        subplot_titles=[f"{metric}: {name} ablated" for metric in metrics for name in sets],
        vertical_spacing=min(0.08, 0.3 / max(1, n_rows)),
        horizontal_spacing=0.07,
        shared_xaxes=True,
    )
    colours = colours_for(sets)
    shown: set[str] = set()

    def rows_of(condition: str, metric: str) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        if paired:
            rows = effect[(effect["condition"] == condition) & (effect["metric"] == metric)]
            rows = rows[rows[x].notna()].sort_values(x)
            return (
                rows[x].tolist(),
                rows["value"].to_numpy(float),
                rows["ci_low"].to_numpy(float),
                rows["ci_high"].to_numpy(float),
            )
        rows = table[(table["condition"] == condition) & (table["metric"] == metric)]
        rows = rows[rows[x].notna()].sort_values(x)
        ref = np.array([base.get((metric, v), np.nan) for v in rows[x]], dtype=float)
        return (
            rows[x].tolist(),
            rows["value"].to_numpy(float) - ref,
            rows["ci_low"].to_numpy(float) - ref,
            rows["ci_high"].to_numpy(float) - ref,
        )

    def add(legend: str, trace: go.Scatter, row: int, col: int) -> None:
        trace.update(legendgroup=legend, showlegend=legend not in shown)
        shown.add(legend)
        fig.add_trace(trace, row=row, col=col)

    band_note = "paired CI" if paired else "CI shifted by the baseline"
    for i, metric in enumerate(metrics):
        for j, name in enumerate(sets):
            row, col = i + 1, j + 1
            for condition, color, dash, legend, note in (
                (name, colours[name], "solid", f"{name} ablated", band_note),
                (
                    f"random_{name}",
                    "#888888",
                    "dot",
                    f"random sets like {name} (mean)",
                    f"{band_note} over sets and prompts",
                ),
            ):
                xs, value, low, high = rows_of(condition, metric)
                if not xs:
                    continue
                if np.isfinite(low).any():
                    add(
                        f"{legend}: {note}",
                        go.Scatter(
                            x=xs + xs[::-1],
                            y=list(high) + list(low[::-1]),
                            fill="toself",
                            mode="lines",
                            fillcolor=rgba(color, 0.18),
                            line=dict(width=0),
                            hoverinfo="skip",
                            name=f"{legend}: {note}",
                        ),
                        row,
                        col,
                    )
                add(
                    legend,
                    go.Scatter(
                        x=xs,
                        y=value,
                        mode="lines+markers",
                        name=legend,
                        line=dict(color=color, dash=dash),
                        customdata=np.stack([low, high], axis=-1),
                        hovertemplate=(
                            f"{escape(condition)} - {escape(baseline)}<br>state %{{x}}<br>"
                            f"{escape(metric)}: %{{y:+.4g}} [%{{customdata[0]:+.4g}}, "
                            "%{customdata[1]:+.4g}]<extra></extra>"
                        ),
                    ),
                    row,
                    col,
                )
            xs = sorted({v for (m, v) in base.index if m == metric})
            if xs:
                add(
                    f"{baseline} (no ablation: 0)",
                    go.Scatter(
                        x=xs,
                        y=[0.0] * len(xs),
                        mode="lines",
                        name=f"{baseline} (no ablation: 0)",
                        line=dict(color="#333", dash="dash", width=1.5),
                        hoverinfo="skip",
                    ),
                    row,
                    col,
                )
            level = chance_for(chance, metric)
            if level is not None and xs:
                add(
                    f"chance - {baseline}",
                    go.Scatter(
                        x=xs,
                        y=[level - float(base[(metric, v)]) for v in xs],
                        mode="lines",
                        name=f"chance - {baseline}",
                        line=dict(color="#b22222", dash="dot", width=1.5),
                        hovertemplate=f"chance ({level:.3g}) - {escape(baseline)}: "
                        "%{y:+.4g}<extra></extra>",
                    ),
                    row,
                    col,
                )
        fig.update_yaxes(title_text=f"Δ {metric}<br>(ablated − {baseline})", row=i + 1, col=1)
    for j in range(cols):
        fig.update_xaxes(title_text=x_title, row=n_rows, col=j + 1)
    fig.update_layout(
        title=title,
        height=max(380, 240 * n_rows + 120),
        legend=dict(title=dict(text="curve / line")),
    )
    return fig
