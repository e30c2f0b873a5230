"""Headless Chromium for tests that look at a page (the HTML report, the Dagster UI).

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright, started with the flags a
sandboxed CI box needs and with its own background traffic (updates, sync) switched off, so
the only requests a page makes are the page's own. ``chromium_page()`` yields the page and a
list that collects console errors and uncaught page errors (no browser fails the test, never skips it); ``offline(page)`` blocks every
request that is not ``file:`` or ``data:`` and returns the list of URLs it blocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = os.environ.get("ARCFORGE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@contextmanager
def chromium_page(width: int = 1280, height: int = 900) -> Iterator[tuple[Any, list[str]]]:
    """(page, errors): ``errors`` gets ``console: ...`` for console messages of type error and
    ``pageerror: ...`` for uncaught exceptions."""
    from playwright import sync_api  # pinned in requirements.lock

    if not os.path.exists(CHROMIUM):  # a missing browser fails the test: `make test` installs it
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (Debian's chromium package)")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            yield page, errors
        finally:
            browser.close()


def offline(page: Any) -> list[str]:
    """Abort every request that is not ``file:``/``data:``; the returned list collects their URLs."""
    blocked: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", handle)
    return blocked
