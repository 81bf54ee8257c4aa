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

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .heads import HeadScores
from .outputs import atomic_directory, check_output_dir
from .settings import Settings

#: Columns every experiment table has (more may follow, e.g. ``layer`` or ``alpha``).
TABLE_COLUMNS = ("condition", "metric", "value", "ci_low", "ci_high", "n")
#: Written into every saved result; ``load`` refuses directories without it.
RESULT_FORMAT = "icl-heads.ExperimentResult/2"
#: The format before the integrity record (loads with a warning: cannot be verified).
LEGACY_FORMATS = ("icl-heads.ExperimentResult/1",)
#: The entries of a saved result's directory (with the report the CLI writes beside it):
#: ``save`` replaces a directory that holds only these, and refuses one with other files.
RESULT_ENTRIES = ("result.json", "table.csv", "maps", "tables", "report.html", "plotly.min.js")


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
        request: what a reproduction grid asked for when it made this result (model, task
            and its content hash, sizes, seeds, the experiment and its parameters: see
            :func:`icl_heads.experiments.cells.run_cell`), saved with it; None elsewhere.
        wall_seconds: how long computing it took, in seconds, where a reproduction grid
            recorded it (:func:`icl_heads.experiments.cells.run_cell`); saved in
            ``result.json`` beside the request (not part of it), None for results saved
            before it was recorded.
    """

    name: str
    table: pd.DataFrame
    settings: Settings
    maps: dict[str, HeadScores] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    request: dict | None = None
    wall_seconds: float | None = None

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
        if self.request is not None and not isinstance(self.request, Mapping):
            raise TypeError(
                f"ExperimentResult.request must be a dict (or None), got "
                f"{type(self.request).__name__}."
            )
        if self.wall_seconds is not None:
            seconds = self.wall_seconds
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise TypeError(
                    f"ExperimentResult.wall_seconds must be a number of seconds (or None), "
                    f"got {type(seconds).__name__}."
                )
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(
                    f"ExperimentResult.wall_seconds must be a finite number >= 0, got {seconds!r}."
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
        """Write the result into the directory ``directory``: ``result.json`` (name,
        settings, ``request``, ``wall_seconds`` where recorded, the file list and the
        integrity record), ``table.csv``, one
        ``maps/<name>.json`` per map and ``tables/<name>.csv`` per extra table.

        The directory is checked first (a ValueError names it where it is a file, lies under
        a file, cannot be written, or already holds files that are not a saved result) and
        written atomically: the files go into a hidden temporary sibling folder that is
        renamed into place once complete, replacing a previous result there only then. A
        killed process never leaves a folder that looks complete.

        The integrity record (``result.json["files"]``) holds, for every file of the result,
        its size in bytes, its SHA-256 and (tables) its number of rows; :meth:`load` checks
        them.

        Example::

            result.save("results/ablation")      # -> Path("results/ablation")
        """
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"ExperimentResult.save: directory must be a str or Path, got "
                f"{type(directory).__name__}."
            )
        what = "ExperimentResult.save: directory"
        target = check_result_dir(directory, what=what)
        files: dict[str, dict] = {}
        with atomic_directory(target, what=what, replaceable=_holds_a_result) as folder:
            _write_table(folder, "table.csv", self.table, files)
            for key, scores in self.maps.items():
                name = f"maps/{safe_name(key)}.json"
                scores.save(folder / name)
                files[name] = _file_record(folder / name)
            for key, frame in self.tables.items():
                _write_table(folder, f"tables/{safe_name(key)}.csv", frame, files)
            header = {
                "format": RESULT_FORMAT,
                "name": self.name,
                "settings": self.settings.to_dict(),
                "request": self.request,
                **({} if self.wall_seconds is None else {"wall_seconds": self.wall_seconds}),
                "maps": {k: f"maps/{safe_name(k)}.json" for k in self.maps},
                "tables": {k: f"tables/{safe_name(k)}.csv" for k in self.tables},
                "files": files,
            }
            text = json.dumps(header, indent=1, default=_json)
            (folder / "result.json").write_text(text, encoding="utf-8")
        return target

    @classmethod
    def load(cls, directory: str | Path) -> ExperimentResult:
        """Read a result written by :meth:`save`, verified: every file its ``result.json``
        lists must be there with the size, SHA-256 and row count recorded at saving, else a
        ValueError names the file (truncated, emptied, missing, replaced) or the missing
        field of ``result.json``. Results saved before the integrity record existed
        (format ``icl-heads.ExperimentResult/1``) load with a warning that they cannot be
        verified.

        Example::

            result = ExperimentResult.load("results/ablation")
        """
        directory = Path(directory)
        meta_path = directory / "result.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"ExperimentResult.load: no result.json in "
                f"{str(directory)!r} (save(dir) writes one)."
            )
        header = _read_header(meta_path)
        files = header.get("files")
        if files is None:
            warnings.warn(
                f"ExperimentResult.load: {str(directory)!r} was saved without an integrity "
                "record (an older icl-heads); its files cannot be verified. Save it again "
                "(or recompute it) to add one.",
                UserWarning,
                stacklevel=2,
            )
            files = {}
        else:
            for name, record in files.items():
                _verify_file(directory, name, record)
        table = _read_table(directory, "table.csv", files.get("table.csv"))
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(
                f"ExperimentResult.load: {str(directory / 'table.csv')!r} lacks the columns "
                f"{missing} of an experiment table {list(TABLE_COLUMNS)}; it was not written "
                "by ExperimentResult.save."
            )
        try:
            settings = Settings.from_dict(header["settings"])
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"ExperimentResult.load: the settings in {str(meta_path)!r} cannot be read ({err})."
            ) from None
        return cls(
            name=header["name"],
            table=table,
            settings=settings,
            maps={k: HeadScores.load(directory / p) for k, p in header["maps"].items()},
            tables={
                k: _read_table(directory, p, files.get(p)) for k, p in header["tables"].items()
            },
            request=header.get("request"),
            wall_seconds=_wall_seconds(header.get("wall_seconds"), meta_path),
        )

    def __repr__(self) -> str:
        return (
            f"ExperimentResult(name={self.name!r}, rows={len(self.table)}, conditions="
            f"{self.conditions[:6]}, metrics={self.metrics[:6]}, maps={list(self.maps)}, "
            f"tables={list(self.tables)})"
        )


def check_result_dir(
    directory: str | os.PathLike, *, what: str = "ExperimentResult.save: directory"
) -> Path:
    """Check, before anything is computed, that :meth:`ExperimentResult.save` can write a
    result at ``directory``: the checks of :func:`~icl_heads.outputs.check_output_dir`
    (not a file, not under a file, writable; missing parents are created), and the
    directory, where it exists, holds nothing but a previous result (the entries of
    :data:`RESULT_ENTRIES`), which a save replaces whole. ``what`` names the argument in
    the message (the CLI: ``"--out"``).

    Example::

        out = check_result_dir("results/ablation", what="--out")   # before loading a model

    Raises:
        ValueError: naming the directory and the fix.
    """
    target = check_output_dir(directory, what=what, create=False)
    if target.is_dir():
        foreign = sorted(e.name for e in target.iterdir() if e.name not in RESULT_ENTRIES)
        if foreign:
            raise ValueError(
                f"{what} {str(directory)!r} already holds other files ({foreign[:3]}); "
                "give a new or empty directory, or one holding a previous result (a save "
                "replaces that whole)."
            )
    return target


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


def _wall_seconds(value: object, meta_path: Path) -> float | None:
    """The recorded wall time of a saved result (None where none was recorded)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"ExperimentResult.load: the wall_seconds in {str(meta_path)!r} is {value!r}, not "
            "a number of seconds >= 0; the result is damaged: save or compute it again."
        )
    return float(value)


