"""MkDocs hook: list the results pages in the navigation once they exist.

``docs/results/trtl.md`` and ``docs/results/geometry.md`` are generated
(``icl-heads reproduce --pages``); the site must build before they are and list them after.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = (("TR and TL heads", "results/trtl.md"),
           ("Hidden-state geometry", "results/geometry.md"))


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    pages = [{title: path} for title, path in RESULTS if (docs / path).is_file()]
    nav = config.get("nav")
    if not pages or nav is None or any(isinstance(i, dict) and "Results" in i for i in nav):
        return config
    at = next((i + 1 for i, item in enumerate(nav)
               if isinstance(item, dict) and "Command line" in item), len(nav))
    nav.insert(at, {"Results": pages})
    return config
