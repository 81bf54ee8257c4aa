"""Build the documentation site once per test session, for every test that reads it
(``tests/test_docs.py``, ``tests/test_site_links.py``, ``tests/test_notebooks.py``).

The build goes into the session's pytest base temp folder; a record of the build's exit code
and log beside it lets the next caller reuse it instead of building again.

The build runs the notebooks (``docs/reference/notebooks.py``, an MkDocs hook) when the
session runs a test that needs their outputs (:func:`needs_notebooks`: any selected ``slow``
test; those are the ones that read them): each is executed once, afresh, with
:data:`NOTEBOOK_N` prompts per set, into ``docs/notebooks/`` (git-ignored), and the build's
run id is recorded in each executed copy, so ``tests/test_notebooks.py`` checks this
session's execution instead of running the notebooks a second time. A session of
``-m "not slow"`` builds the notebook pages without executing anything (seconds, not
minutes): its link checks need the pages, not their outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Prompts per set while testing (the notebooks read ICL_HEADS_NOTEBOOK_N).
NOTEBOOK_N = "8"
#: Where the build writes the executed notebooks (``docs/reference/notebooks.py``).
EXECUTED_NOTEBOOKS = ROOT / "docs" / "notebooks"


@dataclass(frozen=True)
class SiteBuild:
    """A ``mkdocs build --strict`` of the repository's ``docs/`` into ``site``."""

    site: Path
    returncode: int
    log: str
    #: recorded by the build in each notebook it executed (``metadata.icl_heads_docs``)
    run_id: str
    seconds: float
    #: whether the build executed the notebooks
    notebooks: bool


def needs_notebooks(session) -> bool:
    """Whether the pytest ``session`` runs a test that reads the executed notebooks: any
    selected test marked ``slow`` (``-m "not slow"`` selects none).

    Example::

        build_site(tmp_path_factory.getbasetemp(), notebooks=needs_notebooks(request.session))
    """
    return any(item.get_closest_marker("slow") for item in session.items)


def build_site(base: Path, *, notebooks: bool = True) -> SiteBuild:
    """``mkdocs build --strict`` into ``base / "site"``, with the notebooks executed afresh
    (:data:`NOTEBOOK_N` prompts per set) if ``notebooks``, else none executed; or the build
    already made there (whatever ``notebooks`` it had: one build per session).

    Example::

        build = build_site(tmp_path_factory.getbasetemp())
        assert build.returncode == 0, build.log
    """
    site, record = base / "site", base / "site-build.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        return SiteBuild(site, **saved)
    run_id = uuid.uuid4().hex
    env = {
        **os.environ,
        "ICL_HEADS_DOCS_NOTEBOOKS": "fresh" if notebooks else "skip",
        "ICL_HEADS_NOTEBOOK_N": NOTEBOOK_N,
        "ICL_HEADS_DOCS_RUN_ID": run_id,
    }
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,  # executing the notebooks took 38 min on a 2-core box at load ~18
    )
    build = SiteBuild(
        site=site,
        returncode=run.returncode,
        log=(run.stdout + run.stderr)[-6000:],
        run_id=run_id,
        seconds=round(time.perf_counter() - start, 1),
        notebooks=notebooks,
    )
    saved = {k: v for k, v in build.__dict__.items() if k != "site"}
    record.write_text(json.dumps(saved), encoding="utf-8")
    return build
