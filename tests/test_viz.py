"""Figures (icl_heads.viz): what each figure draws, read from ``fig.to_dict()``-level
attributes (traces, colour scales, hover templates, shapes), and which figure each
experiment's ``.plot()`` picks."""

from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from scipy.stats import spearmanr

from icl_heads import viz
from icl_heads.heads import Head, HeadScores
from icl_heads.results import ExperimentResult, make_table, table_row
from icl_heads.settings import PromptInfo, Settings
from icl_heads.stats import correlation

INFO = PromptInfo(task="sentiment", k=4, n=8, seed=0, perturbation="gold", model="tiny")


@pytest.fixture
def signed():
    grid = torch.tensor(
        [[1.0, -5.0, 2.0], [0.5, 9.0, -1.0], [3.0, 0.0, math.nan], [-2.0, 4.0, 6.0]]
    )
    return HeadScores(grid, name="tl_score", settings=INFO, top_k=2)


@pytest.fixture
def positive():
    return HeadScores(torch.arange(12.0).reshape(4, 3) / 11, name="induction_score")


# --------------------------------------------------------------------------- head maps


def test_heatmap_is_diverging_around_zero_for_signed_scores(signed):
    trace = viz.head_heatmap(signed).data[0]
    assert trace.colorscale[0][1] != trace.colorscale[-1][1]
    assert trace.zmid == 0.0 and trace.zmin == -9.0 and trace.zmax == 9.0


def test_heatmap_is_sequential_from_zero_for_non_negative_scores(positive):
    trace = viz.head_heatmap(positive).data[0]
    assert trace.zmid is None and trace.zmin == 0.0 and trace.zmax == pytest.approx(1.0)


def test_heatmap_hover_names_layer_head_score_and_rank(signed):
    trace = viz.head_heatmap(signed).data[0]
    for word in ("layer", "head", "tl_score", "rank", "of 12"):
        assert word in trace.hovertemplate
    custom = np.asarray(trace.customdata)
    assert custom.shape == (4, 3, 3)
    assert list(custom[1, 1]) == [1, 1, 1]  # L1H1 = 9 is rank 1
    assert math.isnan(custom[2, 2, 2])  # the unscored head has no rank
    assert trace.z[2][2] is None  # NaN is drawn as a gap, not as a colour


def test_heatmap_puts_layer_zero_on_top_and_outlines_the_top_k(signed):
    fig = viz.head_heatmap(signed, highlight_top=None)  # the map's own top_k = 2
    assert fig.layout.yaxis.autorange == "reversed"
    corners = {(s.x0 + 0.5, s.y0 + 0.5) for s in fig.layout.shapes}
    assert corners == {(1, 1), (2, 3)}  # (head, layer) of L1H1 and L3H2
    assert len(viz.head_heatmap(signed, highlight_top=3).layout.shapes) == 3
    assert len(viz.head_heatmap(signed).layout.shapes) == 0


def test_faceted_maps_share_axes_and_each_keep_their_own_scale(signed, positive):
    fig = viz.head_heatmaps({"TL": signed, "induction": positive}, highlight_top=1)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert (fig.data[0].xaxis, fig.data[1].xaxis) == ("x", "x2")
    assert fig.layout.yaxis2.matches == "y" or fig.layout.yaxis2.showticklabels is False
    assert fig.data[0].zmid == 0.0 and fig.data[1].zmid is None
    assert [a.text for a in fig.layout.annotations][:2] == ["TL", "induction"]
    assert {s.xref for s in fig.layout.shapes} == {"x", "x2"}
    assert fig.data[1].colorbar.orientation == "h"  # one colour bar under each facet


def test_shared_scale_gives_every_facet_one_range(signed):
    other = HeadScores(signed.scores * 2, name="double")
    fig = viz.head_heatmaps([signed, other], shared_scale=True)
    assert fig.data[0].zmax == fig.data[1].zmax == 18.0


