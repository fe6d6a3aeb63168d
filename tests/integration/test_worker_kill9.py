"""``kill -9`` of a worker at random points of a long catch-up loses and duplicates nothing.

A worker process catches up tens of thousands of events and is killed with SIGKILL at a
random moment (seeded; the seed is printed, set ``CQRSKIT_KILL_SEED`` to replay one), many
times over, while more events arrive. The checkpoint, sampled all along, never moves
backwards; in the end every event was applied exactly once (the ``tick_applied`` primary key
refuses a second application) and the read model equals a rebuild from scratch.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.read_models.protocol import sql
from cqrskit.service import Runtime
from tests.integration.ticks import append_ticks, dump, service, spawn_worker

EVENTS = 30_000
KILLS = 10


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(service, Settings(database_url=database_url))
    try:
        yield rt
    finally:
        await rt.close()


class Sampler:
    """Reads the checkpoint over and over; it must never move backwards."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.last = LogPosition(0, 0)
        self.samples = 0

    async def sample(self) -> LogPosition:
        checkpoint = await self.runtime.backend.read_models.checkpoint("ticks")
        assert checkpoint >= self.last, f"checkpoint moved back: {self.last} -> {checkpoint}"
        self.last = checkpoint
        self.samples += 1
        return checkpoint

    async def wait_past(self, position: LogPosition, worker: subprocess.Popen[str]) -> None:
        """Sample until the checkpoint is past ``position`` (the worker committed a batch)."""
        deadline = time.monotonic() + 60
        while await self.sample() <= position:
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker committed nothing in 60 s"
            await asyncio.sleep(0.01)

    async def watch(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.sample()
            await asyncio.sleep(0.01)


def kill(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGKILL)
    _, err = worker.communicate(timeout=30)
    return err


async def test_kill_9_at_random_points_applies_everything_exactly_once(
    runtime: Runtime, database_url: str
) -> None:
    seed = int(os.environ.get("CQRSKIT_KILL_SEED", random.randrange(1 << 30)))
    print(f"kill -9 seed: {seed} (CQRSKIT_KILL_SEED={seed} replays it)")
    rng = random.Random(seed)
    backend = runtime.backend
    total = await append_ticks(backend, EVENTS)
    events = EVENTS
    sampler = Sampler(runtime)
    for round_no in range(KILLS):
        before = await sampler.sample()
        worker = spawn_worker(database_url, batch_size=rng.choice([100, 250, 500]))
        # Start-up time depends on the machine's load: wait for the first committed batch,
        # then kill anywhere in the catch-up after it.
        await sampler.wait_past(before, worker)
        delay = rng.uniform(0.0, 1.2)
        print(f"round {round_no}: kill -9 {delay:.3f} s after its first batch")
        await sampler.watch(delay)
        err = kill(worker)
        assert "Traceback" not in err, err
        # More events arrive between the kills.
        total += await append_ticks(backend, 1000, streams=13)
        events += 1000

    worker = spawn_worker(database_url)
    head = await backend.store.head()
    deadline = time.monotonic() + 90
    while await sampler.sample() < head:
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "the last worker did not catch up"
        await asyncio.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert sampler.samples > KILLS

    read_models = backend.read_models
    counted = await read_models.fetchone(
        sql("SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS distinct_ids FROM tick_applied")
    )
    assert counted is not None
    assert (int(counted["n"]), int(counted["distinct_ids"])) == (events, events)
    summed = await read_models.fetchone(
        sql("SELECT SUM(events) AS events, SUM(total) AS total FROM tick_totals")
    )
    assert summed is not None
    assert (int(summed["events"]), int(summed["total"])) == (events, total)

    live = await dump(read_models)
    await runtime.runners["ticks"].rebuild(batch_size=5000)
    assert await dump(read_models) == live
