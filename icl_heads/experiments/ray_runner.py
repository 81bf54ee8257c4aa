"""Run a reproduction grid on Ray: one Ray task per :class:`~icl_heads.experiments.grid.GridCell`.

Each task loads its model itself, by name (embedded models from the local cache: workers
on one machine share ``~/.cache/icl-heads``; a cluster needs icl-heads installed on every
node and the output folder on a shared file system), and runs the cell through the same
:func:`~icl_heads.experiments.cells.run_cell` as a local run, so the folders, the resume
and the atomic saves are the same. A failed cell (an error, or its worker killed) is
reported with the cell named and the other cells go on; a re-run of the same grid computes
only what is missing. Ray is an optional extra: ``pip install "icl-heads[ray]"``.

Example::

    runner = RayRunner(address="auto", gpus_per_cell=1)
    outcomes = run_grid(job, plan_grid(models, tasks, families), runner)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .grid import CellJob, CellOutcome, GridCell, OnDone, describe_error

try:  # an optional extra: everything else of icl-heads works without it
    import ray
except ImportError:  # pragma: no cover - depends on the environment
    ray = None

__all__ = ["RAY_MISSING", "RayRunner", "ray_available"]

#: The fix named when Ray is missing.
RAY_MISSING = (
    'Ray is not installed; install the extra with pip install "icl-heads[ray]" (or pip '
    "install ray), or run the grid with --backend local."
)


def ray_available() -> bool:
    """True when the ``ray`` package can be imported.

    Example::

        backend = "ray" if ray_available() else "local"
    """
    return ray is not None


class RayRunner:
    """Run each grid cell as a Ray task (see the module).

    Args:
        address: the Ray cluster to join (``ray.init(address=...)``: ``"auto"``, or
            ``"ray://head:10001"``, ...). ``None`` (default): a Ray instance this process
            already started, else ``RAY_ADDRESS``, else a new local instance (shut down
            when the grid ends).
        gpus_per_cell: Ray's ``num_gpus`` of each cell's task (a fraction packs several
            cells on one GPU). ``None`` (default): 1 when the cluster has GPUs, else 0.
        cpus_per_cell: Ray's ``num_cpus`` of each task (default 1).

    Example::

        RayRunner(address="auto", gpus_per_cell=0.5)

    Raises:
        ImportError: Ray is not installed (naming ``pip install "icl-heads[ray]"``).
        ValueError: a negative ``gpus_per_cell`` or a ``cpus_per_cell`` below 0.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        gpus_per_cell: float | None = None,
        cpus_per_cell: float = 1,
    ) -> None:
        if ray is None:
            raise ImportError(RAY_MISSING)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(
                f"RayRunner: address={address!r} is not a Ray address; give e.g. 'auto' or "
                "'ray://<head>:10001', or None for a local instance."
            )
        for what, value in (("gpus_per_cell", gpus_per_cell), ("cpus_per_cell", cpus_per_cell)):
            if value is None and what == "gpus_per_cell":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"RayRunner: {what}={value!r}; give a number of at least 0.")
        self.address = address
        self.gpus_per_cell = gpus_per_cell
        self.cpus_per_cell = cpus_per_cell
        self._started = False

    # ---------------------------------------------------------------- the GridRunner API

    def prepare(self, job: CellJob, models: Sequence[str]) -> dict[str, str | None]:
        """Load and check each model in a Ray task (in parallel); ``{model: saved name}``.
        The first error is raised as the worker raised it (the type its check gave); a
        worker that died loading a model gives an OSError naming the model."""
        self._connect()
        probe = ray.remote(_probe_task).options(**self._resources(), max_retries=0)
        refs = {model: probe.remote(job, model) for model in models}
        names = {}
        for model, ref in refs.items():
            try:
                names[model] = ray.get(ref)
            except Exception as err:
                self._cancel(list(refs.values()))
                cause = _cause(err)
                if isinstance(cause, Exception) and cause is not err:
                    raise cause from None
                raise OSError(  # a dead worker (out of memory, a lost node): not a bad input
                    f"Ray could not load model {model!r}: {describe_error(cause)}"
                ) from None
        return names

    def run(
        self, job: CellJob, cells: Sequence[GridCell], on_done: OnDone | None = None
    ) -> list[CellOutcome]:
        """Submit every cell at once (Ray queues them by the resources they ask for); one
        outcome per cell, in the order of ``cells``. A cell whose task raised or whose
        worker died gets the error in its outcome; the others go on. Ctrl-C cancels the
        cells not finished (their folders are never left looking complete)."""
        self._connect()
        task = ray.remote(_cell_task).options(**self._resources(), max_retries=0)
        started = time.perf_counter()
        pending = {task.remote(job, cell): (index, cell) for index, cell in enumerate(cells)}
        outcomes: list[CellOutcome | None] = [None] * len(cells)
        done = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index, cell = pending.pop(ref)
                    outcomes[index] = self._outcome(ref, cell, started)
                    done += 1
                    if on_done is not None:
                        on_done(outcomes[index], done, len(cells))
        except BaseException:
            self._cancel(list(pending))
            raise
        return [o for o in outcomes if o is not None]

    def close(self) -> None:
        """Shut down the Ray instance this runner started (one it joined is left
        running)."""
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    # ---------------------------------------------------------------- helpers

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, log_to_driver=True)
        except ConnectionError as err:
            raise ConnectionError(
                f"--address {self.address!r}: no Ray cluster answered ({err}). Start one with "
                "`ray start --head` (or give its address), or leave --address out for a "
                "local instance."
            ) from None
        self._started = True

    def _resources(self) -> dict[str, float]:
        gpus = self.gpus_per_cell
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        return {"num_gpus": gpus, "num_cpus": self.cpus_per_cell}

    @staticmethod
    def _outcome(ref: Any, cell: GridCell, started: float) -> CellOutcome:
        try:
            records, seconds = ray.get(ref)
        except Exception as err:
            return CellOutcome(
                cell, (), time.perf_counter() - started, error=describe_error(_cause(err))
            )
        return CellOutcome(cell, tuple(records), seconds)

    @staticmethod
    def _cancel(refs: list) -> None:
        # Only tasks still running: force-cancelling one that has just finished can abort
        # the driver inside Ray (2.60: "Check failed: Tried to complete task that was not
        # pending", seen when the other model's probe had already returned).
        _, running = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        for ref in running:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing to cancel
                pass


def _probe_task(job: CellJob, model: str) -> str | None:
    """A Ray task: load ``model`` and run the job's checks; the name its cells are saved
    under."""
    return job.check(model, job.load(model))


def _cell_task(job: CellJob, cell: GridCell) -> tuple[list[Mapping], float]:
    """A Ray task: load the cell's model and run the cell; its records and seconds."""
    started = time.perf_counter()
    records = [dict(r) for r in job.run(cell, job.load(cell.model))]
    return records, time.perf_counter() - started


def _cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised (a ``RayTaskError`` wraps it in ``.cause``); a dead
    worker's error as it is."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err
