"""Grid cells: one saved result per ``<root>/<model>/<task>/<experiment>/``, resumable, never
partial and never stale.

A reproduction grid asks for each cell with a *request*: a JSON-able dict of everything
that defines what the cell computes (:func:`cell_request`: the model, the task and a hash
of its content, the experiment and its parameters: sizes, seeds, resamples). The request is
saved in the cell's ``result.json`` (``ExperimentResult.request``). On a re-run
(:func:`run_cell`) a saved cell is loaded only when

* it verifies (:meth:`~icl_heads.results.ExperimentResult.load` checks every file against
  the integrity record): a damaged or incomplete cell is recomputed, with a logged warning
  that says why; and
* its recorded request equals the one asked for: a cell made with another request (or
  with none: results saved before requests were recorded) is *stale*, and is refused with
  a ValueError that names the fields that differ, unless ``rerun_stale=True`` asks to
  recompute it. :func:`check_cells` makes the same check for a whole grid before anything
  is computed.

Example::

    request = cell_request(model, task, "ablation", k=4, n=64, seed=0, n_boot=1000)
    result, status, seconds = run_cell("results/m/sentiment/ablation", make, request=request)
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..outputs import is_temporary
from ..results import ExperimentResult
from ..settings import model_name
from ..tasks import Task

log = logging.getLogger(__name__)

#: The columns of a grid's cell table (:func:`cell_table`).
CELL_COLUMNS = ("model", "task", "experiment", "path", "status", "seconds")
#: The folder of one prompt seed's grid when a grid runs several seeds (``seed<s>``).
SEED_DIR = re.compile(r"^seed(\d+)$")


class SeedResults(Mapping):
    """One task's saved results over several prompt seeds.

    It reads as the first seed's ``{experiment: result}`` (the tables, figures, settings
    and wall times a page shows come from it); :attr:`per_seed` holds every seed's, which
    the verdicts pool (:func:`~icl_heads.experiments.verdict_rules.pool_seeds`).
    :func:`load_cells` returns one per task when a folder holds ``seed<s>/`` grids.

    Example::

        results = load_cells("docs/results/main/trtl")["smollm2-135m-instruct"]["topic"]
        results.seeds, results["ablation"]      # (0, 1, 2), seed 0's ablation result
    """

    def __init__(self, per_seed: Mapping[int, Mapping[str, ExperimentResult]]):
        if not per_seed:
            raise ValueError("SeedResults needs the results of at least one seed.")
        self.per_seed = {int(s): dict(per_seed[s]) for s in sorted(per_seed)}
        self.seeds = tuple(self.per_seed)
        self._first = self.per_seed[self.seeds[0]]

    def __getitem__(self, experiment: str) -> ExperimentResult:
        return self._first[experiment]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def __repr__(self) -> str:
        return f"SeedResults(seeds={list(self.seeds)}, experiments={list(self._first)})"


def per_seed(results: Mapping[str, ExperimentResult]) -> list[Mapping[str, ExperimentResult]]:
    """The results of each prompt seed of one task: ``results.per_seed``'s values for a
    :class:`SeedResults`, else ``[results]`` (a one-seed grid)."""
    if isinstance(results, SeedResults):
        return list(results.per_seed.values())
    return [results]


def cell_request(model: object, task: Task, experiment: str, **parameters: object) -> dict:
    """The request that defines one grid cell: ``model`` (its name), ``task``,
    ``task_digest`` (:attr:`~icl_heads.tasks.Task.digest`: its examples, labels and
    template, so a changed task file makes its saved cells stale), ``experiment`` and the given ``parameters``
    (JSON-able values: what the cell computes, not how fast: no batch size or device), in
    the plain JSON form it has in ``result.json``.

    Example::

        cell_request(model, task, "ablation", k=4, n=64, seed=0, n_boot=1000, n_random=5)
        # {'model': 'smollm2-135m-instruct', 'task': 'sentiment', 'task_digest': '…',
        #  'experiment': 'ablation', 'k': 4, 'n': 64, 'seed': 0, ...}
    """
    request = {
        "model": model if isinstance(model, str) or model is None else model_name(model),
        "task": task.name,
        "task_digest": task.digest,
        "experiment": experiment,
        **parameters,
    }
    return _plain(request)


def check_cells(cells: Iterable[tuple[str | Path, Mapping]], *, rerun_stale: bool = False) -> None:
    """Refuse a grid, before anything is computed, when a saved cell was made with another
    request than the one asked for (``cells``: ``(path, request)`` pairs; cells not saved
    yet, or whose ``result.json`` cannot be read, pass: :func:`run_cell` computes them).

    Raises:
        ValueError: naming the stale cells and the fields that differ (unless
            ``rerun_stale``).
    """
    if rerun_stale:
        return
    stale = []
    for path, request in cells:
        found, saved = _saved_request(Path(path))
        if found and saved != _plain(request):
            stale.append(f"{path} ({_differences(saved, _plain(request))})")
    if stale:
        raise ValueError(
            f"{len(stale)} saved cell(s) were made with other settings than asked for: "
            f"{'; '.join(stale[:4])}{' ...' if len(stale) > 4 else ''}. Write to a new "
            "out_dir, or pass rerun_stale=True to recompute the stale cells."
        )


def run_cell(
    path: str | Path,
    make: Callable[[], ExperimentResult],
    *,
    request: Mapping | None = None,
    rerun_stale: bool = False,
    prepare: Callable[[ExperimentResult], ExperimentResult] | None = None,
) -> tuple[ExperimentResult, str, float]:
    """One cell of a reproduction grid: load the result saved at ``path``, or ``make()``
    it and save it there (``prepare(result)`` is what is saved, e.g. a compact copy; the
    request is recorded in it).

    A saved cell is loaded only if its recorded request equals ``request`` (with
    ``request=None``, any) and it verifies. A cell that does not verify (damaged, cut
    short, incomplete) is recomputed, with a logged warning naming the reason. A stale
    cell (another request, or none recorded) raises a ValueError naming the fields that
    differ, or, with ``rerun_stale=True``, is recomputed (logged). The save is atomic, so
    a killed run never leaves a cell that looks complete.

    A computed cell records how long ``make()`` took (``ExperimentResult.wall_seconds``,
    saved in ``result.json`` beside the request, not in it: cells saved before it was
    recorded stay valid and load with ``wall_seconds=None``).

    Example::

        request = cell_request(model, task, "perturbation", k=4, n=64, seed=0, n_boot=1000)
        result, status, seconds = run_cell(path, make, request=request)

    Returns:
        ``(result, status, seconds)``; ``status`` is ``"loaded"`` or ``"computed"``.
    """
    path = Path(path)
    asked = None if request is None else _plain(request)
    started = time.perf_counter()
    if path.exists():
        reason = _reuse_problem(path, asked, rerun_stale)
        if reason is None:
            loaded, reason = _verified(path)
            if loaded is not None:
                return loaded, "loaded", time.perf_counter() - started
        log.warning("%s: recomputing the cell: %s", path, reason)
    computing = time.perf_counter()
    result = make()
    wall = round(time.perf_counter() - computing, 3)
    saved = result if prepare is None else prepare(result)
    saved.request = asked
    saved.wall_seconds = wall
    saved.save(path)
    if result is not saved:
        result.request = asked
        result.wall_seconds = wall
    seconds = time.perf_counter() - started
    log.info("%s: %.1f s", path, seconds)
    return result, "computed", seconds


def cell_record(
    model: str | None, task: str, experiment: str, path: Path, status: str, seconds: float
) -> dict:
    """One row of a grid's cell table (what :func:`run_cell` did)."""
    return {
        "model": model,
        "task": task,
        "experiment": experiment,
        "path": str(path),
        "status": status,
        "seconds": seconds,
    }


