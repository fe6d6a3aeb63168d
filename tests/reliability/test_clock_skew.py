"""Clock skew: API processes whose clocks are minutes apart, on PostgreSQL and a shared SQLite.

Two ``cqrskit serve`` processes run under libfaketime (``LD_PRELOAD``, Debian's ``faketime``),
one 5 minutes behind and one 7 minutes ahead, and a ``cqrskit worker`` 2 minutes behind runs
the projections. Two clients interleave commands through both APIs at once. A command's
``timestamp`` (so its events' ``occurred_at``) comes from the clock of the process that took
it, so the log's timestamps jump back and forth by 12 minutes; nothing that orders or applies
events may look at them.

What it proves (DESIGN.md section 2, guarantees 1-3, under skew):

- the skew is real: each API's events carry its own clock's time (checked against the offset);
- the global log is in commit order, not timestamp order: whenever one command was answered
  before another was sent, through either API, its events come first in the log, while
  ``occurred_at`` in log order goes backwards many times;
- every acknowledged command is in the log exactly once, failed ones left nothing, per-stream
  versions are contiguous (the history checker);
- the projections, following live in a skewed worker while skewed writers commit concurrently,
  apply everything exactly once (statistics count every acknowledged order, every order reads
  back through both APIs) and equal a rebuild from scratch. On PostgreSQL the read fence is
  transaction ids, not clocks, so a writer's clock cannot make the reader skip an event;
- every timestamp any response shows (``occurred_at``/``recorded_at`` of the event browser,
  ``created_at``/``updated_at`` of ``OrderView`` and the order lists, checkpoint times in
  ``/health/projections``) is timezone-aware UTC.
"""

from __future__ import annotations

import asyncio
import bisect
import glob
import itertools
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from cqrskit.config import Settings
from cqrskit.messages import LogPosition, RecordedEvent
from cqrskit.service import Runtime
from orders.service import service
from tests.reliability.history import (
    History,
    assert_converged,
    check_history,
    read_log,
    wait_caught_up,
)
from tests.reliability.report import record
from tests.reliability.supervisor import Child, Supervisor
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

LIBFAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
SKEW = {"behind": timedelta(minutes=-5), "ahead": timedelta(minutes=7)}
WORKER_SKEW = timedelta(minutes=-2)
SKEW_TOLERANCE = timedelta(seconds=60)
"""How far an event's ``occurred_at`` may sit from (real time + its API's offset)."""
TIMEOUT = 30.0
ADDRESS = {"street": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}
PRICE = "2.50"
# An ISO 8601 date-time as JSON carries it (date alone or an HTTP date is no instant).
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def libfaketime() -> str:
    """The multi-threaded libfaketime, or skip (CI unset) / fail (CI set) without it."""
    for pattern in LIBFAKETIME_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    message = "libfaketimeMT.so.1 not found (Debian package faketime)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip")
    pytest.skip(message)


