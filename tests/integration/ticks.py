"""A tiny service for worker tests: one projection that records every event it applies.

``tick_applied`` has the event id as its primary key and no ``ON CONFLICT`` clause, so an
event applied twice fails its batch (and, with no retries, stops the projection): a
duplicate can never go unnoticed. ``tick_totals`` sums the amounts per stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from cqrskit.backend import Backend
from cqrskit.messages import DomainEvent
from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from cqrskit.service import Service
from cqrskit.store.protocol import ANY_VERSION, StreamAppend

__all__ = ["TickProjection", "Ticked", "append_ticks", "dump", "service", "spawn_worker"]

ROOT = Path(__file__).resolve().parents[2]


class Ticked(DomainEvent):
    """Something happened to a stream; ``amount`` is summed per stream."""

    amount: int


_SCHEMA = (
    sql(
        "CREATE TABLE IF NOT EXISTS tick_applied (event_id TEXT PRIMARY KEY,"
        " stream_id TEXT NOT NULL, version BIGINT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS tick_totals (stream_id TEXT PRIMARY KEY,"
        " events BIGINT NOT NULL, total BIGINT NOT NULL)"
    ),
)
_APPLIED = sql("INSERT INTO tick_applied (event_id, stream_id, version) VALUES ($1, $2, $3)")
_TOTAL = sql(
    "INSERT INTO tick_totals (stream_id, events, total) VALUES ($1, 1, $2)"
    " ON CONFLICT (stream_id) DO UPDATE SET events = tick_totals.events + 1,"
    " total = tick_totals.total + excluded.total"
)


class TickProjection(Projection):
    """Every applied event once, and totals per stream."""

    name = "ticks"
    version = 1
    tables = ("tick_applied", "tick_totals")
    schema = _SCHEMA
    truncate = (sql("DELETE FROM tick_applied"), sql("DELETE FROM tick_totals"))
    max_retries = 0

    @on(Ticked)
    def _ticked(self, event: Ticked) -> Iterator[Statement]:
        yield _APPLIED(str(event.event_id), event.stream_id, event.version)
        yield _TOTAL(event.stream_id, event.amount)


service = Service(
    title="ticks",
    projections=lambda: [TickProjection()],
    register=lambda _commands, _queries, _read_models: None,
)


async def append_ticks(backend: Backend, count: int, *, streams: int = 50, chunk: int = 500) -> int:
    """Append ``count`` events over ``streams`` streams; return the sum of their amounts."""
    now = datetime.now(UTC)
    total = 0
    for start in range(0, count, chunk):
        appends: dict[str, list[DomainEvent]] = {}
        for i in range(start, min(count, start + chunk)):
            stream = f"tick-{i % streams}"
            appends.setdefault(stream, []).append(
                Ticked(event_id=uuid4(), stream_id=stream, amount=i % 7, occurred_at=now)
            )
            total += i % 7
        await backend.store.append(
            *(StreamAppend(s, ANY_VERSION, events) for s, events in appends.items())
        )
    return total


async def dump(read_models: ReadModelStore) -> dict[str, list[str]]:
    """Both tables, rendered and sorted."""
    out = {}
    for table in ("tick_applied", "tick_totals"):
        rows = await read_models.fetch(sql(f"SELECT * FROM {table}"))  # noqa: S608 - constant
        out[table] = sorted(repr(sorted(row.items())) for row in rows)
    return out


def spawn_worker(url: str, *extra: str, batch_size: int = 200) -> subprocess.Popen[str]:
    """Start ``cqrskit worker`` for this service in a new process."""
    env = {
        **os.environ,
        "CQRSKIT_PROJECTION_BATCH_SIZE": str(batch_size),
        "CQRSKIT_PROJECTION_POLL_INTERVAL": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cqrskit.cli",
            "worker",
            "--database-url",
            url,
            "--service",
            "tests.integration.ticks:service",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
