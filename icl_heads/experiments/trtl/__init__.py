"""The experiments of the TR/TL paper (Yang, Cho, Inoue 2025, arXiv 2509.24164): which heads
recognise a task (TR) and which learn it (TL), and does each claim of the paper hold here?

Every experiment is a function ``f(model, prompts, ...)`` returning an
:class:`~icl_heads.results.ExperimentResult` (tidy table with bootstrap confidence
intervals, a frozen settings dataclass, the head maps it made, extra tables)::

    import icl_heads as ih
    from icl_heads.experiments import trtl

    model = ih.load_model()
    prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=4, n=64, seed=0)
    found = trtl.find_task_heads(model, prompts)          # TR/TL maps, head sets, overlap
    sets = trtl.head_sets(found)                           # {"TR": [...], "TL": [...]}
    trtl.ablation_experiment(model, prompts, sets)         # + 5 random sets each, with CIs
    trtl.perturbation_experiment(model, prompts)           # gold vs perturbed prompts
    trtl.correlation_experiment(model, prompts, tr=found.maps["TR"], tl=found.maps["TL"])
    zero_shot = ih.build_prompts(model, ih.load_task("sentiment"), k=0, n=64, seed=0)
    trtl.steering_experiment(model, prompts, zero_shot, sets)
    trtl.reconciliation_experiment(model, prompts, tr=found.maps["TR"], tl=found.maps["TL"])
    trtl.reproduce_trtl(model, ["sentiment"], "results/trtl")       # all of it, resumable

The results page is written by :func:`icl_heads.pages.trtl.write_trtl_page`.

One module per job: ``passes`` (the shared TSLA pass, query tap, mean head outputs),
``find_heads``, ``ablation``, ``perturbation``, ``correlation``, ``steering`` (with
``query_matched``, its second protocol), ``reconciliation``, ``presets`` (the grid's sizes
and designs), ``reproduce`` (the grid), ``verdicts``; each
experiment's settings dataclass beside it. Shared with the geometry family:
:mod:`icl_heads.experiments.kit` (checks, conditions, rows, verdict rules, grid cells),
:func:`icl_heads.last_token.run_conditions` (the engine driver), :mod:`icl_heads.stats`.

Definitions are in ``docs/methods.md``. Conventions:

- Behaviour metrics (``accuracy``, ``label_space_rate``, ``in_space_accuracy``,
  ``logit_diff``; :data:`icl_heads.metrics.BEHAVIOUR`) are computed per prompt and
  averaged (NaN-aware); ``chance`` is ``1/C``.
- Intervals are seeded percentile bootstraps (``icl_heads.stats``, ``n_boot`` resamples,
  95%): over prompts for metrics and effects, over heads for correlations between maps.
- An *effect* (``kind="effect"``, metric ``delta_<metric>``) is ``metric(condition) -
  metric(baseline)`` on the same prompts: a paired bootstrap over prompts of the difference
  of the two (NaN-aware) means (``stats.paired_difference_ci``). A *contrast*
  (``kind="contrast"``, condition ``"A - B"``) is the same for two conditions.
- Random control sets (``random_<name>``, pooled over ``n_random`` sets; single sets in
  ``tables["random_sets"]``) have the size of the named set, lie in the same layers when
  ``layer_matched`` (the nearest layer when a layer has no free head left), and never
  contain any evaluated head; they are drawn from ``seed`` (``kit.random_controls``).
  Pooled rows give the per-prompt mean over the sets (CI over prompts) and, in
  ``set_sd``/``set_min``/``set_max``, the spread of the set means.
- Runs that share prompts share one clean run: the baseline and every ablated or steered
  condition re-run only what can change (from the earliest intervened layer on, and only
  the last token for query-position work) through the cached-prefix engine of
  :mod:`icl_heads.last_token` (exact). No experiment keeps a full activation cache.
"""

from ...heads import random_head_sets
from ...metrics import BEHAVIOUR
from ..kit import VERDICTS
from .ablation import AblationSettings, ablation_experiment
from .correlation import CorrelationSettings, correlation_experiment
from .find_heads import FindTaskHeadsSettings, find_task_heads, head_sets
from .passes import mean_head_outputs
from .perturbation import PerturbationSettings, perturbation_experiment
from .presets import FIRST, LEGACY, MAIN, Design
from .reconciliation import ReconciliationSettings, reconciliation_experiment
from .reproduce import EXPERIMENTS, FULL, QUICK, Preset, reproduce_trtl
from .steering import GEOMETRY, SteeringSettings, steering_experiment
from .verdicts import CLAIMS, VERDICT_ALPHA, claim_verdict, trtl_verdicts

__all__ = [
    "find_task_heads", "head_sets", "mean_head_outputs", "ablation_experiment",
    "perturbation_experiment", "correlation_experiment", "steering_experiment",
    "reconciliation_experiment", "reproduce_trtl", "trtl_verdicts", "claim_verdict",
    "CLAIMS", "EXPERIMENTS", "VERDICTS", "VERDICT_ALPHA", "BEHAVIOUR",
    "GEOMETRY", "FULL", "QUICK", "FIRST", "Preset", "Design", "MAIN", "LEGACY", "random_head_sets", "FindTaskHeadsSettings",
    "AblationSettings", "PerturbationSettings", "CorrelationSettings", "SteeringSettings",
    "ReconciliationSettings",
]  # fmt: skip
