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
import pandas as pd
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


# --------------------------------------------------------------------------- a comparison figure
#
# The head-ablation geometry figure (``result.plot()`` of ``head_ablation_geometry``: issue 21
# item 6). A result shaped like the SmolLM2 run, built here: ablating the
# previous-token heads (PTH) *raises* late probe accuracy (+0.07) while random sets lower it
# (-0.20); ablating the induction heads (IH) lowers late alignment. What a person must see:
# one panel per metric and ablated set, the zero (clean) line and the chance line, the set's
# curve apart from its random sets' curve (above / below zero, in distinct colours), the
# y-axis titles and the legend entries. Each check is also shown to fail on a figure broken
# in that one way (``BREAKS``).

STATES = 31
ABLATION_SHIFTS = {  # late change from clean: (probe_accuracy, mean_diff_cosine)
    "PTH": (0.07, -0.02),
    "random_PTH": (-0.20, -0.05),
    "IH": (-0.02, -0.08),
    "random_IH": (-0.01, -0.01),
}
ZERO_LINE, CHANCE_LINE, RANDOM_LINE = (0x33, 0x33, 0x33), (0xB2, 0x22, 0x22), (0x88, 0x88, 0x88)


@pytest.fixture(scope="module")
def ablation_result():
    from dataclasses import dataclass

    from icl_heads.results import ExperimentResult, make_table, table_row
    from icl_heads.settings import Settings

    @dataclass(frozen=True)
    class Labels(Settings):
        labels: tuple[str, ...] = ("negative", "positive")

    rng = np.random.default_rng(0)
    s = np.arange(STATES)
    clean = {
        "probe_accuracy": 0.5 + 0.35 * (1 - np.exp(-s / 6)),
        "mean_diff_cosine": 0.02 + 0.3 / (1 + np.exp(-(s - 20) / 2)),
    }
    rows, effect = [], []
    for condition in ["baseline", *ABLATION_SHIFTS]:
        for j, metric in enumerate(clean):
            for state in s:
                change = 0.0
                if condition != "baseline" and state >= 3:  # the sets sit in block 2
                    change = ABLATION_SHIFTS[condition][j] * min(1.0, (state - 2) / 8)
                value = clean[metric][state] + change + rng.normal(0, 0.004)
                rows.append(
                    table_row(condition, metric, value, value - 0.05, value + 0.05, 64, layer=state)
                )
                if condition != "baseline":
                    effect.append(
                        table_row(
                            condition, metric, change, change - 0.03, change + 0.03, 64, layer=state
                        )
                    )
    return ExperimentResult(
        "head_ablation_geometry", make_table(rows), Labels(), tables={"effect": make_table(effect)}
    )


def _panels(fig) -> list[dict]:
    """Each subplot of a figure: its axes and title (make_subplots: row-major)."""
    titles = [a.text for a in fig.layout.annotations if a.xref == "paper"]
    names = sorted({(t.xaxis or "x", t.yaxis or "y") for t in fig.data}, key=lambda p: p[0])
    names.sort(key=lambda p: int(p[0][1:] or 1))
    return [
        {"x": x, "y": y, "title": titles[i] if i < len(titles) else ""}
        for i, (x, y) in enumerate(names)
    ]


