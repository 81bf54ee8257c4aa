"""MkDocs hook: execute the notebooks into ``docs/notebooks/`` for mkdocs-jupyter to render.

``notebooks/*.ipynb`` are committed without outputs (``tests/test_notebooks.py``). Before
each build this hook runs each of them once, top to bottom, with nbclient, and writes the
executed copy to ``docs/notebooks/`` (generated, git-ignored), which mkdocs-jupyter renders
as it is (``execute: false`` in ``mkdocs.yml``):

* in a temporary working directory, so what a notebook writes (``results/...``) lands
  nowhere in the repository;
* with ``ICL_HEADS_NOTEBOOK_N`` prompts per set (default :data:`DOCS_N`: the pages show
  what the code does, not a measurement; every notebook says how to read its intervals);
* with Plotly's ``notebook`` renderer (``PLOTLY_RENDERER``), so every figure is HTML that
  draws itself; the plotly.js bundle it inlines is cut out of the copy and written once as
  ``docs/notebooks/plotly.min.js``, so the pages read offline without a 4 MB copy each;
  the MathJax script tag that renderer adds to every figure (from a CDN; the figures use no
  LaTeX) is dropped;
* printed output keeps its lines on the page (:data:`OUTPUT_STYLE`).

A copy is executed again only when its notebook, the N, this hook or the ``icl_heads``
package changed (the key is recorded in the copy's metadata). ``ICL_HEADS_DOCS_NOTEBOOKS``:
``cached`` (default) as just said; ``fresh`` executes every notebook; ``skip`` executes none
(an up-to-date executed copy is kept, any other is replaced by the notebook without
outputs: a quick build of the prose, as the tests that need no outputs make it, see
``tests/docs_site.py``). ``ICL_HEADS_DOCS_RUN_ID`` (optional) is recorded in each copy this
build executes, so a test can tell a copy it made from an older one. A notebook that raises
stops the build, naming the notebook; its copy keeps the error output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("notebooks")

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "notebooks"
#: Folder of the executed copies, under ``docs/`` (git-ignored).
FOLDER = "notebooks"
#: Prompts per set in the docs build (``ICL_HEADS_NOTEBOOK_N`` overrides it).
DOCS_N = "8"
#: Seconds one cell may run.
CELL_TIMEOUT = 900
MODES = ("cached", "fresh", "skip")
#: Key of the copy's metadata entry that records how it was made.
META = "icl_heads_docs"


def _source_key(notebook: Path, n: str) -> str:
    """What the executed copy depends on: the notebook, N, this hook and the package."""
    digest = hashlib.sha256()
    digest.update(notebook.read_bytes())
    digest.update(n.encode())
    digest.update(Path(__file__).read_bytes())
    package = ROOT / "icl_heads"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _recorded(copy: Path) -> dict:
    try:
        return json.loads(copy.read_text(encoding="utf-8"))["metadata"].get(META, {})
    except (OSError, ValueError, KeyError):
        return {}


#: A script tag that loads from the network: Plotly's notebook renderer adds MathJax from a
#: CDN to every figure (the figures use no LaTeX); offline it fails, on a slow network it
#: holds up the page.
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>')


def _offline_outputs(nb, bundle: str) -> int:
    """Make ``nb``'s HTML outputs read offline: the inlined plotly.js becomes
    ``<script src="plotly.min.js">`` (the file beside the copy) and script tags that load
    from the network are dropped; the number of outputs changed."""
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html")
            if html is None:
                continue
            text = "".join(html) if isinstance(html, list) else html
            new = text
            at = new.find(bundle)
            if at >= 0:
                start = new.rfind("<script", 0, at)
                end = new.find("</script>", at) + len("</script>")
                local = '<script charset="utf-8" src="plotly.min.js"></script>'
                new = new[:start] + local + new[end:]
            new = _REMOTE_SCRIPT.sub("", new)
            if new != text:
                output["data"]["text/html"] = new
                changed += 1
    return changed


async def _execute(source: Path, copy: Path, env: dict, meta: dict, bundle: str, gate) -> str:
    """Run ``source`` into ``copy``; the error text, or '' when it ran through."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    error = ""
    async with gate:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="icl-heads-notebook-") as cwd:
            client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3")
            try:
                await client.async_execute(cwd=cwd, env=env)
            except Exception as exc:  # a cell's error, a timeout, a dead kernel: report it
                error = f"{type(exc).__name__}: {exc}"
        seconds = round(time.perf_counter() - start, 1)
    _offline_outputs(nb, bundle)
    nb.metadata[META] = {**meta, "seconds": seconds, "ok": not error}
    copy.write_text(nbformat.writes(nb), encoding="utf-8")
    log.info("executed %s in %.0f s%s", source.name, seconds, " (failed)" if error else "")
    return error


