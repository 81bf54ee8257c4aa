"""Every number in an analysis' result, by path, for tests that compare two runs exactly or
within a tolerance (the batching and dtype tests)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from icl_heads.heads import HeadScores
from icl_heads.results import ExperimentResult


def numeric_leaves(result, path: str = "result") -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor, array, ``HeadScores`` map and numeric table
    column inside ``result`` (``ExperimentResult``, dicts, tuples, lists, dataclasses)."""
    if isinstance(result, torch.Tensor):
        yield path, result
    elif isinstance(result, np.ndarray):
        yield path, torch.from_numpy(result)
    elif isinstance(result, HeadScores):
        yield f"{path}.scores", result.scores
        if result.per_prompt is not None:
            yield f"{path}.per_prompt", result.per_prompt
    elif isinstance(result, ExperimentResult):
        yield from numeric_leaves(result.table, f"{path}.table")
        for name, scores in result.maps.items():
            yield from numeric_leaves(scores, f"{path}.maps[{name}]")
        for name, table in result.tables.items():
            yield from numeric_leaves(table, f"{path}.tables[{name}]")
    elif isinstance(result, pd.DataFrame):
        for col in result.select_dtypes("number").columns:
            yield f"{path}[{col}]", torch.tensor(result[col].to_numpy(dtype=float))
    elif isinstance(result, dict):
        for name, part in result.items():
            yield from numeric_leaves(part, f"{path}[{name}]")
    elif isinstance(result, (tuple, list)):
        for i, part in enumerate(result):
            yield from numeric_leaves(part, f"{path}[{i}]")
    elif hasattr(result, "__dataclass_fields__"):
        for name in result.__dataclass_fields__:
            value = getattr(result, name)
            if isinstance(value, (torch.Tensor, np.ndarray, HeadScores, pd.DataFrame)):
                yield from numeric_leaves(value, f"{path}.{name}")
