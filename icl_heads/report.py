"""The linked HTML report: one self-contained page per run.

Clicking a head on any layer x head map (or a point of the score scatter) shows, in the
panel beside the maps, that head's attention pattern on an example prompt (tokens on the
axes), where it attends from the query position, and its row of scores and effects, each
with its rank. The page is plain HTML, Plotly's JS and a little script: no server, no
network (Plotly's JS is embedded, or written once beside the reports), so it opens offline
from a file::

    from icl_heads.attention_patterns import attention_example
    from icl_heads.report import write_report

    tr, tl = ih.tsla_scores(model, prompts)
    example = attention_example(model, prompts)          # patterns of every head, prompt 0
    write_report("results/heads.html", {"TR": tr, "TL": tl}, example=example)

    result = ih.ablation_experiment(model, prompts, ...)  # any ExperimentResult
    write_report("results/ablation/report.html", result, example=example)

The page also shows the result's own figure (``result.plot()``), any further figures, the
tidy table and the settings that made the result.

This module only draws: the attention patterns come from
:func:`icl_heads.attention_patterns.attention_example` (which runs the model).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .attention_patterns import AttentionExample
from .heads import HeadScores
from .moved import moved_names
from .outputs import check_output_file, write_file
from .results import ExperimentResult, per_head_maps
from .summaries import summary_lines
from .viz import (
    describe_settings,
    display_token,
    experiment_figure,
    head_heatmaps,
    score_scatter,
    top_heads,
)
from .viz.agreement import disagreements
from .viz.scores import score_info
from .viz.style import format_number

if TYPE_CHECKING:
    import plotly.graph_objects as go


#: Most layer x head maps drawn side by side in the linked view (the rest appear in the
#: head's row of the detail panel only).
MAX_FACETS = 6
PLOTLY_JS_NAME = "plotly.min.js"
REPORT_FORMAT = "icl-heads.report/1"
#: Tables of a result that decide its claim, shown open at the top of the report (the
#: onset of each geometry curve, each ablation's change from the baseline); the result's
#: other tables stay folded under their headings.
CLAIM_TABLES = {
    "onset": "Onset per metric (the first state at 90% of the curve's maximum)",
    "effect": "Change from the baseline (ablated - clean, paired intervals)",
}
#: Rows of a table with a ``kind`` column (the TR/TL experiments) that decide its claims.
CLAIM_KINDS = ("effect", "contrast")
#: A table longer than this is folded (a claim table: shown in a scrolling box).
SHORT_TABLE = 60
#: The page's HTML, CSS and script (``report_page.html``, with ``{{name}}`` slots) and the
#: linked maps' detail panel (``report_linked.html``) are package data files.
TEMPLATES = "icl_heads.data"


def write_report(
    path: str | Path,
    result: ExperimentResult | HeadScores | Mapping[str, HeadScores] | None = None,
    *,
    maps: Mapping[str, HeadScores] | None = None,
    example: AttentionExample | None = None,
    figures: Sequence[go.Figure] = (),
    tables: Mapping[str, pd.DataFrame] | None = None,
    title: str | None = None,
    command: str | None = None,
    plotly_js: str | Path = "inline",
) -> Path:
    """Write the linked HTML report of a run.

    Args:
        path: the ``.html`` file to write (parent directories are created). It is checked
            before the page is built (a ValueError names it where it is a directory, lies
            under a file or cannot be written) and written atomically (a temporary sibling
            renamed over it).
        result: an :class:`~icl_heads.results.ExperimentResult` (its maps and per-head
            tables become the linked maps; its figure, table and settings are shown), a
            :class:`~icl_heads.heads.HeadScores`, a ``{name: HeadScores}`` dict, or None.
        maps: further maps to link (e.g. detector scores beside an experiment's maps).
        example: attention patterns for the detail panel (:func:`attention_example`);
            without it the panel shows the head's scores only.
        figures: further Plotly figures, shown below the result's own.
        tables: further tidy tables shown at the end (name -> DataFrame).
        title: the page title (default: the result's name and settings).
        command: the command line that made the run, shown on the page.
        plotly_js: ``"inline"`` (default: the page is one self-contained file),
            ``"beside"`` (``plotly.min.js`` written once next to the page) or a path
            relative to the page's directory where the file is written once and shared
            by several reports (e.g. ``"../plotly.min.js"``).

    Returns:
        The path written.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"write_report: path must be a str or Path, got {type(path).__name__}.")
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"write_report: give a .html path, got {path.name!r}.")
    path = check_output_file(path, what="write_report: path")  # before the page is built
    page = build_report(
        result,
        maps=maps,
        example=example,
        figures=figures,
        tables=tables,
        title=title,
        command=command,
        plotly_js_src=None if plotly_js == "inline" else _write_plotly_js(path.parent, plotly_js),
    )
    write_file(path, page)
    return path