def skewed(library: str, offset: timedelta) -> dict[str, str]:
    """Environment that runs a process with its wall clock moved by ``offset``.

    Only the wall clock moves: clocks between machines disagree on the time of day, while a
    process's monotonic clock (timeouts, sleeps) is its own business.
    """
    minutes = int(offset.total_seconds() // 60)
    return {
        "LD_PRELOAD": library,
        "FAKETIME": f"{minutes:+d}m",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@dataclass
class Op:
    """One HTTP command: which API took it, when, and what it answered."""

    api: str
    kind: str
    correlation_id: UUID
    stream_id: str
    sent_at: float
    sent_wall: datetime
    answered_at: float = 0.0
    status: int | None = None
    body: Any = None
    token: LogPosition | None = None


@dataclass
class Shop:
    """What the clients know: products, customers, orders and every operation."""

    rng: random.Random
    products: list[str] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    ops: list[Op] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)
    """Every JSON body any API answered (checked for timestamps)."""

    async def send(
        self,
        api: str,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        kind: str,
        stream_id: str,
        **kwargs: Any,
    ) -> Op:
        op = Op(api, kind, uuid4(), stream_id, time.monotonic(), datetime.now(UTC))
        self.ops.append(op)
        headers = {"X-Correlation-ID": str(op.correlation_id)}
        try:
            response = await client.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError:
            return op  # unknown outcome: status stays None
        op.answered_at, op.status = time.monotonic(), response.status_code
        if response.headers.get("content-type", "").endswith("json"):
            op.body = response.json()
            self.responses.append(op.body)
        token = response.headers.get("X-Consistency-Token")
        if token:
            op.token = LogPosition.parse(token)
        return op

    async def step(self, api: str, client: httpx.AsyncClient) -> None:
        """One random command through ``api``."""
        roll = self.rng.random()
        pending = [o for o in self.orders if o not in self.cancelled]
        if roll < 0.15 or not self.customers:
            op = await self.send(
                api,
                client,
                "POST",
                "/api/v1/customers",
                "register",
                "customer-?",
                json={"name": "Ada", "email": f"{uuid4().hex[:10]}@example.com"},
            )
            if op.status == 201:
                self.customers.append(op.body["customer_id"])
        elif roll < 0.55 or not pending:
            items = [
                {"product_id": p, "quantity": self.rng.randint(1, 3), "unit_price": PRICE}
                for p in self.rng.sample(self.products, self.rng.randint(1, 2))
            ]
            body = {
                "customer_id": self.rng.choice(self.customers),
                "items": items,
                "shipping_address": ADDRESS,
            }
            op = await self.send(
                api, client, "POST", "/api/v1/orders", "create", "order-?", json=body
            )
            if op.status == 201:
                self.orders.append(op.body["order_id"])
        elif roll < 0.75:
            order_id = self.rng.choice(pending)
            item = {
                "product_id": self.rng.choice(self.products),
                "quantity": 1,
                "unit_price": PRICE,
            }
            await self.send(
                api,
                client,
                "POST",
                f"/api/v1/orders/{order_id}/items",
                "add_item",
                f"order-{order_id}",
                json=item,
            )
        elif roll < 0.9:
            product_id = self.rng.choice(self.products)
            await self.send(
                api,
                client,
                "POST",
                f"/api/v1/products/{product_id}/restock",
                "restock",
                f"product-{product_id}",
                json={"quantity": 10},
            )
        else:
            order_id = self.rng.choice(pending)
            op = await self.send(
                api,
                client,
                "DELETE",
                f"/api/v1/orders/{order_id}",
                "cancel",
                f"order-{order_id}",
                params={"reason": "skew"},
            )
            if op.status == 200:
                self.cancelled.add(order_id)


def timestamps(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Every string in a JSON document that looks like an ISO date-time, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from timestamps(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from timestamps(item, f"{path}[{index}]")
    elif isinstance(value, str) and ISO_DATETIME.match(value):
        yield path, value


def assert_utc(documents: list[Any]) -> int:
    """Every date-time in ``documents`` is timezone-aware UTC; return how many were seen."""
    seen = 0
    for document in documents:
        for path, text in timestamps(document):
            seen += 1
            assert text.endswith(("Z", "+00:00")), f"{path} = {text!r} is not UTC"
            moment = datetime.fromisoformat(text)
            assert moment.utcoffset() == timedelta(0), f"{path} = {text!r} is not UTC"
    return seen


async def test_skewed_clocks_change_neither_order_nor_projections(
    database_url: str, tmp_path: Path
) -> None:
    library = libfaketime()
    ops_per_client = TIER.pick(fast=40, full=300, soak=3000)
    with Supervisor(tmp_path) as sup:
        rng = random.Random(sup.seed)
        apis: dict[str, Child] = {}
        for name, offset in SKEW.items():
            env = skewed(library, offset)
            apis[name] = sup.api(database_url, name=f"api-{name}", env=env)
        # Started one after the other: the first migrates; projections run in the worker.
        await sup.start(apis["behind"])
        worker = sup.worker(database_url, env=skewed(library, WORKER_SKEW))
        await sup.start(apis["ahead"], worker)

        shop = Shop(rng)
        clients = {
            name: httpx.AsyncClient(base_url=child.url or "", timeout=TIMEOUT)
            for name, child in apis.items()
        }
        try:
            for i in range(3):
                api = list(clients)[i % 2]
                op = await shop.send(
                    api,
                    clients[api],
                    "POST",
                    "/api/v1/products",
                    "product",
                    "product-?",
                    json={"name": f"Product {i}", "unit_price": PRICE, "stock": 1_000_000},
                )
                assert op.status == 201, op.body
                shop.products.append(op.body["product_id"])

            async def client_loop(api: str) -> None:
                for _ in range(ops_per_client):
                    await shop.step(api, clients[api])

            await asyncio.gather(*(client_loop(api) for api in clients))
            await check_everything(database_url, shop, clients)
        finally:
            for client in clients.values():
                await client.aclose()


async def check_everything(
    database_url: str,
    shop: Shop,
    clients: dict[str, httpx.AsyncClient],
) -> None:
    statuses = [op.status for op in shop.ops]
    server_errors = [op for op in shop.ops if op.status is None or op.status >= 500]
    assert not server_errors, [(op.kind, op.status, op.body) for op in server_errors]

    runtime = await Runtime.open(service, Settings(database_url=database_url, migrate=False))
    try:
        # The worker (not this process) applies events: wait for it, then read everything.
        await wait_caught_up(runtime, timeout=TIMEOUT, drive=False)
        log = await read_log(runtime.backend.store)
        history = build_history(shop, log)
        result = await check_history(history, runtime.backend.store)
        result.assert_clean()

        positions = [r.position for r in log]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions)
        first_at, last_at = event_spans(shop, log)
        assert_skew_is_real(shop, log)
        inversions = assert_commit_order(shop, first_at, last_at)
        backwards = sum(
            1 for a, b in itertools.pairwise(log) if b.event.occurred_at < a.event.occurred_at
        )
        assert backwards > 0, "occurred_at never went backwards: the clocks were not skewed"

        # Projections: everything applied once, and equal to a rebuild from scratch.
        await assert_converged(runtime, timeout=TIMEOUT, drive=False)
    finally:
        await runtime.close()

    created = [op.body["order_id"] for op in shop.ops if op.kind == "create" and op.status == 201]
    cancelled = sum(1 for op in shop.ops if op.kind == "cancel" and op.status == 200)
    for name, client in clients.items():
        stats = (await client.get("/api/v1/orders/statistics")).json()
        assert stats["total_orders"] == len(created), (name, stats)
        assert stats["orders_by_status"].get("cancelled", 0) == cancelled, (name, stats)
    documents: list[Any] = list(shop.responses)
    for index, order_id in enumerate(created):
        client = clients[list(clients)[index % 2]]
        response = await client.get(f"/api/v1/orders/{order_id}")
        assert response.status_code == 200, response.text
        documents.append(response.json())
    for client in clients.values():
        documents.append((await client.get("/health/projections")).json())
        documents.append((await client.get(f"/api/v1/customers/{shop.customers[0]}/orders")).json())
        documents.append((await client.get("/api/v1/orders/search", params={"q": "Ada"})).json())
        after: str | None = None
        while True:
            page = (
                await client.get(
                    "/admin/events", params={"limit": 500, **({"after": after} if after else {})}
                )
            ).json()
            documents.append(page)
            after = page["next"]
            if after is None:
                break
    surfaced = assert_utc(documents)
    assert surfaced > len(log), "too few timestamps seen: did the responses change shape?"

    summary = history.summary()
    record(
        f"clock_skew_{database_url.split(':')[0]}",
        skews="api -5m, api +7m, worker -2m",
        operations=summary["operations"],
        acknowledged=summary["ok"],
        failed=summary["failed"],
        unknown=summary["unknown"],
        events=result.events,
        occurred_at_backwards=backwards,
        happened_before_pairs=inversions,
        timestamps_checked=surfaced,
        lost=len(result.lost),
        leaked=len(result.leaked),
        duplicated=len(result.duplicated),
        gaps=len(result.gaps),
        http_statuses=",".join(f"{s}:{statuses.count(s)}" for s in sorted(set(statuses), key=str)),
    )


def build_history(shop: Shop, log: list[RecordedEvent]) -> History:
    """The history of the run, command ids found through each request's correlation id."""
    command_of: dict[UUID, UUID] = {}
    for r in log:
        meta = r.event.metadata
        if meta.correlation_id is not None and meta.causation_id is not None:
            command_of.setdefault(meta.correlation_id, meta.causation_id)
    history = History()
    for op in shop.ops:
        # A request whose correlation id is not in the log stored nothing: its own id stands
        # in for the command id (an OK one is then reported lost, a failed one clean).
        entry = history.begin(command_of.get(op.correlation_id, op.correlation_id), op.stream_id)
        if op.status is None or op.status >= 500:
            history.unknown(entry, op.status)
        elif op.status < 300:
            history.ok(entry, op.status)
        else:
            history.failed(entry, op.status)
    return history


def event_spans(
    shop: Shop, log: list[RecordedEvent]
) -> tuple[dict[UUID, LogPosition], dict[UUID, LogPosition]]:
    """First and last log position of each request's events (by correlation id)."""
    first: dict[UUID, LogPosition] = {}
    last: dict[UUID, LogPosition] = {}
    for r in log:
        cid = r.event.metadata.correlation_id
        if cid is not None:
            first.setdefault(cid, r.position)
            last[cid] = r.position
    return first, last


def assert_skew_is_real(shop: Shop, log: list[RecordedEvent]) -> None:
    """Each API stamped its events with its own (skewed) clock."""
    by_correlation = {op.correlation_id: op for op in shop.ops}
    checked = 0
    for r in log:
        op = by_correlation.get(r.event.metadata.correlation_id or uuid4())
        if op is None:
            continue
        expected = op.sent_wall + SKEW[op.api]
        assert abs(r.event.occurred_at - expected) < SKEW_TOLERANCE, (
            f"{op.api}: occurred_at {r.event.occurred_at} is not near {expected}: is faketime on?"
        )
        checked += 1
    assert checked == len(log)


def assert_commit_order(
    shop: Shop, first_at: dict[UUID, LogPosition], last_at: dict[UUID, LogPosition]
) -> int:
    """Answered-before-sent implies logged-before, across both APIs; return pairs checked.

    For each request, every request answered before it was sent must have all its events
    before this one's first event: the latest such "last event" is compared, found by
    bisecting the requests sorted by when they were answered.
    """
    stored = sorted(
        (op for op in shop.ops if op.correlation_id in first_at), key=lambda op: op.answered_at
    )
    answered = [op.answered_at for op in stored]
    latest: list[tuple[LogPosition, Op]] = []  # running maximum of last_at, in answer order
    for op in stored:
        mine = (last_at[op.correlation_id], op)
        latest.append(max(latest[-1], mine, key=lambda x: x[0]) if latest else mine)
    pairs = 0
    for b in stored:
        before = bisect.bisect_left(answered, b.sent_at)
        if before == 0:
            continue
        pairs += before
        position, a = latest[before - 1]
        assert position < first_at[b.correlation_id], (
            f"{a.kind} via {a.api} was answered before {b.kind} via {b.api} was sent,"
            " yet its events come later in the log"
        )
    assert pairs > 0
    return pairs
