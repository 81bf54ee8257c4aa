"""MkDocs hook: render the Sphinx cross-reference roles of our docstrings.

The docstrings use Sphinx roles (``:func:`name```, ``:class:`~icl_heads.heads.HeadScores```),
which mkdocstrings shows literally. This hook turns each into inline code, shortened as
Sphinx would (``~a.b.C`` shows ``C``) and, for a dotted path, a link to the object's entry
in the API reference when there is one (an optional mkdocs-autorefs reference).
"""

from __future__ import annotations

import html
import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|const):"
                   r"<code>(~?)([A-Za-z_][\w.]*)(\(\))?</code>")


def _replace(match: re.Match) -> str:
    tilde, target, call = match.group(1), match.group(2), match.group(3) or ""
    shown = (target.rsplit(".", 1)[-1] if tilde else target) + call
    code = f"<code>{html.escape(shown)}</code>"
    if "." in target and target.startswith("icl_heads"):
        return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'
    return code


def on_page_content(html_text: str, **kwargs) -> str:
    return _ROLE.sub(_replace, html_text)