def _near(pixels: np.ndarray, colour, tolerance: int = 40) -> np.ndarray:
    return np.abs(pixels.astype(int) - np.array(colour)).max(-1) <= tolerance


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def look_at_comparison(page, fig, path) -> dict:
    """Open the figure, screenshot it, and read what a person sees: per panel its title,
    where zero is, and where the pixels of each line colour lie; the y titles; the legend."""
    from PIL import Image

    from icl_heads import viz

    html = viz.save_figure(fig, path.with_suffix(".html"), include_plotlyjs="directory")
    page.goto(html.as_uri())
    page.wait_for_selector(".main-svg", timeout=30_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)
    panels = _panels(fig)
    seen = page.evaluate(
        """(panels) => {
        const gd = document.querySelector('.js-plotly-plot'), b = gd.getBoundingClientRect();
        const full = gd._fullLayout, axis = id => full[id[0] + 'axis' + id.slice(1)];
        const box = e => { const r = e.getBoundingClientRect();
                           return [r.left, r.top, r.width, r.height]; };
        return {
          panels: panels.map(p => { const xa = axis(p.x), ya = axis(p.y);
            return {box: [b.left + xa._offset, b.top + ya._offset, xa._length, ya._length],
                    zero: ya.range[0] <= 0 && 0 <= ya.range[1]
                          ? b.top + ya._offset + ya.l2p(0) : null}; }),
          titles: [...gd.querySelectorAll('.infolayer .gtitle, .annotation-text')]
                  .map(t => t.textContent),
          ytitles: [...gd.querySelectorAll('text[class^="y"][class$="title"]')]
                   .map(t => ({text: t.textContent, box: box(t)})),
          legend: [...gd.querySelectorAll('.legend .legendtext')].map(t => t.textContent),
          width: document.documentElement.clientWidth,
        };
    }""",
        [{"x": p["x"], "y": p["y"]} for p in panels],
    )
    image = np.asarray(Image.open(path).convert("RGB"))
    colours = {"zero": ZERO_LINE, "chance": CHANCE_LINE, "random": RANDOM_LINE}
    for trace in fig.data:
        if trace.name and trace.name.endswith(" ablated") and trace.line.color:
            colours[trace.name[: -len(" ablated")]] = _hex(trace.line.color)
    for panel, where in zip(panels, seen["panels"], strict=True):
        left, top, width, height = (int(round(v)) for v in where["box"])
        area = image[top + 3 : top + height - 3, left + 3 : left + width - 3]
        ys = np.arange(top + 3, top + height - 3)[:, None].repeat(area.shape[1], 1)
        panel["zero_y"] = where["zero"]
        panel["width"] = area.shape[1]
        if where["zero"] is not None:  # the dark dashed line along y = 0
            row = int(round(where["zero"])) - top - 3
            band = area[max(0, row - 1) : row + 2]
            panel["zero_cover"] = float(_near(band, ZERO_LINE, 50).any(0).mean())
        else:
            panel["zero_cover"] = 0.0
        panel["median_y"] = {
            name: float(np.median(ys[_near(area, colour, 30)]))
            if _near(area, colour, 30).any()
            else None
            for name, colour in colours.items()
        }
        panel["count"] = {name: int(_near(area, c, 30).sum()) for name, c in colours.items()}
    return {**seen, "panels": panels, "colours": colours}


def comparison_checks(seen: dict) -> dict[str, bool]:
    """What a person must see in the head-ablation figure, each a yes / no."""
    panels = {p["title"]: p for p in seen["panels"]}
    expected = {
        f"{m}: {s} ablated" for m in ("probe_accuracy", "mean_diff_cosine") for s in ("PTH", "IH")
    }
    accuracy = [p for t, p in panels.items() if t.startswith("probe_accuracy")]
    cosine = [p for t, p in panels.items() if t.startswith("mean_diff_cosine")]
    pth = panels.get("probe_accuracy: PTH ablated")
    colours = seen["colours"]

    def apart(a, b) -> bool:
        return (
            a in colours
            and b in colours
            and bool(np.abs(np.array(colours[a]) - np.array(colours[b])).max() > 60)
        )

    def drawn(name: str) -> bool:  # the set's colour is on the screen in its panels
        return all(p["count"].get(name, 0) > 50 for t, p in panels.items() if f" {name} " in t)

    checks = {
        # one panel per metric and ablated set, each titled so
        "one panel per ablated set": set(panels) == expected,
        # the clean level (zero) drawn across every panel
        "zero line in every panel": bool(panels)
        and all(p["zero_cover"] > 0.3 for p in panels.values()),
        # the chance line in the accuracy panels only
        "chance line": bool(accuracy)
        and all(p["count"]["chance"] > 50 for p in accuracy)
        and all(p["count"]["chance"] == 0 for p in cosine),
        # PTH's curve above zero (it raises accuracy), its random sets' below, far apart
        "curves apart": pth is not None
        and pth["zero_y"] is not None
        and None not in (pth["median_y"].get("PTH"), pth["median_y"]["random"])
        and pth["median_y"]["PTH"] < pth["zero_y"] - 10
        and pth["median_y"]["random"] > pth["zero_y"] + 20,
        # the sets and the random sets in distinct colours
        "distinct colours": apart("PTH", "IH")
        and apart("PTH", "random")
        and apart("IH", "random")
        and drawn("PTH")
        and drawn("IH"),
        # a y title per row, on the page, naming the difference drawn
        "y titles visible": sorted(
            t["text"].split("(")[0].strip()
            for t in seen["ytitles"]
            if t["box"][0] >= 0 and t["box"][2] > 0 and t["box"][3] > 0
        )
        == ["Δ mean_diff_cosine", "Δ probe_accuracy"],
        # the legend names every curve and line
        "legend entries": {
            "PTH ablated",
            "IH ablated",
            "random sets like PTH (mean)",
            "random sets like IH (mean)",
            "baseline (no ablation: 0)",
            "chance - baseline",
        }
        <= set(seen["legend"]),
    }
    return {name: bool(ok) for name, ok in checks.items()}


