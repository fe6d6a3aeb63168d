"""Scenario 9's subprocess: catch ``customer_orders`` up over a seeded log, report RSS.

``python -m bench.memory_probe <postgres-url>`` opens the backend, migrates the projection and
reads ``VmRSS`` from ``/proc/self/status`` (baseline), runs
:meth:`~cqrskit.projections.runner.ProjectionRunner.catch_up` to the head, then reads
``VmRSS`` and ``VmHWM`` (the peak) again. Prints one JSON object (sizes in KiB).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "rss_kib"]


def rss_kib() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process, in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def _run(url: str, batch: int) -> dict[str, float]:
    from cqrskit.backend import open_backend
    from cqrskit.projections.runner import ProjectionRunner
    from orders.read_models.customer_orders import CustomerOrdersProjection

    backend = await open_backend(url)
    try:
        runner = ProjectionRunner(
            backend.store, backend.read_models, CustomerOrdersProjection(), batch_size=batch
        )
        await runner.migrate()
        before = rss_kib()
        started = time.perf_counter()
        await runner.catch_up()
        elapsed = time.perf_counter() - started
        after = rss_kib()
        events = runner.status.events_applied
    finally:
        await backend.close()
    return {
        "events": events,
        "seconds": elapsed,
        "rss_before_kib": before["VmRSS"],
        "rss_after_kib": after["VmRSS"],
        "hwm_kib": after["VmHWM"],
        "growth_mib": (after["VmHWM"] - before["VmRSS"]) / 1024,
        "end_growth_mib": (after["VmRSS"] - before["VmRSS"]) / 1024,
    }


def main() -> None:
    """Run the probe on the URL in ``argv[1]`` (batch size in ``argv[2]``, default 500)."""
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    try:
        import uvloop

        result = uvloop.run(_run(sys.argv[1], batch))
    except ImportError:
        result = asyncio.run(_run(sys.argv[1], batch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
