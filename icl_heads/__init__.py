"""icl-heads: find and explain the attention heads behind in-context learning.

One import line for notebooks::

    import icl_heads as ih
    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=4, n=32, seed=0)
    ih.evaluate(model, prompts)
    tr, tl = ih.tsla_scores(model, prompts)
    ih.induction_scores(model).plot()
"""

from .activations import Batch, Collected, collect, final_logits, iter_batches
from .attribution import (
    direct_logit_attribution,
    dla_scores,
    head_outputs,
    residual_decomposition,
    task_subspace_projector,
    tsla_scores,
)
from .detectors import (
    LabelAttention,
    detect_head_on_tokens,
    detect_heads,
    duplicate_token_scores,
    induction_scores,
    label_attention_scores,
    previous_token_scores,
    random_repeated_tokens,
    token_detector_scores,
)
from .heads import Head, HeadScores, heads_to_mask, mask_to_heads
from .interventions import (
    HeadMeans,
    ablate,
    ablate_layers,
    compose,
    head_means,
    patch,
    steer,
)
from .metrics import METRICS, evaluate, get_metric
from .models import load_model
from .patching import attribution_patching, head_sweep, layer_sweep, position_sweep
from .prompts import PERTURBATIONS, PromptSet, build_prompts, label_token_ids
from .tasks import Task, builtin_tasks, load_task, make_task

__version__ = "0.1.0"

__all__ = [
    "Batch", "Collected", "collect", "final_logits", "iter_batches",
    "dla_scores", "direct_logit_attribution", "head_outputs", "residual_decomposition",
    "task_subspace_projector", "tsla_scores",
    "LabelAttention", "detect_head_on_tokens", "detect_heads", "duplicate_token_scores",
    "induction_scores", "label_attention_scores", "previous_token_scores",
    "random_repeated_tokens", "token_detector_scores",
    "Head", "HeadScores", "heads_to_mask", "mask_to_heads",
    "HeadMeans", "ablate", "ablate_layers", "compose", "head_means", "patch", "steer",
    "METRICS", "evaluate", "get_metric",
    "load_model",
    "attribution_patching", "head_sweep", "layer_sweep", "position_sweep",
    "PERTURBATIONS", "PromptSet", "build_prompts", "label_token_ids",
    "Task", "builtin_tasks", "load_task", "make_task",
]
