"""An asyncio TCP fault proxy to put between the service and PostgreSQL, Redis or NATS.

The proxy listens on an ephemeral port of 127.0.0.1 and forwards every connection to its
upstream. Faults are switched at runtime and apply to open connections at once:

- ``latency(to_upstream=..., to_client=...)``: each chunk waits that long before it is
  forwarded in that direction (order is kept);
- ``blackhole()``: connections are accepted and kept, but nothing is forwarded either way,
  as when packets are dropped; bytes sent meanwhile are held (TCP would retransmit them),
  so after :meth:`heal` a connection that outlived the partition carries on intact;
- ``reset()``: every open connection is aborted with a TCP RST (``SO_LINGER`` 0) and each
  new one is reset as soon as it is accepted. The listening socket stays ours, so healing
  cannot lose the port to another process (a client sees ``ECONNRESET`` rather than
  ``ECONNREFUSED``; both are "the server is unreachable" to a driver);
- ``cut_after_commit(...)`` (PostgreSQL only): the next transaction that ran a matching
  statement is cut right after the server has committed it and before the client hears
  so: the connection is reset and the commit reply never reaches the client. This is the
  ambiguous commit a client must resolve by retrying with the same idempotency key.

Where a PostgreSQL commit becomes a fact on the wire: an explicit transaction's
``CommandComplete`` with tag ``COMMIT`` is sent after the commit; a statement run outside
``BEGIN`` (an implicit transaction, how cqrskit appends) commits when the server processes
the client's ``Sync`` (or the simple ``Query``) and only then sends ``ReadyForQuery`` with
status ``I``. So the proxy cuts at the first of those; every server message of the cut
transaction from the matching statement on is withheld, so the client does not even see a
row. The PostgreSQL parsing is minimal: the untyped start-up prelude (``SSLRequest`` and
``GSSENCRequest``, answered by one byte ``N``, then the ``StartupMessage``; an ``S`` answer
means TLS and the connection is forwarded blind), then ``type byte + int32 length``
messages. Client ``Parse``/``Bind``/``Query`` messages tell which statement runs, so a
cached prepared statement (bound by name, without its text) is still recognised.

:meth:`heal` turns every fault off. ``stats`` counts what the proxy did.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["APPEND_STATEMENTS", "FaultProxy", "ProxyStats"]

Protocol = Literal["raw", "postgres"]

APPEND_STATEMENTS = (b"INSERT INTO events", b"cqrskit_append(")
"""What cqrskit's PostgreSQL appends contain (one event, and the multi-event function):
``cut_after_commit(APPEND_STATEMENTS)`` cuts an append, not a projection's write."""

_CHUNK = 65536
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_LINGER_ZERO = struct.pack("ii", 1, 0)
# Server messages after which the client must answer before the server says more (COPY),
# or which end a request cycle: anything held back is released at them.
_RELEASE = frozenset(b"ZGHW")


@dataclass
class ProxyStats:
    """What the proxy has done since it was made."""

    accepted: int = 0
    reset_connections: int = 0
    refused: int = 0
    cut_after_commit: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _Armed:
    """A pending ``cut_after_commit``: which statements it is for, and what follows it."""

    def __init__(self, patterns: Sequence[bytes], then_reset: bool) -> None:
        self.patterns = tuple(patterns)
        self.then_reset = then_reset
        self.fired = asyncio.Event()

    def matches(self, statement: bytes) -> bool:
        return not self.patterns or any(p in statement for p in self.patterns)


@dataclass
class _PgState:
    """What one PostgreSQL connection's parser knows."""

    opaque: bool = False
    """TLS or an unknown prelude: forward blind."""
    client_typed: bool = False
    server_single_bytes: int = 0
    """Pending one-byte answers to ``SSLRequest``/``GSSENCRequest``."""
    statements: dict[bytes, bytes] = field(default_factory=dict)
    matched: bool = False
    """The current transaction ran a matching statement (the cut is armed for it)."""
    in_block: bool = False
    """The last ``ReadyForQuery`` said ``T`` or ``E``: an explicit transaction is open."""
    completed: bool = False
    """A ``CommandComplete`` (or ``PortalSuspended``) and no error since the last
    ``ReadyForQuery``: an implicit transaction will commit."""
    held: list[bytes] = field(default_factory=list)


