"""The geometry results page (``docs/results/geometry.md``), written from saved results only:
the verdicts on the geometry paper's claims, the key numbers, the curves (through
:func:`icl_heads.pages.common.write_figure`) and each cell's settings.

Example::

    write_geometry_page("docs/results/main/geometry", "docs/results/geometry.md",
                        "docs/results/figures/geometry")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..experiments.geometry.curves import ALIGNMENT, SEPARABILITY
from ..experiments.geometry.reproduce import EXPERIMENTS
from ..experiments.geometry.verdicts import (
    CLAIMS,
    geometry_pooled_verdicts,
    geometry_verdicts,
    n_layers,
)
from ..experiments.kit import load_cells
from ..geometry import ONSET_FRACTION
from ..results import ExperimentResult, safe_name
from .common import check_family, fmt, fmt_ci, heldout_design, relpath, seeds_md, write_figure
from .evidence import geometry_power, geometry_replication_md, power_md, wall_time_md

_CURVE_METRICS = (
    "probe_accuracy",
    "fisher_ratio",
    "mean_diff_cosine",
    "logit_lens_accuracy",
    "top_singular_cosine",
    "effective_dim",
    "task_subspace_alignment",
    "label_rotation",
)
_TV_METRICS = (
    "accuracy",
    "label_space_rate",
    "probe_accuracy",
    "mean_diff_cosine",
    "logit_lens_accuracy",
    "task_subspace_alignment",
)
_ABLATION_METRICS = ("probe_accuracy", "fisher_ratio", "mean_diff_cosine", "logit_lens_accuracy")


#: How the verdicts are made (the page says it above the verdict table).
DESIGN_NOTE = (
    "Each claim is tested by one statistic with a 95% interval, judged by the rules in "
    '[methods.md, "Verdict rules"](../methods.md#verdict-rules): **holds** (the interval '
    "excludes the reference on the predicted side), **does not hold** (it excludes it on the "
    "other side), **no effect larger than the margin** (the whole interval lies within the "
    "claim's equivalence margin, fixed in code before the runs), **untestable** (the design "
    "cannot answer: e.g. an injection that is a no-op, an undefined onset) or **unclear**. "
    "A model's verdict pools its tasks by a random-effects estimate of the statistic "
    "(DerSimonian-Laird, Hartung-Knapp interval; untestable tasks left out), shown with its "
    "interval; the per-task verdicts follow in brackets. **What changed** from the first "
    "version of this page (kept in the page history): PTH/IH ablation is judged as the "
    "paired difference from the random sets with both sides' uncertainty (was: against the "
    "random sets' single mean); task vectors are judged at the pre-registered state L//2 "
    "with no-op states excluded (was: the best state, whose maximum could never be "
    "negative), the other states are described in the notes; equivalence and untestable "
    'verdicts exist (were "does not hold" or "unclear"); tasks are pooled by an estimate '
    "(was: every task must hold). Nothing was tuned to make a claim hold."
)
#: What the issue-18 design (``geometry.MAIN``) changed, added to :data:`DESIGN_NOTE` when the
#: saved cells were made with it (their requests record a held-out split).
MAIN_DESIGN_NOTE = (
    "**The experiments' designs changed too** (issue 18; methods.md, \"Held-out selection, "
    'TL normalisation and ablation modes"), fixed in code (`geometry.MAIN`) before these '
    "runs: the task vector is the mean of ICL prompts over a *selection* half of each "
    "task's queries and is injected into zero-shot prompts of the disjoint *evaluation* "
    "half, and the head ablation runs on evaluation prompts with its means taken from the "
    "selection half (were: the same prompts); zero ablation stays the main mode (the "
    "detectors' heads are task-independent and the claims are about their whole output) "
    "with mean ablation as sensitivity rows; each cell has n = 256 prompts (was 96) from "
    "tasks of 320 examples (were 100), with 3 prompt seeds pooled."
)


def _figure(result: ExperimentResult, metrics: Sequence[str], title: str, path: Path) -> Path:
    table = result.table[result.table["metric"].isin(metrics)]
    tables = {  # e.g. the paired effects of a head ablation (bands of the differences)
        name: frame[frame["metric"].isin(metrics)] if "metric" in frame.columns else frame
        for name, frame in result.tables.items()
    }
    sub = ExperimentResult(result.name, table, result.settings, tables=tables)
    return write_figure(sub.plot(title=title), path)


def write_geometry_page(
    results_root: str | Path,
    page_path: str | Path,
    figure_dir: str | Path,
    *,
    command: str | None = None,
) -> Path:
    """Write the geometry results page from saved results only (every model found under
    ``results_root/<model>/<task>/<experiment>/``).

    The page holds the curves (standalone HTML figures in ``figure_dir``, written with
    ``include_plotlyjs="directory"`` and embedded by relative links), the settings, the key
    numbers (the first state where separability and alignment reach
    :data:`~icl_heads.geometry.ONSET_FRACTION` of their maximum, per task and model), the
    verdict on each claim per model
    (:func:`~icl_heads.experiments.geometry.geometry_verdicts`), the power and replication
    tables and each cell's wall time (:mod:`icl_heads.pages.evidence`).

    Example::

        write_geometry_page("docs/results/main/geometry", "docs/results/geometry.md",
                            "docs/results/figures/geometry")

    Returns:
        The page's path.

    Raises:
        FileNotFoundError: no saved results under ``results_root``.
        ValueError: ``results_root`` holds no geometry cells, or holds TR/TL cells (a TR/TL
            results folder: :func:`~icl_heads.pages.trtl.write_trtl_page`).
    """
    results_root, page_path, figure_dir = Path(results_root), Path(page_path), Path(figure_dir)
    command = command or (
        "icl-heads reproduce --models default gemma-3-270m --experiments "
        "geometry --pages --no-reports"
    )
    nested = load_cells(results_root) if results_root.is_dir() else {}
    cells = {
        (model, task): results for model, tasks in nested.items() for task, results in tasks.items()
    }
    if not cells:
        raise FileNotFoundError(
            f"write_geometry_page: no saved results under "
            f"{str(results_root)!r} (run reproduce_geometry first)."
        )
    check_family(nested, results_root, "geometry")
    verdicts = geometry_verdicts(results_root)
    models = sorted({m for m, _ in cells})
    rel = Path(relpath(figure_dir, page_path.parent))
    out = [
        "# Hidden-state geometry: separability, alignment, task vectors, PTH and IH",
        "",
        f"Generated by `{command}` from the saved results in "
        f"`{results_root}` (`write_geometry_page` reads only those; do not edit by hand).",
        "",
        "The geometry paper (Yang et al. 2025, arXiv 2505.18752) explains in-context "
        "classification by two properties of the query hidden states: **separability** "
        "(can the classes be told apart?) rising in early layers and **alignment** (does "
        "the class structure point along the label unembeddings?) rising in later layers; "
        "previous-token heads (PTH) drive the first, induction heads (IH) and task vectors "
        "the second. Definitions: `docs/methods.md` and `icl_heads/geometry/`. State `i` "
        "is the residual stream at the query after `i` blocks (0 = embeddings).",
        "",
    ]
    out += seeds_md(nested)

    out += [
        "## Verdicts",
        "",
        DESIGN_NOTE + (" " + MAIN_DESIGN_NOTE if heldout_design(nested) else ""),
        "",
    ]
    pooled = geometry_pooled_verdicts(results_root)
    header = "| claim | statistic | reference | " + " | ".join(models) + " |"
    out += [header, "|" + "---|" * (3 + len(models))]
    for key, statement, statistic, reference, _ in CLAIMS:
        cells_md = []
        for model in models:
            sub = verdicts[(verdicts["model"] == model) & (verdicts["claim"] == key)]
            detail = ", ".join(f"{t}: {v}" for t, v in zip(sub["task"], sub["verdict"]))
            row = pooled[(pooled["model"] == model) & (pooled["claim"] == key)]
            if len(row):
                r = row.iloc[0]
                estimate = fmt_ci(r["value"], r["ci_low"], r["ci_high"])
                cells_md.append(f"**{r['verdict']}** {estimate} ({detail})")
            else:
                cells_md.append(f"– ({detail})")
        out.append(f"| {statement} | {statistic} | {reference} | " + " | ".join(cells_md) + " |")
    out += [
        "",
        "Per task (value [95% interval] against the reference):",
        "",
        "| model | task | claim | value [interval] | reference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in verdicts.itertuples():
        out.append(
            f"| {row.model} | {row.task} | {row.claim} | "
            f"{fmt_ci(row.value, row.ci_low, row.ci_high)} | {fmt(row.reference)} | "
            f"{row.verdict} |"
        )

    out += ["", *power_md(geometry_power(nested), CLAIMS)]
    out += geometry_replication_md(nested)
    out += [
        "",
        "## Key numbers: where the curves rise",
        "",
        f"The first state where each curve reaches {ONSET_FRACTION:.0%} of its maximum "
        "(95% bootstrap interval), and the curve's maximum. Separability: "
        f"`{SEPARABILITY}`; alignment: `{ALIGNMENT}` (and the logit-lens accuracy).",
        "",
        "| model | task | k | blocks | separability onset | alignment onset | logit-lens "
        "onset | max probe accuracy | max cosine | max logit-lens accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, task), results in sorted(cells.items()):
        for name in ("layer_geometry_k0", "layer_geometry_k4"):
            if name not in results:
                continue
            result = results[name]
            onset = result.tables["onset"].set_index("metric")
            table = result.table

            def peak(metric: str, table=table) -> str:
                return fmt(table[table["metric"] == metric]["value"].max())

            def on(metric: str, onset=onset) -> str:
                if metric not in onset.index:
                    return "–"
                r = onset.loc[metric]
                return fmt_ci(r["value"], r["ci_low"], r["ci_high"])

            out.append(
                f"| {model} | {task} | {result.settings.prompts.k} | "
                f"{n_layers(result)} | {on(SEPARABILITY)} | {on(ALIGNMENT)} | "
                f"{on('logit_lens_accuracy')} | {peak(SEPARABILITY)} | "
                f"{peak(ALIGNMENT)} | {peak('logit_lens_accuracy')} |"
            )

    for model in models:
        out += ["", f"## {model}", ""]
        if model.lower().startswith("gemma"):
            out += [
                "On Gemma 3 the heads' summed output passes through a norm after attention "
                "before it joins the residual stream, so zero-ablating a head also changes "
                "how that norm scales the other heads of its layer.",
                "",
            ]
        for (m, task), results in sorted(cells.items()):
            if m != model:
                continue
            results = {name: results[name] for name in EXPERIMENTS if name in results}
            out += [f"### {task}", ""]
            # one flat directory, so every figure shares one plotly.min.js
            stem = f"{safe_name(model)}__{safe_name(task)}__"
            figures = []
            if "layer_geometry_k0" in results and "layer_geometry_k4" in results:
                both = pd.concat(
                    [results["layer_geometry_k0"].table, results["layer_geometry_k4"].table],
                    ignore_index=True,
                )
                combined = ExperimentResult(
                    "layer_geometry", both, results["layer_geometry_k4"].settings
                )
                _figure(
                    combined,
                    _CURVE_METRICS,
                    f"{model} / {task}: query-state geometry by layer, k=0 vs k=4",
                    figure_dir / f"{stem}curves.html",
                )
                figures.append(
                    (
                        f"{stem}curves.html",
                        "Separability and alignment by layer (k=0 vs "
                        "k=4), with the TR/TL steering geometry (task-subspace "
                        "alignment, rotation toward the gold label)",
                        2200,
                    )
                )
            if "task_vector" in results:
                _figure(
                    results["task_vector"],
                    _TV_METRICS,
                    f"{model} / {task}: task vector "
                    "injected into zero-shot prompts, by injection state",
                    figure_dir / f"{stem}task_vector.html",
                )
                figures.append(
                    (
                        f"{stem}task_vector.html",
                        "Task-vector layer sweep (final-state "
                        "geometry and behaviour of zero-shot prompts; zero-shot and "
                        "ICL as reference lines)",
                        1650,
                    )
                )
            if "head_ablation" in results:
                _figure(
                    results["head_ablation"],
                    _ABLATION_METRICS,
                    f"{model} / {task}: PTH / IH / layer-matched random ablations",
                    figure_dir / f"{stem}head_ablation.html",
                )
                figures.append(
                    (
                        f"{stem}head_ablation.html",
                        "Curves with the top PTH / IH ablated, and layer-matched random sets",
                        1150,
                    )
                )
            for file, caption, height in figures:
                out += [
                    f"**{caption}** ([open]({(rel / file).as_posix()}))",
                    "",
                    f'<iframe src="{(rel / file).as_posix()}" width="100%" '
                    f'height="{height}" style="border:none"></iframe>',
                    "",
                ]
            out += _settings_md(results)

    timing_rows = []
    for model in models:
        path = results_root / model / "timings.csv"
        if path.is_file():
            log_ = pd.read_csv(path)
            log_ = log_[~log_["quick"].astype(bool)].drop_duplicates(
                ["task", "experiment"], keep="last"
            )
            if log_.empty:
                continue
            timing_rows.append(
                f"| {model} | {len(log_)} | {log_['seconds'].sum() / 60:.1f} | "
                f"{int(log_['threads'].max())} | {log_['finished'].min()} .. "
                f"{log_['finished'].max()} |"
            )
    if timing_rows:
        out += [
            "",
            "## Wall time",
            "",
            "As recorded by `reproduce_geometry` "
            "(`<model>/timings.csv`; cells computed, not loaded), on 2 CPU cores shared with "
            "other jobs:",
            "",
            "| model | cells | minutes | torch threads | finished |",
            "|---|---|---|---|---|",
            *timing_rows,
        ]
    out += ["", *wall_time_md(nested)]
    out += [
        "",
        "## How to reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        "Cells whose `result.json` exists are loaded, not recomputed; delete a cell's "
        "directory to recompute it. `--quick` runs a small smoke version.",
        "",
    ]
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text("\n".join(out), encoding="utf-8")
    return page_path


def _settings_md(results: Mapping[str, ExperimentResult]) -> list[str]:
    lines = ["<details><summary>Settings</summary>", ""]
    for name, result in results.items():
        s = result.settings
        if name.startswith("layer_geometry"):
            p = s.prompts
            lines.append(
                f"- `{name}`: {p.n} prompts, k={p.k}, seed={p.seed}, labels "
                f"{list(s.labels)}; probe: {s.folds}-fold, C={s.C}; {s.n_boot} "
                f"resamples; states {min(s.layers)}..{max(s.layers)}."
            )
        elif name == "task_vector":
            lines.append(
                f"- `task_vector`: {s.icl_prompts.n} ICL prompts (k={s.icl_prompts.k}) "
                f"-> {s.zero_shot_prompts.n} zero-shot prompts; mode={s.mode}, "
                f"scales={list(s.scales)}, positions={s.positions}, injection states "
                f"{list(s.layers)}, read at state {s.read_layer}; {s.folds}-fold "
                f"probe; {s.n_boot} resamples."
            )
        elif name == "head_ablation":
            heads = "; ".join(f"{k}: {', '.join(v)}" for k, v in s.heads.items())
            lines.append(
                f"- `head_ablation`: {s.prompts.n} prompts (k={s.prompts.k}); "
                f"{s.mode} ablation at {s.positions} positions; top_k={s.top_k} "
                f"({heads}); {s.n_random} layer-matched random sets per set; early "
                f"states {_range(s.early)}, late {_range(s.late)}; {s.folds}-fold "
                f"probe; {s.n_boot} resamples."
            )
    return lines + ["", "</details>", ""]


def _range(layers: Sequence[int]) -> str:
    return f"{min(layers)}..{max(layers)}" if layers else "none"
