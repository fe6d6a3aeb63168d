"""Bound how long and how large a request head may be, before the app ever sees it.

uvicorn's httptools protocol has neither bound: a connection that opens and sends nothing,
or sends its request line and headers a byte at a time (slowloris), is kept forever, and
the parser buffers headers without limit (20 MB of headers grew the server by 19 MiB). The
ASGI app cannot help: it is only called once the head is complete.

:func:`guarded_http` returns a subclass of uvicorn's ``HttpToolsProtocol`` (pass it as
``uvicorn.Config(http=...)``) that answers ``408`` when a request head is not complete
``timeout`` seconds after the connection opened (first request) or after its first byte
(later requests on a keep-alive connection), and ``431`` once more than ``max_bytes`` of head
have arrived; both as problem+json, both closing the connection. Slow *bodies* are bounded
in the app, by :class:`cqrskit.http.limits.BodySizeLimit`; what is left of a body the app
answered early (a 413 or 408 mid-body) is drained for at most ``timeout`` seconds, then the
connection is closed (without that, uvicorn drains a trickling body forever).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cqrskit.http.problems import PROBLEM_JSON

__all__ = ["GuardedHttpToolsProtocol", "guarded_http", "raw_problem"]


def raw_problem(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection, as bytes."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps(
        {"type": "about:blank", "title": phrase, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"content-type: {PROBLEM_JSON}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with each request head bounded in time and size and
    the drain of an early-answered body bounded in time."""

    max_head_bytes: ClassVar[int] = 65_536
    head_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0
        self._heads_completed = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends anything is closed too

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        heads = self._heads_completed
        super().data_received(data)
        # Only a chunk that arrived wholly inside one head is counted: one in which a head
        # began or completed may also carry body bytes (even whole requests), which are the
        # body limit's business. So at most one chunk (256 KiB) more than the limit is
        # ever buffered.
        if in_head and heads == self._heads_completed and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._reject(431, f"the request head is larger than {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._in_head = False
        self._heads_completed += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._drain_timer is not None:
            # The body ended in time: the connection may be kept alive, but (as uvicorn
            # itself does not) under the keep-alive timeout, which its bytes had cancelled.
            self._stop_draining()
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before its body was all in (a 413 or 408 mid-body, a route that ignores
        # the body): uvicorn drains the rest, for as long as it keeps coming. Bound that:
        # the client gets ``head_timeout`` to finish (so it can still read the answer, which
        # an immediate close with unread data would destroy with a reset), then it is cut.
        if self.cycle.more_body and not self.transport.is_closing():
            self._stop_draining()
            self._drain_timer = self.loop.call_later(self.head_timeout, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._stop_draining()
        super().connection_lost(exc)

    def _stop_draining(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._reject(408, f"the request head did not arrive within {self.head_timeout:g} s")

    def _reject(self, status: int, detail: str) -> None:
        self._disarm_head_timer()
        # Only answer when no response is in flight (a pipelined head may be what is slow).
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(raw_problem(status, detail))
        self.transport.close()


def guarded_http(*, max_bytes: int, timeout: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` with these bounds."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"max_head_bytes": max_bytes, "head_timeout": timeout},
    )
