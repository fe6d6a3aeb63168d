"""Bus middleware: composition order, retry on version conflicts, logging."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cqrskit.command_bus import CommandBus
from cqrskit.errors import ConcurrencyError, InvalidState
from cqrskit.messages import Command
from cqrskit.middleware import Next, chain, log_messages, retry_on_conflict
from cqrskit.repository import Repository
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import ANY_VERSION, StreamAppend
from tests.unit.test_command_bus import Add, Counted, Counter, value


async def test_chain_puts_the_first_middleware_outermost() -> None:
    calls: list[str] = []

    def tag(name: str) -> Any:
        async def middleware(message: Any, call_next: Next) -> Any:
            calls.append(name)
            return await call_next(f"{message}+{name}")

        return middleware

    async def final(message: Any) -> Any:
        return message

    assert await chain([tag("a"), tag("b"), tag("c")], final)("m") == "m+a+b+c"
    assert calls == ["a", "b", "c"]
    assert await chain([], final)("m") == "m"


def conflicting_bus(
    store: MemoryEventStore, conflicts: int, attempts: int
) -> tuple[CommandBus, list[int]]:
    """A bus whose handler is overtaken by another writer on its first ``conflicts`` runs."""
    runs: list[int] = []

    async def handle(command: Add, repo: Repository) -> None:
        counter = await repo.load(Counter, "a")
        runs.append(counter.value)  # what this attempt loaded
        counter.add(command.by, command)
        if len(runs) <= conflicts:
            overtaking = Counted(by=10, occurred_at=command.timestamp)
            await store.append(StreamAppend("counter-a", ANY_VERSION, [overtaking]))

    bus = CommandBus(store, [retry_on_conflict(attempts, base_delay=0.0001)])
    bus.register(Add, handle)
    return bus, runs


async def seeded_store() -> MemoryEventStore:
    store = MemoryEventStore()
    seed = Counted(by=1, occurred_at=Command().timestamp)
    await store.append(StreamAppend("counter-a", 0, [seed]))
    return store


async def test_retry_on_conflict_reruns_a_handler_that_reloads() -> None:
    store = await seeded_store()
    bus, runs = conflicting_bus(store, conflicts=2, attempts=5)
    result = await bus.dispatch(Add(counters=["a"], by=3))
    assert runs == [1, 11, 21]  # each retry loaded the stream afresh
    assert await value(store, "a") == 1 + 10 + 10 + 3
    assert [r.event.version for r in result.events] == [4]


async def test_retry_on_conflict_gives_up_after_n_attempts() -> None:
    store = await seeded_store()
    bus, runs = conflicting_bus(store, conflicts=100, attempts=4)
    with pytest.raises(ConcurrencyError):
        await bus.dispatch(Add(counters=["a"], by=3))
    assert len(runs) == 4
    assert await value(store, "a") == 1 + 4 * 10  # only the overtaking writes were stored


async def test_retry_on_conflict_does_not_retry_other_errors() -> None:
    store = await seeded_store()
    calls = 0

    async def rejecting(command: Add, repo: Repository) -> None:
        nonlocal calls
        calls += 1
        raise InvalidState("no")

    bus = CommandBus(store, [retry_on_conflict(5, base_delay=0.0001)])
    bus.register(Add, rejecting)
    with pytest.raises(InvalidState):
        await bus.dispatch(Add(counters=["a"]))
    assert calls == 1


async def test_log_messages_logs_rejections_and_successes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.middleware")
    store = await seeded_store()
    bus = CommandBus(store, [log_messages(logger)])

    async def handle(command: Add, repo: Repository) -> None:
        (await repo.load(Counter, "a")).add(command.by, command)

    bus.register(Add, handle)
    with caplog.at_level(logging.DEBUG, logger="tests.middleware"):
        await bus.dispatch(Add(counters=["a"]))
        with pytest.raises(InvalidState):
            await bus.dispatch(Add(counters=["a"], by=0))
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records[0][0] == logging.DEBUG
    assert records[0][1].startswith("Add handled in")
    assert records[1] == (logging.INFO, "Add rejected: InvalidState")
