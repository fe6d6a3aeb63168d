"""The operator dashboard: ``GET /ui`` and its static assets under ``/ui/static/``.

The page is a shell (HTML, one script, one style sheet; vanilla JS, no build step) that
reads the same JSON endpoints a script would (``/admin/projections``, ``/admin/stats``,
``/admin/deadletters``, ``/admin/events``, ``/admin/streams/...``) by polling them. Why a
shell without data: with authentication on, ``/ui`` itself is a safe GET any anonymous
caller may load, so it must carry nothing an operator key protects; the page asks for the
key, keeps it in ``sessionStorage`` and sends it as ``X-API-Key`` on every fetch, and the
``/admin`` routes enforce the ``admin`` role exactly as they do for scripts.

Every answer of this router carries a strict Content-Security-Policy (no inline script or
style, fetches to this origin only, no framing), so an injected string in an event's data
or an error message can at worst be shown, never run. Only the files named in
:data:`ASSETS` are served; they are read once from the package (``ui_static/``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from cqrskit.http.problems import problem

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "router"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Sent on ``/ui`` and its assets: only this origin's script, style and fetches."""

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The static files under ``/ui/static/`` and their media types; nothing else is served."""

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files, revalidated on each load so a deploy is seen at once.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return resources.files("cqrskit.http").joinpath("ui_static", name).read_bytes()


def _answer(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=_HEADERS)


@router.get("/ui")
async def page() -> Response:
    """The dashboard's HTML shell (no data: the script fetches it with the operator's key)."""
    return _answer("index.html", "text/html; charset=utf-8")


@router.get("/ui/static/{name}")
async def asset(name: str) -> Response:
    """One of :data:`ASSETS`; any other name is 404."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return problem(404, "no such dashboard asset", headers=_HEADERS)
    return _answer(name, media_type)
