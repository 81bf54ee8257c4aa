"""What both results pages share: one number format (:func:`icl_heads.experiments.kit.fmt`), intervals, figures written through
:func:`icl_heads.viz.save_figure`, relative links, and the check that a results folder holds
the page's family of results (:func:`check_family`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import plotly.graph_objects as go

from ..experiments.geometry.reproduce import EXPERIMENTS as GEOMETRY_EXPERIMENTS
from ..experiments.kit import SeedResults, fmt
from ..experiments.trtl.reproduce import EXPERIMENTS as TRTL_EXPERIMENTS
from ..results import ExperimentResult
from ..viz import save_figure

#: The results families with a page: their cell folders (``<model>/<task>/<experiment>``, as
#: the reproduction grids write them) and the function that writes the family's page.
FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "TR/TL": (tuple(TRTL_EXPERIMENTS), "write_trtl_page"),
    "geometry": (tuple(GEOMETRY_EXPERIMENTS), "write_geometry_page"),
}


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


def check_family(
    cells: Mapping[str, Mapping[str, Mapping[str, ExperimentResult]]],
    results_root: str | Path,
    family: str,
) -> None:
    """Raise unless the saved results ``cells`` (``{model: {task: {experiment: result}}}``,
    as :func:`~icl_heads.experiments.kit.load_cells` reads ``results_root``) hold at least one
    cell of ``family`` (a key of :data:`FAMILIES`) and none of another family's, so that a
    page writer pointed at the wrong folder says so instead of writing a page of blanks and
    "unclear" verdicts. Cells of experiments no family knows are allowed.

    Example::

        check_family(load_cells("docs/results/data/trtl"), "docs/results/data/trtl", "TR/TL")

    Raises:
        ValueError: ``family`` is unknown, no cell of ``family`` is found, or cells of
            another family are (the message names the folder, the cells found and the
            page writer for them).
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown results family {family!r}; expected one of {list(FAMILIES)}.")
    expected, writer = FAMILIES[family]
    found = sorted(
        (f"{model}/{task}/{experiment}", experiment)
        for model, tasks in cells.items()
        for task, results in tasks.items()
        for experiment in results
    )
    names = {experiment for _, experiment in found}

    def shown(paths: list[str]) -> str:
        return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")

    where = f"{writer}: the results folder {Path(results_root).as_posix()!r}"
    layout = (
        f"{writer} reads {family} cells <model>/<task>/<experiment>/result.json with "
        f"<experiment> one of {list(expected)}"
    )
    for other, (other_expected, other_writer) in FAMILIES.items():
        foreign = [cell for cell, experiment in found if experiment in other_expected]
        if other == family or not foreign:
            continue
        holds = "also holds" if names & set(expected) else "holds no " + family + " results, only"
        raise ValueError(
            f"{where} {holds} {other} results ({shown(foreign)}); {layout}. Write the "
            f"{other} page with {other_writer}, from a folder of its own (icl-heads "
            "reproduce writes <out>/trtl and <out>/geometry)."
        )
    if not names & set(expected):
        raise ValueError(
            f"{where} holds no {family} results (found {shown([c for c, _ in found])}); {layout}."
        )


def seeds_md(cells: Mapping[str, Mapping[str, Mapping[str, ExperimentResult]]]) -> list[str]:
    """The paragraph a page carries when its grid ran several prompt seeds
    (:class:`~icl_heads.experiments.kit.SeedResults`): which seeds, what is pooled over them
    and what shows the first seed only; nothing for a one-seed grid.

    Example::

        seeds_md(load_cells("docs/results/main/trtl"))   # ['Prompt seeds: 0, 1, 2 ...', '']
    """
    seeds = sorted(
        {s for tasks in cells.values() for r in tasks.values()
         if isinstance(r, SeedResults) for s in r.seeds}
    )  # fmt: skip
    if len(seeds) < 2:
        return []
    partial = [
        f"{model} / {task} (seeds {', '.join(map(str, r.seeds))})"
        for model, tasks in cells.items()
        for task, r in tasks.items()
        if isinstance(r, SeedResults) and list(r.seeds) != seeds
    ]
    text = (
        f"**Prompt seeds: {', '.join(map(str, seeds))}.** Each task was run once per prompt "
        "seed (its own demonstrations, query order, head selection and random sets). The "
        "verdicts, the statistics behind them and the power table pool the seeds: each "
        "statistic is the mean over the seeds, with the mean of their intervals (the seeds "
        "share most queries, so this interval assumes they are perfectly correlated and is "
        'never narrower than one seed\'s; [methods.md, "Verdict rules"]'
        "(../methods.md#verdict-rules)). The tables, figures, settings and replication "
        f"numbers below show seed {seeds[0]}; the wall-time table sums each cell over the seeds."
    )
    if partial:
        text += " Not every seed has finished: " + "; ".join(partial) + "."
    return [text, ""]


def heldout_design(cells: Mapping[str, Mapping[str, Mapping[str, ExperimentResult]]]) -> bool:
    """Whether a grid's cells were made with held-out selection (their requests record a
    ``heldout`` split: the issue-18 designs, ``trtl.MAIN`` / ``geometry.MAIN``), which
    decides what a page says changed in the design.

    Example::

        heldout_design(load_cells("docs/results/main/trtl"))      # True
    """
    return any(
        isinstance(result.request, Mapping) and bool(result.request.get("heldout"))
        for tasks in cells.values()
        for results in tasks.values()
        for result in results.values()
    )