def _levels_figure(result):
    """The figure before issue 21 item 6: levels of every condition, overlapping."""
    return viz.layer_curves(result.table, chance={"probe_accuracy": 0.5})


def _without(names):
    def broken(result):
        fig = result.plot()
        fig.data = [t for t in fig.data if t.name not in names]
        return fig

    return broken


def _grey_sets(result):
    fig = result.plot()
    for trace in fig.data:
        if trace.name in ("PTH ablated", "IH ablated"):
            trace.line.color = "#888888"
    return fig


def _no_y_titles(result):
    fig = result.plot()
    fig.for_each_yaxis(lambda axis: axis.update(title_text=None))
    return fig


def _no_legend(result):
    return result.plot().update_layout(showlegend=False)


def _curves_on_top(result):
    """Every curve of a panel on top of the set's (the overlapping curves of issue 21)."""
    fig = result.plot()
    for axis in {t.xaxis for t in fig.data}:
        traces = [t for t in fig.data if t.xaxis == axis and t.fill != "toself"]
        mine = next(t for t in traces if str(t.name).endswith(" ablated"))
        for trace in traces:
            trace.y = mine.y
    return fig


#: A figure broken in one way, and the check it must fail.
BREAKS = {
    "levels, overlapping (the old figure)": (_levels_figure, "one panel per ablated set"),
    "no zero line": (_without({"baseline (no ablation: 0)"}), "zero line in every panel"),
    "no chance line": (_without({"chance - baseline"}), "chance line"),
    "every curve on top of the set's": (_curves_on_top, "curves apart"),
    "the sets in the random sets' grey": (_grey_sets, "distinct colours"),
    "no y titles": (_no_y_titles, "y titles visible"),
    "no legend": (_no_legend, "legend entries"),
}


@pytest.fixture  # per test: one sync Playwright at a time (a module-scoped one would still
# be running when a later test of this file opens its own, which Playwright refuses)
def comparison_browser():
    with open_browser((1400, 1000)) as browser:
        yield browser


def test_ablation_figure_shows_each_sets_difference_from_clean(
    ablation_result, comparison_browser, tmp_path
):
    page = comparison_browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    seen = look_at_comparison(page, ablation_result.plot(), tmp_path / "ablation.png")
    keep_screenshot(tmp_path / "ablation.png", "ablation-differences.png")
    assert not errors, errors
    checks = comparison_checks(seen)
    assert all(checks.values()), ({k: v for k, v in checks.items() if not v}, seen)


@pytest.mark.parametrize("broken", list(BREAKS))
def test_each_ablation_figure_check_fails_on_a_figure_broken_that_way(
    broken, ablation_result, comparison_browser, tmp_path
):
    draw, check = BREAKS[broken]
    page = comparison_browser.new_page()
    seen = look_at_comparison(page, draw(ablation_result), tmp_path / "broken.png")
    checks = comparison_checks(seen)
    assert checks[check] is False, (broken, checks, seen)


