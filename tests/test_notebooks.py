"""The four notebooks run top to bottom on the embedded model (executed with a small N in a
scratch directory, outputs discarded), so they never rot."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "01_quickstart",
    "02_induction_and_prev_token",
    "03_tr_tl_heads",
    "04_geometry_and_task_vectors",
]
#: Prompts per set while testing (the notebooks read ICL_HEADS_NOTEBOOK_N).
TEST_N = "8"


def test_the_four_notebooks_are_there_and_saved_without_outputs():
    import nbformat  # in the dev extra

    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.get("outputs") for c in code), f"{path.name} has outputs"
        assert "ICL_HEADS_NOTEBOOK_N" in code[0].source, f"{path.name} ignores the test's N"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, smol, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ICL_HEADS_NOTEBOOK_N", TEST_N)  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3").execute(cwd=str(tmp_path))
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, errors
