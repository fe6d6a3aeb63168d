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
    """Answer 503 (``Retry-After``) to any HTTP request not answered within ``seconds``."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.seconds)

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started or not deadline.expired():
                raise
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
