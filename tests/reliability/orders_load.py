"""Recorded command load on the orders HTTP API, for fault tests.

:class:`OrdersLoad` plays clients that register customers, add and restock products, place
orders, add items, change addresses, ship and cancel, each request under its own
``Idempotency-Key``. Every attempt is recorded with what the client can conclude from it:

- ``ok``: a 2xx;
- ``failed``: a definite 4xx (the command was refused and stored nothing);
- ``unknown``: a 5xx, a 409 "still in progress", a timeout or a broken connection: it may or
  may not have committed.

:meth:`OrdersLoad.resolve` retries every request whose last attempt was unknown with the same
key and body until it gets a definite answer (DESIGN.md guarantee 5: the retry returns the
first outcome). :meth:`OrdersLoad.history` turns the record into a
:class:`~tests.reliability.history.History`, one operation per attempt, under the command id
the server recorded for the key (``EventStore.find_command``), for ``check_history``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from cqrskit.idempotency import ANONYMOUS
from cqrskit.store.protocol import EventStore
from tests.reliability.history import History, Outcome

__all__ = ["Attempt", "OrdersLoad", "Request"]

_KEY_PREFIX = "http:"  # how the HTTP layer records an Idempotency-Key (http/idempotency.py)
_IN_PROGRESS = "urn:cqrskit:problem:command-in-progress"


@dataclass(frozen=True)
class Attempt:
    """One HTTP exchange of a request."""

    outcome: Outcome
    status: int | None
    """``None`` when no response came (timeout, connection error)."""
    kind: str
    """The problem type, the transport error's class name, or ``"ok"``."""
    retry_after: str | None = None
    replayed: bool = False
    """A 2xx the server answered from an earlier attempt's record (``Idempotent-Replayed``)."""


@dataclass
class Request:
    """One command request (one idempotency key) and every attempt made with it."""

    key: str
    method: str
    path: str
    stream: str
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    result: dict[str, Any] | None = None
    """The body of the 2xx answer."""

    @property
    def outcome(self) -> Outcome | None:
        """The last attempt's outcome (``None`` before the first)."""
        return self.attempts[-1].outcome if self.attempts else None


def _money(rng: random.Random) -> str:
    return str(Decimal(rng.randrange(100, 100_000)) / 100)


def _address(rng: random.Random) -> dict[str, str]:
    return {
        "street": f"{rng.randrange(1, 999)} Crash Street",
        "city": rng.choice(["Lyon", "Porto", "Oslo", "Turku"]),
        "postal_code": f"{rng.randrange(10_000, 99_999)}",
        "country": "FR",
    }


