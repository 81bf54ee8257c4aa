"""icl-heads: find and explain the attention heads behind in-context learning.

One import line for notebooks::

    import icl_heads as ih
    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=4, n=32, seed=0)
    ih.evaluate(model, prompts)
"""

from .activations import Batch, Collected, collect, final_logits, iter_batches
from .heads import Head, HeadScores, heads_to_mask, mask_to_heads
from .metrics import METRICS, evaluate, get_metric
from .models import load_model
from .prompts import PERTURBATIONS, PromptSet, build_prompts, label_token_ids
from .tasks import Task, builtin_tasks, load_task, make_task

__version__ = "0.1.0"

__all__ = [
    "Batch", "Collected", "collect", "final_logits", "iter_batches",
    "Head", "HeadScores", "heads_to_mask", "mask_to_heads",
    "METRICS", "evaluate", "get_metric",
    "load_model",
    "PERTURBATIONS", "PromptSet", "build_prompts", "label_token_ids",
    "Task", "builtin_tasks", "load_task", "make_task",
]
