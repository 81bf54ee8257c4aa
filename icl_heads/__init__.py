"""icl-heads: find and explain the attention heads behind in-context learning.

One import line for notebooks::

    import icl_heads as ih
    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=4, n=32, seed=0)
    ih.evaluate(model, prompts)
    tr, tl = ih.tsla_scores(model, prompts)
    ih.induction_scores(model).plot()

The root namespace holds the analyses and the result types; plumbing lives in the
submodules (``icl_heads.activations``, ``icl_heads.interventions``, ...) and the results
pages in ``icl_heads.pages``. The conventions shared by every function are in
``docs/api.md``.

Moved out (importable from here for one release, with a ``DeprecationWarning`` naming the
new import path): ``iter_batches`` and ``collect`` (``icl_heads.activations``),
``write_trtl_page`` (``icl_heads.pages.trtl``) and ``write_geometry_page``
(``icl_heads.pages.geometry``).
"""

from .activations import ActivationMeans, activation_means
from .attribution import direct_logit_attribution, dla_scores, task_subspace_projector, tsla_scores
from .decomposition import head_outputs, residual_decomposition
from .detectors import (
    LabelAttention,
    detect_heads,
    duplicate_token_scores,
    induction_scores,
    label_attention_scores,
    previous_token_scores,
    random_repeated_tokens,
    token_detector_scores,
)
from .experiments.geometry import (
    head_ablation_geometry,
    layer_geometry,
    reproduce_geometry,
    task_vector_experiment,
)
from .experiments.trtl import (
    ablation_experiment,
    correlation_experiment,
    find_task_heads,
    perturbation_experiment,
    reconciliation_experiment,
    reproduce_trtl,
    steering_experiment,
)
from .geometry import (
    alignment,
    inject_task_vector,
    query_states,
    separability,
    task_vector,
)
from .heads import Head, HeadScores, random_head_sets
from .interventions import ablate, ablate_layers, compose, patch, steer
from .metrics import evaluate
from .models import load_model
from .moved import moved_names as _moved_names
from .patching import attribution_patching, head_sweep, layer_sweep, position_sweep
from .prompts import PERTURBATIONS, PromptSet, build_prompts, shift_demo_labels
from .results import ExperimentResult
from .settings import PromptInfo, Settings
from .tasks import Task, builtin_tasks, load_task, make_task

__version__ = "0.1.0"

__all__ = [
    # models, tasks, prompts
    "load_model",
    "Task",
    "builtin_tasks",
    "load_task",
    "make_task",
    "PERTURBATIONS",
    "PromptSet",
    "build_prompts",
    "shift_demo_labels",
    # behaviour
    "evaluate",
    # interventions
    "ablate",
    "ablate_layers",
    "patch",
    "steer",
    "compose",
    "activation_means",
    "ActivationMeans",
    "random_head_sets",
    # attribution
    "head_outputs",
    "residual_decomposition",
    "direct_logit_attribution",
    "dla_scores",
    "task_subspace_projector",
    "tsla_scores",
    # sweeps
    "head_sweep",
    "layer_sweep",
    "position_sweep",
    "attribution_patching",
    # detectors
    "token_detector_scores",
    "previous_token_scores",
    "duplicate_token_scores",
    "induction_scores",
    "label_attention_scores",
    "LabelAttention",
    "detect_heads",
    "random_repeated_tokens",
    # geometry
    "query_states",
    "separability",
    "alignment",
    "task_vector",
    "inject_task_vector",
    # experiments (ExperimentResult each)
    "find_task_heads",
    "ablation_experiment",
    "perturbation_experiment",
    "correlation_experiment",
    "steering_experiment",
    "reconciliation_experiment",
    "reproduce_trtl",
    "layer_geometry",
    "task_vector_experiment",
    "head_ablation_geometry",
    "reproduce_geometry",
    # result types
    "Head",
    "HeadScores",
    "ExperimentResult",
    "Settings",
    "PromptInfo",
]

#: Names that left the root namespace -> the modules that hold them now.
__getattr__ = _moved_names(
    "icl_heads",
    {
        "iter_batches": "icl_heads.activations",
        "collect": "icl_heads.activations",
        "write_trtl_page": "icl_heads.pages.trtl",
        "write_geometry_page": "icl_heads.pages.geometry",
    },
)
