"""Scenario 8's query client: query ``customer_orders`` back to back until SIGTERM.

``python -m bench.query_client <postgres-url> <customer-id>...`` opens the backend, wraps its
read models as the service does (reads follow the live generation) and sends
``GetOrdersByCustomer`` through the projection's query handler, one after another, cycling
over the customers. It prints ``ready`` once the first query has answered and, after SIGTERM,
one JSON object: queries that answered, queries that failed, the first error.

It runs in its own process, as queries would in the service while ``cqrskit projections
rebuild`` runs elsewhere, so it shares the machine with the rebuild but not its event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from typing import Any

__all__ = ["main"]


async def _run(url: str, customers: list[str]) -> dict[str, Any]:
    from cqrskit.backend import open_backend
    from cqrskit.projections.generations import LiveReadModels
    from orders.queries import GetOrdersByCustomer
    from orders.read_models.customer_orders import CustomerOrdersProjection, orders_by_customer

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    backend = await open_backend(url, migrate=False, pool_size=2)
    handle = orders_by_customer(
        LiveReadModels.wrap(backend.read_models, [CustomerOrdersProjection()])
    )
    ok = failed = 0
    first_error = ""
    started = time.perf_counter()
    try:
        i = 0
        while not stop.is_set():
            query = GetOrdersByCustomer(customer_id=uuid.UUID(customers[i % len(customers)]))
            i += 1
            try:
                page = await handle(query)
                if page.total == 0:
                    raise AssertionError(f"customer {query.customer_id} has no orders")
                ok += 1
            except Exception as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            if i == 1:
                print("ready", flush=True)
    finally:
        await backend.close()
    elapsed = time.perf_counter() - started
    return {"ok": ok, "failed": failed, "first_error": first_error, "seconds": elapsed}


def main() -> None:
    """Run the client on ``argv[1]`` for the customers in ``argv[2:]``."""
    try:
        import uvloop

        result = uvloop.run(_run(sys.argv[1], sys.argv[2:]))
    except ImportError:
        result = asyncio.run(_run(sys.argv[1], sys.argv[2:]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
