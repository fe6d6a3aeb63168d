"""In-process wake-ups for readers of the log, without lost notifications."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Notifier"]


class Notifier:
    """Wakes every waiter on ``notify``; a waiter checks its condition before sleeping."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake all current waiters (call from the event loop thread)."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Return ``True`` as soon as ``ready()`` holds, ``False`` after ``timeout`` seconds."""
        event = self._event
        if ready():
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return ready()
        return ready()
