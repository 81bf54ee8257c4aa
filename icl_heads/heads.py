"""Heads and per-head score maps: :class:`Head` and :class:`HeadScores`.

``HeadScores`` is the one result type for every ``[layer, head]`` map the toolkit makes
(TR/TL scores, detector scores, ablation and patching effects).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor


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


@dataclass
class HeadScores:
    """A ``[layer, head]`` score map with how it was made.

    Attributes:
        scores: ``[n_layers, n_heads]`` float tensor (NaN = not scored / not ranked).
        name: what the score is, e.g. ``"tr_score"`` or ``"induction_score"``.
        metadata: plain JSON-able facts of how it was made (model, task, k, seed, method...).
        per_prompt: optional ``[prompt, n_layers, n_heads]`` raw scores.
    """

    scores: Float[Tensor, "layer head"]
    name: str = "score"
    metadata: dict = field(default_factory=dict)
    per_prompt: Float[Tensor, "prompt layer head"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scores, Tensor):
            self.scores = torch.as_tensor(self.scores)
        if self.scores.ndim != 2:
            raise ValueError(f"HeadScores needs a [n_layers, n_heads] tensor, got shape "
                             f"{tuple(self.scores.shape)}.")
        self.scores = self.scores.detach().float().cpu()
        if self.per_prompt is not None:
            self.per_prompt = torch.as_tensor(self.per_prompt).detach().float().cpu()
            if self.per_prompt.ndim != 3 or self.per_prompt.shape[1:] != self.scores.shape:
                raise ValueError(f"per_prompt must have shape [prompt, {self.n_layers}, "
                                 f"{self.n_heads}] to match the scores, got "
                                 f"{tuple(self.per_prompt.shape)}.")

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def __getitem__(self, head: Head | tuple[int, int]) -> float:
        return float(self.scores[head[0], head[1]])

    def top(self, k: int | None = None, *, largest: bool = True, by_abs: bool = False) -> list[Head]:
        """The ``k`` best heads, best first (NaN scores never ranked).

        Args:
            k: how many; default 3% of all heads (at least 1).
            largest: rank high scores first (``False``: lowest first).
            by_abs: rank by absolute value.
        """
        if k is None:
            k = default_top_k(self.n_layers, self.n_heads)
        if k < 0:
            raise ValueError(f"top(k): k must be >= 0, got {k}.")
        flat = self.scores.flatten()
        values = flat.abs() if by_abs else flat
        values = values if largest else -values
        valid = ~torch.isnan(values)
        k = min(k, int(valid.sum()))
        values = torch.where(valid, values, torch.tensor(-math.inf))
        order = torch.argsort(values, descending=True, stable=True)[:k]
        return [Head(int(i) // self.n_heads, int(i) % self.n_heads) for i in order]

    def mask(self, k: int | None = None, **kwargs) -> Bool[Tensor, "layer head"]:
        """Boolean ``[n_layers, n_heads]`` mask of ``top(k)``."""
        return heads_to_mask(self.top(k, **kwargs), self.n_layers, self.n_heads)

    def rank(self) -> Float[Tensor, "layer head"]:
        """Rank of every head (1 = highest score; NaN stays NaN)."""
        flat = self.scores.flatten()
        order = torch.argsort(torch.where(torch.isnan(flat), -math.inf, flat), descending=True,
                              stable=True)
        ranks = torch.empty_like(flat)
        ranks[order] = torch.arange(1, flat.numel() + 1, dtype=flat.dtype)
        ranks[torch.isnan(flat)] = math.nan
        return ranks.reshape(self.scores.shape)

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame: one row per head with ``layer, head, label, <name>, rank``."""
        L, H = self.scores.shape
        layers = torch.arange(L).repeat_interleave(H)
        heads = torch.arange(H).repeat(L)
        return pd.DataFrame({
            "layer": layers.numpy(),
            "head": heads.numpy(),
            "label": [f"L{layer}H{head}" for layer, head in zip(layers.tolist(), heads.tolist(),
                                                                strict=True)],
            self.name: self.scores.flatten().numpy(),
            "rank": self.rank().flatten().numpy(),
        })

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Save as ``.json`` (scores, ``per_prompt`` and metadata) or ``.parquet`` (the tidy
        frame plus a ``per_prompt`` list column, and the metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "metadata": self.metadata,
                "shape": list(self.scores.shape)}
        if path.suffix == ".json":
            obj = {**meta, "scores": _nan_to_none(self.scores.tolist())}
            if self.per_prompt is not None:
                obj["per_prompt"] = [_nan_to_none(p) for p in self.per_prompt.tolist()]
            path.write_text(json.dumps(obj, indent=1, default=str))
        elif path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            frame = self.to_frame()
            if self.per_prompt is not None:  # one list per head (layer-major, as the rows)
                frame["per_prompt"] = list(self.per_prompt.flatten(1).T.numpy())
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}),
                 b"icl_heads": json.dumps(meta, default=str).encode()})
            pq.write_table(table, path)
        else:
            raise ValueError(f"HeadScores.save: use a .json or .parquet path, got {path.name!r}.")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        path = Path(path)
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
            scores = torch.tensor(_none_to_nan(obj["scores"]), dtype=torch.float32)
            per_prompt = None
            if obj.get("per_prompt") is not None:
                per_prompt = torch.tensor([_none_to_nan(p) for p in obj["per_prompt"]],
                                          dtype=torch.float32).reshape(-1, *scores.shape)
            return cls(scores, name=obj["name"], metadata=obj.get("metadata", {}),
                       per_prompt=per_prompt)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"icl_heads"])
            frame = table.to_pandas()
            L, H = meta["shape"]
            scores = torch.full((L, H), math.nan)
            layers = torch.tensor(frame["layer"].to_numpy(copy=True), dtype=torch.long)
            heads = torch.tensor(frame["head"].to_numpy(copy=True), dtype=torch.long)
            scores[layers, heads] = torch.tensor(frame[meta["name"]].to_numpy(copy=True),
                                                 dtype=torch.float32)
            per_prompt = None
            if "per_prompt" in frame.columns:
                rows = torch.tensor(np.stack(frame["per_prompt"].to_list()), dtype=torch.float32)
                per_prompt = torch.full((rows.shape[1], L, H), math.nan)
                per_prompt[:, layers, heads] = rows.T
            return cls(scores, name=meta["name"], metadata=meta.get("metadata", {}),
                       per_prompt=per_prompt)
        raise ValueError(f"HeadScores.load: use a .json or .parquet path, got {path.name!r}.")

    def plot(self, **kwargs):
        """Interactive Plotly layer x head heatmap (see :func:`icl_heads.viz.head_heatmap`)."""
        from .viz import head_heatmap

        return head_heatmap(self, **kwargs)

    def __repr__(self) -> str:
        top = ", ".join(f"{h}={self[h]:.3g}" for h in self.top(min(3, self.scores.numel())))
        return (f"HeadScores(name={self.name!r}, shape={tuple(self.scores.shape)}, top=[{top}], "
                f"metadata={self.metadata})")