def build_report(
    result: ExperimentResult | HeadScores | Mapping[str, HeadScores] | None = None,
    *,
    maps: Mapping[str, HeadScores] | None = None,
    example: AttentionExample | None = None,
    figures: Sequence[go.Figure] = (),
    tables: Mapping[str, pd.DataFrame] | None = None,
    title: str | None = None,
    command: str | None = None,
    plotly_js_src: str | None = None,
) -> str:
    """The report's HTML as a string (see :func:`write_report`); ``plotly_js_src``: a
    ``<script src>`` for Plotly's JS (None: embed it)."""
    experiment = result if isinstance(result, ExperimentResult) else None
    linked = _linked_maps(result, maps)
    per_head = dict(linked)
    if experiment is not None:
        for key, value in per_head_maps(experiment).items():
            if key not in per_head and not any(_same(value, m) for m in per_head.values()):
                per_head[key] = value
    _check_shapes(per_head, example)
    facets = dict(list(linked.items())[:MAX_FACETS])
    if not facets:
        example = None  # the patterns are shown for a clicked head only

    settings = experiment.settings if experiment is not None else _first_settings(linked)
    heading = title or _default_title(experiment, linked, settings)
    blocks: list[str] = []
    plots: dict[str, dict] = {}

    titles = {key: _display_name(key, m) for key, m in per_head.items()}
    if facets:
        fig = head_heatmaps(facets, highlight_top=None, title=" | ".join(titles[k] for k in facets))
        plots["maps"] = _figure_json(fig)
    if len(facets) >= 2:
        names = list(facets)
        x_title, y_title = titles[names[0]], titles[names[1]]
        plots["scatter"] = _figure_json(
            score_scatter(
                facets[names[0]],
                facets[names[1]],
                x_title=x_title,
                y_title=y_title,
                title=f"{y_title} vs {x_title} (every head; click a point)",
            )
        )
    flags = disagreements({titles[k]: m for k, m in per_head.items()})
    extra = []
    if experiment is not None and not (experiment.table.empty and experiment.maps):
        own = experiment_figure(experiment)
        if not all(trace.type == "heatmap" for trace in own.data):  # maps are drawn above
            extra.append(own)
    extra.extend(figures)
    for i, fig in enumerate(extra):
        plots[f"figure{i}"] = _figure_json(fig)

    data = {
        "format": REPORT_FORMAT,
        "n_layers": next(iter(per_head.values())).n_layers if per_head else 0,
        "n_heads": next(iter(per_head.values())).n_heads if per_head else 0,
        "facets": list(facets),
        "quantities": _quantities(per_head, titles),
        "top": {name: [[h.layer, h.head] for h in top_heads(m)] for name, m in facets.items()},
        "example": _example_json(example),
        "flags": [{"head": [d.head.layer, d.head.head], "text": d.describe()} for d in flags],
        "plots": plots,
    }

    if experiment is not None:
        blocks.append(_claim_html(experiment))
    if facets:
        blocks.append("\n" + _template("report_linked.html"))
        blocks.append(_top_heads_html(facets, titles))
    if flags:
        blocks.append(_flags_html(flags))
    if "scatter" in plots:
        blocks.append('<section><div id="plot-scatter" class="plot"></div></section>')
    for i in range(len(extra)):
        blocks.append(f'<section><div id="plot-figure{i}" class="plot"></div></section>')
    if experiment is not None and not experiment.table.empty:
        blocks.append(_table_html("Results", experiment.table))
    if experiment is not None:
        for name, frame in experiment.tables.items():
            if name not in CLAIM_TABLES and not frame.empty:
                blocks.append(_table_html(str(name), frame, fold=True))
    for name, frame in (tables or {}).items():
        blocks.append(_table_html(str(name), frame))
    if settings is not None:
        text = json.dumps(settings.to_dict(), indent=1, default=str)
        blocks.append(
            f"<section><details><summary>Settings (how this was made)</summary>"
            f"<pre>{html.escape(text)}</pre></details></section>"
        )

    subtitle = []
    if command:
        subtitle.append(f"<p class='muted'>Made with <code>{html.escape(command)}</code></p>")
    if example is not None:
        subtitle.append(
            f"<p class='muted'>Example prompt #{example.prompt_index} "
            f"({len(example.tokens)} tokens) for the attention patterns.</p>"
        )
    script = (
        f'<script src="{html.escape(plotly_js_src)}"></script>'
        if plotly_js_src
        else f"<script>{_plotly_js()}</script>"
    )
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_json_default)
    payload = payload.replace("</", "<\\/")
    return _fill(
        _template("report_page.html"),
        title=html.escape(heading),
        heading=html.escape(heading),
        subtitle="\n".join(subtitle),
        blocks="\n".join(blocks),
        plotly=script,
        data=payload,
    )


