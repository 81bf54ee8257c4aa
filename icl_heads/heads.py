"""Heads and per-head score maps: :class:`Head` and :class:`HeadScores`.

``HeadScores`` is the one result type for every ``[layer, head]`` map the toolkit makes
(TR/TL scores, detector scores, ablation and patching effects).
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .checks import check_int
from .outputs import atomic_file, check_output_file, write_file
from .settings import Settings
from .stats import ranked_order

#: Written into every saved ``HeadScores`` file; ``load`` refuses files without it.
FILE_FORMAT = "icl-heads.HeadScores/1"


class Head(NamedTuple):
    """One attention head, ``Head(layer, head)``; prints as ``L3H5``."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


HeadsLike = Union[Iterable[Head], Iterable[tuple[int, int]], Tensor, "HeadScores"]


def default_top_k(n_layers: int, n_heads: int, fraction: float = 0.03) -> int:
    """The papers' default head-set size: 3% of all heads, at least 1."""
    return max(1, round(fraction * n_layers * n_heads))


def check_top_k(
    top_k: int | None, n_layers: int, n_heads: int, *, allow_zero: bool = False, what: str = "top_k"
) -> int:
    """``top_k`` as an int (``None``: the default 3% of heads); clear errors otherwise."""
    if top_k is None:
        return default_top_k(n_layers, n_heads)
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(
            f"{what} must be a whole number of heads (or None for 3% of heads), got {top_k!r}."
        )
    top_k = int(top_k)
    if top_k < (0 if allow_zero else 1):
        raise ValueError(f"{what} must be >= {0 if allow_zero else 1}, got {top_k}.")
    return top_k


