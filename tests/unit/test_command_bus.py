"""Command bus: one handler per command type, middleware order, atomic save, result token."""

from __future__ import annotations

from typing import Any

import pytest

from cqrskit.aggregate import Aggregate, applies
from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.errors import ConcurrencyError, InvalidState, NoHandlerFoundError
from cqrskit.messages import LOG_START, Command, DomainEvent, LogPosition
from cqrskit.middleware import Next
from cqrskit.repository import Repository, event_id_for
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import ANY_VERSION, StreamAppend


class Counted(DomainEvent):
    event_type = "tests.command_bus.Counted"

    by: int


class Counter(Aggregate):
    category = "counter"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.value = 0

    def add(self, by: int, command: Command) -> None:
        if by == 0:
            raise InvalidState("nothing to count")
        self._raise(Counted(by=by, occurred_at=command.timestamp))

    @applies(Counted)
    def _counted(self, event: Counted) -> None:
        self.value += event.by


class Add(Command):
    counters: list[str]
    by: int = 1


class SpecialAdd(Add):
    pass


class Noop(Command):
    pass


async def add(command: Add, repo: Repository) -> None:
    for counter_id in command.counters:
        counter = await repo.get(Counter, counter_id)
        if counter is None:
            counter = Counter(counter_id)
            repo.add(counter)
        counter.add(command.by, command)


async def noop(command: Noop, repo: Repository) -> None:
    await repo.get(Counter, "untouched")


def make_bus(middleware: list[Any] | None = None) -> tuple[CommandBus, MemoryEventStore]:
    store = MemoryEventStore()
    bus = CommandBus(store, middleware or [])
    bus.register(Add, add)
    bus.register(Noop, noop)
    return bus, store


async def value(store: MemoryEventStore, counter_id: str) -> int:
    return Counter.rehydrate(counter_id, await store.read_stream(f"counter-{counter_id}")).value


async def test_dispatch_appends_the_handlers_events() -> None:
    bus, store = make_bus()
    result = await bus.dispatch(Add(counters=["a"], by=3))
    await bus.dispatch(Add(counters=["a"], by=4))
    assert await value(store, "a") == 7
    assert [r.event.version for r in result.events] == [1]


async def test_result_token_is_the_last_events_position() -> None:
    bus, store = make_bus()
    await bus.dispatch(Add(counters=["x"]))
    result = await bus.dispatch(Add(counters=["a", "b", "c"]))
    assert len(result.events) == 3
    assert result.position == result.events[-1].position == await store.head()
    assert result.token == "0.4"
    assert result.position is not None
    assert LogPosition.parse(result.token) == result.position


async def test_command_that_changes_nothing_has_no_token() -> None:
    bus, store = make_bus()
    result = await bus.dispatch(Noop())
    assert result == CommandResult([], None)
    assert result.token is None
    assert await store.head() == LOG_START


async def test_exactly_one_handler_per_command_type() -> None:
    bus, _ = make_bus()
    with pytest.raises(ValueError, match="already has a handler"):
        bus.register(Add, add)


async def test_decorator_registers_a_handler() -> None:
    bus = CommandBus(MemoryEventStore())

    @bus.handles(Add)
    async def handle(command: Add, repo: Repository) -> None:
        repo.add(Counter(command.counters[0]))

    assert await bus.dispatch(Add(counters=["a"])) == CommandResult([], None)
    with pytest.raises(ValueError, match="already has a handler"):
        bus.register(Add, add)


async def test_unregistered_command_raises_no_handler_found() -> None:
    bus, store = make_bus()
    with pytest.raises(NoHandlerFoundError):
        await bus.dispatch(SpecialAdd(counters=["a"]))  # a subclass is its own type
    assert await store.head() == LOG_START


async def test_handler_error_stores_nothing() -> None:
    bus, store = make_bus()
    with pytest.raises(InvalidState):
        await bus.dispatch(Add(counters=["a", "b"], by=0))
    assert await store.head() == LOG_START


async def test_events_carry_causation_correlation_and_user() -> None:
    bus, _ = make_bus()
    plain = Add(counters=["a"], user_id="ada")
    (recorded,) = (await bus.dispatch(plain)).events
    assert recorded.event.metadata.causation_id == plain.command_id
    assert recorded.event.metadata.correlation_id == plain.command_id
    assert recorded.event.metadata.user_id == "ada"
    correlated = Add(counters=["a"], correlation_id=plain.command_id)
    (second,) = (await bus.dispatch(correlated)).events
    assert second.event.metadata.causation_id == correlated.command_id
    assert second.event.metadata.correlation_id == plain.command_id


async def test_event_ids_derive_from_the_command_id() -> None:
    bus, _ = make_bus()
    command = Add(counters=["a", "b"])
    result = await bus.dispatch(command)
    assert [r.event.event_id for r in result.events] == [
        event_id_for(command.command_id, "counter-a", 1),
        event_id_for(command.command_id, "counter-b", 1),
    ]


async def test_save_of_several_aggregates_is_atomic_on_conflict() -> None:
    store = MemoryEventStore()
    bus = CommandBus(store)

    async def racing(command: Add, repo: Repository) -> None:
        await add(command, repo)
        # Another writer moves counter-b after this handler loaded it.
        await store.append(
            StreamAppend("counter-b", ANY_VERSION, [Counted(by=100, occurred_at=command.timestamp)])
        )

    bus.register(Add, add)
    await bus.dispatch(Add(counters=["a", "b"]))
    racer = CommandBus(store)
    racer.register(Add, racing)
    with pytest.raises(ConcurrencyError):
        await racer.dispatch(Add(counters=["a", "b"], by=5))
    assert await value(store, "a") == 1  # counter-a's event was not stored either
    assert await value(store, "b") == 101


async def test_middleware_runs_in_order_around_the_handler() -> None:
    seen: list[str] = []

    def tag(name: str) -> Any:
        async def middleware(command: Any, call_next: Next) -> Any:
            seen.append(f"{name}>{type(command).__name__}")
            result = await call_next(command)
            seen.append(f"<{name}:{len(result.events)}")
            return result

        return middleware

    bus, _ = make_bus([tag("first"), tag("second")])
    await bus.dispatch(Add(counters=["a", "b"]))
    assert seen == ["first>Add", "second>Add", "<second:2", "<first:2"]


async def test_middleware_can_refuse_before_the_handler_runs() -> None:
    async def deny(command: Any, call_next: Next) -> Any:
        raise PermissionError("no")

    bus, store = make_bus([deny])
    with pytest.raises(PermissionError):
        await bus.dispatch(Add(counters=["a"]))
    assert await store.head() == LOG_START


def test_event_ids_are_the_uuid5_of_command_stream_and_version() -> None:
    # Stored events carry these ids: they must never change from release to release.
    from uuid import NAMESPACE_URL, UUID, uuid5

    command_id = UUID("8c4d3e1a-1b2c-4d5e-8f90-123456789abc")
    for stream_id, version in [("counter-a", 1), ("order-é", 42), ("x:y", 7)]:
        expected = uuid5(NAMESPACE_URL, f"cqrskit:{command_id}:{stream_id}:{version}")
        assert event_id_for(command_id, stream_id, version) == expected
        assert event_id_for(str(command_id), stream_id, version) == expected
