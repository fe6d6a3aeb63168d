"""Given/when/then for aggregates, and a command bus over an in-memory store.

Aggregate rules are tested without any I/O, in the style of a decider specification::

    given(Order, [order_created], aggregate_id=ORDER).when(
        lambda order: order.ship(at=NOW)
    ).then([OrderShipped(order_id=ORDER, occurred_at=NOW)])

    given(Order, [order_created, order_shipped], aggregate_id=ORDER).when(
        lambda order: order.cancel("late", at=NOW)
    ).then_raises(InvalidState)

A creation is tested from an empty history: ``given(Order).when(lambda _: Order.create(...))``
(the action may return the new aggregate, whose events are then the outcome).

Events are compared by class and payload, ``occurred_at`` included; the envelope the store and
the aggregate fill in (event id, stream id, version, metadata) is ignored.

:class:`CommandHarness` runs whole commands through a real :class:`~cqrskit.CommandBus` over a
:class:`~cqrskit.store.memory.MemoryEventStore` and returns the events each one appended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from cqrskit.aggregate import Aggregate
from cqrskit.command_bus import CommandBus
from cqrskit.messages import ENVELOPE_FIELDS, LOG_START, Command, DomainEvent, RecordedEvent
from cqrskit.middleware import Middleware
from cqrskit.store.memory import MemoryEventStore

__all__ = ["CommandHarness", "Outcome", "Scenario", "assert_events", "given"]

A = TypeVar("A", bound=Aggregate)
E = TypeVar("E", bound=BaseException)


# The time an event happened comes from the command, so it is part of what is compared.
_IGNORED = set(ENVELOPE_FIELDS - {"occurred_at"})


def _payload(event: DomainEvent) -> tuple[str, dict[str, Any]]:
    return event.event_type, event.model_dump(exclude=_IGNORED)


def assert_events(actual: Sequence[DomainEvent], expected: Sequence[DomainEvent]) -> None:
    """Assert that two event lists match by type and payload, ignoring envelopes.

    Raises ``AssertionError`` naming the first difference.
    """
    got = [_payload(e) for e in actual]
    want = [_payload(e) for e in expected]
    if got == want:
        return
    for index, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            raise AssertionError(f"event {index} differs:\n  got      {g}\n  expected {w}")
    raise AssertionError(
        f"expected {len(want)} events, got {len(got)}:\n  got      {got}\n  expected {want}"
    )


def given(
    aggregate_type: type[A], history: Sequence[DomainEvent] = (), *, aggregate_id: str = "given"
) -> Scenario[A]:
    """Start a scenario: an aggregate rehydrated from ``history`` (numbered 1, 2, ...)."""
    return Scenario(aggregate_type, list(history), aggregate_id)


class Scenario(Generic[A]):
    """An aggregate with a history, waiting for an action."""

    def __init__(self, aggregate_type: type[A], history: list[DomainEvent], aggregate_id: str):
        stream_id = aggregate_type.stream_id_for(aggregate_id)
        numbered = [
            e.model_copy(update={"stream_id": stream_id, "version": n})
            for n, e in enumerate(history, start=1)
        ]
        self.aggregate = aggregate_type.rehydrate(aggregate_id, numbered)

    def when(self, action: Callable[[A], object]) -> Outcome[A]:
        """Run ``action`` on the aggregate and capture the events it raised or its error."""
        try:
            returned = action(self.aggregate)
        except Exception as exc:
            return Outcome(self.aggregate, error=exc)
        aggregate = returned if isinstance(returned, type(self.aggregate)) else self.aggregate
        return Outcome(aggregate, events=list(aggregate.pending_events))


class Outcome(Generic[A]):
    """What an action did: the events it raised, or the error it raised."""

    def __init__(
        self,
        aggregate: A,
        *,
        events: list[DomainEvent] | None = None,
        error: Exception | None = None,
    ) -> None:
        self.aggregate = aggregate
        self.events = events or []
        self.error = error

    def then(self, expected: Sequence[DomainEvent]) -> A:
        """Assert the action raised exactly ``expected``; return the aggregate after it."""
        if self.error is not None:
            raise AssertionError(
                f"expected events, but the action raised {type(self.error).__name__}: {self.error}"
            ) from self.error
        assert_events(self.events, expected)
        return self.aggregate

    def then_raises(self, error_type: type[E], match: str | None = None) -> E:
        """Assert the action raised ``error_type`` (message containing ``match``); return it."""
        if self.error is None:
            raise AssertionError(
                f"expected {error_type.__name__}, but the action raised events {self.events}"
            )
        if not isinstance(self.error, error_type):
            raise AssertionError(
                f"expected {error_type.__name__}, got {type(self.error).__name__}: {self.error}"
            ) from self.error
        if match is not None and match not in str(self.error):
            raise AssertionError(f"{self.error!r} does not mention {match!r}")
        return self.error


class CommandHarness:
    """A command bus with its handlers over a fresh in-memory store.

    ``register`` is the application's own registration function, so the harness runs the
    production handlers and the bus's real append with expected versions.
    """

    def __init__(
        self, register: Callable[[CommandBus], None], middleware: Sequence[Middleware] = ()
    ) -> None:
        self.store = MemoryEventStore()
        self.bus = CommandBus(self.store, middleware)
        register(self.bus)

    async def given(self, *commands: Command) -> None:
        """Dispatch set-up commands (their events are history, not the outcome)."""
        for command in commands:
            await self.bus.dispatch(command)

    async def dispatch(self, command: Command) -> list[DomainEvent]:
        """Dispatch ``command`` and return the events it appended, in log order."""
        result = await self.bus.dispatch(command)
        return [record.event for record in result.events]

    async def log(self) -> list[RecordedEvent]:
        """Return the whole log."""
        return await self.store.read_all(after=LOG_START, limit=1_000_000)

    async def stream(self, stream_id: str) -> list[DomainEvent]:
        """Return one stream's events."""
        return await self.store.read_stream(stream_id)
