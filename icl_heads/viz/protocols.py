"""What the figures read: a map is anything shaped like :class:`HeadMap` and a result
anything shaped like :class:`ResultLike`. :class:`~icl_heads.heads.HeadScores` and
:class:`~icl_heads.results.ExperimentResult` are; the figures import neither (their
``.plot()`` methods call into :mod:`icl_heads.viz`, never the other way)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor


@runtime_checkable
class HeadMap(Protocol):
    """What the figures read from a ``[layer, head]`` map:
    :class:`~icl_heads.heads.HeadScores` is one (any object with these members draws)."""

    scores: Tensor  #: ``[n_layers, n_heads]`` values, NaN where not scored
    name: str  #: what the value is, e.g. ``"tr_score"``
    settings: Any  #: how it was made (read by :func:`describe_settings`), or None

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...

    def top(self, k: int | None = None) -> list: ...

    def rank(self) -> Tensor: ...

    def __getitem__(self, head: tuple[int, int]) -> float: ...


class ResultLike(Protocol):
    """What :func:`experiment_figure` reads from a result:
    :class:`~icl_heads.results.ExperimentResult` is one."""

    name: str  #: the experiment (titles only: never used to pick the figure)
    table: pd.DataFrame  #: tidy rows ``condition, metric, value, ci_low, ci_high, n, ...``
    settings: Any
    maps: Mapping[str, HeadMap]
    tables: Mapping[str, pd.DataFrame]
