"""Connections, the stream definition and waiting: shared by the publisher and consumer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from cqrskit.messages import LogPosition
from cqrskit.store.protocol import EventStore

_log = logging.getLogger("cqrskit.publish")


class Connection:
    """One NATS connection without automatic reconnects.

    The owner notices a lost connection (a publish or fetch fails, or ``lost`` is set),
    closes it and opens a new one with its own backoff, so every failure is visible in its
    status and nothing is buffered silently while the server is away.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.js: JetStreamContext = client.jetstream()
        self.lost = asyncio.Event()

    @classmethod
    async def open(cls, url: str, *, name: str, timeout: float) -> Connection:
        """Connect once; raise when the server is unreachable."""
        lost = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            _log.debug("nats connection %s: %s", name, exc)

        async def on_closed() -> None:
            lost.set()

        client = await nats.connect(
            servers=[url],
            name=name,
            allow_reconnect=False,
            # Fail fast when unreachable: two attempts, then NoServersError (we back off).
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=max(1, round(timeout)),
            error_cb=on_error,
            closed_cb=on_closed,
            disconnected_cb=on_closed,
        )
        connection = cls(client)
        connection.lost = lost
        return connection

    async def close(self) -> None:
        """Close the connection (idempotent, never raises)."""
        with contextlib.suppress(Exception):
            await self.client.close()

    async def settle(self, futures: Iterable[asyncio.Future[Any]], timeout: float) -> None:
        """Wait until every future is done, the connection is lost or ``timeout`` passes.

        Futures still pending afterwards are cancelled.
        """
        pending = [future for future in futures if not future.done()]
        if not pending:
            return
        everything = asyncio.gather(*pending, return_exceptions=True)
        lost: asyncio.Future[Any] = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait(
                {everything, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            everything.cancel()  # cancels the futures still pending, if any


def stream_config(stream: str, subject_prefix: str, duplicate_window: float) -> StreamConfig:
    """The JetStream stream integration events go to: file storage, ``<prefix>.>``."""
    return StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
    )


async def ensure_stream(js: JetStreamContext, name: str, wanted: StreamConfig) -> StreamInfo:
    """Create stream ``name``, or update its subjects and duplicate window (idempotent)."""
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return await js.add_stream(wanted)
    current = info.config
    if current.storage not in (StorageType.FILE, StorageType.FILE.value):
        _log.warning("stream %s uses %s storage, not file storage", name, current.storage)
    if (
        set(current.subjects or ()) != set(wanted.subjects or ())
        or current.duplicate_window != wanted.duplicate_window
    ):
        info = await js.update_stream(
            dataclasses.replace(
                current, subjects=wanted.subjects, duplicate_window=wanted.duplicate_window
            )
        )
    return info


async def wait_for_wake(
    store: EventStore, after: LogPosition, poll_interval: float, stop: asyncio.Event
) -> None:
    """Sleep until the store signals events after ``after``, a poll interval or ``stop``."""
    waiter = asyncio.ensure_future(store.wait_for_events(after, poll_interval))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stopper):
            task.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
    if not waiter.cancelled() and (error := waiter.exception()) is not None:
        raise error


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def check_cancelled() -> None:
    """Raise ``CancelledError`` if this task was cancelled but the cancellation got lost.

    On Python 3.11 ``asyncio.wait_for`` (used inside nats-py's fetch) can swallow a
    cancellation that arrives just as its inner future completes; the task still counts it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
