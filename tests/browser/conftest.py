"""Headless Chromium for the end-to-end tests of the ``/ui`` dashboard.

The browser is Debian's ``chromium`` driven by Playwright's async API, in the test's own event
loop (the uvicorn server of :func:`tests.integration.http_server.serve` runs in that loop too).
Each test gets a fresh browser profile. Without ``/usr/bin/chromium`` the tests skip with the
reason, unless ``CI`` is set: then they fail, so CI can never pass by skipping.

Screenshots go to ``test-artifacts/browser/<test>-<state>.png`` (gitignored; CI keeps them).
The page's uncaught errors and Content-Security-Policy violations fail the test that caused
them.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Error, Page, async_playwright

__all__ = ["ARTIFACTS", "CHROMIUM", "CHROMIUM_ARGS", "Screenshots"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


def require_chromium() -> None:
    """Skip (locally) or fail (under CI) when the system Chromium is missing."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    message = (
        f"{CHROMIUM} is missing: install Debian's chromium package "
        "(scripts/install-system-packages) to run the browser tests"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


class Screenshots:
    """Saves ``<test>-<state>.png`` of a page into :data:`ARTIFACTS`."""

    def __init__(self, page: Page, test_name: str) -> None:
        self.page = page
        self.prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
        self.saved: list[Path] = []

    async def __call__(self, state: str) -> Path:
        path = ARTIFACTS / f"{self.prefix}-{state}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        return path


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    """A page of a fresh headless Chromium profile; fails the test on page errors."""
    require_chromium()
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(f"CSP violation: {message.text}")

    def page_error(error: Error) -> None:
        problems.append(f"uncaught error in the page: {error}")

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", console)
            page.on("pageerror", page_error)
            yield page
        finally:
            await context.close()
    assert not problems, problems


@pytest.fixture
def screenshots(page: Page, request: pytest.FixtureRequest) -> Screenshots:
    """Save screenshots of ``page`` named after the test."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Screenshots(page, request.node.name)
