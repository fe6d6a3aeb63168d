"""Reject oversized and too-slow request bodies before anything parses them.

:class:`BodySizeLimit` is pure ASGI middleware. A declared ``Content-Length`` over the limit
is answered with 413 at once, without reading the body; a body without a length (chunked
transfer) is counted as it streams and the read that crosses the limit raises
:class:`BodyTooLarge`, which the problem handlers turn into the same 413 document.

A body must also arrive whole within ``timeout`` seconds of the request reaching the app:
a client trickling it in (a byte every 100 ms keeps any idle timeout happy) gets 408 from
:class:`BodyTimedOut` instead of holding a connection and a task forever. The limit is on
the whole body, not between reads, for exactly that reason.

What is left of a body after such a response is drained by the server; ``cqrskit serve``
bounds that drain (and the request head) in its protocol, see
:mod:`cqrskit.http.request_head`.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cqrskit.http.problems import problem

__all__ = ["BodySizeLimit", "BodyTimedOut", "BodyTooLarge"]


class BodyTooLarge(HTTPException):
    """A streamed request body grew past the limit."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class BodyTimedOut(HTTPException):
    """A request body did not arrive whole in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            status_code=408, detail=f"the request body did not arrive within {seconds:g} s"
        )


_BODY_NEEDS_HEADER = frozenset({"1.0", "1.1"})
"""HTTP versions whose request body exists only with a length or a transfer coding."""


def _has_body(headers: Headers) -> bool:
    declared = headers.get("content-length")
    if declared is not None:
        return declared.strip() not in ("", "0")
    return "transfer-encoding" in headers


class BodySizeLimit:
    """Answer 413 to a body over ``max_bytes`` and 408 to one slower than ``timeout`` s."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(BodyTooLarge(), scope, receive, send)
            return

        complete = not _has_body(headers)
        if complete and scope.get("http_version") in _BODY_NEEDS_HEADER:
            # HTTP/1 without Content-Length or Transfer-Encoding has no body: nothing to
            # count or time, so no wrappers around receive and send (most GETs).
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimedOut(self.timeout or 0.0) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimedOut) as exc:
            # Normally the problem handlers answer it; this covers apps that read the body
            # outside a route (where no handler is installed).
            if started:
                raise
            await self._reject(exc, scope, receive, send)

    async def _reject(self, exc: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
        detail = exc.detail
        if isinstance(exc, BodyTooLarge):
            detail = f"the request body is larger than {self.max_bytes} bytes"
        response = problem(exc.status_code, detail, headers={"Connection": "close"})
        await response(scope, receive, send)