def load_cells(
    results_root: str | Path, *, family: tuple[str, Sequence[str]] | None = None
) -> dict[str, dict[str, dict[str, ExperimentResult]]]:
    """Every saved result under ``results_root``: ``{model: {task: {experiment: result}}}``
    (the layout the reproduction grids write), each verified on loading (a damaged cell
    raises a ValueError naming its file). Temporary folders of a killed run are skipped.

    A folder of several prompt seeds' grids (``seed<s>/<model>/<task>/<experiment>``, as
    ``icl-heads reproduce --seeds 3`` writes them) gives one :class:`SeedResults` per task,
    with the seeds that have results for it (a task missing from a seed is pooled over the
    others). A folder that holds both layouts is refused: name the one you mean.

    ``family``: ``(name, experiments)`` of the experiment family the caller reads (e.g.
    ``("TR/TL", trtl.EXPERIMENTS)``): a folder whose cells hold none of them (the other
    family's results) is refused instead of read as "no result" everywhere.

    Example::

        load_cells("docs/results/data/trtl")["smollm2-135m-instruct"]["topic"]["ablation"]
    """
    out = _load_cells(results_root)
    if family is not None:
        name, experiments = family
        found = sorted({e for tasks in out.values() for cells in tasks.values() for e in cells})
        if found and not set(found) & set(experiments):
            raise ValueError(
                f"The results folder {str(results_root)!r} holds no {name} results: its cells "
                f"are {found[:6]}, not any of {list(experiments)}. Give the folder the {name} "
                f"grid wrote (icl-heads reproduce writes <out>/trtl and <out>/geometry)."
            )
    return out


