"""What the notebooks write lands where git ignores it, so running one from ``notebooks/``
(as Jupyter does) leaves no untracked files in the repository.

Every path literal a notebook passes to a writing call (``write_report``, ``.save``, ...)
must be relative and under ``results/``, and ``git check-ignore`` must ignore it from
``notebooks/`` (``.gitignore``: ``/notebooks/results/``), as it ignores the CLI's
``results/`` at the repository root.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Calls whose first argument is a path the call writes.
WRITERS = {
    "write_report",
    "save",
    "save_figure",
    "to_csv",
    "to_json",
    "write_html",
    "write_image",
    "write_text",
    "savefig",
    "write_trtl_page",
    "write_geometry_page",
}


def written_paths(source: str) -> list[str]:
    """The string-literal paths that ``source`` (a code cell) passes to a writing call."""
    code = "\n".join(
        line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
    )
    paths = []
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        if name in WRITERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            paths.append(first.value)
    return paths


def _ignored(path: str, cwd: Path) -> bool:
    run = subprocess.run(["git", "check-ignore", "-q", path], cwd=cwd, capture_output=True)
    assert run.returncode in (0, 1), run.stderr.decode()
    return run.returncode == 0


@pytest.fixture(scope="module")
def git_checkout():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return ROOT


def test_notebook_outputs_go_under_results():
    found = {}
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                for out in written_paths("".join(cell["source"])):
                    found[f"{path.name}: {out}"] = out
    assert found, "no notebook writes a file: update this test's WRITERS"
    bad = [
        k for k, out in found.items() if Path(out).is_absolute() or Path(out).parts[0] != "results"
    ]
    assert not bad, f"notebook outputs outside results/: {bad}"


def test_notebook_and_cli_results_folders_are_ignored_by_git(git_checkout):
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                for out in written_paths("".join(cell["source"])):
                    assert _ignored(out, git_checkout / "notebooks"), (
                        f"{path.name} writes notebooks/{out}, which git does not ignore"
                    )
    assert _ignored("results/detect/result.json", git_checkout)
    # the results pages' data stay tracked
    assert not _ignored("docs/results/data/new/result.json", git_checkout)
