"""The geometry paper's experiments (Yang et al. 2025, arXiv 2505.18752): separability and
alignment curves over layers, task vectors, and what ablating previous-token and induction
heads does to the curves. Each returns an :class:`~icl_heads.results.ExperimentResult`::

    ih.layer_geometry(model, prompts).plot()                      # curves over layers
    ih.task_vector_experiment(model, source, target)              # injection layer sweep
    ih.head_ablation_geometry(model, prompts)                     # PTH / IH / random sets

:func:`reproduce_geometry` runs them for several tasks and saves every result (resumable);
:func:`geometry_verdicts` judges the paper's claims from the saved tables, and
:func:`icl_heads.pages.geometry.write_geometry_page` writes the results page from them. One
command (resumable: saved cells are loaded)::

    icl-heads reproduce --models default gemma-3-270m --experiments geometry --pages --no-reports

Rooms: ``curves`` (shared measurement, spans and table rows), ``layer_geometry``,
``task_vectors``, ``head_ablation`` (each with its settings), ``reproduce`` (the grid and its
presets), ``verdicts`` (the claims).
"""

from .curves import ALIGNMENT, GEOMETRY_METRICS, SEPARABILITY, spans
from .head_ablation import HeadAblationGeometrySettings, head_ablation_geometry
from .layer_geometry import LayerGeometrySettings, layer_geometry
from .reproduce import (
    EXPERIMENTS,
    FIRST,
    FULL,
    LEGACY,
    MAIN,
    QUICK,
    Design,
    Preset,
    reproduce_geometry,
)
from .task_vectors import TaskVectorSettings, task_vector_experiment
from .verdicts import CLAIMS, geometry_verdicts

__all__ = [
    "ALIGNMENT",
    "CLAIMS",
    "EXPERIMENTS",
    "FIRST",
    "FULL",
    "LEGACY",
    "MAIN",
    "GEOMETRY_METRICS",
    "QUICK",
    "SEPARABILITY",
    "Design",
    "HeadAblationGeometrySettings",
    "LayerGeometrySettings",
    "Preset",
    "TaskVectorSettings",
    "geometry_verdicts",
    "head_ablation_geometry",
    "layer_geometry",
    "reproduce_geometry",
    "spans",
    "task_vector_experiment",
]
