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
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .activations import iter_batches
from .attribution import label_unembeddings, subspace_basis
from .checks import check_int
from .interventions import TaskVector, inject_task_vector
from .metrics import METRICS
from .prompts import PromptSet, check_prompt_set
from .settings import Settings
from .stats import LEVEL, N_BOOT

log = logging.getLogger(__name__)

#: A curve's onset: the first layer where it reaches this fraction of its maximum.
ONSET_FRACTION = 0.9
#: Resamples used for ``top_singular_cosine``'s interval (one eigendecomposition each).
SPECTRAL_BOOT = 200
SEPARABILITY_METRICS = ("probe_accuracy", "fisher_ratio")
ALIGNMENT_METRICS = (
    "mean_diff_cosine",
    "logit_lens_accuracy",
    "top_singular_cosine",
    "effective_dim",
    "task_subspace_alignment",
    "label_rotation",
)
#: Behaviour metrics (``icl_heads.metrics``) kept per prompt by :func:`run_query`.
BEHAVIOUR_METRICS = tuple(METRICS)

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
]


# --------------------------------------------------------------------------- query states


def state_hook_names(model: HookedTransformer) -> list[str]:
    """Hook names the query states are read from: ``blocks.0.hook_resid_pre`` (the
    embeddings), ``blocks.{i}.hook_resid_pre`` for states ``1 .. n_layers - 1`` and
    ``blocks.{n_layers - 1}.hook_resid_post`` for the last.

    State ``i`` is the stream after ``i`` blocks; reading it where the next block takes it
    in (rather than at ``blocks.{i-1}.hook_resid_post``, the same tensor) means an
    intervention that writes state ``i`` (:func:`inject_task_vector` hooks
    ``blocks.{i-1}.hook_resid_post``) is seen in the captured state.
    """
    L = model.cfg.n_layers
    return [
        "blocks.0.hook_resid_pre",
        *(f"blocks.{i}.hook_resid_pre" for i in range(1, L)),
        f"blocks.{L - 1}.hook_resid_post",
    ]


def check_state_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """State indices ``0..n_layers`` (``None``: all of them); clear errors otherwise."""
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = [int(layers)]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be an int, a list of ints or None, got {layers!r}.")
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layers must be whole numbers, got {layer!r} in {layers!r}.")
        if not 0 <= layer <= n_layers:
            raise ValueError(
                f"State layer {layer} is out of range: states run from 0 (the "
                f"embeddings) to {n_layers} (after the last block)."
            )
        out.append(int(layer))
    if not out:
        raise ValueError("layers is an empty list; give at least one layer (or None for all).")
    return out