# --------------------------------------------------------------------------- a results page
#
# The docs site's results pages (built once per session by tests/docs_site.py), opened from
# file:// as a reader who downloaded the site would: every embedded figure (<iframe>) must
# render, i.e. its screenshot shows a drawn figure (many colours), not a blank frame or the
# browser's error page (one or two colours). Shown to fail on a copy of a page with one
# frame pointing nowhere and one figure whose Plotly script is missing.

#: Fewest distinct colours (in 8-level steps per channel) of a frame that shows a figure;
#: the figures of the results pages have 250 to 1100, a blank or error frame 1 or 2.
MIN_FRAME_COLOURS = 100


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from docs_site import build_site

    build = build_site(tmp_path_factory.getbasetemp())
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.log}"
    return build.site


def _results_page(site, name: str):
    page = site / "results" / f"{name}.html"
    return page if page.is_file() else site / "results" / name / "index.html"


def look_at_frames(page, html, shots) -> dict:
    """Open ``html`` (a file), screenshot every iframe and count its colours."""
    import io

    from PIL import Image

    page.goto(html.as_uri(), wait_until="domcontentloaded", timeout=600_000)
    page.wait_for_load_state("load", timeout=600_000)  # every frame has loaded (or failed)
    # the site's fixed header would lie over the frame being screenshotted: hide it
    page.add_style_tag(content="header, .md-header, .md-tabs { display: none !important; }")
    frames = page.locator("iframe")
    seen = []
    for i in range(frames.count()):
        frame = frames.nth(i)
        frame.scroll_into_view_if_needed()
        content = frame.content_frame
        try:  # a figure is drawn once its SVG is there (a broken frame has none: go on)
            content.locator(".main-svg").first.wait_for(timeout=5_000)
        except Exception:  # noqa: BLE001 (playwright's TimeoutError: judged by the pixels)
            pass
        page.wait_for_timeout(100)
        png = frame.screenshot()
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
        colours = len(np.unique(pixels // 8, axis=0))
        seen.append({"src": frame.get_attribute("src"), "colours": colours})
        if i < 2 or colours < MIN_FRAME_COLOURS:
            Image.open(io.BytesIO(png)).save(shots / f"{html.stem}-frame{i}.png")
    rendered = [f for f in seen if f["colours"] >= MIN_FRAME_COLOURS]
    return {"iframes": frames.count(), "rendered": len(rendered), "frames": seen}


@pytest.mark.parametrize("name", ["trtl", "geometry"])
def test_every_figure_of_a_results_page_renders_from_file_urls(site, name, tmp_path):
    html = _results_page(site, name)
    with open_browser((1400, 1000)) as browser:
        page = browser.new_page()
        seen = look_at_frames(page, html, tmp_path)
    for shot in tmp_path.glob("*.png"):
        keep_screenshot(shot, f"results-{shot.name}")
    assert seen["iframes"] >= 3, seen  # the page embeds its figures
    blank = [f for f in seen["frames"] if f["colours"] < MIN_FRAME_COLOURS]
    assert seen["rendered"] == seen["iframes"], (
        f"{seen['iframes'] - seen['rendered']} of {seen['iframes']} frames blank: {blank[:5]}"
    )


def test_the_frame_check_fails_on_a_wrong_src_and_on_a_blank_figure(site, tmp_path):
    import re

    page_html = _results_page(site, "trtl").read_text(encoding="utf-8")
    frames = re.findall(r"<iframe [^>]*></iframe>", page_html)
    figures = site / "results" / "figures"
    (tmp_path / "figures").symlink_to(figures, target_is_directory=True)
    # a figure whose Plotly script does not load: the frame opens, the figure never draws
    first = re.search(r'src="([^"]+)"', frames[0]).group(1)
    blank = (figures.parent / first).read_text(encoding="utf-8")
    (tmp_path / "blank.html").write_text(blank.replace('src="plotly.min.js"', 'src="gone.js"'))
    broken = [
        frames[0],  # renders
        frames[1].replace('src="figures/', 'src="figures/nowhere/'),  # a src that is wrong
        re.sub(r'src="[^"]+"', 'src="blank.html"', frames[2]),  # blank
    ]
    html = tmp_path / "broken.html"
    html.write_text(f"<!doctype html><html><body>{''.join(broken)}</body></html>")
    with open_browser((1400, 1000)) as browser:
        seen = look_at_frames(browser.new_page(), html, tmp_path)
    assert seen["iframes"] == 3 and seen["rendered"] == 1, seen
    assert [f["colours"] >= MIN_FRAME_COLOURS for f in seen["frames"]] == [True, False, False]


# --------------------------------------------------------------------------- the report's claim
#
# Issue 21 item 6: the tables that decide a claim (a layer-geometry result's onset table)
# are shown open at the top of the report; the long tables stay folded. Shown to fail on the
# same page with the claim folded away.


@pytest.fixture(scope="module")
def geometry_report(tmp_path_factory):
    from icl_heads.report import write_report
    from icl_heads.results import ExperimentResult, make_table, table_row
    from icl_heads.settings import Settings

    metrics = ("probe_accuracy", "fisher_ratio", "mean_diff_cosine", "logit_lens_accuracy")
    rows = [
        table_row("k=4", metric, 0.5 + 0.01 * state, 0.45, 0.55, 64, layer=state)
        for metric in metrics
        for state in range(STATES)
    ]
    onset = [
        table_row("k=4", "probe_accuracy", 4.0, 3.0, 6.0, 64, fraction=0.9),
        table_row("k=4", "mean_diff_cosine", 21.0, 19.0, 24.0, 64, fraction=0.9),
        table_row("k=4", "mean_diff_cosine - probe_accuracy", 17.0, 14.0, 20.0, 64, fraction=0.9),
    ]
    long = pd.DataFrame({"prompt": range(64), "layer": 3, "probe_accuracy": 0.7})
    result = ExperimentResult(
        "layer_geometry",
        make_table(rows),
        Settings(),
        tables={"onset": make_table(onset), "per_prompt": long},
    )
    return write_report(tmp_path_factory.mktemp("claim") / "report.html", result)


def look_at_claim(page, html) -> dict:
    page.goto(html.as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    onset = page.locator("#claim table").first
    cell = page.get_by_role("cell", name="mean_diff_cosine - probe_accuracy").first
    box = onset.bounding_box() if onset.count() else None
    return {
        "onset_visible": onset.count() > 0 and onset.is_visible() and cell.is_visible(),
        "onset_top": None if box is None else box["y"],
        "figure_top": page.locator(".plot").first.bounding_box()["y"],
        "summary": page.locator("#claim pre").first.inner_text() if onset.count() else "",
        "folded": page.evaluate(
            "() => [...document.querySelectorAll('details:not([open]) summary')]"
            ".map(s => s.textContent)"
        ),
    }


def test_the_onset_table_is_shown_open_at_the_top_of_the_report(geometry_report, tmp_path):
    with open_browser((1400, 1000)) as browser:
        page = browser.new_page()
        seen = look_at_claim(page, geometry_report)
        page.screenshot(path=str(tmp_path / "claim.png"))
        # the same page with the claim folded away, as the long tables are
        html = geometry_report.read_text(encoding="utf-8")
        folded = tmp_path / "folded.html"
        folded.write_text(
            html.replace(
                "<section class='claim' id='claim'>", "<details><section id='claim'>"
            ).replace(
                '</section><section><div id="plot-figure0"',
                '</section></details><section><div id="plot-figure0"',
            ),
            encoding="utf-8",
        )
        hidden = look_at_claim(page, folded)
    keep_screenshot(tmp_path / "claim.png", "report-claim.png")
    assert seen["onset_visible"], seen
    assert seen["onset_top"] < seen["figure_top"] < 2000, seen  # above the figure, on top
    assert "Onset per metric" in seen["summary"] and "verdict" in seen["summary"], seen
    # the long tables stay folded under their headings
    assert any(s.startswith("Results (") for s in seen["folded"]), seen["folded"]
    assert any(s.startswith("per_prompt (") for s in seen["folded"]), seen["folded"]
    assert hidden["onset_visible"] is False, hidden  # the check fails on a folded onset