# --------------------------------------------------------------------------- pieces


def _linked_maps(result, maps) -> dict[str, HeadScores]:
    out: dict[str, HeadScores] = {}
    if isinstance(result, ExperimentResult):
        out.update(result.maps)
        if not out:  # no maps: the per-head tables' columns are the maps
            out.update(dict(list(per_head_maps(result).items())[:4]))
    elif isinstance(result, HeadScores):
        out[result.name] = result
    elif isinstance(result, Mapping):
        out.update(result)
    elif result is not None:
        raise TypeError(
            f"write_report: result must be an ExperimentResult, a HeadScores or a "
            f"dict of them, got {type(result).__name__}."
        )
    for key, value in (maps or {}).items():
        out[str(key) if key not in out else f"{key} (extra)"] = value
    for key, value in out.items():
        if not isinstance(value, HeadScores):
            raise TypeError(
                f"write_report: map {key!r} is a {type(value).__name__}, not a HeadScores."
            )
    return out


def _same(a: HeadScores, b: HeadScores) -> bool:
    """The same values at every head (a per-head table's copy of a map)."""
    return a.scores.shape == b.scores.shape and bool(
        torch.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-8, equal_nan=True)
    )


def _check_shapes(per_head: Mapping[str, HeadScores], example: AttentionExample | None) -> None:
    shapes = {(m.n_layers, m.n_heads) for m in per_head.values()}
    if example is not None:
        shapes.add((example.n_layers, example.n_heads))
    if len(shapes) > 1:
        raise ValueError(
            f"write_report: the maps and the example come from models of different "
            f"shapes {sorted(shapes)}; give maps of one model."
        )


def _display_name(key: str, scores: HeadScores) -> str:
    """A map's name on the page: its key, or the score's human title where the key is the
    score's own (snake_case) name.

    Example::

        _display_name("delta_logit_diff", effects)  # "Change in logit difference"
    """
    return score_info(scores.name).title if key == scores.name else str(key)


