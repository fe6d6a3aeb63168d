"""Scenario 6's projection worker: the runner in its own process, as ``cqrskit worker`` runs it.

``python -m bench.lag_worker <postgres-url>`` opens the backend, migrates
:class:`~bench.domain.AccountSummary` and follows the log under a PostgreSQL lease (the
lease's fence statement in every batch, as ``cqrskit worker`` does on PostgreSQL). It prints
``ready`` once the runner is following, then reads one line ``<transaction_id> <position>``
from stdin: the last position the sender appended. When a commit has covered it, it prints
one JSON object ``{"commits": [[transaction_id, position, monotonic], ...]}`` and exits.
Like ``cqrskit worker`` it runs on the stdlib event loop (the sender uses uvloop).

Commit times are ``time.monotonic()``: ``CLOCK_MONOTONIC`` on Linux, one clock for every
process of the machine, so the sender can subtract its own dispatch times from them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from cqrskit.messages import LogPosition
from cqrskit.read_models.protocol import ReadModelStore, Statement

__all__ = ["TimedCommits", "main"]

_FOLLOW_TIMEOUT = 60.0


class TimedCommits:
    """A read-model store that remembers when each checkpoint commit returned."""

    def __init__(self, inner: ReadModelStore) -> None:
        self._inner = inner
        self.commits: list[tuple[LogPosition, float]] = []
        self.target: LogPosition | None = None
        self.reached = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(
        self,
        name: str,
        statements: Sequence[Statement],
        *,
        expected: LogPosition,
        position: LogPosition,
        durable: bool = True,
    ) -> None:
        await self._inner.commit(
            name, statements, expected=expected, position=position, durable=durable
        )
        self.commits.append((position, time.monotonic()))
        if self.target is not None and position >= self.target:
            self.reached.set()

    async def until(self, target: LogPosition, timeout: float) -> None:
        """Return once a commit has covered ``target``."""
        self.target = target
        if not self.commits or self.commits[-1][0] < target:
            await asyncio.wait_for(self.reached.wait(), timeout)


async def _run(url: str) -> dict[str, Any]:
    from bench.domain import AccountSummary
    from cqrskit.projections.lease import PostgresLease, run_leased
    from cqrskit.projections.runner import ProjectionRunner, ProjectionState
    from cqrskit.store.postgres import open_postgres_backend

    backend = await open_postgres_backend(url, migrate=False, max_size=4)
    stop = asyncio.Event()
    try:
        timed = TimedCommits(backend.read_models)
        runner = ProjectionRunner(backend.store, timed, AccountSummary())
        await runner.migrate()
        lease = PostgresLease(url, runner.name)
        following = asyncio.create_task(run_leased(runner, lease, stop))
        while runner.status.state != ProjectionState.RUNNING:
            if following.done():
                await following  # raises what stopped it
                raise RuntimeError("the leased runner ended before following the log")
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        transaction_id, position = (int(x) for x in line.split())
        await timed.until(LogPosition(transaction_id, position), _FOLLOW_TIMEOUT)
        stop.set()
        await following
    finally:
        stop.set()
        await backend.close()
    return {"commits": [[p.transaction_id, p.position, t] for p, t in timed.commits]}


def main() -> None:
    """Follow the log of the database at ``argv[1]`` until told where the sender stopped."""
    # The stdlib event loop, as ``cqrskit worker`` runs (it does not install uvloop).
    result = asyncio.run(_run(sys.argv[1]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
