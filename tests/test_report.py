"""The linked HTML report (icl_heads.report): what the page holds, that it needs no network,
and, in headless Chromium, that it draws the heatmaps and that clicking a head fills the
detail panel (the check a person would make).

The browser test runs wherever Chromium and Playwright are installed (the README's
``apt-get install -y chromium``; Playwright comes with the ``dev`` extra and drives the
system Chromium: no browser download). Where no Chromium exists it is skipped with the
reason, except under CI (``CI`` set), where a missing browser fails the test."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import CHROMIUM_FLAGS, browser_or_skip

import icl_heads as ih
from icl_heads import attention_patterns, report
from icl_heads.attention_patterns import AttentionExample, attention_example
from icl_heads.heads import HeadScores
from icl_heads.report import build_report, write_report
from icl_heads.results import ExperimentResult, make_table, table_row

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tiny_prompts):
    """Real maps and patterns of the tiny model: TR, TL, induction."""
    tr, tl = ih.tsla_scores(tiny_llama, tiny_prompts, progress=False)
    induction = ih.induction_scores(tiny_llama, T=10, n_sequences=4, progress=False)
    example = attention_example(tiny_llama, tiny_prompts, index=1)
    return {"TR": tr, "TL": tl, "induction": induction}, example


def _data(page: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="icl-heads-data">(.*?)</script>', page, re.S
    )
    assert match, "no data block"
    return json.loads(match.group(1).replace("<\\/", "</"))


def _patterns(data: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data["example"]["patterns"]), dtype=np.uint8)


# --------------------------------------------------------------------------- imports


def test_report_keeps_attention_example_importable_from_its_new_home():
    """Transitional: ``icl_heads.report.attention_example`` is the function of
    :mod:`icl_heads.attention_patterns` (the report only draws)."""
    assert report.attention_example is attention_patterns.attention_example
    assert report.AttentionExample is attention_patterns.AttentionExample


# --------------------------------------------------------------------------- the page


def test_report_page_and_panel_come_from_the_package_data_templates():
    """The page's HTML, CSS and script live in ``icl_heads/data/report_*.html`` (shipped as
    package data); every ``{{slot}}`` is filled in one pass, so text put in (a condition
    named like a slot) stays as it is."""
    data = resources.files("icl_heads.data")
    page_template = data.joinpath("report_page.html").read_text(encoding="utf-8")
    panel = data.joinpath("report_linked.html").read_text(encoding="utf-8")
    slots = set(re.findall(r"\{\{(\w+)\}\}", page_template))
    assert slots == {"title", "heading", "subtitle", "plotly", "blocks", "data"}
    assert not re.findall(r"\{\{\w+\}\}", panel)
    assert '"data/*.html"' in (Path(__file__).parents[1] / "pyproject.toml").read_text()

    scores = HeadScores(torch.arange(8.0).reshape(2, 4), name="tr_score")
    table = make_table([table_row("{{blocks}}", "accuracy", 0.5, 0.4, 0.6, 4)])
    info = ih.PromptInfo(task="sentiment", k=3, n=10, seed=0, perturbation="gold")
    result = ExperimentResult("demo {{data}}", table, info, maps={"TR": scores})
    page = build_report(result, plotly_js_src="plotly.min.js")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert "window.iclHeadsSelect = select;" in page and "#detail {" in page
    assert '<aside id="detail"' in page  # the linked panel
    assert "<td>{{blocks}}</td>" in page and "<h1>icl-heads: demo {{data}} (" in page
    assert page.count('id="icl-heads-data"') == 1 and page.count("<style>") == 1
    assert _data(page)["facets"] == ["TR"]


def test_report_holds_maps_example_and_ranks(tiny_run, tmp_path):
    maps, example = tiny_run
    path = write_report(
        tmp_path / "r" / "report.html", maps, example=example, command="icl-heads find-heads"
    )
    page = path.read_text()
    data = _data(page)
    assert data["facets"] == ["TR", "TL", "induction"]
    assert (data["n_layers"], data["n_heads"]) == (2, 4)
    quantity = next(q for q in data["quantities"] if q["name"] == "TL")
    assert quantity["values"] == pytest.approx(maps["TL"].scores.flatten().tolist(), rel=1e-6)
    assert quantity["ranks"] == maps["TL"].rank().flatten().int().tolist()
    assert data["top"]["TR"] == [[h.layer, h.head] for h in maps["TR"].top()]
    # the example's lower triangles, quantised to bytes, head by head
    T = data["example"]["T"]
    raw = _patterns(data).reshape(2, 4, T * (T + 1) // 2)
    rows, cols = np.tril_indices(T)
    expected = np.rint(example.patterns.numpy()[1, 2][rows, cols] * 255)
    assert np.abs(raw[1, 2].astype(float) - expected).max() <= 1
    assert "maps" in data["plots"] and "scatter" in data["plots"]
    assert "icl-heads find-heads" in page


def test_report_embeds_plotly_and_fetches_nothing(tiny_run, tmp_path):
    maps, example = tiny_run
    page = write_report(tmp_path / "report.html", maps, example=example).read_text()
    assert "<script src=" not in page and "<link" not in page
    assert len(page) > 1_000_000  # plotly.js is inside


def test_report_can_share_one_plotly_file_beside_several_reports(tiny_run, tmp_path):
    maps, _ = tiny_run
    for name in ("a", "b"):
        page = write_report(
            tmp_path / name / "report.html", maps, plotly_js="../plotly.min.js"
        ).read_text()
        assert '<script src="../plotly.min.js"></script>' in page and len(page) < 1_000_000
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    beside = write_report(tmp_path / "c" / "report.html", maps, plotly_js="beside")
    assert (beside.parent / "plotly.min.js").is_file()
    with pytest.raises(ValueError, match="relative"):
        write_report(tmp_path / "d.html", maps, plotly_js=str(tmp_path / "abs.js"))


def test_report_of_an_experiment_shows_its_figure_table_settings_and_per_head_rows(tiny_run):
    maps, example = tiny_run
    info = ih.PromptInfo(task="sentiment", k=3, n=10, seed=0, perturbation="gold")
    heads = maps["TR"].to_frame()[["layer", "head"]]
    heads["delta_logit_diff"] = np.linspace(-1, 1, len(heads))
    table = make_table(
        [
            table_row("baseline", "accuracy", 0.5, 0.4, 0.6, 10, kind="level"),
            table_row("TR", "accuracy", 0.3, 0.2, 0.4, 10, kind="level"),
        ]
    )
    result = ExperimentResult(
        "ablation", table, info, maps={"TR": maps["TR"]}, tables={"heads": heads}
    )
    page = build_report(result, maps={"induction": maps["induction"]}, example=example)
    data = _data(page)
    assert data["facets"] == ["TR", "induction"]
    assert [q["name"] for q in data["quantities"]] == ["TR", "induction", "delta_logit_diff"]
    assert "figure0" in data["plots"]  # the ablation bars
    assert "<h2>Results</h2>" in page and "Settings (how this was made)" in page
    assert "&quot;task&quot;: &quot;sentiment&quot;" in page  # the settings, escaped


def test_report_refuses_maps_of_another_model(tiny_run, tmp_path):
    maps, example = tiny_run
    with pytest.raises(ValueError, match="different shapes"):
        build_report({"x": HeadScores(torch.zeros(3, 3))}, example=example)
    with pytest.raises(TypeError, match="ExperimentResult"):
        build_report(42)
    with pytest.raises(ValueError, match=".html"):
        write_report(tmp_path / "r.txt", maps)


def test_report_escapes_text_that_could_close_the_script(tmp_path):
    tokens = ["</script><b>", " x"]
    example = AttentionExample(tokens, torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]]), text="</script>")
    page = build_report({"m": HeadScores(torch.ones(1, 1))}, example=example)
    body = page.split('id="icl-heads-data">', 1)[1]
    assert "</script><b>" not in body.split("</script>", 1)[0]
    assert _data(page)["example"]["tokens"][0] == "</script><b>"


def test_report_names_maps_by_title_flags_disagreements_and_keeps_one_number_format():
    """Issue 21: snake_case names, an unflagged top TR head with the lowest TL score, and a
    table mixing 6.585e-8 with 0.8826."""
    tr = HeadScores(torch.arange(8.0).reshape(2, 4), name="tr_score")
    tl = HeadScores(-torch.arange(8.0).reshape(2, 4), name="tl_score")  # top TR = lowest TL
    effect = HeadScores(torch.full((2, 4), 0.8826), name="delta_logit_diff")
    table = make_table(
        [
            table_row("TR", "accuracy", 6.585e-8, 0.0, 0.8826, 4),
            table_row("TL", "accuracy", 0.8826, 0.5, 1.0, 4),
        ]
    )
    info = ih.PromptInfo(task="sentiment", k=3, n=10, seed=0, perturbation="gold")
    result = ExperimentResult("demo", table, info, maps={"TR": tr, "TL": tl})
    page = build_report(result, maps={"delta_logit_diff": effect}, plotly_js_src="p.js")
    data = _data(page)
    titles = {q["name"]: q["title"] for q in data["quantities"]}
    assert titles == {"TR": "TR", "TL": "TL", "delta_logit_diff": "Change in logit difference"}
    assert "(unit: logits)" in data["quantities"][2]["caption"]
    assert {"head": [1, 3], "text": "L1H3 is #1 by TR but ranks 8/8 by TL (the lowest)."} in (
        data["flags"]
    )
    assert "<h2>Where the maps disagree</h2>" in page
    results = page.split("<h2>Results</h2>", 1)[1].split("</table>", 1)[0]
    assert "<td>0.0000</td>" in results and "<td>0.8826</td>" in results
    assert not re.search(r"\de[-+]?\d", results)  # no exponents


# --------------------------------------------------------------------------- in a browser


def _cell_centre(page, layer: int, head: int, facet: int = 0) -> tuple[float, float]:
    """Viewport coordinates of a heatmap cell, from Plotly's own axis maps."""
    return tuple(
        page.evaluate(
            """([layer, head, facet]) => {
            const gd = document.getElementById('plot-maps');
            gd.scrollIntoView();
            const s = facet ? String(facet + 1) : '';
            const xa = gd._fullLayout['xaxis' + s], ya = gd._fullLayout['yaxis' + s];
            const box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(head), box.top + ya._offset + ya.l2p(layer)];
        }""",
            [layer, head, facet],
        )
    )


