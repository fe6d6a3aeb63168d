"""Bus middleware: one callable signature for commands and queries.

A middleware receives the message and ``call_next``; it may act before and after, retry, or
short-circuit. Middleware listed first runs outermost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cqrskit.errors import ConcurrencyError, CqrskitError
from cqrskit.messages import Message

__all__ = ["Middleware", "Next", "chain", "log_messages", "retry_on_conflict"]

M = TypeVar("M", bound=Message)
Next = Callable[[Any], Awaitable[Any]]
Middleware = Callable[[Any, Next], Awaitable[Any]]

_log = logging.getLogger("cqrskit.bus")


def chain(middleware: list[Middleware], final: Next) -> Next:
    """Compose middleware around ``final`` (first item outermost)."""
    call = final
    for mw in reversed(middleware):
        call = _bind(mw, call)
    return call


def _bind(mw: Middleware, call_next: Next) -> Next:
    async def bound(message: Any) -> Any:
        return await mw(message, call_next)

    return bound


def retry_on_conflict(attempts: int = 5, base_delay: float = 0.002) -> Middleware:
    """Re-run the handler (which reloads its aggregates) after a version conflict.

    After ``attempts`` conflicts the last :class:`ConcurrencyError` propagates.
    """

    async def retry(message: Any, call_next: Next) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return await call_next(message)
            except ConcurrencyError:
                if attempt == attempts:
                    raise
                # Jitter keeps racing retries from colliding again in lockstep.
                await asyncio.sleep(base_delay * attempt * random.random())  # noqa: S311
        raise AssertionError("unreachable")

    return retry


def log_messages(logger: logging.Logger = _log) -> Middleware:
    """Log each message's type, outcome and duration at DEBUG (rejections at INFO)."""

    async def log(message: Any, call_next: Next) -> Any:
        started = time.perf_counter()
        name = type(message).__name__
        try:
            result = await call_next(message)
        except CqrskitError as exc:
            logger.info("%s rejected: %s", name, type(exc).__name__)
            raise
        logger.debug("%s handled in %.2f ms", name, (time.perf_counter() - started) * 1e3)
        return result

    return log