def test_faceted_maps_refuse_maps_of_two_shapes(signed):
    with pytest.raises(ValueError, match="one \\[n_layers, n_heads\\] shape"):
        viz.head_heatmaps([signed, HeadScores(torch.zeros(2, 2))])
    with pytest.raises(TypeError, match="not a HeadScores"):
        viz.head_heatmaps({"x": torch.zeros(2, 2)})


# --------------------------------------------------------------------------- scatter


def test_score_scatter_colours_by_layer_and_labels_top_heads(signed, positive):
    fig = viz.score_scatter(signed, positive, label_top=1)
    trace = fig.data[0]
    assert len(trace.x) == 11  # the NaN head is left out
    assert list(trace.marker.color) == [int(c[0]) for c in trace.customdata]
    labelled = {t for t in trace.text if t}
    assert labelled == {"L1H1", "L3H2"}  # best of each map


def test_effect_scatter_draws_the_fit_and_spearman_rho(positive):
    rng = np.random.default_rng(0)
    effect = HeadScores(
        positive.scores + torch.tensor(rng.normal(0, 0.2, (4, 3)), dtype=torch.float32),
        name="effect",
    )
    fig = viz.effect_scatter(positive, effect)
    rho = spearmanr(positive.scores.flatten(), effect.scores.flatten()).statistic
    assert f"ρ = {rho:.3f}" in fig.layout.title.text
    line = fig.data[1]
    assert line.mode == "lines" and len(line.x) == 2
    slope = np.polyfit(positive.scores.flatten().numpy(), effect.scores.flatten().numpy(), 1)[0]
    assert (line.y[1] - line.y[0]) / (line.x[1] - line.x[0]) == pytest.approx(slope, rel=1e-5)


def test_correlation_scatter_plots_drops_with_one_panel_per_pair():
    heads = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "tr_score": [1.0, 2.0, 3.0, 4.0],
            "delta_accuracy": [0.0, -0.1, -0.2, -0.4],
            "delta_logit_diff": [0.1, 0.0, -0.1, 0.2],
        }
    )
    fig = viz.correlation_scatter(heads, ["tr_score"], ["delta_accuracy", "delta_logit_diff"])
    points = [t for t in fig.data if t.mode == "markers"]
    assert len(points) == 2
    assert list(points[0].y) == [0.0, 0.1, 0.2, 0.4]  # drop = -delta
    assert "ρ = 1.00" in fig.layout.annotations[0].text


# --------------------------------------------------------------------------- tables


def _curve_table():
    rows = []
    for condition, shift in (("clean", 0.0), ("PTH ablated", -0.2)):
        for layer in range(4):
            for metric in ("probe_accuracy", "mean_diff_cosine"):
                v = 0.5 + 0.1 * layer + shift
                rows.append(table_row(condition, metric, v, v - 0.05, v + 0.05, 16, layer=layer))
    return make_table(rows)


def test_layer_curves_overlay_conditions_with_ci_bands():
    fig = viz.layer_curves(_curve_table(), chance={"probe_accuracy": 0.5})
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(lines) == 4 and len(bands) == 4  # 2 conditions x 2 metrics
    assert list(lines[0].x) == [0, 1, 2, 3]
    assert all(b.mode == "lines" for b in bands)  # a band's edge draws no markers
    band = bands[0]
    assert list(band.y[:4]) == pytest.approx([0.55, 0.65, 0.75, 0.85])  # upper edge
    assert [a.text for a in fig.layout.annotations][:2] == ["probe_accuracy", "mean_diff_cosine"]
    assert sum(1 for s in fig.layout.shapes if s.y0 == 0.5) == 1  # chance line on one panel
    assert fig.layout.xaxis2.title.text == "layer"


def _bar_table():
    return make_table(
        [
            table_row("baseline", "accuracy", 0.8, 0.7, 0.9, 32),
            table_row("TR", "accuracy", 0.5, 0.4, 0.6, 32),
            table_row("baseline", "label_space_rate", 1.0, 1.0, 1.0, 32),
            table_row("TR", "label_space_rate", 0.6, 0.5, 0.7, 32),
        ]
    )


