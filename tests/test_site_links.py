"""Every link in the built documentation site resolves to a file of the site, over HTTP and
from ``file://``.

The site is built once per session (``tests/docs_site.py``, shared with
``tests/test_docs.py``) and every HTML file in it is read, the results pages' standalone
figures included: each ``iframe``, ``img`` and ``script`` ``src`` and each ``a`` / ``link``
``href`` must name a file of the site, resolved from the page's own location as a browser
resolves it. External links (``http(s):``, ``mailto:``, ``data:``...) and same-page
``#anchor`` links are not checked; a ``#anchor`` or ``?query`` on another page is cut off.
A link to a folder resolves over HTTP to its ``index.html``, but from ``file://`` a browser
lists the folder instead, so it counts as broken there; so does a root-absolute ``/path``,
except in ``404.html`` (served at any depth, so its links are root-absolute by design).
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from browser import keep_screenshot, open_browser
from docs_site import ROOT, build_site, needs_notebooks

#: (tag, attribute) pairs whose value is a URL the page loads or links to.
LINK_ATTRIBUTES = {
    ("iframe", "src"),
    ("img", "src"),
    ("script", "src"),
    ("a", "href"),
    ("link", "href"),
}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if (tag, name) in LINK_ATTRIBUTES and value is not None:
                self.links.append((tag, name, value))


def links_of(html: str) -> list[tuple[str, str, str]]:
    """``(tag, attribute, url)`` of every link-like attribute in ``html``."""
    parser = _Links()
    parser.feed(html)
    return parser.links


def broken_links(site: Path, *, file_url: bool) -> list[str]:
    """``"page: <tag attr='url'> -> why"`` for every link of every HTML file under ``site``
    that does not resolve to a file of the site; ``file_url=True`` judges as a browser does
    from ``file://`` (no folder index pages, no server root)."""
    site = site.resolve()
    broken = []
    for page in sorted(site.rglob("*.html")):
        where = page.relative_to(site).as_posix()
        for tag, attr, url in links_of(page.read_text(encoding="utf-8", errors="replace")):
            parts = urlsplit(url.strip())
            if parts.scheme or parts.netloc or not parts.path:
                continue  # external, or an anchor / query on this page
            link = f"{where}: <{tag} {attr}={url!r}>"
            path = unquote(parts.path)
            if path.startswith("/"):
                if file_url and where != "404.html":
                    broken.append(f"{link} -> a root-absolute path (no server root in file://)")
                    continue
                target = (site / path.lstrip("/")).resolve()
            else:
                target = (page.parent / path).resolve()
            if not target.is_relative_to(site):
                broken.append(f"{link} -> outside the site")
                continue
            if target.is_dir():
                if file_url:
                    broken.append(f"{link} -> a folder (file:// lists it, not its index.html)")
                    continue
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{link} -> {target.relative_to(site).as_posix()} does not exist")
    return broken


@pytest.fixture(scope="module")
def site(tmp_path_factory, request) -> Path:
    notebooks = needs_notebooks(request.session)  # the notebook page tests below are slow
    build = build_site(tmp_path_factory.getbasetemp(), notebooks=notebooks)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.log}"
    return build.site


def _report(broken: list[str]) -> str:
    return f"{len(broken)} broken links, e.g.:\n" + "\n".join(broken[:30])


def test_every_link_of_the_built_site_resolves_over_http(site):
    assert len(list(site.rglob("*.html"))) > 20, "the site has fewer pages than expected"
    broken = broken_links(site, file_url=False)
    assert not broken, _report(broken)


def test_every_link_of_the_built_site_resolves_from_file_urls(site):
    broken = broken_links(site, file_url=True)
    assert not broken, _report(broken)


@pytest.mark.parametrize("name", ["trtl", "geometry"])
def test_results_pages_embed_figures_that_exist(site, name):
    # the regression this file was written for: the results pages' <iframe> figures pointed
    # one folder too deep once MkDocs built results/<name>.md as results/<name>/index.html
    page = site / "results" / f"{name}.html"
    if not page.is_file():  # built with directory URLs
        page = site / "results" / name / "index.html"
    frames = [
        (page.parent / unquote(url)).resolve()
        for tag, _, url in links_of(page.read_text(encoding="utf-8"))
        if tag == "iframe"
    ]
    assert len(frames) >= 3, f"{page}: {len(frames)} figures embedded"
    missing = [f.as_posix() for f in frames if not f.is_file()]
    assert not missing, f"{page}: {len(missing)} of {len(frames)} frames missing: {missing[:3]}"


# ---- the notebook pages (issue 21 item 9): executed outputs, figures that draw offline.
# Slow: the build executes the notebooks (on the embedded model) only for a session that
# runs slow tests (tests/docs_site.py); the link checks above cover the pages either way.

#: The notebooks' pages (``notebooks/*.ipynb``, executed by the build into ``docs/notebooks/``).
NOTEBOOK_PAGES = sorted(f"notebooks/{p.stem}.html" for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
def test_notebook_pages_show_outputs_and_load_nothing_from_the_network(site):
    assert len(NOTEBOOK_PAGES) == 4
    for name in NOTEBOOK_PAGES:
        page = site / name
        assert page.is_file(), f"{name} missing from the built site"
        html = page.read_text(encoding="utf-8")
        assert "jp-OutputArea-output" in html, f"{name} shows no outputs"
        assert "plotly-graph-div" in html, f"{name} shows no figure"
        scripts = [url for tag, _, url in links_of(html) if tag == "script" and url.strip()]
        # the one plotly.js of the folder (the links tests check it exists), never a CDN
        assert "plotly.min.js" in scripts, f"{name} does not load plotly.min.js"
        remote = [url for url in scripts if urlsplit(url).scheme or urlsplit(url).netloc]
        assert not remote, f"{name} loads scripts from the network: {remote}"
        # plotly.js is loaded from the file, not inlined in every page
        assert len(html) < 2_000_000, f"{name}: {len(html)} characters"


@pytest.mark.slow
def test_notebook_pages_draw_their_figures_in_a_browser(site, tmp_path):
    import numpy as np
    from PIL import Image

    with open_browser() as browser:
        for name in NOTEBOOK_PAGES:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.goto((site / name).as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
            counts = page.evaluate(
                """() => {
                const divs = [...document.querySelectorAll('.plotly-graph-div')];
                return [divs.length, divs.filter(d => d.querySelector('.main-svg')).length];
            }"""
            )
            assert counts[0] >= 1 and counts[1] == counts[0], f"{name}: drawn {counts}"
            figure = page.locator(".plotly-graph-div").first
            figure.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            shot = tmp_path / name.replace("/", "_").replace(".html", ".png")
            figure.screenshot(path=str(shot))
            keep_screenshot(shot, shot.name)
            pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
            colours = len(np.unique(pixels // 8, axis=0))
            ink = float((pixels.min(-1) < 200).mean())
            assert colours > 10 and ink > 0.005, f"{name}: first figure looks blank"
            # the theme's search worker cannot load its index from file:// (every page)
            errors = [e for e in errors if "search/search_index.js" not in e]
            assert not errors, f"{name}: script errors {errors}"
            page.close()