@dataclass
class HeadScores:
    """A ``[layer, head]`` score map with how it was made.

    Attributes:
        scores: ``[n_layers, n_heads]`` float tensor (NaN = not scored / not ranked).
        name: what the score is, e.g. ``"tr_score"`` or ``"induction_score"``.
        settings: how it was made (a frozen :class:`~icl_heads.settings.Settings`), or None.
        per_prompt: optional ``[prompt, n_layers, n_heads]`` raw scores (every analysis of
            the toolkit fills it; the map is their mean over prompts).
        top_k: the default ``k`` of :meth:`top` (``None``: 3% of heads, at least 1); a
            scorer given ``top_k=`` passes it on.
        baseline: the value the map is read against, where there is one: the un-intervened
            metric for effect maps (sweeps), chance level for shares.

    Example::

        tr, tl = ih.tsla_scores(model, prompts, top_k=8)
        tr.top()            # the 8 best heads, best first
        tr.to_frame()       # tidy: layer, head, label, tr_score, rank
        tr.save("tr.json"); ih.HeadScores.load("tr.json")
    """

    scores: Float[Tensor, "layer head"]
    name: str = "score"
    settings: Settings | None = None
    per_prompt: Float[Tensor, "prompt layer head"] | None = None
    top_k: int | None = None
    baseline: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scores, Tensor):
            try:
                self.scores = torch.as_tensor(self.scores, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"HeadScores needs a [n_layers, n_heads] tensor of numbers, got "
                    f"{type(self.scores).__name__}."
                ) from None
        if self.scores.ndim != 2:
            raise ValueError(
                f"HeadScores needs a [n_layers, n_heads] tensor, got shape "
                f"{tuple(self.scores.shape)}."
            )
        if self.settings is not None and not isinstance(self.settings, Settings):
            raise TypeError(
                f"HeadScores.settings must be a Settings dataclass (or None), got "
                f"{type(self.settings).__name__}."
            )
        if self.top_k is not None:
            self.top_k = check_top_k(self.top_k, *self.scores.shape)
        if self.baseline is not None:
            self.baseline = float(self.baseline)
        self.scores = self.scores.detach().float().cpu()
        if self.per_prompt is not None:
            self.per_prompt = torch.as_tensor(self.per_prompt).detach().float().cpu()
            if self.per_prompt.ndim != 3 or self.per_prompt.shape[1:] != self.scores.shape:
                raise ValueError(
                    f"per_prompt must have shape [prompt, {self.n_layers}, "
                    f"{self.n_heads}] to match the scores, got "
                    f"{tuple(self.per_prompt.shape)}."
                )

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def __getitem__(self, head: Head | tuple[int, int]) -> float:
        return float(self.scores[head[0], head[1]])

    def top(
        self, k: int | None = None, *, largest: bool = True, by_abs: bool = False
    ) -> list[Head]:
        """The ``k`` best heads, best first (:func:`ranked_order`: NaN never ranked, ``+inf``
        above every number, ``-inf`` below, ties in row-major order).

        Args:
            k: how many; default ``self.top_k``, else 3% of all heads (at least 1).
            largest: rank high scores first (``False``: lowest first).
            by_abs: rank by absolute value.

        Returns:
            ``min(k, rankable heads)`` heads. With fewer rankable (non-NaN) heads than ``k``
            the rankable ones, with a ``UserWarning`` that names the map; an all-NaN map
            gives ``[]`` (with the warning). Where a map becomes a head set to intervene
            on, an empty result is an error instead (:func:`map_head_set`, :meth:`mask`).
        """
        k = check_top_k(
            self.top_k if k is None else k,
            self.n_layers,
            self.n_heads,
            allow_zero=True,
            what="top(k): k",
        )
        values = self.scores.abs() if by_abs else self.scores
        order = ranked_order(values, largest=largest)
        if k > len(order):
            warnings.warn(
                f"HeadScores {self.name!r}: top({k}) asked for {k} heads but only "
                f"{len(order)} are rankable ({self.scores.numel() - len(order)} NaN); "
                f"returning {len(order)}.",
                UserWarning,
                stacklevel=2,
            )
        return [Head(int(i) // self.n_heads, int(i) % self.n_heads) for i in order[:k]]

    def mask(self, k: int | None = None, **kwargs) -> Bool[Tensor, "layer head"]:
        """Boolean ``[n_layers, n_heads]`` mask of ``top(k)``: a head set, so never empty
        (a map with no rankable head, or ``k=0``: ValueError, :func:`map_head_set`)."""
        heads = map_head_set(
            self, self.n_layers, self.n_heads, k, what=f"{self.name}.mask", **kwargs
        )
        return heads_to_mask(heads, self.n_layers, self.n_heads)

    def rank(self) -> Float[Tensor, "layer head"]:
        """Rank of every head in :meth:`top`'s order: ``1`` for the highest score up to the
        number of rankable heads (``+inf`` first, ``-inf`` last, ties in row-major order);
        NaN scores get rank NaN."""
        flat = self.scores.flatten()
        ranks = torch.full_like(flat, math.nan)
        order = torch.as_tensor(ranked_order(flat), dtype=torch.long)
        ranks[order] = torch.arange(1, len(order) + 1, dtype=flat.dtype)
        return ranks.reshape(self.scores.shape)

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame: one row per head with ``layer, head, label, <name>, rank``
        (:meth:`rank`: NaN for unscored heads)."""
        L, H = self.scores.shape
        layers = torch.arange(L).repeat_interleave(H)
        heads = torch.arange(H).repeat(L)
        return pd.DataFrame(
            {
                "layer": layers.numpy(),
                "head": heads.numpy(),
                "label": [
                    f"L{layer}H{head}"
                    for layer, head in zip(layers.tolist(), heads.tolist(), strict=True)
                ],
                self.name: self.scores.flatten().numpy(),
                "rank": self.rank().flatten().numpy(),
            }
        )

    # ----------------------------------------------------------------- persistence
    def _header(self) -> dict:
        return {
            "format": FILE_FORMAT,
            "name": self.name,
            "shape": list(self.scores.shape),
            "settings": self.settings.to_dict() if self.settings is not None else None,
            "top_k": self.top_k,
            "baseline": self.baseline,
        }

    def save(self, path: str | Path) -> Path:
        """Save as ``.json`` (scores, ``per_prompt``, settings) or ``.parquet`` (the tidy
        frame plus a ``per_prompt`` list column; settings in the file's metadata).

        The path is checked first (a ValueError names it where it is a directory, lies
        under a file or cannot be written; missing parent directories are created) and the
        file is written atomically: a temporary sibling renamed over ``path``, so a killed
        process never leaves a partial file."""
        if not isinstance(path, (str, Path)):
            raise TypeError(
                f"HeadScores.save: path must be a str or Path, got {type(path).__name__}."
            )
        path = Path(path)
        if path.suffix not in (".json", ".parquet"):
            raise ValueError(f"HeadScores.save: use a .json or .parquet path, got {path.name!r}.")
        path = check_output_file(path, what="HeadScores.save: path")
        header = self._header()
        if path.suffix == ".json":
            obj = {**header, "scores": _nan_to_none(self.scores.tolist())}
            if self.per_prompt is not None:
                obj["per_prompt"] = [_nan_to_none(p) for p in self.per_prompt.tolist()]
            write_file(path, json.dumps(obj, indent=1))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            frame = self.to_frame()
            if self.per_prompt is not None:  # one list per head (layer-major, as the rows)
                frame["per_prompt"] = list(self.per_prompt.flatten(1).T.numpy())
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), b"icl_heads": json.dumps(header).encode()}
            )
            with atomic_file(path) as temporary:
                pq.write_table(table, temporary)
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        """Load a map written by :meth:`save` (``.json`` or ``.parquet``)."""
        path = Path(path)
        if path.suffix not in (".json", ".parquet"):
            raise ValueError(f"HeadScores.load: use a .json or .parquet path, got {path.name!r}.")
        if not path.is_file():
            raise FileNotFoundError(f"HeadScores.load: no such file {str(path)!r}.")
        try:
            return cls._load_json(path) if path.suffix == ".json" else cls._load_parquet(path)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OSError) as err:
            if isinstance(err, ValueError) and str(err).startswith("HeadScores.load"):
                raise
            raise ValueError(
                f"HeadScores.load: {str(path)!r} is not a readable HeadScores file "
                f"written by icl-heads ({type(err).__name__}: {err})."
            ) from None

    @classmethod
    def _load_json(cls, path: Path) -> HeadScores:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"HeadScores.load: {str(path)!r} is not valid JSON ({err}).") from None
        header = _check_header(obj, path)
        L, H = header["shape"]
        scores = torch.tensor(_none_to_nan(obj["scores"]), dtype=torch.float32).reshape(L, H)
        per_prompt = None
        if obj.get("per_prompt") is not None:
            per_prompt = torch.tensor(
                [_none_to_nan(p) for p in obj["per_prompt"]], dtype=torch.float32
            ).reshape(-1, L, H)
        return cls._from_header(header, scores, per_prompt)

    @classmethod
    def _load_parquet(cls, path: Path) -> HeadScores:
        import pyarrow.lib
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except pyarrow.lib.ArrowException as err:
            raise ValueError(
                f"HeadScores.load: {str(path)!r} is not a Parquet file ({err})."
            ) from None
        raw = (table.schema.metadata or {}).get(b"icl_heads")
        header = _check_header(json.loads(raw) if raw else None, path)
        frame = table.to_pandas()
        L, H = header["shape"]
        scores = torch.full((L, H), math.nan)
        layers = torch.tensor(frame["layer"].to_numpy(copy=True), dtype=torch.long)
        heads = torch.tensor(frame["head"].to_numpy(copy=True), dtype=torch.long)
        scores[layers, heads] = torch.tensor(
            frame[header["name"]].to_numpy(copy=True), dtype=torch.float32
        )
        per_prompt = None
        if "per_prompt" in frame.columns:
            rows = torch.tensor(np.stack(frame["per_prompt"].to_list()), dtype=torch.float32)
            per_prompt = torch.full((rows.shape[1], L, H), math.nan)
            per_prompt[:, layers, heads] = rows.T
        return cls._from_header(header, scores, per_prompt)

    @classmethod
    def _from_header(cls, header: dict, scores: Tensor, per_prompt: Tensor | None) -> HeadScores:
        settings = header.get("settings")
        return cls(
            scores,
            name=header["name"],
            settings=Settings.from_dict(settings) if settings else None,
            per_prompt=per_prompt,
            top_k=header.get("top_k"),
            baseline=header.get("baseline"),
        )

    def plot(self, **kwargs):
        """Interactive Plotly layer x head heatmap (see :func:`icl_heads.viz.head_heatmap`)."""
        from .viz import head_heatmap

        return head_heatmap(self, **kwargs)

    def __repr__(self) -> str:
        best = ranked_order(self.scores)[:3]  # never raises nor warns (an all-NaN map)
        heads = [Head(*divmod(int(i), self.n_heads)) for i in best]
        top = ", ".join(f"{h}={self[h]:.3g}" for h in heads)
        return (
            f"HeadScores(name={self.name!r}, shape={tuple(self.scores.shape)}, top=[{top}], "
            f"settings={self.settings})"
        )


def _check_header(obj, path: Path) -> dict:
    if not isinstance(obj, dict) or obj.get("format") != FILE_FORMAT:
        raise ValueError(
            f"HeadScores.load: {str(path)!r} was not written by HeadScores.save "
            f"(no {FILE_FORMAT!r} header)."
        )
    shape = obj.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(v, int) and v > 0 for v in shape)
    ):
        raise ValueError(f"HeadScores.load: {str(path)!r} has a bad shape entry {shape!r}.")
    return obj


def heads_to_mask(heads: HeadsLike, n_layers: int, n_heads: int) -> Bool[Tensor, "layer head"]:
    """Normalise a head selection to a boolean ``[n_layers, n_heads]`` mask.

    Accepts ``Head``/``(layer, head)`` pairs of integers, a ``HeadScores`` of this shape (its
    default ``top()``), or a boolean mask. Raises ``ValueError`` for out-of-range heads or a
    wrong-shaped mask/map and ``TypeError`` for anything else (e.g. float indices).
    """
    if isinstance(heads, HeadScores):  # its default top(): never an empty set
        heads = map_head_set(heads, n_layers, n_heads, what="Heads")
    if isinstance(heads, Tensor):
        if heads.dtype != torch.bool:
            raise TypeError(f"A head mask must be a boolean tensor, got dtype {heads.dtype}.")
        if tuple(heads.shape) != (n_layers, n_heads):
            raise ValueError(
                f"Head mask has shape {tuple(heads.shape)}; this model needs "
                f"[n_layers, n_heads] = [{n_layers}, {n_heads}]."
            )
        return heads.cpu().clone()
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise TypeError(
            f"Heads must be a list of Head(layer, head) or (layer, head) pairs, a "
            f"HeadScores or a boolean [n_layers, n_heads] mask; got {heads!r}."
        )
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for item in heads:
        layer, head = _head_pair(item)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"Head {Head(layer, head)} is out of range: this model has "
                f"{n_layers} layers x {n_heads} heads (layer 0..{n_layers - 1}, "
                f"head 0..{n_heads - 1})."
            )
        mask[layer, head] = True
    return mask


def map_head_set(
    scores: HeadScores,
    n_layers: int,
    n_heads: int,
    k: int | None = None,
    *,
    what: str,
    **top_kwargs,
) -> list[Head]:
    """``scores.top(k, **top_kwargs)`` as a head set of a ``[n_layers, n_heads]`` model,
    never empty: errors (a map of another shape, no rankable head, ``k=0``) start with
    ``what``. An empty set would make an intervention that silently changes nothing.

    Example::

        map_head_set(tr, model.cfg.n_layers, model.cfg.n_heads, 8, what="Head set 'TR'")
    """
    if (scores.n_layers, scores.n_heads) != (n_layers, n_heads):
        raise ValueError(
            f"{what}: the HeadScores map {scores.name!r} has shape [{scores.n_layers}, "
            f"{scores.n_heads}]; this model has [n_layers, n_heads] = [{n_layers}, "
            f"{n_heads}]. Use a map made on this model."
        )
    if k is not None or scores.top_k is not None:
        try:
            check_top_k(scores.top_k if k is None else k, n_layers, n_heads, what="k")
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"{what}: the HeadScores map {scores.name!r} gives no head set: {err}"
            ) from None
    if not bool((~torch.isnan(scores.scores)).any()):
        raise ValueError(
            f"{what}: the HeadScores map {scores.name!r} has no rankable head (all "
            f"{scores.scores.numel()} scores are NaN), so its head set would be empty and "
            "an intervention on it would silently equal the baseline. Check how the map "
            "was made (e.g. TL scores whose heads all fall below the TR floor)."
        )
    return scores.top(k, **top_kwargs)


def _head_pair(item) -> tuple[int, int]:
    """``(layer, head)`` of one head, both whole numbers (floats are refused, not truncated)."""
    bad = TypeError(
        f"Heads must be Head(layer, head) or (layer, head) pairs of integers, got {item!r}."
    )
    if isinstance(item, (str, bytes, Tensor)) or not isinstance(item, Sequence) or len(item) != 2:
        if isinstance(item, Tensor) and item.numel() == 2 and not item.dtype.is_floating_point:
            return int(item[0]), int(item[1])
        raise bad
    out = []
    for v in item:
        if isinstance(v, Tensor) and v.numel() == 1 and not v.dtype.is_floating_point:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise bad
        out.append(int(v))
    return out[0], out[1]


def mask_to_heads(mask: Bool[Tensor, "layer head"]) -> list[Head]:
    return [Head(int(layer), int(head)) for layer, head in mask.nonzero().tolist()]


def random_head_sets(
    model,
    heads: HeadsLike,
    n_random: int = 5,
    *,
    layer_matched: bool = True,
    seed: int | np.random.Generator = 0,
    exclude: HeadsLike | None = None,
) -> list[list[Head]]:
    """``n_random`` random head sets of the same size as ``heads``, never containing a head of
    ``heads`` or ``exclude``: the control sets of every ablation experiment.

    With ``layer_matched`` each random set has as many heads in every layer as ``heads``;
    where a layer has too few free heads, the rest come from the nearest layers (lower layer
    first on ties). Without it, heads are drawn uniformly from all free heads. Sets are drawn
    in order from ``numpy.random.default_rng(seed)`` (or from ``seed`` itself when it is a
    ``numpy`` ``Generator``, so several calls can share one stream): the same seed gives the
    same sets.

    Example::

        ih.random_head_sets(model, tl.top(8), 5, seed=0, exclude=tr.top(8))

    Returns:
        ``n_random`` lists of :class:`Head`, each sorted by layer and head.

    Raises:
        ValueError: fewer free heads than the set's size, or a negative ``n_random``;
            TypeError: a non-integer seed or ``n_random``.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(seed, np.random.Generator) and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise TypeError(f"seed must be an integer (or a numpy Generator), got {seed!r}.")
    n_random = check_int(n_random, "n_random", 0)
    if not isinstance(layer_matched, bool):
        raise TypeError(f"layer_matched must be True or False, got {layer_matched!r}.")
    chosen = heads_to_mask(heads, L, H)
    blocked = chosen | (heads_to_mask(exclude, L, H) if exclude is not None else False)
    size, free_total = int(chosen.sum()), int((~blocked).sum())
    if size > free_total:
        raise ValueError(
            f"Cannot draw random sets of {size} heads disjoint from the "
            f"{int(blocked.sum())} evaluated heads: only {free_total} of the "
            f"model's {L * H} heads are free. Use smaller head sets."
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    per_layer = chosen.sum(dim=1).tolist()
    out = []
    for _ in range(n_random):
        taken, picked = blocked.clone(), torch.zeros_like(chosen)
        if layer_matched:
            for layer in (i for i, c in enumerate(per_layer) if c):
                need = per_layer[layer]
                for other in sorted(range(L), key=lambda x: (abs(x - layer), x)):
                    if need == 0:
                        break
                    free = np.flatnonzero(~taken[other].numpy())
                    if free.size:
                        got = rng.choice(free, size=min(need, free.size), replace=False)
                        taken[other, got] = picked[other, got] = True
                        need -= len(got)
        else:
            got = rng.choice(np.flatnonzero(~taken.flatten().numpy()), size=size, replace=False)
            picked.view(-1)[torch.as_tensor(got, dtype=torch.long)] = True
        out.append(mask_to_heads(picked))
    return out


def _nan_to_none(rows: Sequence) -> list:
    return [[None if (isinstance(v, float) and math.isnan(v)) else v for v in r] for r in rows]


def _none_to_nan(rows: Sequence) -> list:
    return [[math.nan if v is None else v for v in r] for r in rows]
