"""Hidden-state geometry at the query position (Yang et al. 2025, arXiv 2505.18752, and the
steering geometry of arXiv 2509.24164; definitions in ``docs/methods.md``).

States are the residual stream at the query (last) position after each block, plus the
embedding: ``states[:, i]`` is the stream after ``i`` blocks (``i = 0``: the embeddings,
``i = n_layers``: the final residual stream, before the final norm). The functions that
measure them take plain tensors (``[prompt, layer, d_model]`` or ``[prompt, d_model]``), so
states from anywhere can be measured the same way::

    states = ih.query_states(model, prompts)                # [prompt, n_layers + 1, d_model]
    ih.separability(states, prompts.gold)                   # probe accuracy, Fisher ratio
    ih.alignment(states, prompts.gold, model, prompts.label_token_ids)
    v = ih.task_vector(model, prompts, layer=12)            # mean ICL state, [d_model]
    iv = ih.inject_task_vector(model, v, 12)                # an intervention

Every metric comes with a confidence interval from one **stratified bootstrap over prompts**
(each class resampled with replacement within itself, so class sizes stay fixed; seeded):
the same seed and labels give the same resamples, so curves measured on the same prompts
under different interventions are paired resample by resample. Intervals are percentile
intervals; for the metrics that are not means over prompts (``fisher_ratio``, the two
cosines, ``effective_dim``) the replicates are first shifted by the bootstrap's bias
estimate (their mean minus the estimate): resampling with repeats makes fewer distinct
states than dimensions, which lowers those statistics systematically, and the shift keeps
the interval around the estimate.

Metrics (one value per layer):

* ``probe_accuracy``: held-out accuracy of a logistic-regression probe (standardised
  features, L2, ``C=1``), stratified ``folds``-fold cross-validation (seeded); every prompt
  is held out once, so the accuracy is the mean of per-prompt held-out correctness.
* ``fisher_ratio``: ``tr(S_B) / tr(S_W)`` on the states as given, with
  ``S_B = sum_c n_c (mu_c - mu)(mu_c - mu)^T`` and
  ``S_W = sum_c sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T`` (between- over within-class sum of
  squares; NaN when every state is the same).
* ``mean_diff_cosine``: ``mean_{a<b} cos(mu_a - mu_b, u_a - u_b)`` on the states after the
  final norm's scale (:func:`normalized_states`), ``u_y`` the label unembedding.
* ``logit_lens_accuracy``: ``argmax_y (norm(h) . u_y + b_U[y]) == gold``.
* ``top_singular_cosine``: with ``V`` the top ``C - 1`` right singular vectors of the
  centred normalised states (``C`` classes present), ``mean_{a<b} ||V^T e_ab||`` where
  ``e_ab`` is the unit vector along ``u_a - u_b`` (for two classes:
  ``|cos(v_1, u_a - u_b)|``; a singular vector's sign is arbitrary).
* ``effective_dim``: participation ratio ``(sum lambda)^2 / sum lambda^2`` of the
  eigenvalues of the covariance of the normalised states (1 for states on a line, ``d``
  for isotropic ones).
* ``task_subspace_alignment``, ``label_rotation``: the TR/TL paper's steering geometry
  (:func:`subspace_alignment`, :func:`label_rotation`) on the normalised states, averaged
  over prompts.

Rooms: :mod:`~icl_heads.geometry.states` (query states, task vectors),
:mod:`~icl_heads.geometry.probes` (separability), :mod:`~icl_heads.geometry.label_alignment`,
:mod:`~icl_heads.geometry.curves` (:class:`GeometryCurves`, onsets), and their shared
:mod:`~icl_heads.geometry.inputs` checks and :mod:`~icl_heads.geometry.bootstrap`. Every
public name is importable from ``icl_heads.geometry``.
"""

from __future__ import annotations

from ..interventions import TaskVector, inject_task_vector
from ..moved import moved_names
from .bootstrap import bootstrap_weights, resample_counts, weighted_means
from .curves import ONSET_FRACTION, GeometryCurves, onset_layers
from .inputs import class_codes
from .label_alignment import (
    ALIGNMENT_METRICS,
    SPECTRAL_BOOT,
    AlignmentSettings,
    alignment,
    alignment_curves,
    label_rotation,
    subspace_alignment,
)
from .probes import (
    SEPARABILITY_METRICS,
    SeparabilitySettings,
    separability,
    separability_curves,
)
from .states import (
    check_state_layers,
    normalized_states,
    query_states,
    run_query,
    state_hook_names,
    task_vector,
)

__all__ = [
    "ONSET_FRACTION",
    "SPECTRAL_BOOT",
    "SEPARABILITY_METRICS",
    "ALIGNMENT_METRICS",
    "state_hook_names",
    "check_state_layers",
    "query_states",
    "run_query",
    "normalized_states",
    "subspace_alignment",
    "label_rotation",
    "GeometryCurves",
    "SeparabilitySettings",
    "AlignmentSettings",
    "resample_counts",
    "separability_curves",
    "alignment_curves",
    "separability",
    "alignment",
    "onset_layers",
    "task_vector",
    "inject_task_vector",
    "TaskVector",
    # building blocks the experiments share
    "bootstrap_weights",
    "class_codes",
    "weighted_means",
]

#: ``percentile_interval`` is a statistic: it lives in :mod:`icl_heads.stats`; importable from
#: here for one release, with a DeprecationWarning.
__getattr__ = moved_names(__name__, {"percentile_interval": "icl_heads.stats"})