def _json(value):
    return str(value)


# --------------------------------------------------------------------------- saved files


def _holds_a_result(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but a saved result's entries (save replaces it)."""
    return all(entry.name in RESULT_ENTRIES for entry in directory.iterdir())


def _write_table(folder: Path, name: str, frame: pd.DataFrame, files: dict) -> None:
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files[name] = {"rows": len(frame), **_digest(data)}


def _file_record(path: Path) -> dict:
    return _digest(path.read_bytes())


def _digest(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _read_header(meta_path: Path) -> dict:
    """``result.json``, checked: its format and every field ``load`` needs."""
    try:
        header = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"ExperimentResult.load: {str(meta_path)!r} is not valid JSON ({err}); the "
            "result is damaged: save or compute it again."
        ) from None
    formats = (RESULT_FORMAT, *LEGACY_FORMATS)
    if not isinstance(header, dict) or header.get("format") not in formats:
        raise ValueError(
            f"ExperimentResult.load: {str(meta_path.parent)!r} was not written by "
            f"ExperimentResult.save (no {RESULT_FORMAT!r} header)."
        )
    needed = {"name": str, "settings": dict, "maps": dict, "tables": dict}
    if header["format"] == RESULT_FORMAT:
        needed["files"] = dict
    for key in ("maps", "tables"):
        if header["format"] in LEGACY_FORMATS:
            header.setdefault(key, {})
    missing = [k for k, kind in needed.items() if not isinstance(header.get(k), kind)]
    if missing:
        raise ValueError(
            f"ExperimentResult.load: {str(meta_path)!r} lacks the field(s) {missing} (or "
            "they have the wrong type); the result is damaged: save or compute it again."
        )
    listed = ["table.csv", *header["maps"].values(), *header["tables"].values()]
    bad = [p for p in listed if not isinstance(p, str) or ".." in Path(p).parts]
    unrecorded = [p for p in listed if not bad and "files" in header and p not in header["files"]]
    if unrecorded or bad:
        raise ValueError(
            f"ExperimentResult.load: {str(meta_path)!r} lists files without an integrity "
            f"record or outside the result: {(unrecorded or bad)[:3]}; the result is "
            "damaged: save or compute it again."
        )
    return header


def _verify_file(directory: Path, name: str, record: object) -> None:
    """The file ``name`` of a saved result is there, with the recorded size and SHA-256."""
    path = directory / name
    if not isinstance(record, dict) or not {"bytes", "sha256"} <= set(record):
        raise ValueError(
            f"ExperimentResult.load: the integrity record of {str(path)!r} in result.json "
            "is damaged; save or compute the result again."
        )
    if not path.is_file():
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} is missing (result.json lists it); the "
            "result is incomplete: save or compute it again."
        )
    data = path.read_bytes()
    if len(data) != record["bytes"]:
        state = "emptied" if not data else ("truncated" if len(data) < record["bytes"] else "grown")
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} has {len(data)} bytes, {record['bytes']} "
            f"were saved ({state}); the result is damaged: save or compute it again."
        )
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} differs from the file that was saved "
            "(its SHA-256 does not match result.json); it was changed or replaced: save or "
            "compute the result again."
        )


def _read_table(directory: Path, name: str, record: dict | None) -> pd.DataFrame:
    """A saved table, with errors that name the file (verified before, where recorded)."""
    path = directory / name
    if not path.is_file():
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} is missing (result.json lists it); the "
            "result is incomplete: save or compute it again."
        )
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} is empty; the result is damaged: save "
            "or compute it again."
        )
    if not data.endswith(b"\n"):
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} does not end with a line break, so it "
            "was cut short; the result is damaged: save or compute it again."
        )
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} is not a readable CSV table "
            f"({type(err).__name__}: {err})."
        ) from None
    if record is not None and record.get("rows") is not None and len(frame) != record["rows"]:
        raise ValueError(
            f"ExperimentResult.load: {str(path)!r} has {len(frame)} rows, "
            f"{record['rows']} were saved; the result is damaged: save or compute it again."
        )
    return frame
