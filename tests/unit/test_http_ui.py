"""The dashboard router: the shell and its assets, their headers, and the shell's markup rules.

In-process (httpx over ASGI, no server, no database): the browser tests in tests/browser show
the page working; these pin what the page promises statically (CSP-friendly, no data, labelled
controls, scoped table headers) and that the assets ship with the package.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import httpx
from fastapi import FastAPI

from cqrskit.http.ui import ASSETS, CONTENT_SECURITY_POLICY, router

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "src" / "cqrskit" / "http" / "ui_static"


class Shell(HTMLParser):
    """Collects what the rules below look at."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


async def get(path: str) -> httpx.Response:
    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
        return await client.get(path)


async def test_the_shell_and_each_asset_carry_the_policy_and_their_type() -> None:
    for path, media_type in [
        ("/ui", "text/html"),
        *((f"/ui/static/{name}", kind.split(";")[0]) for name, kind in ASSETS.items()),
    ]:
        response = await get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(media_type), path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


async def test_only_the_named_assets_are_served() -> None:
    for name in ("index.html", "nope.js", "APP.JS", "style.css.map"):
        response = await get(f"/ui/static/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for path in ("..%2Fui.py", "%2e%2e%2fadmin.py", "../ui.py"):
        assert (await get(f"/ui/static/{path}")).status_code == 404, path


def test_the_shell_has_no_inline_code_and_accessible_markup() -> None:
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    shell = Shell()
    shell.feed(text)
    assert not shell.inline_script
    assert not re.search(r"\son[a-z]+\s*=", text), "inline event handlers break the CSP"
    assert not re.search(r"\sstyle\s*=", text), "inline styles break the CSP"
    scripts = [attrs["src"] for tag, attrs in shell.tags if tag == "script"]
    assert scripts == ["/ui/static/app.js"]
    headers = [attrs for tag, attrs in shell.tags if tag == "th"]
    assert headers
    assert all(attrs.get("scope") == "col" for attrs in headers)
    labelled = {attrs.get("for") for tag, attrs in shell.tags if tag == "label"}
    inputs = [attrs.get("id") for tag, attrs in shell.tags if tag == "input"]
    assert inputs
    assert all(name in labelled for name in inputs)
    live = [attrs for _, attrs in shell.tags if attrs.get("aria-live")]
    assert live
    buttons = [attrs for tag, attrs in shell.tags if tag == "button"]
    assert all(attrs.get("type") in ("button", "submit") for attrs in buttons)


def test_the_assets_ship_with_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["cqrskit"]
    files = ["index.html", *ASSETS]
    for name in files:
        assert (STATIC / name).is_file(), name
        shipped = f"http/ui_static/{name}"
        assert any(fnmatch.fnmatch(shipped, pattern) for pattern in patterns), shipped