def test_bars_have_ci_error_bars_and_baseline_and_chance_lines():
    fig = viz.condition_bars(_bar_table(), chance={"accuracy": 0.5})
    assert [t.name for t in fig.data] == ["baseline", "TR"]
    assert list(fig.data[1].error_y.array) == pytest.approx([0.1, 0.1])
    assert list(fig.data[1].error_y.arrayminus) == pytest.approx([0.1, 0.1])
    lines = {(s.x0, s.y0, s.line.dash) for s in fig.layout.shapes}
    assert lines == {(-0.45, 0.8, "dash"), (-0.45, 0.5, "dot"), (0.55, 1.0, "dash")}


def test_faceted_bars_put_each_metric_on_its_own_axis():
    fig = viz.condition_bars(_bar_table(), facet=True)
    assert len(fig.data) == 4 and {t.xaxis for t in fig.data} == {"x", "x2"}
    assert [t.showlegend for t in fig.data] == [True, True, False, False]


# --------------------------------------------------------------------------- attention


def test_attention_pattern_has_tokens_on_both_axes_and_keeps_repeats_apart():
    tokens = ["<s>", " a", " b", " a"]
    pattern = torch.tril(torch.ones(4, 4))
    pattern = pattern / pattern.sum(-1, keepdim=True)
    fig = viz.attention_pattern(pattern, tokens, head=Head(2, 1))
    assert list(fig.layout.xaxis.ticktext) == tokens and list(fig.layout.yaxis.tickvals) == [
        0,
        1,
        2,
        3,
    ]
    assert fig.layout.yaxis.autorange == "reversed" and "L2H1" in fig.layout.title.text
    assert np.asarray(fig.data[0].z)[3, 1] == pytest.approx(0.25)


def test_attention_pattern_shows_newlines_and_checks_its_shape():
    fig = viz.attention_pattern(torch.eye(2), ["x", "\n"])
    # issue 21: a newline is the visible symbol ⏎, never the two characters "\n"
    assert list(fig.layout.xaxis.ticktext) == ["x", "⏎"]
    with pytest.raises(ValueError, match="3 tokens"):
        viz.attention_pattern(torch.eye(2), ["a", "b", "c"])


# --------------------------------------------------------------------------- experiment_figure


def test_experiment_figure_of_layer_tables_is_curves():
    result = ExperimentResult("layer_geometry", _curve_table(), INFO)
    fig = result.plot()
    assert any(t.mode == "lines+markers" for t in fig.data)
    assert "layer_geometry" in fig.layout.title.text


def test_experiment_figure_of_kind_tables_draws_levels_and_chance_lines():
    rows = [
        table_row("baseline", "accuracy", 0.8, 0.7, 0.9, 8, kind="level"),
        table_row("baseline", "chance", 0.5, 0.5, 0.5, 8, kind="level"),
        table_row("TR", "accuracy", 0.6, 0.5, 0.7, 8, kind="level"),
        table_row("TR", "delta_accuracy", -0.2, -0.3, -0.1, 8, kind="effect"),
        table_row("TR - TL", "delta_accuracy", -0.1, -0.2, 0.0, 8, kind="contrast"),
    ]
    fig = ExperimentResult("ablation", make_table(rows), INFO).plot()
    assert {t.name for t in fig.data} == {"baseline", "TR"}  # levels only, no chance bar
    assert {t.x[0] for t in fig.data} == {"baseline", "TR"}
    dashes = sorted(s.line.dash for s in fig.layout.shapes)
    assert dashes == ["dash", "dot"]  # baseline and chance


def test_experiment_figure_of_steering_is_curves_over_alpha():
    rows = [
        table_row(c, "label_space_rate", v, v - 0.1, v + 0.1, 8, kind="level", alpha=a)
        for c in ("TR", "random_TR")
        for a, v in ((0, 0.5), (1, 0.7), (4, 0.9))
    ]
    fig = ExperimentResult("steering", make_table(rows), INFO).plot()
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["TR", "random_TR"] and list(lines[0].x) == [0, 1, 4]
    assert lines[1].line.dash == "dot"


