"""Which cells a reproduction grid runs, apart from where they run.

A grid is models x tasks x experiment families; one :class:`GridCell` is one model, one
task and one family (its experiments, e.g. the six TR/TL cells of one task, share work, so
they run together). What a cell *does* (load its model by name, check the model fits the
grid, run the family's experiments into ``<out>/<family>/<model>/<task>/<experiment>/``)
is a :class:`CellJob`; *where* it runs is a :class:`GridRunner`: :class:`LocalRunner`
(this process, one model loaded at a time) or
:class:`~icl_heads.experiments.ray_runner.RayRunner` (one Ray task per cell). Both write the
same folders through :func:`~icl_heads.experiments.cells.run_cell`, so a cluster run and a
laptop run give the same tree and resume the same way: a finished cell is loaded, not
recomputed, and a cell killed mid-way leaves no folder that looks complete.

:func:`run_grid` does, in order: ``runner.prepare`` (load each model once where the cells
run, run the checks that need it, learn the name its folders are saved under), one
:func:`~icl_heads.experiments.cells.check_cells` over every cell of the grid (a stale
cell stops the run before anything is dispatched), then ``runner.run``.

Example::

    cells = plan_grid(["default"], ["sentiment", "topic"], ["trtl", "geometry"])
    outcomes = run_grid(job, cells, LocalRunner(), on_done=lambda o, done, total: ...)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .cells import check_cells

__all__ = [
    "CellJob",
    "CellOutcome",
    "GridCell",
    "GridRunner",
    "LocalRunner",
    "describe_error",
    "failure_summary",
    "plan_grid",
    "progress_line",
    "run_grid",
]


@dataclass(frozen=True)
class GridCell:
    """One cell of a grid: a model (the name it is loaded by), a task (name or task file)
    and an experiment family (``"trtl"`` or ``"geometry"``).

    Example::

        GridCell("default", "sentiment", "trtl").label   # 'trtl default/sentiment'
    """

    model: str
    task: str
    family: str

    @property
    def label(self) -> str:
        """``"<family> <model>/<task>"``, how progress lines and errors name the cell."""
        return f"{self.family} {self.model}/{self.task}"


@dataclass(frozen=True)
class CellOutcome:
    """What became of one :class:`GridCell`: its experiments' records
    (:func:`~icl_heads.experiments.cells.cell_record` rows: ``status`` ``"computed"`` or
    ``"loaded"``), its wall time in seconds, and ``error`` (``"TypeName: message"``; None
    when it finished).

    Example::

        CellOutcome(cell, records=(...,), seconds=12.0).counts()   # {'computed': 6}
    """

    cell: GridCell
    records: tuple[Mapping, ...] = ()
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the cell finished (every experiment computed or loaded)."""
        return self.error is None

    def counts(self) -> dict[str, int]:
        """How many experiments were ``computed`` and ``loaded``, e.g. ``{"loaded": 6}``."""
        out: dict[str, int] = {}
        for record in self.records:
            status = str(record.get("status"))
            out[status] = out.get(status, 0) + 1
        return out


class CellJob(Protocol):
    """What one grid cell does, wherever it runs. A job must pickle (a Ray runner sends it
    to the workers) and hold no loaded model: each worker loads its own by name.

    * ``load(model)``: the model of the name (on the job's device).
    * ``check(model, loaded)``: the checks that need the model, before its first cell (a
      ValueError naming the model and the fix); returns the name its cells are saved
      under (``cfg.model_name``).
    * ``requests(cell, name)``: ``(path, request)`` of every experiment folder of the
      cell, for :func:`~icl_heads.experiments.cells.check_cells`.
    * ``run(cell, loaded)``: run the cell (resumable, via ``run_cell``); its records.
    """

    def load(self, model: str) -> Any: ...

    def check(self, model: str, loaded: Any) -> str | None: ...

    def requests(self, cell: GridCell, name: str | None) -> list[tuple[Path, Mapping]]: ...

    def run(self, cell: GridCell, loaded: Any) -> Sequence[Mapping]: ...


#: Called after each cell finishes: ``on_done(outcome, done, total)``.
OnDone = Callable[[CellOutcome, int, int], None]


class GridRunner(Protocol):
    """Where a grid's cells run: :class:`LocalRunner` or ``ray_runner.RayRunner``.

    * ``prepare(job, models)``: ``{model: saved name}``, after loading each model where
      the cells will run and calling ``job.check`` on it (any error is raised: nothing
      has been dispatched yet).
    * ``run(job, cells, on_done)``: run every cell; one :class:`CellOutcome` per cell, in
      the order of ``cells``.
    * ``close()``: let go of what the runner holds (loaded models, a Ray instance it
      started); :func:`run_grid` calls it when the grid ends, even on an error.
    """

    def prepare(self, job: CellJob, models: Sequence[str]) -> dict[str, str | None]: ...

    def run(
        self, job: CellJob, cells: Sequence[GridCell], on_done: OnDone | None = None
    ) -> list[CellOutcome]: ...

    def close(self) -> None: ...