def _quantities(per_head: Mapping[str, HeadScores], titles: Mapping[str, str]) -> list[dict]:
    """Every per-head quantity: its name, title, definition, values and ranks (row-major,
    null for NaN)."""
    out = []
    for key, scores in per_head.items():
        info = score_info(scores.name)
        values = scores.scores.flatten().tolist()
        ranks = scores.rank().flatten().tolist()
        out.append(
            {
                "name": key,
                "title": titles[key],
                "caption": info.describe(),
                "score": scores.name,
                "values": [None if not math.isfinite(v) else v for v in values],
                "ranks": [None if not math.isfinite(r) else int(r) for r in ranks],
                "n": int(sum(math.isfinite(v) for v in values)),
            }
        )
    return out


def _example_json(example: AttentionExample | None) -> dict | None:
    """Lower triangle of every head's pattern, quantised to bytes (weight ~ byte / 255)."""
    if example is None:
        return None
    T = len(example.tokens)
    rows, cols = np.tril_indices(T)
    tri = example.patterns.numpy()[:, :, rows, cols]  # [L, H, T(T+1)/2]
    quantised = np.clip(np.rint(tri * 255.0), 0, 255).astype(np.uint8)
    return {
        "tokens": [display_token(t) for t in example.tokens],
        "T": T,
        "patterns": base64.b64encode(quantised.tobytes()).decode("ascii"),
        "text": example.text,
        "answer": example.answer,
        "index": example.prompt_index,
    }


def _figure_json(fig: go.Figure) -> dict:
    """A figure as plain JSON data (lists, not Plotly's base64 typed arrays, so the page's
    script can read the points; NaN as null)."""
    return _plain(fig.to_plotly_json())


def _plain(value):
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:  # Plotly's base64 typed array
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            shape = value.get("shape")
            if shape:
                array = array.reshape([int(v) for v in str(shape).split(",")])
            return _plain(array)
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (pd.Timestamp,)):
        return str(value)
    return _json_default(value)


def _table_html(name: str, frame: pd.DataFrame, *, fold: bool = False, claim: bool = False) -> str:
    """The table (its first 400 rows) under its heading: folded when long (or ``fold``);
    a ``claim`` table is never folded, a long one scrolls in its box."""
    shown = frame.head(400)
    body = shown.to_html(
        index=False, float_format=format_number, na_rep="—", classes="data", border=0
    )
    more = (
        f"<p class='muted'>{len(frame) - len(shown)} more rows in the CSV.</p>"
        if len(frame) > len(shown)
        else ""
    )
    if claim:
        scroll = " class='scroll'" if len(frame) > SHORT_TABLE else ""
        return f"<div class='claim-table'><h3>{html.escape(name)}</h3><div{scroll}>{body}</div>{more}</div>"
    if len(frame) <= SHORT_TABLE and not fold:
        return f"<section><h2>{html.escape(name)}</h2>{body}{more}</section>"
    return (
        f"<section><details><summary><b>{html.escape(name)}</b> ({len(frame)} rows)"
        f"</summary>{body}{more}</details></section>"
    )


def claim_tables(result: ExperimentResult) -> dict[str, pd.DataFrame]:
    """The tables that decide ``result``'s claim, by title: its :data:`CLAIM_TABLES`
    (``tables["onset"]``, ``tables["effect"]``) and, for a table with a ``kind`` column,
    its effect and contrast rows (:data:`CLAIM_KINDS`).

    Example::

        claim_tables(layer_geometry_result)    # {"Onset per metric (...)": DataFrame}
        claim_tables(ablation_result)          # {"effects and contrasts": DataFrame}
    """
    out = {
        title: result.tables[name]
        for name, title in CLAIM_TABLES.items()
        if name in result.tables and not result.tables[name].empty
    }
    table = result.table
    if "kind" in table.columns:
        rows = table[table["kind"].isin(CLAIM_KINDS)]
        if not rows.empty:
            out["effects and contrasts"] = rows
    return out