def test_experiment_figure_of_find_task_heads_is_the_maps(signed, positive):
    table = make_table([table_row("baseline", "accuracy", 0.8, 0.7, 0.9, 8, kind="level")])
    maps = {"TR": positive, "TL": signed}
    fig = ExperimentResult("find_task_heads", table, INFO, maps=maps).plot()
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]


def test_experiment_figure_of_correlation_is_the_scatter_grid():
    L, H = 2, 3
    frame = HeadScores(torch.zeros(L, H)).to_frame()[["layer", "head", "label"]]
    frame["tr_score"] = np.arange(6.0)
    frame["tl_score"] = np.arange(6.0)[::-1]
    frame["delta_logit_diff"] = -np.arange(6.0)
    table = make_table(
        [table_row("TR", "spearman_drop_logit_diff", 1.0, 0.9, 1.0, 6, kind="correlation")]
    )
    fig = ExperimentResult("correlation", table, INFO, tables={"heads": frame}).plot()
    assert len([t for t in fig.data if t.mode == "markers"]) == 2
    assert "ρ = 1.00" in fig.layout.annotations[0].text
    assert "ρ = -1.00" in fig.layout.annotations[1].text


def test_experiment_figure_depends_on_what_the_result_holds_not_its_name(signed, positive):
    """A new experiment plots without a change in viz: renamed results draw the same."""
    maps = {"TR": positive, "TL": signed}
    found_table = make_table([table_row("baseline", "accuracy", 0.8, 0.7, 0.9, 8, kind="level")])
    frame = HeadScores(torch.zeros(2, 3)).to_frame()[["layer", "head"]]
    frame["tr_score"] = np.arange(6.0)
    frame["delta_logit_diff"] = -np.arange(6.0)
    corr_table = make_table([table_row("TR", "spearman", 1.0, 0.9, 1.0, 6, kind="correlation")])
    cases = [
        (found_table, dict(maps=maps), ["heatmap", "heatmap"]),
        (make_table([]), dict(maps=maps), ["heatmap", "heatmap"]),
        (corr_table, dict(tables={"per_head": frame}), ["scatter", "scatter"]),
        (_curve_table(), {}, ["scatter"] * 8),
        (_bar_table(), {}, ["bar", "bar"]),
    ]
    for table, extra, types in cases:
        figures = [ExperimentResult(name, table, INFO, **extra).plot() for name in ("x", "new")]
        assert [[t.type for t in f.data] for f in figures] == [types, types]
        assert figures[0].to_dict()["data"] == figures[1].to_dict()["data"]
    # maps beside levels of an intervened condition: the levels are the finding (bars)
    levels = make_table([table_row("TR", "accuracy", 0.6, 0.5, 0.7, 8, kind="level")])
    assert [t.type for t in ExperimentResult("y", levels, INFO, maps=maps).plot().data] == ["bar"]


def test_figures_draw_any_object_shaped_like_a_map(positive):
    """viz imports no result type: anything with the :class:`viz.HeadMap` members draws."""

    class Plain:
        def __init__(self, scores):
            self.scores, self.name, self.settings = scores, "plain", None
            self.n_layers, self.n_heads = scores.shape

        def top(self, k=None):
            return positive.top(k)

        def rank(self):
            return positive.rank()

        def __getitem__(self, head):
            return float(self.scores[head[0], head[1]])

    plain = Plain(positive.scores.clone())
    assert isinstance(plain, viz.HeadMap) and isinstance(positive, viz.HeadMap)
    assert (
        viz.head_heatmap(plain).to_dict()["data"][0]["z"]
        == (viz.head_heatmap(positive).to_dict()["data"][0]["z"])
    )
    with pytest.raises(TypeError, match="not a HeadScores map"):
        viz.head_heatmaps({"bad": positive.scores})


