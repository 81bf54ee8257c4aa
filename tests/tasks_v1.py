"""The built-in task files as they were when the committed results (docs/results/data, 66
cells of sentiment, topic and category) were made: ``tests/data/tasks_v1/`` holds those
exact files and their catalog, so a test that recomputes a saved cell rebuilds the prompts
it was made from, even after the built-in data grew (issue 18 item 7).

Example::

    task = load_v1_task("sentiment", digest=saved.request["task_digest"])
"""

from __future__ import annotations

import json
from pathlib import Path

import icl_heads as ih

V1_DIR = Path(__file__).resolve().parent / "data" / "tasks_v1"


def load_v1_task(name: str, *, digest: str | None = None) -> ih.Task:
    """The version-1 built-in task ``name`` (its file, template and label order as they
    were), loaded by path. ``digest``: the task digest a saved cell recorded; a fixture
    that does not match it is an error, so a recompute can never run quietly on other
    examples.
    """
    catalog = json.loads((V1_DIR / "catalog.json").read_text(encoding="utf-8"))
    if name not in catalog:
        raise ValueError(f"No version-1 task {name!r} in {V1_DIR}; it has {sorted(catalog)}.")
    entry = catalog[name]
    task = ih.load_task(V1_DIR / entry["file"], template=entry["template"])
    assert task.name == name, (task.name, name)
    if digest is not None and task.digest != digest:
        raise ValueError(
            f"{V1_DIR / entry['file']} has digest {task.digest}, not the recorded {digest}; "
            "restore the file the result was made from."
        )
    return task