def _claim_html(result: ExperimentResult) -> str:
    """What decides the result's claim, open at the top of the page: its summary
    (:func:`icl_heads.summaries.summary_lines`) and :func:`claim_tables`."""
    lines = summary_lines(result)
    tables = claim_tables(result)
    if not lines and not tables:
        return ""
    parts = ["<section class='claim' id='claim'><h2>What decides the claim</h2>"]
    if lines:
        parts.append(f"<pre class='summary'>{html.escape(chr(10).join(lines))}</pre>")
    parts += [_table_html(name, frame, claim=True) for name, frame in tables.items()]
    parts.append("</section>")
    return "".join(parts)


def _flags_html(flags: Sequence) -> str:
    """The disagreements between maps, one row each (the first 20)."""
    rows = "".join(
        f'<tr><td><button class="head" data-layer="{d.head.layer}" data-head="{d.head.head}">'
        f"{d.head}</button></td><td>{html.escape(d.top_map)}</td><td>{d.top_rank}</td>"
        f"<td>{html.escape(d.other_map)}</td><td>{d.other_rank} / {d.n_other}</td></tr>"
        for d in flags[:20]
    )
    more = f"<p class='muted'>{len(flags) - 20} more.</p>" if len(flags) > 20 else ""
    return (
        "<section class='flags'><h2>Where the maps disagree</h2><p class='muted'>Top heads "
        "of one map that rank in the lowest 10% of another.</p><table class='data'><tr>"
        "<th>head</th><th>top by</th><th>rank</th><th>but by</th><th>rank</th></tr>"
        f"{rows}</table>{more}</section>"
    )


def _top_heads_html(facets: Mapping[str, HeadScores], titles: Mapping[str, str]) -> str:
    parts = []
    for name, scores in facets.items():
        buttons = (
            " ".join(
                f'<button class="head" data-layer="{h.layer}" data-head="{h.head}">{h}</button>'
                for h in top_heads(scores)
            )
            or "none stand out"
        )
        parts.append(f"<div><b>{html.escape(titles[name])}</b> top heads: {buttons}</div>")
    return f"<section class='tops'>{''.join(parts)}</section>"


def _first_settings(maps: Mapping[str, HeadScores]):
    return next((m.settings for m in maps.values() if m.settings is not None), None)


def _default_title(experiment, maps, settings) -> str:
    shown = " | ".join(_display_name(k, m) for k, m in maps.items())
    name = experiment.name if experiment is not None else shown or "icl-heads"
    meta = describe_settings(settings)
    return f"icl-heads: {name}" + (f" ({meta})" if meta else "")


def _write_plotly_js(directory: Path, where: str | Path) -> str:
    """Write Plotly's JS once (at ``directory / where``, or beside the page) and return
    the relative ``src``."""
    relative = Path(PLOTLY_JS_NAME) if where == "beside" else Path(where)
    if relative.is_absolute():
        raise ValueError(
            f"plotly_js: give 'inline', 'beside' or a path relative to the "
            f"report's directory, got {str(where)!r}."
        )
    target = directory / relative
    code = _plotly_js()
    if not target.is_file() or target.stat().st_size != len(code.encode("utf-8")):
        check_output_file(target, what="write_report: plotly_js")
        write_file(target, code)
    return relative.as_posix()


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _template(name: str) -> str:
    """A template file of the page (package data, :data:`TEMPLATES`)."""
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


def _fill(template: str, **values: str) -> str:
    """The template with every ``{{name}}`` slot replaced by ``values[name]``, in one pass
    (text put in is never read for slots: a table or payload may contain ``{{x}}``)."""
    slots = set(re.findall(r"\{\{(\w+)\}\}", template))
    if slots != set(values):
        raise ValueError(
            f"report template: slots {sorted(slots)} but values for {sorted(values)}; "
            "the template and report.py must name the same slots."
        )
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


#: ``attention_example`` runs the model, so it lives in :mod:`icl_heads.attention_patterns`;
#: importable from here for one release, with a DeprecationWarning.
__getattr__ = moved_names(__name__, {"attention_example": "icl_heads.attention_patterns"})