def test_displayed_spearman_is_the_stats_one_and_undefined_for_constant_input():
    heads = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 2],
            "head": [0, 1, 0, 1, 0],
            "tr_score": [1.0, 2.0, 2.0, 4.0, 3.0],
            "tl_score": [1.0, 1.0, 1.0, 1.0, 1.0],
            "delta_accuracy": [0.3, -0.1, -0.2, -0.4, 0.1],
        }
    )
    fig = viz.correlation_scatter(heads, ["tr_score", "tl_score"], ["delta_accuracy"])
    rho = spearmanr(heads["tr_score"], -heads["delta_accuracy"]).statistic
    assert rho == pytest.approx(correlation(heads["tr_score"], -heads["delta_accuracy"]))
    assert f"ρ = {rho:.2f}" in fig.layout.annotations[0].text
    assert "ρ undefined: constant" in fig.layout.annotations[1].text


def _imports(module: str) -> set[str]:
    """The icl_heads modules (first part of the dotted name after ``icl_heads``) a module's
    files import anywhere (inside functions and ``TYPE_CHECKING`` blocks too), relative
    imports resolved; a package (``viz``) counts with every file in it."""
    root = Path(viz.__file__).resolve().parents[1]  # the icl_heads directory
    files = [root / f"{module}.py"] if (root / f"{module}.py").exists() else []
    files += sorted((root / module).rglob("*.py")) if (root / module).is_dir() else []
    assert files, f"no module or package {module!r} in {root}"
    found = set()
    for path in files:
        parts = ("icl_heads", *path.relative_to(root).with_suffix("").parts)
        package = parts[:-1]  # what a one-dot import names (also for an __init__.py)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package[: len(package) - node.level + 1] if node.level else ()
            target = (*base, *(node.module or "").split(".")) if node.module else base
            target = tuple(t for t in target if t)
            if target[:1] != ("icl_heads",):
                continue
            if len(target) > 1:
                found.add(target[1])
            else:  # from icl_heads import x / from .. import x
                found.update(a.name for a in node.names)
    return found - {module}


def test_figures_import_none_of_the_types_they_draw_and_sit_in_no_import_circle():
    top = ("heads", "results", "viz", "report", "attention_patterns")
    graph = {m: _imports(m) & set(top) for m in top}
    assert graph["viz"] == set()  # HeadScores.plot / ExperimentResult.plot call in, not out
    assert graph["heads"] <= {"viz"} and graph["results"] <= {"heads", "viz"}

    def reaches(start: str, target: str, seen: frozenset = frozenset()) -> bool:
        return any(
            n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph[start]
        )

    assert not [m for m in top if reaches(m, m)]


#: viz's public names (those of the one-module viz.py before it became a package).
VIZ_API = {
    "BASELINE_CONDITIONS", "CONDITION_COLOURS", "CURVE_AXES", "OUTLINE", "PALETTE",
    "HeadMap", "ResultLike", "attention_pattern", "condition_bars", "correlation_scatter",
    "describe_settings", "display_token", "effect_scatter", "experiment_figure",
    "head_heatmap", "head_heatmaps", "layer_curves", "save_figure", "score_scatter",
    "top_heads",
}  # fmt: skip


def test_viz_is_a_package_of_small_rooms_that_keeps_every_public_name():
    assert set(viz.__all__) == VIZ_API
    for name in VIZ_API:
        value = getattr(viz, name)
        if callable(value):  # functions and protocols are defined in a room of viz
            assert value.__module__.startswith("icl_heads.viz."), name
    assert "div_id" in inspect.signature(viz.save_figure).parameters
    rooms = Path(viz.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in rooms.glob("*.py")}
    assert {"maps.py", "scatter.py", "curves.py", "patterns.py", "experiment.py"} <= set(sizes)
    assert max(sizes.values()) <= 400, sizes


