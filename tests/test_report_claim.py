"""The report shows what decides a result's claim open at its top (issue 21 item 6): the
onset and effect tables, the effect and contrast rows of a TR/TL table; the other tables
folded. (The browser check that the onset table is visible without a click is in
tests/test_screenshots.py.)"""

from __future__ import annotations

import pandas as pd

from icl_heads.report import build_report, claim_tables
from icl_heads.results import ExperimentResult, make_table, table_row
from icl_heads.settings import Settings


def _ablation() -> ExperimentResult:
    rows = [
        table_row("baseline", "accuracy", 0.8, 0.7, 0.9, 32, kind="level"),
        table_row("TR", "accuracy", 0.6, 0.5, 0.7, 32, kind="level"),
        table_row("TR", "delta_accuracy", -0.2, -0.3, -0.1, 32, kind="effect"),
        table_row("TR - random_TR", "delta_accuracy", -0.15, -0.25, -0.05, 32, kind="contrast"),
    ]
    random_sets = pd.DataFrame({"condition": ["random_TR#0"] * 80, "value": 0.7})
    return ExperimentResult(
        "ablation", make_table(rows), Settings(), tables={"random_sets": random_sets}
    )


def test_claim_tables_are_the_effect_and_contrast_rows_of_a_trtl_table():
    tables = claim_tables(_ablation())
    assert list(tables) == ["effects and contrasts"]
    assert list(tables["effects and contrasts"]["kind"]) == ["effect", "contrast"]


def test_the_claim_comes_first_open_and_the_other_tables_folded():
    page = build_report(_ablation(), plotly_js_src="plotly.min.js")
    claim = page.index("<section class='claim' id='claim'>")
    assert claim < page.index('id="plot-figure0"')  # before the figure
    section = page[claim : page.index("</section>", claim)]
    assert "<details" not in section and "TR - random_TR" in section
    assert "<details><summary><b>random_sets</b> (80 rows)" in page


def test_no_claim_section_for_a_result_without_one():
    rows = [table_row("x", "accuracy", 0.5, 0.4, 0.6, 8)]
    page = build_report(
        ExperimentResult("custom", make_table(rows), Settings()), plotly_js_src="plotly.min.js"
    )
    assert "id='claim'" not in page
