"""HTTP abuse against a real ``cqrskit serve`` process: bounded time, bounded memory, no starving.

One server process (uvicorn on a SQLite file, default body limit of 1 MiB) takes every
attack at once, from raw asyncio sockets: 10 MiB bodies with a ``Content-Length`` and
chunked without one, 100k levels of nested JSON, a million-item array, a near-limit string,
a body trickled in a byte every 100 ms, headers trickled in (slowloris, many connections),
a connection that never sends anything, and 160 MiB of headers. Meanwhile a well-behaved
client keeps reading.

What must hold: every attack ends (a 4xx problem+json that leaks nothing, or the connection
closed) within ``BOUND`` seconds, and after a 408/413/431, or an answer given before the
body was in, the server closes the connection within that bound too (it does not drain a
trickling body forever); the server's RSS (``/proc/<pid>/status``) grows by less than
``RSS_BOUND_MIB`` over the run; every one of the other client's GETs answers 200 within
``GET_BOUND`` seconds. These are bounds, not benchmarks. The server's body and head
timeouts are set to ``SLOW_TIMEOUT`` seconds so the slow clients are cut in a short run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.test_http_hostile import CANARY, LEAKS
from tests.reliability.report import record
from tests.reliability.supervisor import Child, Supervisor
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

MIB = 1024 * 1024
SLOW_TIMEOUT = 3.0
"""The server's ``CQRSKIT_BODY_TIMEOUT`` and ``CQRSKIT_HEADER_TIMEOUT`` in this test."""
BOUND = 10.0
"""Every attack is rejected or cut within this many seconds."""
GET_BOUND = 5.0
"""Every GET of the well-behaved client answers within this many seconds."""
RSS_BOUND_MIB = 100
REJECTIONS = {408, 413, 431}
"""Statuses that mean "the server will not read this request": the connection must end."""
COPIES = TIER.pick(fast=4, full=16)
"""How many copies of each big-body attack run at once."""
SLOWLORIS = TIER.pick(fast=50, full=400)
"""How many connections trickle their headers in at once."""
ADDRESS = {"street": "1 Main Street", "city": "Utrecht", "postal_code": "3511", "country": "NL"}
ORDER_ID = "00000000-0000-0000-0000-000000000001"

