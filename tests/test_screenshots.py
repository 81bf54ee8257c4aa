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
