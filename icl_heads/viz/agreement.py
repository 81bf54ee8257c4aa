"""Which heads a figure outlines (:func:`top_heads`) and where two maps shown together
disagree (:func:`disagreements`): a top head of one map that sits at the bottom of another,
e.g. the top TR head with the lowest TL score of all heads."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .protocols import HeadMap


def top_heads(scores: HeadMap, k: int | None = None) -> list:
    """The heads a figure outlines: ``scores.top(k)`` without the heads that only tie into
    it (value at or below the map's median), so a mostly constant map outlines only the
    heads that stand out, and a constant map none."""
    import torch

    finite = scores.scores[torch.isfinite(scores.scores)]
    if finite.numel() == 0:
        return []
    median = float(finite.median())
    return [h for h in scores.top(k) if scores[h] > median]


@dataclass(frozen=True)
class Disagreement:
    """A top head of one map (``top_map``, rank ``top_rank``) that ranks in the bottom of
    another (``other_map``, rank ``other_rank`` of ``n_other`` scored heads)."""

    head: object
    top_map: str
    top_rank: int
    other_map: str
    other_rank: int
    n_other: int

    def describe(self) -> str:
        """One sentence, e.g. ``"L3H5 is #1 by TR but 270/270 by TL (lowest)."``"""
        lowest = " (the lowest)" if self.other_rank == self.n_other else ""
        return (
            f"{self.head} is #{self.top_rank} by {self.top_map} but ranks "
            f"{self.other_rank}/{self.n_other} by {self.other_map}{lowest}."
        )


def disagreements(
    maps: Mapping[str, HeadMap], *, k: int | None = None, bottom: float = 0.1
) -> list[Disagreement]:
    """Heads among the top of one map (:func:`top_heads`, ``k`` each) whose value in
    another map is among its lowest ``bottom`` share (at least the lowest head) and below
    that map's median (so ties, e.g. a constant map, flag nothing), first the most striking
    (best rank in its own map, then worst in the other).

    Example::

        for d in disagreements({"TR": tr, "TL": tl}):
            print(d.describe())  # "L3H5 is #1 by TR but ranks 270/270 by TL (the lowest)."
    """
    if not 0 < bottom < 1:
        raise ValueError(f"disagreements: bottom is a share in (0, 1), got {bottom!r}.")
    found = []
    ranks = {name: m.rank() for name, m in maps.items()}
    for name, m in maps.items():
        for position, head in enumerate(top_heads(m, k), start=1):
            for other, o in maps.items():
                if other == name or (o.n_layers, o.n_heads) != (m.n_layers, m.n_heads):
                    continue
                values = o.scores[~o.scores.isnan()]
                value, rank = float(o.scores[head.layer, head.head]), ranks[other]
                if values.numel() < 2 or math.isnan(value):
                    continue
                low = float(values.sort().values[max(0, math.ceil(bottom * len(values)) - 1)])
                # in the lowest share by value, and below the median (ties are no verdict)
                if value <= low and value < float(values.median()):
                    n = int(values.numel())
                    place = int(rank[head.layer, head.head])
                    found.append(Disagreement(head, name, position, other, place, n))
    return sorted(found, key=lambda d: (d.top_rank, -d.other_rank / d.n_other))