Sender = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Outcome:
    """How one attack ended, seen from the client."""

    name: str
    status: int | None = None
    """The response's status; ``None``: the connection ended without one."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    """From connecting until the response was read or the connection was closed."""
    closed: bool = False
    hung: bool = False


def head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader, outcome: Outcome) -> None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        outcome.closed = True
        return
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    outcome.status = int(status_line.split()[1])
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        outcome.headers[name.strip().lower()] = value.strip()
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        outcome.body = await reader.readexactly(int(outcome.headers.get("content-length", "0")))


async def wait_closed(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    return True


async def attack(port: int, name: str, send: Sender, *, expect_close: bool = False) -> Outcome:
    """Connect, run ``send`` while reading the answer; end once answered (and closed)."""
    outcome = Outcome(name)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def sending() -> None:
        with contextlib.suppress(ConnectionError):
            await send(writer)

    task = asyncio.create_task(sending())
    try:
        async with asyncio.timeout(BOUND + 5):
            await read_response(reader, outcome)
            if not outcome.closed and (expect_close or outcome.status in REJECTIONS):
                outcome.closed = await wait_closed(reader)
    except TimeoutError:
        outcome.hung = True
    finally:
        outcome.seconds = time.monotonic() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return outcome


def body_of(path: str, body: bytes) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(
            head("POST", path, "Content-Type: application/json", f"Content-Length: {len(body)}")
        )
        for start in range(0, len(body), 64 * 1024):
            writer.write(body[start : start + 64 * 1024])
            await writer.drain()

    return send


def chunked(path: str, size: int) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(
            head("POST", path, "Content-Type: application/json", "Transfer-Encoding: chunked")
        )
        chunk = b'{"name": "' + CANARY.encode() + b"a" * (64 * 1024 - 10 - len(CANARY))
        for _ in range(size // len(chunk)):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return send


def trickle(prefix: bytes, byte: bytes, count: int) -> Sender:
    """Send ``prefix``, then ``byte`` every 100 ms, ``count`` times."""

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(prefix)
        await writer.drain()
        for _ in range(count):
            await asyncio.sleep(0.1)  # the attack's pace, not synchronisation
            writer.write(byte)
            await writer.drain()

    return send


async def nothing(writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def endless_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    line = b"X-Padding: " + b"p" * MIB + b"\r\n"
    for _ in range(160):
        writer.write(line)
        await writer.drain()


def attacks(port: int) -> list[Awaitable[Outcome]]:
    """Every attack, as coroutines to run at once."""
    ten_mib = b'{"name": "' + CANARY.encode() + b"a" * (10 * MIB) + b'", "email": "a@b.co"}'
    nested = b"[" * 100_000
    nested_objects = b'{"a":' * 100_000
    items = {"customer_id": ORDER_ID, "items": [0] * 1_000_000, "shipping_address": ADDRESS}
    near_limit = {"customer_id": ORDER_ID, "items": [{}] * 250_000, "shipping_address": ADDRESS}
    string = {"name": CANARY + "a" * 1_000_000, "email": "a@b.co"}
    runs: list[Awaitable[Outcome]] = []
    for copy in range(COPIES):
        runs += [
            attack(port, f"declared-10MiB-{copy}", body_of("/api/v1/customers", ten_mib)),
            attack(port, f"chunked-10MiB-{copy}", chunked("/api/v1/customers", 10 * MIB)),
            attack(port, f"nested-100k-{copy}", body_of("/api/v1/orders", nested)),
            attack(port, f"nested-objects-{copy}", body_of("/api/v1/orders", nested_objects)),
            attack(port, f"items-1M-{copy}", body_of("/api/v1/orders", json.dumps(items).encode())),
            attack(
                port,
                f"items-250k-{copy}",
                body_of("/api/v1/orders", json.dumps(near_limit).encode()),
            ),
            attack(
                port, f"string-1M-{copy}", body_of("/api/v1/customers", json.dumps(string).encode())
            ),
        ]
    customer_head = head(
        "POST", "/api/v1/customers", "Content-Type: application/json", "Content-Length: 1000"
    )
    runs += [
        attack(port, "slow-body", trickle(customer_head, b" ", 1000)),
        attack(
            port,
            "slow-body-unread",
            trickle(head("GET", "/health", "Content-Length: 1000"), b" ", 1000),
            expect_close=True,
        ),
        attack(port, "idle-connection", nothing, expect_close=True),
        attack(port, "endless-headers", endless_headers, expect_close=True),
    ]
    slow_head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    runs += [
        attack(port, f"slowloris-{n}", trickle(slow_head, b"s", 1000), expect_close=True)
        for n in range(SLOWLORIS)
    ]
    return runs


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_mib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def well_behaved(url: str, latencies: list[tuple[int, float]], stop: asyncio.Event) -> None:
    """GET the health and a query, ten times a second, until ``stop``."""
    async with httpx.AsyncClient(base_url=url, timeout=GET_BOUND * 2) as client:
        while not stop.is_set():
            for path in ("/health", "/api/v1/orders/search?q=widget"):
                started = time.monotonic()
                try:
                    status = (await client.get(path)).status_code
                except httpx.HTTPError:
                    status = 0
                latencies.append((status, time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Child]:
    with Supervisor(tmp_path) as supervisor:
        env = {
            "CQRSKIT_BODY_TIMEOUT": str(SLOW_TIMEOUT),
            "CQRSKIT_HEADER_TIMEOUT": str(SLOW_TIMEOUT),
        }
        api = supervisor.api(f"sqlite:///{tmp_path}/abuse.db", projections=True, env=env)
        await supervisor.start(api)
        yield api


def leaks_in(outcome: Outcome) -> list[str]:
    text = outcome.body.decode(errors="replace")
    return [leak for leak in (*LEAKS, "s3cr3t") if leak in text]


async def test_abuse_is_cut_off_in_bounded_time_and_memory_without_starving(
    server: Child,
) -> None:
    assert server.url is not None
    assert server.pid is not None
    port = int(server.url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=server.url, timeout=GET_BOUND) as client:
        # Warm up (imports, first queries) so the baseline is the server at rest.
        for _ in range(20):
            assert (await client.get("/api/v1/orders/search")).status_code == 200
        # A large but legitimate head (a 32 KiB cookie) is not mistaken for abuse.
        cookie = {"Cookie": "session=" + "c" * 32 * 1024}
        assert (await client.get("/health", headers=cookie)).status_code == 200
    baseline = rss_mib(server.pid)

    stop = asyncio.Event()
    samples: list[float] = []
    latencies: list[tuple[int, float]] = []
    sampler = asyncio.create_task(sample_rss(server.pid, samples, stop))
    reader = asyncio.create_task(well_behaved(server.url, latencies, stop))
    try:
        outcomes = await asyncio.gather(*attacks(port))
    finally:
        stop.set()
        await asyncio.gather(sampler, reader)
    assert server.running, server.tail()

    growth = max(samples) - baseline
    five_xx = [o for o in outcomes if o.status is not None and o.status >= 500]
    leaking = {o.name: leaks_in(o) for o in outcomes if leaks_in(o)}
    slowest = max(o.seconds for o in outcomes)
    record(
        "http_abuse",
        requests=len(outcomes) + len(latencies),
        attacks=len(outcomes),
        rejected=sum(1 for o in outcomes if o.status is None or 400 <= o.status < 500),
        closed_without_answer=sum(1 for o in outcomes if o.status is None),
        slowest_rejection_s=round(slowest, 2),
        max_rss_growth_mib=round(growth, 1),
        good_gets=len(latencies),
        max_get_latency_s=round(max(seconds for _, seconds in latencies), 3),
        five_xx=len(five_xx),
        leaks=len(leaking),
    )

    assert not five_xx, [(o.name, o.status) for o in five_xx]
    assert not leaking, leaking
    for outcome in outcomes:
        where = (outcome.name, outcome.status, outcome.headers, outcome.body[:200])
        assert not outcome.hung, where
        assert outcome.seconds <= BOUND, (where, outcome.seconds)
        if outcome.status is not None:
            assert 400 <= outcome.status < 500 or outcome.name == "slow-body-unread", where
            assert outcome.headers["content-type"].startswith("application/"), where
            if outcome.status >= 400:
                assert outcome.headers["content-type"] == "application/problem+json", where
        if outcome.status in REJECTIONS:
            assert outcome.closed, where
    expected = {
        "slow-body": {408},
        "nested-100k-0": {400, 422},
        "nested-objects-0": {400, 422},
        "items-250k-0": {422},
        "string-1M-0": {422},
    }
    by_name = {outcome.name: outcome for outcome in outcomes}
    for name, statuses in expected.items():
        assert by_name[name].status in statuses, by_name[name]
    for name in ("slow-body-unread", "idle-connection", "endless-headers"):
        assert by_name[name].closed, by_name[name]
    assert growth < RSS_BOUND_MIB, (baseline, max(samples))
    assert latencies, "the well-behaved client never got to ask"
    starved = [
        (status, seconds) for status, seconds in latencies if status != 200 or seconds > GET_BOUND
    ]
    assert not starved, starved