def test_report_draws_the_maps_and_a_click_shows_the_head_in_chromium(tiny_run, tmp_path):
    sync_playwright, executable = browser_or_skip()
    from PIL import Image

    maps, example = tiny_run
    path = write_report(tmp_path / "report.html", maps, example=example)
    shot = tmp_path / "report.png"
    errors: list[str] = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
            offline=True,
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
            assert not errors, errors
            assert all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests

            # the heatmaps were drawn: Plotly elements, one heatmap image per map, and
            # coloured pixels inside the first map's plot area of the screenshot
            assert page.locator("#plot-maps.js-plotly-plot").count() == 1
            assert page.locator("#plot-maps .heatmaplayer image").count() == 3
            page.screenshot(path=str(shot))
            area = page.evaluate("""() => {
                const gd = document.getElementById('plot-maps'), b = gd.getBoundingClientRect();
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                return [b.left + xa._offset, b.top + ya._offset, xa._length, ya._length];
            }""")
            image = Image.open(shot).convert("RGB")
            assert image.size == (1400, 1000)
            left, top, width, height = (int(round(v)) for v in area)
            pixels = np.asarray(image.crop((left, top, left + width, top + height)))
            assert pixels.size > 0
            non_white = (pixels.min(axis=-1) < 235).mean()
            colours = len(np.unique(pixels.reshape(-1, 3) // 8, axis=0))
            assert non_white > 0.2 and colours > 8, (non_white, colours)

            # the first head is selected at load; a click on another cell selects that head
            first = maps["TR"].top()[0]
            assert page.inner_text("#detail-head") == str(first)
            target = next(h for h in maps["TL"].top(8) if h != first)
            x, y = _cell_centre(page, target.layer, target.head, facet=1)
            page.mouse.click(x, y)
            page.wait_for_function(f"document.body.dataset.selected === '{target}'", timeout=10_000)
            detail = page.inner_text("#detail")
            assert page.inner_text("#detail-head") == str(target)
            assert f"layer {target.layer}, head {target.head}" in detail
            rank = int(maps["TL"].rank()[target.layer, target.head])
            assert f"{rank} / 8" in detail  # its rank in the TL map
            value = maps["TL"][target]
            assert f"{value:.4g}"[:5] in detail or f"{value:.3e}"[:5] in detail
            assert "From the query (last) token" in detail
            assert page.locator("#detail-pattern .heatmaplayer image").count() == 1
            assert page.evaluate("location.hash") == f"#{target}"
            # the selection is outlined on every map
            outlines = page.evaluate(
                "document.getElementById('plot-maps').layout.shapes"
                ".filter(s => s.name === 'selected').length"
            )
            assert outlines == 3
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(tmp_path / "report-clicked.png"))
            # a click on a point of the scatter selects that head too
            other = next(h for h in maps["TR"].top(8) if h != target)
            page.evaluate("document.getElementById('plot-scatter').scrollIntoView()")
            point = page.evaluate(
                """([layer, head]) => {
                const gd = document.getElementById('plot-scatter'), t = gd._fullData[0];
                const i = t.customdata.findIndex(c => c[0] === layer && c[1] === head);
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const b = gd.getBoundingClientRect();
                return [b.left + xa._offset + xa.l2p(t.x[i]), b.top + ya._offset + ya.l2p(t.y[i])];
            }""",
                [other.layer, other.head],
            )
            page.mouse.click(*point)
            page.wait_for_function(f"document.body.dataset.selected === '{other}'", timeout=10_000)
            assert page.inner_text("#detail-head") == str(other)
            assert not errors, errors
        finally:
            browser.close()
    # keep the screenshot where a person can look at it
    keep = os.environ.get("ICL_HEADS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
        shutil.copy(tmp_path / "report-clicked.png", Path(keep) / "report-clicked.png")
    assert shot.stat().st_size > 10_000
    assert not math.isnan(value)


def test_png_decoding_is_available_for_the_browser_check():
    pytest.importorskip("PIL")
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).getpixel((0, 0)) == (255, 0, 0)
