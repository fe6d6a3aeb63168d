"""Aggregate base: methods decide and raise events; pure ``@applies`` methods change state.

An aggregate never does I/O, reads a clock or draws random numbers: time and ids arrive as
arguments (from the command). Rehydration replays stored events through the same ``@applies``
methods that ran when the events were first raised, so the two can never disagree.

An aggregate may be served from a cache (:class:`~cqrskit.repository.AggregateCache`) as a
``copy.deepcopy`` of a loaded instance: keep state in plain attributes and containers (lists,
dicts, sets, messages), never in handles to the outside world.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self, TypeVar

from cqrskit.messages import DomainEvent

__all__ = ["Aggregate", "applies"]

E = TypeVar("E", bound=DomainEvent)
_Applier = Callable[[Any, Any], None]


def applies(event_type: type[E]) -> Callable[[Callable[[Any, E], None]], Callable[[Any, E], None]]:
    """Mark a method as the state change for ``event_type``."""

    def mark(method: Callable[[Any, E], None]) -> Callable[[Any, E], None]:
        method.__cqrskit_applies__ = event_type  # type: ignore[attr-defined]
        return method

    return mark


class Aggregate:
    """A consistency boundary stored as one event stream named ``"<category>-<id>"``."""

    category: ClassVar[str] = "aggregate"
    _appliers: ClassVar[dict[type[DomainEvent], _Applier]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers = dict(cls._appliers)
        for value in vars(cls).values():
            event_type = getattr(value, "__cqrskit_applies__", None)
            if event_type is not None:
                appliers[event_type] = value
        cls._appliers = appliers

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0
        self._pending: list[DomainEvent] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        # The default goes through __reduce_ex__; this copies the attributes directly.
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    @classmethod
    def stream_id_for(cls, aggregate_id: str) -> str:
        """Return the stream id that stores the aggregate with this id."""
        return f"{cls.category}-{aggregate_id}"

    @property
    def stream_id(self) -> str:
        """The stream this aggregate is stored in."""
        return self.stream_id_for(self.id)

    @property
    def pending_events(self) -> tuple[DomainEvent, ...]:
        """Events raised since the aggregate was loaded or last saved."""
        return tuple(self._pending)

    @property
    def loaded_version(self) -> int:
        """The stream version this instance was loaded at (the expected version on save)."""
        return self.version - len(self._pending)

    @classmethod
    def rehydrate(cls, aggregate_id: str, events: Iterable[DomainEvent]) -> Self:
        """Rebuild an aggregate from its stored events."""
        aggregate = cls(aggregate_id)
        for event in events:
            aggregate._apply(event)
        return aggregate

    def mark_saved(self) -> None:
        """Forget pending events once they are stored."""
        self._pending.clear()

    def _raise(self, event: DomainEvent) -> None:
        """Number an event for this stream, apply it, and keep it pending."""
        event = event.model_copy(update={"stream_id": self.stream_id, "version": self.version + 1})
        self._apply(event)
        self._pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        applier = self._appliers.get(type(event))
        if applier is None:
            raise TypeError(f"{type(self).__name__} has no @applies for {event.event_type}")
        applier(self, event)
        self.version = event.version
