"""Bound every HTTP request by a deadline: past it, answer 503 instead of hanging.

:class:`RequestDeadline` is pure ASGI middleware. Until its response starts, a request's
handling may take at most ``seconds`` (``CQRSKIT_REQUEST_TIMEOUT``); then the handling is
cancelled and the client gets 503 problem+json with ``Retry-After``. So a database that
stops answering (a blackholed network, a stalled server) costs a client one deadline, not
a hang.

A command cut off this way may or may not have committed, exactly like one whose
connection was lost after the commit: the answer is 503 ("outcome unknown, retry"), never
a 4xx, and a retry with the same ``Idempotency-Key`` gets the first outcome if there was
one. Once a response has started it is left to finish: its status is already sent.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cqrskit.http.problems import RETRY_AFTER_SECONDS, problem

__all__ = ["RequestDeadline"]

_log = logging.getLogger("cqrskit.http")


class RequestDeadline:
    """Answer 503 (``Retry-After``) to any HTTP request not answered within ``seconds``.

    The request is handled in a task of its own, so the 503 goes out at the deadline even
    when the cancelled handling is slow to unwind (a driver waiting on a dead socket): it
    gets ``GRACE`` seconds to finish cleanly, then finishes in the background, and nothing
    it sends any more reaches the client.
    """

    GRACE = 0.2

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One future, resolved when the handling ends or its time is up before its response
        # started (from then on the handler finishes it); a timer handle and a done callback
        # instead of asyncio.wait, which builds a waiter, sets and callbacks per request.
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        started = expired = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if expired:
                return  # the client has its 503
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        def time_up() -> None:
            if not started and not wake.done():
                wake.set_result(None)

        def finished(_: object) -> None:
            if not wake.done():
                wake.set_result(None)

        handling = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        handling.add_done_callback(finished)
        timer = loop.call_later(self.seconds, time_up)
        try:
            await wake
            if handling.done() or started:
                await handling  # its outcome, exceptions included
                return
        except BaseException:
            handling.cancel()
            raise
        finally:
            timer.cancel()
        expired = True
        handling.cancel()
        await asyncio.wait({handling}, timeout=self.GRACE)
        handling.add_done_callback(_collect)
        _log.warning(
            "%s %s: no answer within %s s; answered 503",
            scope.get("method"),
            scope.get("path"),
            self.seconds,
        )
        response = problem(
            503,
            "the request did not finish in time; retry later (a command may have been"
            " applied: retry it with the same Idempotency-Key)",
            kind="timeout",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        await response(scope, receive, send)


def _collect(task: asyncio.Future[None]) -> None:
    # A cancelled handling usually ends in CancelledError; anything else is only logged.
    if not task.cancelled() and task.exception() is not None:
        _log.debug("request cancelled at its deadline ended with %r", task.exception())
