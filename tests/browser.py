"""Headless Chromium for the tests that look at a page as a person would
(tests/test_report.py, tests/test_screenshots.py): find the browser, open a page, take a
screenshot. Playwright (the ``dev`` extra) drives the system Chromium (the README's
``apt-get install -y chromium``): no browser download. Without one the test is skipped
with the reason, except under CI (``CI`` set), where a missing browser fails it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    """The Chromium executable: ``$ICL_HEADS_CHROMIUM``, ``chromium`` or
    ``chromium-browser`` on the PATH, or ``/usr/bin/chromium``; None where there is none."""
    for candidate in (
        os.environ.get("ICL_HEADS_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_or_skip():
    """(sync_playwright, chromium path); skipped with the reason where there is none, a
    failure under CI."""
    reasons = []
    executable = chromium()
    if executable is None:
        reasons.append(
            "no Chromium found (install it: apt-get install -y chromium; or set ICL_HEADS_CHROMIUM)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        reasons.append("Playwright is not installed (pip install -e '.[dev]')")
    if reasons:
        message = "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(f"the browser check must run in CI: {message}")
        pytest.skip(message)
    return sync_playwright, executable


@contextlib.contextmanager
def open_browser(viewport: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A headless, offline Chromium context (skipped where there is none)."""
    sync_playwright, executable = browser_or_skip()
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": viewport[0], "height": viewport[1]},
            offline=True,
        )
        try:
            yield context
        finally:
            context.close()


def keep_screenshot(path: Path, name: str) -> None:
    """Copy a screenshot to ``$ICL_HEADS_SCREENSHOT_DIR`` (if set), for a person to see."""
    keep = os.environ.get("ICL_HEADS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