def heads_to_mask(heads: HeadsLike, n_layers: int, n_heads: int) -> Bool[Tensor, "layer head"]:
    """Normalise a head selection to a boolean ``[n_layers, n_heads]`` mask.

    Accepts ``Head``/``(layer, head)`` pairs, a ``HeadScores`` (its default ``top()``), or a
    boolean mask. Raises ``ValueError`` for out-of-range heads or a wrong-shaped mask.
    """
    if isinstance(heads, HeadScores):
        heads = heads.top()
    if isinstance(heads, Tensor):
        if heads.dtype != torch.bool:
            raise TypeError(f"A head mask must be a boolean tensor, got dtype {heads.dtype}.")
        if tuple(heads.shape) != (n_layers, n_heads):
            raise ValueError(f"Head mask has shape {tuple(heads.shape)}; this model needs "
                             f"[n_layers, n_heads] = [{n_layers}, {n_heads}].")
        return heads.cpu().clone()
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for item in heads:
        try:
            layer, head = (int(item[0]), int(item[1]))
        except (TypeError, IndexError, ValueError):
            raise TypeError(f"Heads must be Head(layer, head) or (layer, head) pairs, got "
                            f"{item!r}.") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"Head {Head(layer, head)} is out of range: this model has "
                             f"{n_layers} layers x {n_heads} heads (layer 0..{n_layers - 1}, "
                             f"head 0..{n_heads - 1}).")
        mask[layer, head] = True
    return mask


def mask_to_heads(mask: Bool[Tensor, "layer head"]) -> list[Head]:
    return [Head(int(layer), int(head)) for layer, head in mask.nonzero().tolist()]


def _nan_to_none(rows: Sequence) -> list:
    return [[None if (isinstance(v, float) and math.isnan(v)) else v for v in r] for r in rows]


def _none_to_nan(rows: Sequence) -> list:
    return [[math.nan if v is None else v for v in r] for r in rows]
