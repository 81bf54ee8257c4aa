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


# ---- the docs hook that executes them (docs/reference/notebooks.py), without executing


def notebooks_hook():
    """The MkDocs hook module, loaded from its file as MkDocs loads it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "reference" / "notebooks.py"
    spec = importlib.util.spec_from_file_location("icl_heads_docs_notebooks_hook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hook_makes_the_figures_read_offline():
    import nbformat

    hook = notebooks_hook()
    bundle = "/* plotly.js */ window.Plotly = {};"
    init = (
        '<script type="text/javascript">window.PlotlyConfig = {};</script>\n'
        f'<script type="text/javascript">{bundle}</script>'
    )
    mathjax = '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-svg.min.js"></script>'
    figure = (
        f'<div>{mathjax}<script>if (window.MathJax) {{}}</script><div class="plotly-graph-div">'
    )
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": init}),
        nbformat.v4.new_output("display_data", data={"text/html": figure}),
        nbformat.v4.new_output("display_data", data={"text/html": "<table></table>"}),
    ]
    nb.cells.append(cell)
    assert hook._offline_outputs(nb, bundle) == 2
    first, second, third = (o["data"]["text/html"] for o in cell.outputs)
    # plotly.js is loaded from the one file beside the copy
    assert bundle not in first and '<script charset="utf-8" src="plotly.min.js"></script>' in first
    assert first.startswith('<script type="text/javascript">window.PlotlyConfig')
    # no script from the network; the figure itself is kept
    assert "cdnjs" not in second and '<div class="plotly-graph-div">' in second
    assert "<script>if (window.MathJax) {}</script>" in second and third == "<table></table>"
    assert hook._offline_outputs(nb, bundle) == 0  # nothing left to change


def test_the_hook_in_skip_mode_executes_nothing_and_keeps_an_up_to_date_copy(tmp_path, monkeypatch):
    import nbformat

    hook = notebooks_hook()
    monkeypatch.setenv("ICL_HEADS_DOCS_NOTEBOOKS", "skip")
    monkeypatch.setenv("ICL_HEADS_NOTEBOOK_N", "8")
    out = tmp_path / "notebooks"
    out.mkdir()
    # an executed copy of 01 made from today's source and N; a stale one of 02
    executed = nbformat.read(NOTEBOOKS[0], as_version=4)
    executed.metadata["icl_heads_docs"] = {"key": hook._source_key(NOTEBOOKS[0], "8"), "ok": True}
    (out / NOTEBOOKS[0].name).write_text(nbformat.writes(executed), encoding="utf-8")
    stale = nbformat.read(NOTEBOOKS[1], as_version=4)
    stale.metadata["icl_heads_docs"] = {"key": "older", "ok": True}
    (out / NOTEBOOKS[1].name).write_text(nbformat.writes(stale), encoding="utf-8")

    hook.on_pre_build({"docs_dir": str(tmp_path)})

    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert nbformat.read(out / NOTEBOOKS[0].name, as_version=4).metadata["icl_heads_docs"]
    for path in NOTEBOOKS[1:]:  # the notebook itself, without outputs
        assert (out / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
