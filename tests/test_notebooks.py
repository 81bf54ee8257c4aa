"""The four notebooks run top to bottom on the embedded model, so they never rot.

They are executed once per session, by the docs build (``tests/docs_site.py``: the MkDocs
hook ``docs/reference/notebooks.py`` runs each with a small N in a scratch directory into
the git-ignored ``docs/notebooks/``, which the site shows); this file checks that
execution instead of running them a second time. The committed notebooks stay without
outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_site import EXECUTED_NOTEBOOKS, NOTEBOOK_N, build_site

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "01_quickstart",
    "02_induction_and_prev_token",
    "03_tr_tl_heads",
    "04_geometry_and_task_vectors",
]
#: Prompts per set while testing (the notebooks read ICL_HEADS_NOTEBOOK_N).
TEST_N = NOTEBOOK_N


def test_the_four_notebooks_are_there_and_saved_without_outputs():
    import nbformat  # in the dev extra

    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.get("outputs") for c in code), f"{path.name} has outputs"
        assert "ICL_HEADS_NOTEBOOK_N" in code[0].source, f"{path.name} ignores the test's N"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    build = build_site(tmp_path_factory.getbasetemp())  # shared with the docs tests
    assert build.notebooks, "this session's docs build did not execute the notebooks"
    return build


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, build):
    import nbformat

    copy = EXECUTED_NOTEBOOKS / path.name
    assert copy.is_file(), f"the docs build did not execute {path.name}:\n{build.log}"
    nb = nbformat.read(copy, as_version=4)
    made = nb.metadata.get("icl_heads_docs", {})
    # executed by this session's build, with the test's N: not a copy left by an older build
    assert made.get("run_id") == build.run_id, f"{copy} is not from this build:\n{build.log}"
    assert made.get("n") == TEST_N
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, errors
    assert made.get("ok"), build.log
    # top to bottom: every code cell ran, in order
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code"]
    assert None not in counts and counts == sorted(counts), counts
    # the source's cells, unchanged apart from their outputs
    source = nbformat.read(path, as_version=4)
    assert [c.source for c in nb.cells] == [c.source for c in source.cells]


@pytest.mark.slow
def test_notebook_03_states_its_findings_from_the_data(build):
    """Notebook 03 defines P, a and both scores before using them, makes no claim before
    the data, and prints what each experiment's numbers show and a closing summary."""
    import nbformat

    nb = nbformat.read(EXECUTED_NOTEBOOKS / "03_tr_tl_heads.ipynb", as_version=4)
    intro = nb.cells[0].source
    for defined in ("`P`", "`a`", "**TR score** `= ‖P a‖²`", "**TL score**", "normalize"):
        assert defined in intro, defined
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "mostly different heads" not in prose  # the old claim made before any data
    assert "load_task('topic')" in "".join(c.source for c in nb.cells)

    def printed(cell) -> str:
        return "".join(
            o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout"
        )

    summaries = [printed(c) for c in nb.cells if "summary_lines(" in c.source]
    assert len(summaries) >= 4 and all(s.strip() for s in summaries), summaries
    assert sum("verdict" in s for s in summaries) >= 3  # ablation, correlation, steering
    closing = printed(nb.cells[-2])
    assert f"N={TEST_N}" in closing and "Caveat" in closing, closing
    assert "- TR ablation lowers label-space rate" in closing, closing
