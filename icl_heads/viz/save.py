"""Writing a figure to a file: standalone HTML, or a static image through the optional
``kaleido``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go


def save_figure(
    fig: go.Figure,
    path: str | Path,
    *,
    include_plotlyjs: bool | str = True,
    div_id: str | None = None,
) -> Path:
    """Write a figure: ``.html`` (standalone; Plotly's JS embedded unless told otherwise,
    so it opens offline; ``include_plotlyjs="directory"`` shares one ``plotly.min.js``
    beside it; ``div_id`` fixes the plot's element id, so regenerated files are identical),
    or ``.png`` / ``.svg`` / ``.pdf`` through ``kaleido`` (optional: ``pip install
    kaleido``; it drives a local Chrome or Chromium)."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".html", ".htm"):
        fig.write_html(path, include_plotlyjs=include_plotlyjs, full_html=True, div_id=div_id)
        return path
    if suffix not in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        raise ValueError(f"save_figure: use a .html, .png, .svg or .pdf path, got {path.name!r}.")
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ImportError(
            f"save_figure({path.name!r}): static images need the optional "
            "package kaleido (pip install kaleido) and a Chrome or Chromium; "
            "or save as .html."
        ) from None
    fig.write_image(path)
    return path
