"""Projection lag and append-to-visible latency do not depend on the reading process's clock.

On PostgreSQL an event's ``recorded_at`` comes from the database server's clock
(``DEFAULT now()``). An API or worker process whose wall clock is minutes off must still
report the real lag: a process 7 minutes fast used to report a projection one event behind
as 420 s late (over the default fail threshold, so ``/health/projections`` answered 503), and
one 7 minutes slow hid real lag (negative ages clamped to 0).

``cqrskit serve`` runs under libfaketime (Debian's ``faketime``) with its wall clock moved;
the database's clock is the real one. The one unapplied event is backdated by
:data:`BACKDATE` in the database, so its true age is known whatever the API's clock says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.projections.status import LATENCY_BUCKETS, Meter
from cqrskit.service import Runtime
from cqrskit.testing.contracts import wait_until_readable
from orders.service import service
from tests.integration.http_server import DEADLINE_SECONDS
from tests.integration.test_http_health import value
from tests.reliability.history import wait_caught_up
from tests.reliability.supervisor import Supervisor
from tests.reliability.test_clock_skew import libfaketime, skewed

SKEW = timedelta(minutes=7)
BACKDATE = timedelta(seconds=90)
SLACK = 60.0
"""Bound on what the test itself adds to the age (process start-up, requests); well under
the 7-minute skew, so a reading off by the skew can never pass."""
API = "/api/v1"


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(tmp_path) as sup:
        yield sup


async def register(client: httpx.AsyncClient, name: str) -> LogPosition:
    body = {"name": name, "email": f"{name.lower()}@example.com"}
    response = await client.post(f"{API}/customers", json=body)
    assert response.status_code == 201, response.text
    return LogPosition.parse(response.json()["consistency_token"])


async def backdate_last_event(url: str, by: timedelta) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE events SET recorded_at = recorded_at - $1::interval"
            " WHERE position = (SELECT max(position) FROM events)",
            by,
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
async def test_lag_seconds_follow_the_database_clock_not_the_api_clock(
    postgres_url: str, supervisor: Supervisor, offset: timedelta
) -> None:
    api = supervisor.api(postgres_url, env=skewed(libfaketime(), offset))
    await supervisor.start(api)
    runtime = await Runtime.open(service, Settings(database_url=postgres_url, migrate=False))
    store = runtime.backend.store
    async with httpx.AsyncClient(base_url=api.url or "", timeout=DEADLINE_SECONDS) as client:
        try:
            # Apply everything so far here (real clock), then leave exactly one event
            # unapplied. The fence is cluster-wide: a commit may be readable a moment later.
            await wait_until_readable(store, await register(client, "Ada"), DEADLINE_SECONDS)
            await wait_caught_up(runtime, timeout=DEADLINE_SECONDS, drive=True)
            last = await register(client, "Bob")
            await backdate_last_event(postgres_url, BACKDATE)
            await wait_until_readable(store, last, DEADLINE_SECONDS)
        finally:
            await runtime.close()
        response = await client.get("/health/projections")
    body = response.json()
    assert body["projections"], body
    for row in body["projections"]:
        assert row["lag_events"] == 1, row
        # The event waited BACKDATE plus the moments this test took, by the database's clock.
        assert BACKDATE.total_seconds() <= row["lag_seconds"] < BACKDATE.total_seconds() + SLACK
        assert row["level"] == "warn", row  # over the 30 s warn threshold, under 300 s fail
    assert response.status_code == 200, body


async def test_visible_latency_follows_the_database_clock_not_the_worker_clock(
    postgres_url: str, supervisor: Supervisor
) -> None:
    api = supervisor.api(postgres_url, projections=True, env=skewed(libfaketime(), SKEW))
    await supervisor.start(api)
    async with httpx.AsyncClient(base_url=api.url or "", timeout=DEADLINE_SECONDS) as client:
        for name in ("Ada", "Bob", "Cy"):
            last = await register(client, name)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            rows = (await client.get("/health/projections")).json()["projections"]
            if all(LogPosition.parse(row["position"]) >= last for row in rows):
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.05)
        text = (await client.get("/metrics")).text
    names = [row["name"] for row in rows]
    for name in names:
        count = value(text, "cqrskit_projection_visible_latency_seconds_count", projection=name)
        total = value(text, "cqrskit_projection_visible_latency_seconds_sum", projection=name)
        assert count >= 3, (name, count)
        # Fast commits: seconds at most, never the 420 s the API's clock is ahead.
        assert total / count < SLACK, (name, total, count)


def test_the_meter_measures_with_the_clock_it_is_given() -> None:
    meter = Meter()
    stamped = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)
    # The store's clock says 2 s passed, whatever this process's clock says.
    meter.committed(2, [stamped, stamped], now=stamped + timedelta(seconds=2))
    assert meter.latency_count == 2
    assert meter.latency_sum == pytest.approx(4.0)
    assert meter.buckets[LATENCY_BUCKETS.index(2.5)] == 2


def test_the_meter_skips_ages_below_zero_beyond_jitter() -> None:
    meter = Meter()
    stamped = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)
    jitter = stamped - timedelta(microseconds=300)
    meter.committed(1, [stamped], now=jitter)  # sub-millisecond: counted as 0
    assert (meter.latency_count, meter.buckets[0], meter.skewed) == (1, 1, 0)
    meter.committed(1, [stamped], now=stamped - timedelta(seconds=5))
    # Not a latency of 0: the clocks disagree. Counted apart, kept out of the histogram.
    assert (meter.latency_count, meter.skewed) == (1, 1)