def test_nothing_imports_a_private_name_of_viz():
    """Rooms share helpers by public names (``viz.style.escape``), and no module of the
    package nor a test reaches into viz's private ``_names``."""
    root = Path(viz.__file__).resolve().parents[2]
    files = [*(root / "icl_heads").rglob("*.py"), *(root / "tests").glob("*.py")]
    found = []
    for path in files:
        parts = path.relative_to(root).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = parts[: len(parts) - node.level] if node.level else ()
                module = ".".join([*base, *([node.module] if node.module else [])])
                if "viz" in module.split("."):
                    found += [f"{path.name}: {a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id == "viz":
                    found.append(f"{path.name}: viz.{node.attr}")
    assert not found, found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


# --------------------------------------------------------------------------- saving


def test_save_figure_writes_standalone_html_that_needs_no_network(tmp_path, positive):
    path = viz.save_figure(viz.head_heatmap(positive), tmp_path / "map.html")
    text = path.read_text()
    assert "<script src=" not in text  # nothing is fetched: no CDN, no file beside it
    assert len(text) > 1_000_000  # Plotly's JS is inside


def test_save_figure_png_needs_kaleido(tmp_path, positive):
    try:
        import kaleido  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install kaleido"):
            viz.save_figure(viz.head_heatmap(positive), tmp_path / "map.png")
    else:
        pytest.skip("kaleido is installed; the PNG path is exercised by plotly itself")
    with pytest.raises(ValueError, match=".html"):
        viz.save_figure(go.Figure(), tmp_path / "map.txt")


def test_conditions_get_distinct_colours_beyond_the_base_palette():
    conditions = [
        "gold",
        "random_labels",
        "abstract_labels",
        "zero_shot",
        "gold (split half)",
        "TR",
        "TL",
        "baseline",
        *[f"extra {i}" for i in range(12)],
    ]
    fig = viz.condition_bars(
        make_table([table_row(c, "accuracy", 0.5, 0.4, 0.6, 8) for c in conditions])
    )
    colours = [t.marker.color for t in fig.data]
    assert len(colours) == len(conditions) and len(set(colours)) == len(conditions)


# --------------------------------------------------------------------------- issue 21: maps


def _heavy_tailed(name: str = "tr_score") -> HeadScores:
    """30 x 9 log-normal values with one head at 395.8 (the shape of a real TR map)."""
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=math.log(0.5), sigma=1.8, size=(30, 9)).clip(max=90.0)
    values[23, 3] = 395.8
    return HeadScores(torch.tensor(values, dtype=torch.float32), name=name)


def _position(trace) -> np.ndarray:
    """Each cell's place on the colour scale, 0 (lowest colour) to 1."""
    z = np.array([[np.nan if v is None else v for v in row] for row in trace.z], dtype=float)
    return (z - trace.zmin) / (trace.zmax - trace.zmin)


def test_default_scale_shows_the_heads_a_linear_scale_leaves_white():
    heavy = _heavy_tailed()
    linear = viz.head_heatmap(heavy, scale="linear").data[0]
    default = viz.head_heatmap(heavy).data[0]
    assert np.nanmean(_position(linear) < 0.1) > 0.9  # ~all heads in the lowest tenth
    assert np.nanmean(_position(default) < 0.1) < 0.35  # symlog: c is the 25th percentile
    rank = viz.head_heatmap(heavy, scale="rank").data[0]
    assert np.nanmean(_position(rank) < 0.1) == pytest.approx(0.1, abs=0.02)  # even spread


def test_colour_bar_of_a_transformed_scale_ticks_real_values():
    trace = viz.head_heatmap(_heavy_tailed()).data[0]
    labels = list(trace.colorbar.ticktext)
    assert labels[-1] == "396" and {"1", "10", "100"} <= set(labels)
    # the tick "10" sits where the cells of value 10 are coloured
    from icl_heads.viz.scales import colour_scale

    ten = colour_scale(np.array([10.0]), scale="symlog", reference=_heavy_tailed().scores.numpy())
    assert trace.colorbar.tickvals[labels.index("10")] == pytest.approx(float(ten.z[0]))


def test_hover_shows_the_raw_value_and_rank_whatever_the_scale(signed):
    for scale in ("linear", "symlog", "rank"):
        trace = viz.head_heatmap(signed, scale=scale).data[0]
        assert "%{text}" in trace.hovertemplate and "rank %{customdata[2]}" in trace.hovertemplate
        assert trace.text[1][1] == "9.000" and trace.text[0][1] == "-5.000"
        assert trace.text[2][2] == "not scored (NaN)"
        assert trace.zmid == 0.0  # signed maps stay diverging around 0


