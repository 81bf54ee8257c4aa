"""The documentation site builds offline with ``mkdocs build --strict``.

The build is a test so that the README's test command covers it (no separate docs step):
a broken cross-reference, a page missing from the nav or a docstring the API reference
cannot render fails here.
"""

from __future__ import annotations

import pytest
from docs_site import build_site

# Pages are built as <name>.html (mkdocs.yml: use_directory_urls: false), so the site also
# reads from file:// (tests/test_site_links.py checks every link).


@pytest.mark.slow
def test_docs_site_builds_strict_with_every_page(tmp_path_factory):
    build = build_site(tmp_path_factory.getbasetemp())  # shared with test_site_links.py
    site = build.site
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.log}"
    # every page of the nav, the generated results pages and the API reference were written
    for page in (
        "index.html",
        "methods.html",
        "api.html",
        "cli.html",
        "results/trtl.html",
        "results/geometry.html",
        "reference/experiments.html",
        "reference/geometry.html",
    ):
        assert (site / page).is_file(), f"{page} missing from the built site"
    # the API reference rendered docstrings, not empty stubs
    reference = (site / "reference/experiments.html").read_text(encoding="utf-8")
    assert "reproduce_trtl" in reference and "layer_geometry" in reference
    # offline: no page pulls fonts or scripts from a CDN
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index