def plan_grid(
    models: Sequence[str], tasks: Sequence[str], families: Sequence[str]
) -> list[GridCell]:
    """The cells of a grid, model by model, family by family, task by task (the order a
    local run takes; each model is loaded once).

    Example::

        plan_grid(["default"], ["sentiment", "topic"], ["trtl"])
        # [GridCell('default', 'sentiment', 'trtl'), GridCell('default', 'topic', 'trtl')]

    Raises:
        ValueError: an empty list, naming it.
    """
    for what, values in (("models", models), ("tasks", tasks), ("families", families)):
        if isinstance(values, str) or not values:
            raise ValueError(f"plan_grid: {what} must be a non-empty list, got {values!r}.")
    return [
        GridCell(str(model), str(task), str(family))
        for model in _unique(models)
        for family in _unique(families)
        for task in _unique(tasks)
    ]


def run_grid(
    job: CellJob,
    cells: Sequence[GridCell],
    runner: GridRunner,
    *,
    rerun_stale: bool = False,
    on_done: OnDone | None = None,
) -> list[CellOutcome]:
    """Run a grid: ``runner.prepare`` every model, refuse stale cells across the whole
    grid once (:func:`~icl_heads.experiments.cells.check_cells`), then ``runner.run``.

    Example::

        outcomes = run_grid(job, plan_grid(models, tasks, families), LocalRunner())
        failure_summary(outcomes)   # None: every cell finished

    Raises:
        ValueError: stale saved cells (unless ``rerun_stale``), or a check of ``job``.
    """
    if not cells:
        raise ValueError("run_grid: no cells to run; give at least one model, task and family.")
    try:
        names = runner.prepare(job, _unique(cell.model for cell in cells))
        check_cells(
            [pair for cell in cells for pair in job.requests(cell, names[cell.model])],
            rerun_stale=rerun_stale,
        )
        return runner.run(job, cells, on_done)
    finally:
        runner.close()


class LocalRunner:
    """Run a grid's cells one after the other in this process, loading each model once
    for its cells (and once more to check it, when the grid has several models).

    ``keep_going=False`` (default): an error in a cell is raised at once, unchanged.
    ``keep_going=True``: it is recorded in that cell's :class:`CellOutcome` and the other
    cells run.

    Example::

        outcomes = run_grid(job, cells, LocalRunner())
    """

    def __init__(self, *, keep_going: bool = False) -> None:
        if not isinstance(keep_going, bool):
            raise TypeError(f"LocalRunner: keep_going must be True or False, got {keep_going!r}.")
        self.keep_going = keep_going
        self._loaded: tuple[str, Any] | None = None

    def prepare(self, job: CellJob, models: Sequence[str]) -> dict[str, str | None]:
        """Load and check every model, last one first, so the first model's cells find it
        still loaded (a one-model grid loads its model once)."""
        names: dict[str, str | None] = {}
        for model in reversed(list(models)):
            loaded = self._model(job, model)
            names[model] = job.check(model, loaded)
        return {model: names[model] for model in models}

    def run(
        self, job: CellJob, cells: Sequence[GridCell], on_done: OnDone | None = None
    ) -> list[CellOutcome]:
        """Run ``cells`` in order (see the class)."""
        outcomes = []
        for cell in cells:
            started = time.perf_counter()
            try:
                records = tuple(job.run(cell, self._model(job, cell.model)))
                outcome = CellOutcome(cell, records, time.perf_counter() - started)
            except Exception as err:
                if not self.keep_going:
                    raise
                outcome = CellOutcome(
                    cell, (), time.perf_counter() - started, error=describe_error(err)
                )
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome, len(outcomes), len(cells))
        return outcomes

    def close(self) -> None:
        """Drop the loaded model (the models are not kept past the grid)."""
        self._loaded = None

    def _model(self, job: CellJob, model: str) -> Any:
        if self._loaded is None or self._loaded[0] != model:
            self._loaded = None  # free the previous model before loading the next
            self._loaded = (model, job.load(model))
        return self._loaded[1]


def describe_error(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, how a failed cell's error is reported.

    Example::

        describe_error(ValueError("bad n\\nmore"))   # 'ValueError: bad n'
    """
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def progress_line(outcome: CellOutcome, done: int, total: int) -> str:
    """One line per finished cell: ``[2/4] trtl default/topic: 6 computed, 12 s`` or
    ``[3/4] geometry default/topic: FAILED (ValueError: ...)``.

    Example::

        print(progress_line(outcome, 2, 4))
    """
    head = f"[{done}/{total}] {outcome.cell.label}:"
    if not outcome.ok:
        return f"{head} FAILED ({outcome.error})"
    counts = outcome.counts()
    parts = [f"{counts[s]} {s}" for s in ("computed", "loaded") if counts.get(s)]
    return f"{head} {', '.join(parts) or 'no experiments'}, {outcome.seconds:.0f} s"


def failure_summary(outcomes: Sequence[CellOutcome]) -> str | None:
    """None when every cell finished; else one line naming each failed cell and its error,
    and the fix (re-run the same command: finished cells are loaded, not recomputed).

    Example::

        failure_summary(outcomes)   # '1 of 4 cells failed: trtl default/topic (...). ...'
    """
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return None
    named = "; ".join(f"{o.cell.label} ({o.error})" for o in failed)
    return (
        f"{len(failed)} of {len(outcomes)} cells failed: {named}. The other cells are saved; "
        "fix the cause and run the same command again: finished cells are loaded, not "
        "recomputed."
    )


def _unique(values) -> list:
    return list(dict.fromkeys(values))
