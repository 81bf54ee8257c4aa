"""The one result type of every experiment: :class:`ExperimentResult`.

It is to experiments what :class:`~icl_heads.heads.HeadScores` is to ``[layer, head]``
maps: a tidy table with confidence intervals, the settings that made it, the head maps it
made, extra tidy tables (e.g. a per-head table for a scatter plot), a Plotly figure, and
saving / loading::

    result = ih.ablation_experiment(model, prompts, heads={"TR": tr.top(), "TL": tl.top()})
    result.table                 # condition, metric, value, ci_low, ci_high, n (+ more)
    result.settings              # frozen dataclass: every parameter and seed, model, task
    result.maps["TR"]            # HeadScores, where the experiment makes any
    result.plot()                # Plotly figure
    result.save("results/ablation"); ih.ExperimentResult.load("results/ablation")
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .heads import HeadScores
from .settings import Settings

#: Columns every experiment table has (more may follow, e.g. ``layer`` or ``alpha``).
TABLE_COLUMNS = ("condition", "metric", "value", "ci_low", "ci_high", "n")
#: Written into every saved result; ``load`` refuses directories without it.
RESULT_FORMAT = "icl-heads.ExperimentResult/1"


@dataclass
class ExperimentResult:
    """What an experiment found, and how.

    Attributes:
        name: the experiment, e.g. ``"ablation"`` or ``"layer_geometry"``.
        table: tidy DataFrame, one row per condition x metric (x layer, alpha, ... where the
            experiment has such an axis), with ``value, ci_low, ci_high, n``.
        settings: a frozen :class:`~icl_heads.settings.Settings` dataclass.
        maps: named :class:`~icl_heads.heads.HeadScores` the experiment made.
        tables: further named tidy DataFrames (e.g. ``"heads"``: one row per head).
    """

    name: str
    table: pd.DataFrame
    settings: Settings
    maps: dict[str, HeadScores] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.table, pd.DataFrame):
            raise TypeError(
                f"ExperimentResult.table must be a DataFrame, got {type(self.table).__name__}."
            )
        missing = [c for c in TABLE_COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(
                f"ExperimentResult.table lacks the columns {missing}; every "
                f"experiment table has {list(TABLE_COLUMNS)}."
            )
        if not isinstance(self.settings, Settings):
            raise TypeError(
                f"ExperimentResult.settings must be a Settings dataclass, got "
                f"{type(self.settings).__name__}."
            )
        for key, value in self.maps.items():
            if not isinstance(value, HeadScores):
                raise TypeError(
                    f"ExperimentResult.maps[{key!r}] must be a HeadScores, got "
                    f"{type(value).__name__}."
                )

    # ------------------------------------------------------------------ reading
    def value(self, condition: str, metric: str, **where) -> float:
        """The ``value`` of one row (``where``: further column filters, e.g. ``layer=3``)."""
        rows = self.select(condition=condition, metric=metric, **where)
        if len(rows) != 1:
            raise ValueError(
                f"{len(rows)} rows match condition={condition!r}, metric="
                f"{metric!r}, {where}; give more filters."
            )
        return float(rows["value"].iloc[0])

    def select(self, **where) -> pd.DataFrame:
        """The rows whose columns equal the given values (a list matches any of them)."""
        frame = self.table
        for column, wanted in where.items():
            if column not in frame.columns:
                raise ValueError(f"No column {column!r}; the table has {list(frame.columns)}.")
            if isinstance(wanted, (list, tuple, set)):
                frame = frame[frame[column].isin(list(wanted))]
            else:
                frame = frame[frame[column] == wanted]
        return frame

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(self.table["condition"]))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.table["metric"]))

    # ------------------------------------------------------------------ figures
    def plot(self, **kwargs):
        """The experiment's Plotly figure (see :func:`icl_heads.viz.experiment_figure`)."""
        from .viz import experiment_figure

        return experiment_figure(self, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` (name, settings, file list), ``table.csv``, one
        ``maps/<name>.json`` per map and ``tables/<name>.csv`` per extra table."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(
                f"ExperimentResult.save: {str(directory)!r} is a file; give a directory."
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(directory / "table.csv", index=False)
        for key, scores in self.maps.items():
            scores.save(directory / "maps" / f"{safe_name(key)}.json")
        for key, frame in self.tables.items():
            (directory / "tables").mkdir(exist_ok=True)
            frame.to_csv(directory / "tables" / f"{safe_name(key)}.csv", index=False)
        header = {
            "format": RESULT_FORMAT,
            "name": self.name,
            "settings": self.settings.to_dict(),
            "maps": {k: f"maps/{safe_name(k)}.json" for k in self.maps},
            "tables": {k: f"tables/{safe_name(k)}.csv" for k in self.tables},
        }
        (directory / "result.json").write_text(json.dumps(header, indent=1, default=_json))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ExperimentResult:
        """Read a result written by :meth:`save`."""
        directory = Path(directory)
        meta_path = directory / "result.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"ExperimentResult.load: no result.json in "
                f"{str(directory)!r} (save(dir) writes one)."
            )
        try:
            header = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"ExperimentResult.load: {str(meta_path)!r} is not valid JSON ({err})."
            ) from None
        if not isinstance(header, dict) or header.get("format") != RESULT_FORMAT:
            raise ValueError(
                f"ExperimentResult.load: {str(directory)!r} was not written by "
                f"ExperimentResult.save (no {RESULT_FORMAT!r} header)."
            )
        return cls(
            name=header["name"],
            table=pd.read_csv(directory / "table.csv"),
            settings=Settings.from_dict(header["settings"]),
            maps={k: HeadScores.load(directory / p) for k, p in header.get("maps", {}).items()},
            tables={k: pd.read_csv(directory / p) for k, p in header.get("tables", {}).items()},
        )

    def __repr__(self) -> str:
        return (
            f"ExperimentResult(name={self.name!r}, rows={len(self.table)}, conditions="
            f"{self.conditions[:6]}, metrics={self.metrics[:6]}, maps={list(self.maps)}, "
            f"tables={list(self.tables)})"
        )


def per_head_maps(result: ExperimentResult) -> dict[str, HeadScores]:
    """Every per-head quantity of a result as a map: its ``maps``, and each numeric column
    of its per-head tables (tables with exactly one row per head, by ``layer`` and
    ``head``), named by the column (or ``table.column`` where two tables share a column
    name).

    Example::

        result = ih.correlation_experiment(model, prompts, ...)
        per_head_maps(result)["delta_logit_diff"].plot()  # a column of tables["heads"]

    Returns:
        ``{name: HeadScores}``: the result's maps first, then one map per column (NaN at
        heads the table leaves out; no settings).
    """
    out: dict[str, HeadScores] = dict(result.maps)
    shape = None
    if result.maps:
        first = next(iter(result.maps.values()))
        shape = (first.n_layers, first.n_heads)
    for table_name, frame in result.tables.items():
        if not {"layer", "head"} <= set(frame.columns) or frame.empty:
            continue
        L = int(frame["layer"].max()) + 1 if shape is None else shape[0]
        H = int(frame["head"].max()) + 1 if shape is None else shape[1]
        if len(frame[["layer", "head"]].drop_duplicates()) != L * H or len(frame) != L * H:
            continue  # not one row per head (e.g. the rows of a few head sets)
        layers = torch.from_numpy(frame["layer"].to_numpy(dtype=np.int64, copy=True))
        heads = torch.from_numpy(frame["head"].to_numpy(dtype=np.int64, copy=True))
        for column in frame.columns:
            if column in ("layer", "head", "rank") or not pd.api.types.is_numeric_dtype(
                frame[column]
            ):
                continue
            grid = torch.full((L, H), float("nan"))
            values = frame[column].to_numpy(dtype=float, copy=True)
            grid[layers, heads] = torch.from_numpy(values).float()
            key = column if column not in out else f"{table_name}.{column}"
            out[key] = HeadScores(grid, name=column, settings=None)
    return out


def table_row(
    condition: str, metric: str, value: float, ci_low: float, ci_high: float, n: int, **extra
) -> dict:
    """One row of an experiment table, in the canonical column order."""
    return {
        "condition": condition,
        "metric": metric,
        "value": _float(value),
        "ci_low": _float(ci_low),
        "ci_high": _float(ci_high),
        "n": int(n),
        **extra,
    }


def make_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """A tidy experiment table from :func:`table_row` rows."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return frame


def _float(value) -> float:
    return math.nan if value is None else float(value)


def safe_name(name: str) -> str:
    """``name`` as a file or directory name of saved results: every character but letters,
    digits, ``-``, ``_`` and ``.`` becomes ``_`` (map and table files, and the
    ``<model>/<task>/`` directories of the reproductions)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _json(value):
    return str(value)