def query_states(
    model: HookedTransformer,
    prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    *,
    interventions: Sequence = (),
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Float[Tensor, "prompt layer d_model"]:
    """Residual-stream states at the query position, after each block plus the embedding.

    Streams through the one batching routine, capturing only the selected hook points at
    the query position: memory is the states kept, never a full cache.

    Args:
        layers: state indices to keep (``0`` = embeddings, ``l + 1`` = after block ``l``);
            default all ``n_layers + 1``.
        interventions: run with these interventions (ablations, task vectors, steering).

    Example::

        states = ih.query_states(model, prompts)      # [prompt, n_layers + 1, d_model]

    Returns:
        ``[prompt, len(layers), d_model]`` float tensor on the CPU.
    """
    states, _ = run_query(
        model,
        prompts,
        layers,
        interventions=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return states


def run_query(
    model: HookedTransformer,
    prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    *,
    behaviour: bool = False,
    interventions: Sequence = (),
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "query states",
) -> tuple[Float[Tensor, "prompt layer d_model"], dict[str, np.ndarray] | None]:
    """:func:`query_states`, and with ``behaviour=True`` also the per-prompt behaviour
    metrics of the same pass (``accuracy``, ``label_space_rate``, ``in_space_accuracy``,
    ``logit_diff``: ``[prompt]`` arrays; each batch's logits are reduced at once, so only
    the states are kept)."""
    check_prompt_set(prompts, model=model)
    chosen = check_state_layers(layers, model.cfg.n_layers)
    all_names = state_hook_names(model)
    names = [all_names[i] for i in chosen]
    rows: list[Tensor] = []
    kept: dict[str, list[Tensor]] = {name: [] for name in BEHAVIOUR_METRICS}
    for batch in iter_batches(
        model,
        prompts,
        names,
        positions="query",
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=behaviour,
        progress=progress,
        desc=desc,
    ):
        rows.append(torch.stack([batch.activations[n] for n in names], dim=1).float().cpu())
        if behaviour:
            for name in BEHAVIOUR_METRICS:
                kept[name].append(
                    METRICS[name](batch.logits, batch.prompts.gold, batch.prompts.label_token_ids)
                    .float()
                    .cpu()
                )
    states = torch.cat(rows)
    if not behaviour:
        return states, None
    return states, {name: torch.cat(v).numpy().astype(float) for name, v in kept.items()}


def normalized_states(
    model: HookedTransformer, states: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """States after the final norm (its scale; with ``fold_ln`` the weight is inside
    ``W_U``), so that ``normalized @ W_U`` are the logit-lens logits (before ``b_U``)."""
    if model.cfg.normalization_type is None:
        return states
    with torch.no_grad():
        x = states.to(model.W_U.device, model.W_U.dtype)
        return model.ln_final(x.unsqueeze(-2)).squeeze(-2).to(states.device)


def subspace_alignment(
    states: Float[Tensor, "*batch d_model"], label_dirs: Float[Tensor, "d_model label"]
) -> Float[Tensor, "*batch"]:
    """Alignment with the task subspace ``||P h|| / ||h||`` (``P`` projects onto
    ``span(label_dirs)``): 1 when a state lies in the label space, 0 when orthogonal."""
    basis = subspace_basis(label_dirs.to(states.device, torch.float32)).to(states.dtype)
    proj = (states @ basis).norm(dim=-1)
    return proj / states.norm(dim=-1).clamp_min(torch.finfo(states.dtype).tiny)


def label_rotation(
    states: Float[Tensor, "batch ... d_model"],
    label_dirs: Float[Tensor, "d_model label"],
    gold: Int[Tensor, " batch"],
) -> Float[Tensor, "batch ..."]:
    """Rotation toward the gold label inside the task subspace:
    ``cos(P h, u_{y*}) - mean_{y' != y*} cos(P h, u_{y'})``."""
    dirs = label_dirs.to(states.device, states.dtype)
    basis = subspace_basis(dirs.float()).to(states.dtype)
    projected = (states @ basis) @ basis.T  # P h
    unit = dirs / dirs.norm(dim=0, keepdim=True).clamp_min(torch.finfo(dirs.dtype).tiny)
    cos = (projected @ unit) / projected.norm(dim=-1, keepdim=True).clamp_min(
        torch.finfo(states.dtype).tiny
    )  # [batch, *rest, label]
    n_labels = dirs.shape[1]
    onehot = torch.nn.functional.one_hot(gold.long().to(states.device), n_labels).to(cos.dtype)
    onehot = onehot.reshape(onehot.shape[0], *([1] * (cos.ndim - 2)), n_labels)
    gold_cos = (cos * onehot).sum(-1)
    others = (cos * (1 - onehot)).sum(-1) / (n_labels - 1)
    return gold_cos - others


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SeparabilitySettings(Settings):
    """How :func:`separability` was computed."""

    folds: int
    seed: int
    n_boot: int
    C: float
    level: float = LEVEL
    probe: str = "StandardScaler + LogisticRegression(lbfgs, L2), stratified k-fold"
    fisher: str = "tr(S_B) / tr(S_W) on the states as given"


@dataclass(frozen=True)
class AlignmentSettings(Settings):
    """How :func:`alignment` was computed."""

    model: str | None
    label_token_ids: tuple[int, ...]
    seed: int
    n_boot: int
    spectral_boot: int
    level: float = LEVEL
    states: str = "after the final norm's scale (normalized_states)"
    effective_dim: str = "participation ratio (sum l)^2 / sum l^2 of the covariance"


@dataclass
class GeometryCurves:
    """Per-layer geometry of one set of states: point values, bootstrap replicates (the
    same stratified resamples for every metric), and per-prompt values where a metric has
    them. Plumbing of the experiments; the public functions return :meth:`frame`.

    Attributes:
        layers: the state index of each column.
        n: number of prompts.
        values: metric -> ``[layer]``.
        replicates: metric -> ``[resample, layer]``.
        per_prompt: metric -> ``[prompt, layer]`` (probe correctness, logit-lens
            correctness, subspace alignment, label rotation).
        chance: ``1 / classes`` (for accuracies).
    """

    layers: tuple[int, ...]
    n: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict)
    chance: float = float("nan")

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    def merge(self, other: GeometryCurves) -> GeometryCurves:
        """Both curves' metrics (same layers and prompts)."""
        if tuple(other.layers) != tuple(self.layers) or other.n != self.n:
            raise ValueError("Curves of different layers or prompt counts cannot be merged.")
        return GeometryCurves(
            self.layers,
            self.n,
            {**self.values, **other.values},
            {**self.replicates, **other.replicates},
            {**self.per_prompt, **other.per_prompt},
            self.chance,
        )

    def interval(self, metric: str, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of ``metric`` per layer from the replicates."""
        return percentile_interval(self.replicates[metric], level)

    def frame(self, level: float = LEVEL) -> pd.DataFrame:
        """Tidy rows ``layer, metric, value, ci_low, ci_high, n``."""
        rows = []
        for metric, values in self.values.items():
            low, high = self.interval(metric, level)
            for j, layer in enumerate(self.layers):
                rows.append(
                    {
                        "layer": int(layer),
                        "metric": metric,
                        "value": float(values[j]),
                        "ci_low": float(low[j]),
                        "ci_high": float(high[j]),
                        "n": int(self.n),
                    }
                )
        return pd.DataFrame(rows, columns=["layer", "metric", "value", "ci_low", "ci_high", "n"])


def percentile_interval(
    replicates: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware percentile interval over the first axis (NaN where no replicate is
    defined)."""
    reps = np.asarray(replicates, dtype=float)
    alpha = (1 - level) / 2
    out = np.full((2, *reps.shape[1:]), np.nan)
    ok = (~np.isnan(reps)).any(0)
    if ok.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[:, ok] = np.nanquantile(reps[:, ok], [alpha, 1 - alpha], axis=0)
    return out[0], out[1]


# --------------------------------------------------------------------------- input checks


def _as_states(states, what: str = "states") -> Tensor:
    """``[prompt, layer, d]`` float64 CPU tensor from a tensor / array of 2 or 3 dims."""
    if isinstance(states, np.ndarray):
        states = torch.from_numpy(states)
    if not isinstance(states, Tensor):
        raise TypeError(
            f"{what} must be a [prompt, layer, d_model] or [prompt, d_model] tensor "
            f"(e.g. ih.query_states(model, prompts)), got {type(states).__name__}."
        )
    if (
        states.dtype == torch.bool
        or states.is_complex()
        or not (states.dtype.is_floating_point or states.dtype in (torch.int32, torch.int64))
    ):
        raise TypeError(f"{what} must hold real numbers, got a {states.dtype} tensor.")
    if states.ndim == 2:
        states = states[:, None]
    if states.ndim != 3:
        raise ValueError(
            f"{what} must be [prompt, layer, d_model] or [prompt, d_model], got shape "
            f"{tuple(states.shape)}."
        )
    if states.shape[0] == 0 or states.shape[1] == 0 or states.shape[2] == 0:
        raise ValueError(
            f"{what} is empty (shape {tuple(states.shape)}); give at least one "
            "prompt, layer and dimension."
        )
    states = states.detach().to("cpu", torch.float64)
    if not torch.isfinite(states).all():
        raise ValueError(f"{what} contain NaN or inf values.")
    return states


def _as_labels(labels, n: int) -> np.ndarray:
    """Labels as a 1-D array with one entry per prompt."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError):
        raise TypeError(
            f"labels must be one class label per prompt (e.g. prompts.gold), got "
            f"{type(labels).__name__}."
        ) from None
    if arr.ndim != 1:
        raise ValueError(
            f"labels must be 1-D (one label per prompt, e.g. prompts.gold), got shape {arr.shape}."
        )
    if len(arr) != n:
        raise ValueError(
            f"states and labels have different lengths ({n} states vs {len(arr)} "
            "labels); pass one label per prompt, in the order of the states (e.g. "
            "query_states(model, prompts) with prompts.gold)."
        )
    return arr


def class_codes(labels: np.ndarray, folds: int | None, what: str) -> tuple[np.ndarray, int]:
    """Class codes ``0..C-1`` and ``C``; errors for one class or too few per class."""
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{what} needs at least two classes among the prompts, got only "
            f"{classes.tolist()} over {len(labels)} prompts; build prompts that cover "
            "several labels (build_prompts balances the labels: use n >= the "
            "number of labels)."
        )
    counts = np.bincount(codes)
    if folds is not None and counts.min() < folds:
        worst = classes[int(counts.argmin())]
        raise ValueError(
            f"{what}: class {worst!r} has {int(counts.min())} prompts, fewer than "
            f"folds={folds}; use folds <= {int(counts.min())} or more prompts "
            f"(n >= folds x classes = {folds * len(classes)})."
        )
    if counts.min() < 2:
        worst = classes[int(counts.argmin())]
        raise ValueError(
            f"{what}: class {worst!r} has a single prompt; every class needs at "
            "least two (use more prompts)."
        )
    return codes.astype(np.int64), len(classes)


def _layer_labels(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(n_layers))
    labels = tuple(int(x) for x in layers)
    if len(labels) != n_layers:
        raise ValueError(
            f"layers names {len(labels)} layers but the states have {n_layers}; "
            "give one label per state layer."
        )
    return labels


# --------------------------------------------------------------------------- bootstrap


def resample_counts(codes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Stratified bootstrap: ``[n_boot, prompt]`` counts, each class resampled with
    replacement within itself (class sizes fixed). Same codes and seed, same resamples."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    counts = np.zeros((n_boot, n), dtype=np.float64)
    rows = np.arange(n_boot)[:, None]
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        picks = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, picks.shape), picks), 1.0)
    return counts


def bootstrap_weights(codes: np.ndarray, n_boot: int, seed: int) -> Tensor:
    """``[1 + n_boot, prompt]``: row 0 all ones (the point estimate), then the resamples."""
    counts = resample_counts(codes, n_boot, seed)
    return torch.from_numpy(np.vstack([np.ones((1, len(codes))), counts]))


def weighted_means(per_prompt: np.ndarray, weights: Tensor) -> np.ndarray:
    """NaN-aware weighted means of ``[prompt, layer]`` values for each weight row."""
    x = torch.from_numpy(np.asarray(per_prompt, dtype=np.float64))
    ok = ~torch.isnan(x)
    total = weights @ torch.where(ok, x, torch.zeros_like(x))
    count = weights @ ok.double()
    return torch.where(
        count > 0, total / count.clamp_min(1e-300), torch.full_like(total, float("nan"))
    ).numpy()


def _split(rows: np.ndarray, centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate (row 0) and replicates (the rest). ``centre=True`` shifts the
    replicates by the bootstrap's bias estimate (their mean minus the estimate), per layer."""
    point, reps = rows[0], rows[1:]
    if centre:
        finite = np.where(np.isfinite(reps), reps, np.nan)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            bias = np.nanmean(finite, axis=0) - point
            reps = reps - np.where(np.isfinite(bias), bias, 0.0)
    return point, reps


def _class_quadratics(G: Tensor, M: Tensor) -> Tensor:
    """``P[r] = M[r] G M[r]^T`` for weighted class indicators ``M`` [R, C, n]."""
    return (M @ G) @ M.transpose(1, 2)


# --------------------------------------------------------------------------- separability


def separability_curves(
    states,
    labels,
    *,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> GeometryCurves:
    """:func:`separability` as :class:`GeometryCurves` (values, replicates, per-prompt)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = _as_states(states)
    n, L, _ = X.shape
    arr = _as_labels(labels, n)
    folds = check_int(folds, "folds", 2)
    seed = check_int(seed, "seed", -(2**62))
    n_boot = check_int(n_boot, "n_boot", 1)
    if isinstance(C, bool) or not isinstance(C, numbers.Real) or not C > 0:
        raise ValueError(
            f"C (the probe's inverse regularisation) must be a positive number, got {C!r}."
        )
    codes, n_classes = class_codes(arr, folds, "separability")
    layer_labels = _layer_labels(layers, L)
    weights = bootstrap_weights(codes, n_boot, seed)

    splits = list(
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32).split(
            np.zeros(n), codes
        )
    )
    correct = np.zeros((n, L))
    not_converged = 0
    for j in tqdm(range(L), desc="probes", disable=not progress, leave=False, unit="layer"):
        features = X[:, j].numpy()
        for train, test in splits:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=1000))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                probe.fit(features[train], codes[train])
            not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            correct[test, j] = probe.predict(features[test]) == codes[test]
    if not_converged:
        log.warning(
            "separability: %d of %d probe fits did not converge in 1000 iterations.",
            not_converged,
            L * folds,
        )

    Y = torch.nn.functional.one_hot(torch.from_numpy(codes), n_classes).double()  # [n, C]
    M = weights[:, None, :] * Y.T[None]  # [R, C, n]
    N = M.sum(-1)
    fisher = np.empty((weights.shape[0], L))
    for j in range(L):
        Xc = X[:, j] - X[:, j].mean(0)
        G = Xc @ Xc.T
        A = M @ G.diagonal()  # [R, C]: sum_{i in c} w_i |x_i|^2
        P = _class_quadratics(G, M)
        within = (A - P.diagonal(dim1=1, dim2=2) / N).sum(-1)
        total = A.sum(-1) - P.sum((1, 2)) / N.sum(-1)
        between = total - within
        scale = A.sum(-1).clamp_min(1e-300)
        ratio = torch.where(
            within > 1e-12 * scale,
            between / within.clamp_min(1e-300),
            torch.full_like(within, float("inf")),
        )
        fisher[:, j] = torch.where(
            total > 1e-12 * scale, ratio, torch.full_like(ratio, float("nan"))
        ).numpy()

    accuracy = weighted_means(correct, weights)
    curves = GeometryCurves(layer_labels, n, chance=1.0 / n_classes)
    curves.values["probe_accuracy"], curves.replicates["probe_accuracy"] = _split(accuracy)
    curves.values["fisher_ratio"], curves.replicates["fisher_ratio"] = _split(fisher, True)
    curves.per_prompt["probe_accuracy"] = correct
    return curves


def separability(
    states: Float[Tensor, "prompt layer d_model"] | Float[Tensor, "prompt d_model"],
    labels: Int[Tensor, " prompt"] | Sequence,
    folds: int = 5,
    seed: int = 0,
    *,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """How well the classes can be told apart in each layer's states.

    * ``probe_accuracy``: held-out accuracy of a logistic-regression probe (scikit-learn;
      features standardised on each training fold, L2 penalty ``C``), stratified
      ``folds``-fold cross-validation shuffled with ``seed``. Every prompt is held out once;
      the interval is a stratified bootstrap of the per-prompt held-out correctness.
    * ``fisher_ratio``: ``tr(S_B) / tr(S_W)``, between-class over within-class sum of
      squares of the states as given (see the module docstring), with a stratified
      bootstrap interval.

    Args:
        states: ``[prompt, layer, d_model]`` or ``[prompt, d_model]`` (any source).
        labels: one class per prompt (ints or strings), e.g. ``prompts.gold``.
        folds: cross-validation folds; every class needs at least ``folds`` prompts.
        seed: seeds the folds and the bootstrap.
        n_boot: bootstrap resamples.
        C: inverse L2 strength of the probe.
        layers: the state index of each layer of ``states`` (default ``0, 1, ...``).

    Example::

        states = ih.query_states(model, prompts)
        ih.separability(states, prompts.gold)        # layer, metric, value, ci_low, ci_high, n

    Returns:
        Tidy DataFrame, one row per layer x metric; ``.attrs["settings"]``
        (:class:`SeparabilitySettings`) and ``.attrs["chance"]`` (``1 / classes``).
    """
    curves = separability_curves(
        states, labels, folds=folds, seed=seed, n_boot=n_boot, C=C, layers=layers, progress=progress
    )
    frame = curves.frame()
    frame.attrs["settings"] = SeparabilitySettings(
        folds=int(folds), seed=int(seed), n_boot=int(n_boot), C=float(C)
    )
    frame.attrs["chance"] = curves.chance
    return frame


# --------------------------------------------------------------------------- alignment


def _label_ids(model: HookedTransformer, label_token_ids) -> Tensor:
    if isinstance(label_token_ids, Tensor):
        ids = label_token_ids.detach().cpu().long().flatten()
    else:
        try:
            ids = torch.as_tensor(list(label_token_ids), dtype=torch.long)
        except (TypeError, ValueError):
            raise TypeError(
                f"label_token_ids must be a list of token ids (e.g. "
                f"prompts.label_token_ids), got {label_token_ids!r}."
            ) from None
    if ids.numel() < 2:
        raise ValueError(f"alignment needs at least two label tokens, got {ids.tolist()}.")
    return ids


def alignment_curves(
    states,
    labels,
    model: HookedTransformer,
    label_token_ids,
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    layers: Sequence[int] | None = None,
) -> GeometryCurves:
    """:func:`alignment` as :class:`GeometryCurves` (values, replicates, per-prompt)."""
    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"alignment needs the model (a HookedTransformer) for its unembedding "
            f"and final norm, got {type(model).__name__}."
        )
    X = _as_states(states)
    n, L, d = X.shape
    if d != model.cfg.d_model:
        raise ValueError(
            f"states have d_model={d} but the model has d_model="
            f"{model.cfg.d_model}; measure states of this model."
        )
    arr = _as_labels(labels, n)
    seed = check_int(seed, "seed", -(2**62))
    n_boot = check_int(n_boot, "n_boot", 1)
    ids = _label_ids(model, label_token_ids)
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= len(ids):
        raise ValueError(
            f"alignment labels must be label indices 0..{len(ids) - 1} into "
            f"label_token_ids (e.g. prompts.gold), got values "
            f"{np.unique(arr)[:8].tolist()}."
        )
    gold = arr.astype(np.int64)
    codes, n_classes = class_codes(gold, None, "alignment")
    present = np.unique(gold)  # label index of each class code
    layer_labels = _layer_labels(layers, L)
    weights = bootstrap_weights(codes, n_boot, seed)
    R = weights.shape[0]

    U = label_unembeddings(model, ids).detach().double().cpu()  # [d, labels]
    b_U = getattr(model, "b_U", None)
    bias = (
        b_U.detach().double().cpu()[ids]
        if b_U is not None
        else torch.zeros(len(ids), dtype=torch.float64)
    )
    Z = normalized_states(model, X.float()).double()  # [n, L, d]

    # per-prompt metrics (the steering geometry of the TR/TL paper, by the same functions)
    gold_t = torch.from_numpy(gold)
    lens = ((Z @ U + bias).argmax(-1) == gold_t[:, None]).double().numpy()
    sub = subspace_alignment(Z, U).numpy()
    rot = label_rotation(Z, U, gold_t).numpy()

    pairs = list(combinations(range(n_classes), 2))
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    diff = U[:, present[a.numpy()]] - U[:, present[b.numpy()]]  # [d, pairs]
    unit = diff / diff.norm(dim=0, keepdim=True).clamp_min(1e-300)
    Y = torch.nn.functional.one_hot(torch.from_numpy(codes), n_classes).double()
    M = weights[:, None, :] * Y.T[None]  # [R, C, n]
    N = M.sum(-1)
    pidx = torch.arange(len(pairs))
    rank = n_classes - 1
    n_spec = 1 + min(SPECTRAL_BOOT, R - 1)

    cosine = np.empty((R, L))
    spectral = np.full((R, L), np.nan)
    eff_dim = np.empty((R, L))
    for j in range(L):
        Zc = Z[:, j] - Z[:, j].mean(0)
        G = Zc @ Zc.T
        P = _class_quadratics(G, M)
        proj = Zc @ unit  # [n, pairs]
        S = M @ proj  # [R, C, pairs]
        num = S[:, a, pidx] / N[:, a] - S[:, b, pidx] / N[:, b]
        sq = (
            P[:, a, a] / N[:, a] ** 2
            + P[:, b, b] / N[:, b] ** 2
            - 2 * P[:, a, b] / (N[:, a] * N[:, b])
        )
        scale = G.diagonal().sum().clamp_min(1e-300) / n
        cos = torch.where(
            sq > 1e-12 * scale,
            num / sq.clamp_min(1e-300).sqrt(),
            torch.full_like(num, float("nan")),
        )
        cosine[:, j] = torch.nanmean(cos, dim=-1).numpy()
        eff_dim[:, j] = _participation_ratio(G, weights).numpy()
        spectral[:n_spec, j] = _top_singular_cosine(G, proj, weights[:n_spec], rank).numpy()

    curves = GeometryCurves(layer_labels, n, chance=1.0 / n_classes)
    rows = {
        "mean_diff_cosine": cosine,
        "logit_lens_accuracy": weighted_means(lens, weights),
        "top_singular_cosine": spectral[:n_spec],
        "effective_dim": eff_dim,
        "task_subspace_alignment": weighted_means(sub, weights),
        "label_rotation": weighted_means(rot, weights),
    }
    for name in ALIGNMENT_METRICS:
        centre = name in ("mean_diff_cosine", "top_singular_cosine", "effective_dim")
        curves.values[name], curves.replicates[name] = _split(rows[name], centre)
    curves.per_prompt.update(
        logit_lens_accuracy=lens, task_subspace_alignment=sub, label_rotation=rot
    )
    return curves


def _centred_gram_terms(G: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For weights ``w`` [R, n]: ``a`` [R, n] with the weighted centred Gram
    ``Gc_ij = G_ij - a_i - a_j``, plus ``Gw`` [R, n] and ``W`` [R]."""
    W = w.sum(-1)
    Gw = w @ G
    s = (Gw * w).sum(-1) / W**2
    a = Gw / W[:, None] - s[:, None] / 2
    return a, Gw, W


def _participation_ratio(G: Tensor, w: Tensor) -> Tensor:
    """``tr(C)^2 / tr(C^2)`` of the weighted covariance, from the (uncentred) Gram ``G``.

    With ``Gc_ij = G_ij - a_i - a_j`` the weighted centred Gram:
    ``tr C = sum_i w_i Gc_ii / W`` and
    ``tr C^2 = sum_ij w_i w_j Gc_ij^2 / W^2 = [w^T (G o G) w - 4 sum_i w_i a_i (G w)_i
    + 2 W sum_i w_i a_i^2 + 2 (sum_i w_i a_i)^2] / W^2``, so no ``[R, n, n]`` tensor is formed.
    """
    a, Gw, W = _centred_gram_terms(G, w)
    trace = (w * (G.diagonal()[None] - 2 * a)).sum(-1) / W
    wa = (w * a).sum(-1)
    squares = (
        ((w @ (G * G)) * w).sum(-1)
        - 4 * (w * a * Gw).sum(-1)
        + 2 * W * (w * a * a).sum(-1)
        + 2 * wa**2
    ) / W**2
    tiny = 1e-12 * trace.abs().clamp_min(1e-300) ** 2
    return torch.where(
        squares > tiny, trace**2 / squares.clamp_min(1e-300), torch.full_like(trace, float("nan"))
    )


def _top_singular_cosine(G: Tensor, proj: Tensor, w: Tensor, rank: int) -> Tensor:
    """``mean_pairs ||V^T e_ab||`` with ``V`` the top ``rank`` principal directions of the
    weighted states, from the centred Gram (``proj = Z_c e`` [n, pairs])."""
    a, _, W = _centred_gram_terms(G, w)
    Gc = G[None] - a[:, :, None] - a[:, None, :]
    root = w.sqrt()
    K = root[:, :, None] * Gc * root[:, None, :]
    evals, evecs = _eigh(K)
    lam = evals[:, -rank:]  # [R, rank], ascending
    top = evecs[:, :, -rank:]  # [R, n, rank]
    mean = (w @ proj) / W[:, None]  # [R, pairs]
    centred = root[:, :, None] * (proj[None] - mean[:, None, :])  # [R, n, pairs]
    coords = top.transpose(1, 2) @ centred  # [R, rank, pairs]
    keep = lam > 1e-9 * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    coords = torch.where(
        keep[..., None], coords / lam.clamp_min(1e-300).sqrt()[..., None], torch.zeros_like(coords)
    )
    frac = coords.pow(2).sum(1).sqrt().clamp_max(1.0)  # [R, pairs]
    return torch.where(keep.any(-1), frac.mean(-1), torch.full_like(W, float("nan")))


def _eigh(K: Tensor) -> tuple[Tensor, Tensor]:
    """Batched symmetric eigendecomposition (float64); a matrix LAPACK fails on gets NaN."""
    try:
        return torch.linalg.eigh(K)
    except torch.linalg.LinAlgError:
        evals = torch.full(K.shape[:2], float("nan"), dtype=K.dtype)
        evecs = torch.full(K.shape, float("nan"), dtype=K.dtype)
        for r in range(K.shape[0]):
            try:
                evals[r], evecs[r] = torch.linalg.eigh(K[r])
            except torch.linalg.LinAlgError:
                log.warning("alignment: an eigendecomposition failed; its resample is NaN.")
        return evals, evecs


def alignment(
    states: Float[Tensor, "prompt layer d_model"] | Float[Tensor, "prompt d_model"],
    labels: Int[Tensor, " prompt"] | Sequence[int],
    model: HookedTransformer,
    label_token_ids: Int[Tensor, " label"] | Sequence[int],
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """How well the class structure of each layer's states points along the label
    unembeddings ``u_y = W_U[:, token(y)]``, on the states after the final norm's scale.

    Metrics (definitions in the module docstring): ``mean_diff_cosine`` (cosine of class-mean
    differences with label-unembedding differences, mean over label pairs),
    ``logit_lens_accuracy``, ``top_singular_cosine`` (top ``C - 1`` singular directions of
    the centred states vs the label differences), ``effective_dim`` (participation ratio),
    and the steering geometry ``task_subspace_alignment`` and ``label_rotation``.
    Intervals: stratified bootstrap over prompts (``top_singular_cosine``: the first
    :data:`SPECTRAL_BOOT` resamples, one eigendecomposition each).

    Args:
        states: ``[prompt, layer, d_model]`` or ``[prompt, d_model]`` residual states of
            ``model`` (before the final norm; normalised here).
        labels: gold label index per prompt into ``label_token_ids`` (``prompts.gold``).
        label_token_ids: the label tokens (``prompts.label_token_ids``).
        layers: the state index of each layer of ``states`` (default ``0, 1, ...``).

    Example::

        states = ih.query_states(model, prompts)
        ih.alignment(states, prompts.gold, model, prompts.label_token_ids)

    Returns:
        Tidy DataFrame, one row per layer x metric; ``.attrs["settings"]``
        (:class:`AlignmentSettings`) and ``.attrs["chance"]``.
    """
    curves = alignment_curves(
        states, labels, model, label_token_ids, seed=seed, n_boot=n_boot, layers=layers
    )
    frame = curves.frame()
    frame.attrs["settings"] = AlignmentSettings(
        model=getattr(model.cfg, "model_name", None),
        label_token_ids=tuple(int(i) for i in _label_ids(model, label_token_ids)),
        seed=int(seed),
        n_boot=int(n_boot),
        spectral_boot=min(SPECTRAL_BOOT, int(n_boot)),
    )
    frame.attrs["chance"] = curves.chance
    return frame


# --------------------------------------------------------------------------- onsets


def onset_layers(
    curves: np.ndarray, layers: Sequence[int], fraction: float = ONSET_FRACTION
) -> np.ndarray:
    """The first layer where each curve reaches ``fraction`` of its maximum.

    Args:
        curves: ``[..., layer]`` values (NaN ignored).
        layers: the layer label of each column.

    Returns:
        ``[...]`` layer labels (float; NaN where a curve has no positive maximum).
    """
    values = np.asarray(curves, dtype=float)
    labels = np.asarray(layers, dtype=float)
    filled = np.where(np.isnan(values), -np.inf, values)
    peak = filled.max(-1, keepdims=True)
    reached = filled >= fraction * peak
    first = reached.argmax(-1)
    out = labels[first]
    return np.where((peak[..., 0] > 0) & np.isfinite(peak[..., 0]), out, np.nan)


# --------------------------------------------------------------------------- task vectors


def task_vector(
    model: HookedTransformer,
    prompts: PromptSet,
    layer: int | Sequence[int],
    *,
    interventions: Sequence = (),
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Float[Tensor, "*layer d_model"]:
    """Task vector: the mean query state over ICL prompts, ``mean_i h_layer(prompt_i)``.

    ``layer`` is a state index as in :func:`query_states` (``0`` = embeddings, ``l + 1`` =
    after block ``l``); inject the vector at the same index with
    :func:`inject_task_vector`.

    Example::

        v = ih.task_vector(model, icl_prompts, layer=12)
        ih.evaluate(model, zero_shot, interventions=[ih.inject_task_vector(model, v, 12)])

    Returns:
        ``[d_model]`` for one layer, ``[len(layer), d_model]`` for a list (float32, CPU).
    """
    single = isinstance(layer, numbers.Integral) and not isinstance(layer, bool)
    states = query_states(
        model,
        prompts,
        layer,
        interventions=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    vectors = states.double().mean(0).float()
    return vectors[0] if single else vectors
