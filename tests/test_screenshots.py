"""Screenshots of a head map in headless Chromium: what a person sees (issue 21: "maps hide
most heads"). A map shaped like a real TR map (heavy-tailed, one head at 395.8 far above
the rest; built here, no model) is written to HTML, opened and screenshotted, and the map's
plot area is read pixel by pixel.

Runs wherever Chromium and Playwright are installed (CI installs both); skipped with the
reason elsewhere, a failure under CI (``CI`` set). ``ICL_HEADS_SCREENSHOT_DIR`` keeps the
screenshots for a person to look at."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from browser import keep_screenshot, open_browser

from icl_heads import viz
from icl_heads.heads import HeadScores
from icl_heads.viz.scales import NAN_COLOUR

#: The dominant head of the map and its value (the TR map of issue 21).
DOMINANT, DOMINANT_VALUE = (23, 3), 395.8
NOT_SCORED = (2, 5)


@pytest.fixture(scope="module")
def real_looking_map() -> HeadScores:
    """30 layers x 9 heads, log-normal like SmolLM2's TR map (median ~0.5, a few heads in
    the tens), one head at 395.8 and one head not scored."""
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=math.log(0.5), sigma=1.8, size=(30, 9)).clip(max=90.0)
    values[DOMINANT] = DOMINANT_VALUE
    values[NOT_SCORED] = math.nan
    return HeadScores(torch.tensor(values, dtype=torch.float32), name="tr_score", top_k=8)


def _look(page, fig, path) -> dict:
    """Open the figure's HTML, screenshot it, and read the map's plot area."""
    from PIL import Image

    html = viz.save_figure(fig, path.with_suffix(".html"))
    page.goto(html.as_uri())
    page.wait_for_selector(".heatmaplayer image", timeout=30_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    area = page.evaluate(
        """([nanLayer, nanHead]) => {
        const gd = document.querySelector('.js-plotly-plot'), b = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const cell = (l, h) => [b.left + xa._offset + xa.l2p(h), b.top + ya._offset + ya.l2p(l)];
        return {box: [b.left + xa._offset, b.top + ya._offset, xa._length, ya._length],
                nan: cell(nanLayer, nanHead),
                ticks: [...gd.querySelectorAll('.colorbar .cbaxis text, .colorbar text')]
                       .map(t => t.textContent),
                legend: [...gd.querySelectorAll('.legend text')].map(t => t.textContent),
                caption: [...gd.querySelectorAll('.annotation-text')].map(t => t.textContent)};
    }""",
        list(NOT_SCORED),
    )
    image = np.asarray(Image.open(path).convert("RGB"))
    left, top, width, height = (int(round(v)) for v in area["box"])
    pixels = image[top + 2 : top + height - 2, left + 2 : left + width - 2].reshape(-1, 3)
    background = np.array([int(NAN_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    cells = pixels[np.abs(pixels.astype(int) - background).max(-1) > 6]  # not gaps or NaN
    x, y = (int(round(v)) for v in area["nan"])
    return {
        "colours": len(np.unique(cells // 4, axis=0)),
        "white": float((cells.min(-1) >= 235).mean()),
        "nan_pixel": image[y, x],
        "background": background,
        **area,
    }


def test_default_scale_shows_every_head_of_a_map_one_head_dominates(real_looking_map, tmp_path):
    with open_browser() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        default = _look(page, real_looking_map.plot(highlight_top=None), tmp_path / "map.png")
        linear = _look(
            page,
            real_looking_map.plot(highlight_top=None, scale="linear"),
            tmp_path / "map-linear.png",
        )
        assert not errors, errors
    keep_screenshot(tmp_path / "map.png", "map-default.png")
    keep_screenshot(tmp_path / "map-linear.png", "map-linear.png")

    # linear: the one head at 395.8 takes the top of the scale and the map is mostly white
    assert linear["white"] > 0.75, linear["white"]
    # the default scale spreads the heads over many colours, few of them white
    assert default["white"] < 0.25, default["white"]
    assert default["colours"] > 2 * linear["colours"] and default["colours"] > 60, (
        default["colours"],
        linear["colours"],
    )
    # the colour bar still reads in real values: its top tick is the dominant head's score
    assert "396" in default["ticks"], default["ticks"]
    assert any(t in default["ticks"] for t in ("1", "10", "100")), default["ticks"]
    # the head not scored is grey, named in the caption; the outlines are in the legend
    assert np.abs(default["nan_pixel"].astype(int) - default["background"]).max() <= 6
    caption = " ".join(default["caption"])
    assert "Grey cells: heads not scored (NaN)" in caption
    assert "TR score: how much the head writes into the label subspace" in caption
    assert "symlog" in caption


def test_outlines_are_named_in_the_legend(real_looking_map, tmp_path):
    with open_browser() as browser:
        page = browser.new_page()
        seen = _look(page, real_looking_map.plot(highlight_top=None), tmp_path / "top.png")
    assert seen["legend"] == ["outlined: top 8 heads"], seen["legend"]


# --------------------------------------------------------------------------- the report


def _rects_overlap(rects: list[list[float]]) -> list[tuple[int, int]]:
    """Pairs of [left, top, right, bottom] boxes that overlap by more than a pixel."""
    return [
        (i, j)
        for i, a in enumerate(rects)
        for j, b in enumerate(rects[i + 1 :], start=i + 1)
        if a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1
    ]


@pytest.fixture(scope="module")
def report_page(real_looking_map, tmp_path_factory):
    """A report of a TR map, a TL map whose lowest head is the top TR head, a per-head
    effect with a tiny value at that head, and a 44-token example with newlines."""
    from icl_heads.attention_patterns import AttentionExample
    from icl_heads.report import write_report

    rng = np.random.default_rng(1)
    tr = real_looking_map
    tl_values = rng.normal(0, 1.0, size=(30, 9))
    tl_values[DOMINANT] = -8.3  # the top TR head pushes against the gold label most
    tl = HeadScores(torch.tensor(tl_values, dtype=torch.float32), name="tl_score", top_k=8)
    effect = torch.full((30, 9), 0.8826)
    effect[DOMINANT] = 6.585e-8
    for i, (layer, head) in enumerate([(27, 1), (18, 6), (29, 8)]):  # a cluster of top heads
        tr.scores[layer, head] = 35.0 + 0.4 * i
        tl.scores[layer, head] = 0.6 + 0.2 * i
    words = (
        "Review : great movie , loved it \n Sentiment : positive \n\n Review : boring and "
        "too long \n Sentiment : negative \n\n Review : the cast was wonderful \n "
        "Sentiment : positive \n\n Review : a waste of time \n Sentiment :"
    ).split(" ")
    tokens = ["<|endoftext|>"] + [w if w == "\n" else " " + w for w in words]
    T = len(tokens)
    weights = torch.rand(30, 9, T, T, generator=torch.Generator().manual_seed(0)).tril()
    example = AttentionExample(tokens, weights / weights.sum(-1, keepdim=True), text="x")
    path = tmp_path_factory.mktemp("report") / "report.html"
    effects = {"delta_label_space_rate": HeadScores(effect, name="delta_label_space_rate")}
    return write_report(path, {"TR": tr, "TL": tl}, maps=effects, example=example)


def test_report_detail_panel_reads_as_a_person_needs_it(report_page, tmp_path):
    with open_browser((1500, 1100)) as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(report_page.as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
        page.hover("#detail-pattern .nsewdrag")  # shows the mode bar
        page.wait_for_timeout(300)
        seen = page.evaluate("""() => {
            const box = e => { const r = e.getBoundingClientRect();
                               return [r.left, r.top, r.right, r.bottom]; };
            const q = s => [...document.querySelectorAll(s)];
            const pattern = '#detail-pattern ';
            return {
              head: document.getElementById('detail-head').textContent,
              x: q(pattern + '.xtick text').map(box), y: q(pattern + '.ytick text').map(box),
              labels: q(pattern + '.xtick text, ' + pattern + '.ytick text')
                      .map(t => t.textContent),
              fonts: q(pattern + '.xtick text, ' + pattern + '.ytick text')
                     .map(t => parseFloat(getComputedStyle(t).fontSize)),
              title: box(document.querySelector(pattern + '.gtitle')),
              modebar: box(document.querySelector(pattern + '.modebar')),
              values: q('#detail-scores tr').slice(1).map(r => r.cells[1].textContent),
              names: q('#detail-scores tr').slice(1).map(r => r.cells[0].textContent),
              flags: document.getElementById('detail-flags').textContent,
              scatter: q('#plot-scatter .textpoint text').filter(t => t.textContent)
                       .map(box),
              legend: q('#plot-maps .legend text').map(t => t.textContent),
              mapsTitle: box(document.querySelector('#plot-maps .gtitle')),
              mapsModebar: box(document.querySelector('#plot-maps .modebar')),
              facetTitles: q('#plot-maps .annotation').slice(0, 3).map(box),
            };
        }""")
        page.screenshot(path=str(tmp_path / "report.png"))
        assert not errors, errors
    keep_screenshot(tmp_path / "report.png", "report-detail.png")

    assert seen["head"] == "L23H3"  # the top TR head is selected at load
    # token labels: readable (>= 10 px), no literal "\n" but the visible ⏎, never overlapping
    assert min(seen["fonts"]) >= 10, seen["fonts"]
    assert "⏎" in seen["labels"] and not any("\\n" in t for t in seen["labels"])
    assert len(seen["y"]) == 44  # every query token is labelled
    assert not _rects_overlap(seen["x"]) and not _rects_overlap(seen["y"])
    # Plotly's mode bar never covers a title (the pattern's, the maps')
    assert not _rects_overlap([seen["title"], seen["modebar"]]), seen
    assert not _rects_overlap([seen["mapsTitle"], seen["mapsModebar"]]), seen
    assert not _rects_overlap([seen["mapsTitle"], *seen["facetTitles"]]), seen
    # one number format: no exponents, 4 significant digits
    assert seen["values"] == ["395.8", "-8.300", "0.0000"], seen["values"]
    assert seen["names"] == ["TR", "TL", "Change in label-space rate"]
    # the disagreement is flagged where the head is shown
    assert "L23H3 is #1 by TR but ranks 270/270 by TL (the lowest)" in seen["flags"]
    # scatter labels: some, none overlapping; the legend names the outlines and selection
    assert len(seen["scatter"]) >= 3 and not _rects_overlap(seen["scatter"]), seen["scatter"]
    assert seen["legend"] == ["outlined: top 8 heads of each map", "selected"], seen["legend"]