def _load_cells(results_root: str | Path) -> dict[str, dict[str, dict[str, ExperimentResult]]]:
    root = Path(results_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"No results directory {str(root)!r}; run the reproduction first (icl-heads reproduce)."
        )
    seeds = {
        int(m.group(1)): d
        for d in root.iterdir()
        if d.is_dir() and (m := SEED_DIR.match(d.name)) and any(d.glob("*/*/*/result.json"))
    }
    if not seeds:
        return _load_grid(root)
    plain = [p for p in root.glob("*/*/*/result.json") if not SEED_DIR.match(p.parts[-4])]
    if plain:
        raise ValueError(
            f"The results folder {str(root)!r} holds both a one-seed grid (e.g. "
            f"{str(plain[0].parent)!r}) and seed<s>/ grids ({sorted(seeds)}): give one of "
            f"them, e.g. {str(root / f'seed{min(seeds)}')!r}, or move the other away."
        )
    grids = {s: _load_grid(seeds[s]) for s in sorted(seeds)}
    out: dict = {}
    for seed, grid in grids.items():
        for model, tasks in grid.items():
            for task, cells in tasks.items():
                out.setdefault(model, {}).setdefault(task, {})[seed] = cells
    return {
        model: {task: SeedResults(by_seed) for task, by_seed in tasks.items()}
        for model, tasks in out.items()
    }


def _load_grid(root: Path) -> dict[str, dict[str, dict[str, ExperimentResult]]]:
    out: dict = {}
    for meta in sorted(root.glob("*/*/*/result.json")):
        cell = meta.parent
        parts = (cell.parent.parent, cell.parent, cell)
        if any(p.name.startswith(".") or is_temporary(p) for p in parts):
            continue
        model, task, experiment = (p.name for p in parts)
        out.setdefault(model, {}).setdefault(task, {})[experiment] = ExperimentResult.load(cell)
    return out


def cell_table(records: Sequence[Mapping]) -> pd.DataFrame:
    """The cell records of a grid as a DataFrame (``model, task, experiment, path, status,
    seconds``)."""
    return pd.DataFrame(list(records), columns=list(CELL_COLUMNS))


# --------------------------------------------------------------------------- helpers


def _plain(value: object) -> object:
    """``value`` in its plain JSON form (tuples as lists), as ``result.json`` holds it."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=True))
    except (TypeError, ValueError) as err:
        raise TypeError(f"A cell request must be JSON-able: {err}.") from None


def _saved_request(path: Path) -> tuple[bool, object]:
    """``(True, request)`` of the saved cell at ``path`` (None where none is recorded);
    ``(False, None)`` where ``result.json`` is missing or unreadable."""
    try:
        header = json.loads((path / "result.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False, None
    if not isinstance(header, dict):
        return False, None
    return True, header.get("request")


def _reuse_problem(path: Path, asked: object, rerun_stale: bool) -> str | None:
    """Why the saved cell at ``path`` is stale (None: not stale, or not readable)."""
    found, saved = _saved_request(path)
    if not found or asked is None or saved == asked:
        return None
    differences = _differences(saved, asked)
    if not rerun_stale:
        raise ValueError(
            f"The saved cell {str(path)!r} was made with other settings than asked for "
            f"({differences}). Write to a new out_dir, or pass rerun_stale=True to "
            "recompute it."
        )
    return f"stale ({differences}); rerun_stale=True"


def _verified(path: Path) -> tuple[ExperimentResult | None, str]:
    try:
        return ExperimentResult.load(path), ""
    except (ValueError, TypeError, FileNotFoundError) as err:
        return None, str(err)


def _differences(saved: object, asked: object) -> str:
    """The fields in which two requests differ, as ``n: saved 4, asked 8``."""
    if not isinstance(saved, dict):
        return "saved without a request record (an older icl-heads)"
    keys = sorted(set(saved) | set(asked), key=lambda k: (k not in asked, k))
    missing = object()
    parts = []
    for key in keys:
        a, b = saved.get(key, missing), asked.get(key, missing)
        if a != b:
            shown_a = "(none)" if a is missing else json.dumps(a)
            shown_b = "(none)" if b is missing else json.dumps(b)
            parts.append(f"{key}: saved {_short(shown_a)}, asked {_short(shown_b)}")
    return "; ".join(parts)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