class _Connection:
    """One proxied connection: two sockets and the two pumps between them."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.up_reader, self.up_writer = upstream
        self.pg = _PgState() if proxy.protocol == "postgres" else None
        self._client_buffer = b""
        self._server_buffer = b""
        self.closed = False

    async def run(self) -> None:
        up = asyncio.ensure_future(self._pump(self.client_reader, self.up_writer, upstream=True))
        down = asyncio.ensure_future(self._pump(self.up_reader, self.client_writer, upstream=False))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            self.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        proxy = self.proxy
        while data := await reader.read(_CHUNK):
            delay = proxy.to_upstream_delay if upstream else proxy.to_client_delay
            if delay > 0:
                await asyncio.sleep(delay)
            await proxy._flowing.wait()  # a blackhole holds the bytes here
            if self.closed:
                return
            if upstream:
                proxy.stats.bytes_up += len(data)
                if self.pg is not None:
                    self._observe_client(data)
            else:
                proxy.stats.bytes_down += len(data)
                if self.pg is not None:
                    data = self._filter_server(data)
                    if self.closed:
                        return
            if data:
                writer.write(data)
                await writer.drain()
        # A clean end of one side ends the other the same way.
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()

    # -- PostgreSQL: client -> server ------------------------------------------------------

    def _observe_client(self, data: bytes) -> None:
        pg = self.pg
        assert pg is not None
        if pg.opaque:
            return
        self._client_buffer += data
        buffer = self._client_buffer
        while True:
            if not pg.client_typed:
                if len(buffer) < 8:
                    break
                (length,) = struct.unpack_from("!i", buffer, 0)
                if len(buffer) < length:
                    break
                (code,) = struct.unpack_from("!i", buffer, 4)
                buffer = buffer[length:]
                if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    pg.server_single_bytes += 1
                elif code == _CANCEL_REQUEST:
                    pg.opaque = True
                    break
                else:
                    pg.client_typed = True  # the StartupMessage
                continue
            if len(buffer) < 5:
                break
            kind = buffer[0:1]
            (length,) = struct.unpack_from("!i", buffer, 1)
            if len(buffer) < 1 + length:
                break
            body = buffer[5 : 1 + length]
            buffer = buffer[1 + length :]
            self._client_message(kind, body)
        self._client_buffer = b"" if pg.opaque else buffer

    def _client_message(self, kind: bytes, body: bytes) -> None:
        pg = self.pg
        assert pg is not None
        armed = self.proxy._armed
        statement: bytes | None = None
        if kind == b"P":  # Parse: name, query, ...
            name, _, rest = body.partition(b"\0")
            query = rest.partition(b"\0")[0]
            pg.statements[name] = query
            return
        if kind == b"B":  # Bind: portal, statement, ...
            _portal, _, rest = body.partition(b"\0")
            statement = pg.statements.get(rest.partition(b"\0")[0], b"")
        elif kind == b"Q":  # simple Query
            statement = body.rstrip(b"\0")
        if statement is not None and armed is not None and armed.matches(statement):
            pg.matched = True

    # -- PostgreSQL: server -> client ------------------------------------------------------

    def _filter_server(self, data: bytes) -> bytes:
        """Return what to forward now; withhold a matched transaction's replies; cut."""
        pg = self.pg
        assert pg is not None
        if pg.opaque:
            return data
        self._server_buffer += data
        buffer = self._server_buffer
        out: list[bytes] = []
        while buffer:
            if pg.server_single_bytes:
                answer, buffer = buffer[:1], buffer[1:]
                pg.server_single_bytes -= 1
                out.append(answer)
                if answer in (b"S", b"G"):  # encryption follows: nothing more to parse
                    pg.opaque = True
                    out.append(buffer)
                    buffer = b""
                continue
            if len(buffer) < 5:
                break
            kind = buffer[0:1]
            (length,) = struct.unpack_from("!i", buffer, 1)
            if len(buffer) < 1 + length:
                break
            message, buffer = buffer[: 1 + length], buffer[1 + length :]
            if self._server_message(kind, message):
                self._server_buffer = b""
                self.proxy._fire(self)
                return b""
            if pg.held:
                pg.held.append(message)
                if kind[0] in _RELEASE:
                    out.extend(pg.held)
                    pg.held.clear()
            elif pg.matched and self.proxy._armed is not None:
                pg.held.append(message)
            else:
                out.append(message)
        self._server_buffer = buffer
        return b"".join(out)

    def _server_message(self, kind: bytes, message: bytes) -> bool:
        """Track the transaction state; return whether to cut before ``message``."""
        pg = self.pg
        assert pg is not None
        armed = self.proxy._armed
        if kind == b"C":
            tag = message[5:].rstrip(b"\0")
            pg.completed = True
            if tag == b"COMMIT" and pg.matched and armed is not None:
                return True
        elif kind == b"s":  # PortalSuspended: a row limit; the statement has run all the same
            pg.completed = True
        elif kind == b"Z":
            status = message[5:6]
            implicit_commit = status == b"I" and not pg.in_block and pg.completed
            if implicit_commit and pg.matched and armed is not None:
                return True
            pg.in_block = status in (b"T", b"E")
            pg.completed = False
            if not pg.in_block:
                pg.matched = False
        elif kind == b"E":
            pg.completed = False
        return False

    # -- closing ---------------------------------------------------------------------------

    def close(self, *, rst: bool = False) -> None:
        """Close both sides (with a TCP RST when ``rst``); idempotent."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client_writer, self.up_writer):
            _close(writer, rst=rst)
        self.proxy._connections.discard(self)


def _close(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    if rst:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        writer.transport.abort()
    else:
        writer.close()


class FaultProxy:
    """A TCP proxy to ``upstream`` whose faults are switched at runtime.

    Use as ``async with FaultProxy(host, port) as proxy:``; ``proxy.port`` is where clients
    connect and :meth:`url` rewrites a service URL to go through it. ``protocol="postgres"``
    turns on the wire parsing :meth:`cut_after_commit` needs.
    """

    def __init__(self, host: str, port: int, *, protocol: Protocol = "raw") -> None:
        self.upstream = (host, port)
        self.protocol: Protocol = protocol
        self.port = 0
        self.stats = ProxyStats()
        self.to_upstream_delay = 0.0
        self.to_client_delay = 0.0
        self.refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._armed: _Armed | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_url(cls, url: str, *, protocol: Protocol | None = None) -> FaultProxy:
        """A proxy to the host and port of a ``postgresql://``, ``redis://`` or ``nats://`` URL."""
        parts = urlsplit(url)
        defaults = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "nats": 4222}
        if protocol is None:
            protocol = "postgres" if parts.scheme in ("postgresql", "postgres") else "raw"
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or defaults.get(parts.scheme, 0),
            protocol=protocol,
        )

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user kept, password too)."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{credentials}@{netloc}" if credentials else netloc)
        )

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        self._flowing.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.close(rst=True)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        """How many proxied connections are open."""
        return len(self._connections)

    # -- faults ----------------------------------------------------------------------------

    def latency(self, *, to_upstream: float = 0.0, to_client: float = 0.0) -> None:
        """Delay every chunk by this many seconds in each direction (0 turns it off)."""
        self.to_upstream_delay = to_upstream
        self.to_client_delay = to_client

    def blackhole(self) -> None:
        """Forward nothing either way (connections stay open, data is held)."""
        self._flowing.clear()

    def reset(self) -> None:
        """Abort every connection with a TCP RST and reset new ones until :meth:`heal`."""
        self.refusing = True
        for connection in list(self._connections):
            connection.close(rst=True)
            self.stats.reset_connections += 1

    def cut_after_commit(
        self, statements: bytes | Sequence[bytes] = (), *, then_reset: bool = False
    ) -> asyncio.Event:
        """Cut the next transaction that ran a statement containing one of ``statements``.

        An empty ``statements`` matches any statement. The cut happens once, right after
        the commit and before the client learns of it (see the module docstring); with
        ``then_reset`` the proxy then behaves as after :meth:`reset` (the network stays
        down) until :meth:`heal`. Returns an event set when the cut has happened.
        """
        if self.protocol != "postgres":
            raise ValueError("cut_after_commit needs protocol='postgres'")
        patterns = (statements,) if isinstance(statements, bytes) else tuple(statements)
        self._armed = _Armed(patterns, then_reset)
        return self._armed.fired

    def heal(self) -> None:
        """Turn every fault off (a pending ``cut_after_commit`` too)."""
        self.to_upstream_delay = self.to_client_delay = 0.0
        self.refusing = False
        self._armed = None
        self._flowing.set()

    def _fire(self, connection: _Connection) -> None:
        armed, self._armed = self._armed, None
        assert armed is not None
        self.stats.cut_after_commit += 1
        connection.close(rst=True)
        if armed.then_reset:
            self.reset()
        armed.fired.set()

    # -- serving ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # closed by close(): this task is the root of its work
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.refusing:
            self.stats.refused += 1
            _close(writer, rst=True)
            return
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            _close(writer, rst=True)
            return
        connection = _Connection(self, (reader, writer), upstream)
        if self.refusing:  # reset while connecting
            connection.close(rst=True)
            return
        self._connections.add(connection)
        await connection.run()
