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
from docs_site import build_site

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
def site(tmp_path_factory) -> Path:
    build = build_site(tmp_path_factory.getbasetemp())
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