def test_sequential_map_spans_its_own_values_not_zero():
    """The detector gold_label_share map (0.2-0.47) was one dark blue on a 0-0.47 scale."""
    values = torch.linspace(0.2, 0.47, 12).reshape(4, 3)
    trace = viz.head_heatmap(HeadScores(values, name="gold_label_share")).data[0]
    assert trace.zmin == pytest.approx(0.2) and trace.zmax == pytest.approx(0.47)


def test_titles_captions_and_legend_come_from_the_scores_metadata(signed, positive):
    from icl_heads.viz.scores import score_info

    fig = viz.head_heatmap(signed, highlight_top=2)
    assert fig.layout.title.text.startswith("TL score (tl_score, model=tiny")
    assert fig.data[0].colorbar.title.text == "TL score"
    caption = next(a.text for a in fig.layout.annotations if a.name == "caption")
    assert score_info("tl_score").caption.split(",")[0] in caption.replace("<br>", " ")
    assert "(unit: logits)" in caption and "Grey cells: heads not scored (NaN)." in caption
    legend = [s for s in fig.layout.shapes if s.showlegend]
    assert [s.name for s in legend] == ["outlined: top 2 heads"] and fig.layout.showlegend
    assert score_info("my_new_score").title == "My new score"
    assert score_info("delta_logit_diff").title == "Change in logit difference"
    # a list of maps is titled by the scores' titles, a dict key that is the score's name too
    titled = viz.head_heatmaps([signed, positive])
    assert [a.text for a in titled.layout.annotations][:2] == ["TL score", "Induction score"]
    keyed = viz.head_heatmaps({"tl_score": signed, "mine": positive})
    assert [a.text for a in keyed.layout.annotations][:2] == ["TL score", "mine"]


def test_maps_shown_together_flag_a_top_head_at_the_bottom_of_the_other():
    from icl_heads.viz.agreement import disagreements

    tr = _heavy_tailed()
    tl_values = torch.randn(30, 9, generator=torch.Generator().manual_seed(0))
    tl_values[23, 3] = -50.0  # the top TR head has the lowest TL score
    tl = HeadScores(tl_values, name="tl_score")
    found = disagreements({"TR": tr, "TL": tl})
    assert found[0].describe() == "L23H3 is #1 by TR but ranks 270/270 by TL (the lowest)."
    caption = viz.head_heatmaps({"TR": tr, "TL": tl}).layout.annotations[-1].text
    assert "Disagreement: L23H3 is #1 by TR but ranks 270/270 by TL" in caption
    # ties are no verdict: a constant map (ranked by position) flags nothing
    assert not disagreements({"TR": tr, "flat": HeadScores(torch.ones(30, 9), name="flat")})


def test_one_number_format_never_mixes_exponents_with_decimals():
    from icl_heads.viz.style import format_number

    shown = [format_number(v) for v in (0.882641, 6.585e-8, 113.24, 55939.2, -0.0031, None)]
    assert shown == ["0.8826", "0.0000", "113.2", "55939", "-0.003100", "—"]
    assert not any("e" in s for s in shown)


def test_scatter_labels_of_a_cluster_never_overlap():
    from icl_heads.viz.scatter import place_labels

    xs = np.array([0.0, 35.0, 35.4, 35.8, 36.0, 90.0])
    ys = np.array([0.0, 0.6, 0.8, 1.0, 0.7, -8.0])
    text = ["", "L27H1", "L18H6", "L29H8", "L3H3", "L23H3"]
    shown, sides = place_labels(xs, ys, text, [5, 1, 2, 3, 4])
    assert shown[5] == "L23H3" and shown[1] == "L27H1"
    placed = [i for i in range(6) if shown[i]]
    assert len(set(sides[i] for i in placed)) > 1  # the cluster's labels took other sides
    assert all(shown[i] in ("", text[i]) for i in range(6))


def test_attention_pattern_labels_are_readable_and_thinned_on_long_prompts():
    fig = viz.attention_pattern(torch.eye(200), [f"t{i}" for i in range(200)])
    assert fig.layout.xaxis.tickfont.size >= 10
    assert len(fig.layout.xaxis.tickvals) <= 64 and "1 in 4 tokens" in fig.layout.xaxis.title.text
    assert fig.layout.title.x == 0 and fig.layout.title.pad.t >= 30  # under the mode bar