class OrdersLoad:
    """Clients sending recorded commands to one API (see the module docstring)."""

    def __init__(self, client: httpx.AsyncClient, seed: int) -> None:
        self.client = client
        self.seed = seed
        self.requests: list[Request] = []
        self.kinds: collections.Counter[tuple[int | None, str]] = collections.Counter()
        """Every attempt's ``(status, kind)``."""
        self.customers: list[str] = []
        self.products: list[tuple[str, str]] = []
        """Acknowledged products: ``(id, unit price)``."""
        self.orders: dict[str, str] = {}
        """Acknowledged orders and the status the client last saw acknowledged."""

    # --- one exchange -------------------------------------------------------------------------

    async def attempt(self, request: Request) -> Attempt:
        """Send ``request`` once with its key, record and return what came back."""
        try:
            response = await self.client.request(
                request.method,
                request.path,
                json=request.body,
                params=request.params,
                headers={"Idempotency-Key": request.key},
            )
        except httpx.TransportError as exc:
            attempt = Attempt(Outcome.UNKNOWN, None, type(exc).__name__)
        else:
            attempt = self._classify(response)
            if attempt.outcome is Outcome.OK:
                request.result = response.json()
        request.attempts.append(attempt)
        self.kinds[attempt.status, attempt.kind] += 1
        if attempt.outcome is Outcome.OK:
            self._learn(request)
        return attempt

    @staticmethod
    def _classify(response: httpx.Response) -> Attempt:
        status = response.status_code
        if 200 <= status < 300:
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return Attempt(Outcome.OK, status, "ok", replayed=replayed)
        kind = "no-problem-body"
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            kind = str(response.json().get("type", kind))
        retry_after = response.headers.get("Retry-After")
        if 400 <= status < 500 and kind != _IN_PROGRESS:
            return Attempt(Outcome.FAILED, status, kind)
        return Attempt(Outcome.UNKNOWN, status, kind, retry_after)

    def _learn(self, request: Request) -> None:
        result = request.result or {}
        if "customer_id" in result:
            self.customers.append(str(result["customer_id"]))
        elif "product_id" in result and request.body and "unit_price" in request.body:
            self.products.append((str(result["product_id"]), str(request.body["unit_price"])))
        elif "order_id" in result:
            order_id, status = str(result["order_id"]), result.get("status")
            if status in ("shipped", "cancelled"):
                self.orders[order_id] = str(status)
            else:
                self.orders.setdefault(order_id, "pending")

    # --- the commands ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, stream: str, **kwargs: Any) -> Request:
        request = Request(str(uuid.uuid4()), method, path, stream, **kwargs)
        self.requests.append(request)
        return request

    def customer(self, rng: random.Random) -> Request:
        """Register a customer."""
        n = rng.randrange(1_000_000)
        body = {"name": f"Customer {n}", "email": f"c{n}@example.com"}
        return self._request("POST", "/api/v1/customers", "customer-?", body=body)

    def product(self, rng: random.Random) -> Request:
        """Add a product, usually with plenty of stock, sometimes nearly none."""
        stock = 3 if rng.random() < 0.1 else 1_000_000
        body = {"name": f"Product {rng.randrange(1000)}", "unit_price": _money(rng), "stock": stock}
        return self._request("POST", "/api/v1/products", "product-?", body=body)

    def _item(self, rng: random.Random) -> dict[str, Any]:
        product_id, price = rng.choice(self.products)
        return {"product_id": product_id, "quantity": rng.randrange(1, 4), "unit_price": price}

    def next_request(self, rng: random.Random) -> Request:
        """Draw the next command from what this run has had acknowledged so far."""
        if not self.customers:
            return self.customer(rng)
        if not self.products:
            return self.product(rng)
        pending = [o for o, status in self.orders.items() if status == "pending"]
        roll = rng.random()
        if roll < 0.08:
            return self.customer(rng)
        if roll < 0.13:
            return self.product(rng)
        if roll < 0.18:
            product_id, _ = rng.choice(self.products)
            body: dict[str, Any] = {"quantity": rng.randrange(1, 100)}
            path = f"/api/v1/products/{product_id}/restock"
            return self._request("POST", path, f"product-{product_id}", body=body)
        if roll < 0.50 or not self.orders:
            items = [self._item(rng) for _ in range(rng.randrange(1, 4))]
            body = {
                "customer_id": rng.choice(self.customers),
                "items": items,
                "shipping_address": _address(rng),
            }
            return self._request("POST", "/api/v1/orders", "order-?", body=body)
        # Mostly pending orders; now and then any order, for definite 409s.
        order_id = rng.choice(pending if pending and rng.random() < 0.85 else list(self.orders))
        path, stream = f"/api/v1/orders/{order_id}", f"order-{order_id}"
        if roll < 0.72:
            return self._request("POST", f"{path}/items", stream, body=self._item(rng))
        if roll < 0.78:
            return self._request("PUT", f"{path}/shipping-address", stream, body=_address(rng))
        if roll < 0.90:
            return self._request("POST", f"{path}/ship", stream)
        return self._request("DELETE", path, stream, params={"reason": "changed my mind"})

    # --- clients ------------------------------------------------------------------------------

    async def client_loop(self, number: int, stop: asyncio.Event, *, retries: int = 2) -> None:
        """One client: send commands until ``stop``; retry an unknown one a few times.

        What is still unknown after ``retries`` is left for :meth:`resolve`.
        """
        rng = random.Random(f"{self.seed}/{number}")
        while not stop.is_set():
            request = self.next_request(rng)
            for tries in range(retries + 1):
                attempt = await self.attempt(request)
                if attempt.outcome is not Outcome.UNKNOWN or tries == retries or stop.is_set():
                    break
                await asyncio.sleep(0.1 * (tries + 1))  # back off before the same retry

    async def resolve(self, timeout: float = 60.0) -> int:
        """Retry every unknown request (same key, same request) until it is definite.

        Returns how many requests had an unknown attempt. Raises ``AssertionError`` when one
        is still unknown at the deadline.
        """
        deadline = time.monotonic() + timeout
        for request in self.requests:
            while request.outcome is Outcome.UNKNOWN:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{request.method} {request.path} never resolved")
                if (await self.attempt(request)).outcome is Outcome.UNKNOWN:
                    await asyncio.sleep(0.1)
        return sum(
            any(a.outcome is Outcome.UNKNOWN for a in request.attempts) for request in self.requests
        )

    # --- the history -------------------------------------------------------------------------

    async def history(self, store: EventStore) -> tuple[History, list[str]]:
        """The attempts as a :class:`History` under the recorded command ids, and problems.

        A problem is an acknowledged key with no command record, a definitely failed key with
        one, a request answered differently twice (``ok`` then ``failed``, or the reverse), or
        a fresh key answered as a replay.
        """
        history = History()
        problems = []
        for request in self.requests:
            stored = await store.find_command(ANONYMOUS, _KEY_PREFIX + request.key)
            outcomes = {a.outcome for a in request.attempts} - {Outcome.UNKNOWN}
            if len(outcomes) > 1:
                problems.append(f"{request.key}: answered both ok and failed")
            if request.attempts and request.attempts[0].replayed:
                problems.append(f"{request.key}: a fresh key was answered as a replay")
            if stored is None:
                command_id = uuid.uuid5(uuid.NAMESPACE_URL, request.key)  # in no event
                if Outcome.OK in outcomes:
                    problems.append(f"{request.key}: acknowledged but no command recorded")
            else:
                command_id = uuid.UUID(str(json.loads(stored.record.command)["command_id"]))
                if Outcome.FAILED in outcomes:
                    problems.append(f"{request.key}: failed but its command is recorded")
            for attempt in request.attempts:
                op = history.begin(command_id, request.stream)
                record = {
                    Outcome.OK: history.ok,
                    Outcome.FAILED: history.failed,
                    Outcome.UNKNOWN: history.unknown,
                }[attempt.outcome]
                record(op, (attempt.status, attempt.kind))
        return history, problems
