"""Build the documentation site once per test session, for every test that reads it
(``tests/test_docs.py``, ``tests/test_site_links.py``).

The build goes into the session's pytest base temp folder; a record of the build's exit code
and log beside it lets the second caller reuse it instead of building again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SiteBuild:
    """A ``mkdocs build --strict`` of the repository's ``docs/`` into ``site``."""

    site: Path
    returncode: int
    log: str


def build_site(base: Path) -> SiteBuild:
    """``mkdocs build --strict`` into ``base / "site"``, or the build already made there.

    Example::

        build = build_site(tmp_path_factory.getbasetemp())
        assert build.returncode == 0, build.log
    """
    site, record = base / "site", base / "site-build.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        return SiteBuild(site, saved["returncode"], saved["log"])
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (run.stdout + run.stderr)[-4000:]
    record.write_text(json.dumps({"returncode": run.returncode, "log": log}), encoding="utf-8")
    return SiteBuild(site, run.returncode, log)