# ---- H9: geometry-ablation figures (issue 21 item 6)


def _ablation_table():
    """head_ablation_geometry's shape: a baseline, two sets and their random controls."""
    rows = []
    level = {"baseline": 0.85, "PTH": 0.92, "random_PTH": 0.65, "IH": 0.80, "random_IH": 0.84}
    for condition, v in level.items():
        for layer in range(4):
            for metric in ("probe_accuracy", "mean_diff_cosine"):
                value = 0.5 if layer == 0 else v  # state 0: the embeddings, never ablated
                rows.append(
                    table_row(condition, metric, value, value - 0.04, value + 0.04, 16, layer=layer)
                )
    return make_table(rows)


@dataclass(frozen=True)
class _Labels(Settings):
    labels: tuple[str, ...] = ("negative", "positive")


def test_geometry_ablation_figure_draws_differences_one_panel_per_set():
    fig = ExperimentResult("head_ablation_geometry", _ablation_table(), _Labels()).plot()
    titles = [a.text for a in fig.layout.annotations]
    assert "probe_accuracy: PTH ablated" in titles and "mean_diff_cosine: IH ablated" in titles
    pth = next(t for t in fig.data if t.name == "PTH ablated" and t.xaxis == "x")
    # differences from the baseline, not levels: +0.07 where PTH raises accuracy
    assert list(pth.y) == pytest.approx([0.0, 0.07, 0.07, 0.07])
    random = next(t for t in fig.data if t.name == "random sets like PTH (mean)")
    assert list(random.y) == pytest.approx([0.0, -0.2, -0.2, -0.2]) and random.line.dash == "dot"
    # one band per curve, and every line (baseline, chance) has a legend entry
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 2 * 2 * 2  # (set, its random sets) x 2 sets x 2 metrics
    legend = {t.name for t in fig.data if t.showlegend}
    assert {"baseline (no ablation: 0)", "chance - baseline", "PTH ablated", "IH ablated"} <= legend
    chance = next(t for t in fig.data if t.name == "chance - baseline" and t.xaxis == "x")
    assert list(chance.y) == pytest.approx([0.0, -0.35, -0.35, -0.35])  # 1/2 - clean
    assert not any(t.name == "chance - baseline" for t in fig.data if t.yaxis == "y3")  # cosine
    # y titles on every row, and the x axis says what state 0 is
    assert "probe_accuracy" in fig.layout.yaxis.title.text
    assert "mean_diff_cosine" in fig.layout.yaxis3.title.text
    assert "0 = embeddings" in fig.layout.xaxis3.title.text


def test_geometry_ablation_figure_uses_the_paired_effect_table_when_there_is_one():
    table = _ablation_table()
    effect = table[table["condition"] != "baseline"].copy()
    effect["value"], effect["ci_low"], effect["ci_high"] = 0.01, -0.01, 0.03
    fig = ExperimentResult(
        "head_ablation_geometry", table, _Labels(), tables={"effect": effect}
    ).plot()
    pth = next(t for t in fig.data if t.name == "PTH ablated")
    assert list(pth.y) == pytest.approx([0.01] * 4)
    assert any("paired" in str(t.name) for t in fig.data if t.fill == "toself")


def test_layer_curves_title_every_y_axis_and_give_the_chance_line_a_legend_entry():
    fig = viz.layer_curves(_curve_table(), chance={"probe_accuracy": 0.5})
    assert fig.layout.yaxis.title.text == "probe_accuracy"
    assert fig.layout.yaxis2.title.text == "mean_diff_cosine"
    assert [t.name for t in fig.data if t.legendgroup == "chance"] == ["chance"]
    # a plain layer-geometry result says that state 0 is the embeddings
    fig = ExperimentResult("layer_geometry", _curve_table(), INFO).plot()
    assert "0 = embeddings" in fig.layout.xaxis2.title.text