async def _execute_all(jobs: list, env: dict, bundle: str, workers: int) -> list[str]:
    gate = asyncio.Semaphore(workers)
    return await asyncio.gather(*(_execute(*job, env, meta, bundle, gate) for *job, meta in jobs))


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` holds it already (``mkdocs serve`` watches the folder)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def on_pre_build(config, **kwargs):
    mode = os.environ.get("ICL_HEADS_DOCS_NOTEBOOKS", "cached")
    if mode not in MODES:
        raise PluginError(
            f"ICL_HEADS_DOCS_NOTEBOOKS={mode!r} is not a mode; use one of {', '.join(MODES)}."
        )
    n = os.environ.get("ICL_HEADS_NOTEBOOK_N", DOCS_N)
    out = Path(config["docs_dir"]) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(SOURCE.glob("*.ipynb"))
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    _write_if_changed(out / "plotly.min.js", bundle)
    run_id = os.environ.get("ICL_HEADS_DOCS_RUN_ID", "")
    jobs = []
    for source in sources:
        copy, key = out / source.name, _source_key(source, n)
        recorded = _recorded(copy)
        if mode != "fresh" and recorded.get("key") == key and recorded.get("ok"):
            continue
        if mode == "skip":
            _write_if_changed(copy, source.read_text(encoding="utf-8"))
            continue
        jobs.append((source, copy, {"key": key, "n": n, "run_id": run_id}))
    if not jobs:
        return
    env = {
        **os.environ,
        "ICL_HEADS_NOTEBOOK_N": n,
        "PLOTLY_RENDERER": "notebook",
        # tqdm's "IProgress not found" (no ipywidgets) is not for the page's reader
        "PYTHONWARNINGS": "ignore:IProgress not found",
    }
    # one kernel per 4 cores: each runs torch on several threads
    workers = max(1, min(len(jobs), (os.cpu_count() or 1) // 4))
    log.info("executing %d notebooks (N=%s, %d at a time)", len(jobs), n, workers)
    errors = asyncio.run(_execute_all(jobs, env, bundle, workers))
    failed = [(job[0].name, e) for job, e in zip(jobs, errors) if e]
    if failed:
        name, error = failed[0]
        raise PluginError(
            f"notebooks/{name} failed in the docs build (its executed copy, with the error, "
            f"is docs/{FOLDER}/{name}):\n{error[-3000:]}"
        )


#: Printed output keeps its lines (the summaries print aligned tables): mkdocs-jupyter's
#: style wraps them at the column's width; a wide one scrolls instead.
OUTPUT_STYLE = (
    "<style>.jupyter-wrapper .jp-OutputArea-output pre "
    "{white-space: pre; word-break: normal; overflow-wrap: normal;}</style>"
)


def on_post_page(output, page, config, **kwargs):
    if page.file.src_uri.startswith(f"{FOLDER}/") and page.file.src_uri.endswith(".ipynb"):
        return output.replace("</head>", OUTPUT_STYLE + "</head>", 1)
    return output


__all__ = ["on_post_page", "on_pre_build"]
