"""Commands, queries and domain events: frozen pydantic models, plus the event type registry.

Every stored event comes back as the class it was written from: subclasses of
:class:`DomainEvent` register themselves under ``event_type`` (the class name unless the class
sets it) when they are defined.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, NewType, Self
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from cqrskit.errors import UnknownEventType

__all__ = [
    "ENVELOPE_FIELDS",
    "LOG_START",
    "NIL_UUID",
    "Command",
    "DomainEvent",
    "EventMetadata",
    "LogPosition",
    "Message",
    "Query",
    "RecordedEvent",
    "StreamId",
    "event_class",
    "registered_event_types",
    "utc_now",
]

StreamId = NewType("StreamId", str)
NIL_UUID = UUID(int=0)


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime (for shells, never domains)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of commands, queries and events: immutable, no unknown fields.

    Messages are values: a deep copy is the message itself (``copy.deepcopy`` returns
    ``self``), so copying an aggregate that holds events or value objects copies only the
    aggregate's own containers. Never mutate a container held by a message.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        if memo is None:
            # pydantic's model_copy(deep=True) calls this directly and then updates the
            # result in place: it needs a real copy.
            return super().__deepcopy__(memo)
        return self


class Command(Message):
    """An intention to change state, handled by exactly one handler.

    ``timestamp`` is the only clock a domain sees; ``command_id`` is the idempotency key and the
    causation id of every event the command produces.
    """

    command_id: UUID = Field(default_factory=uuid4)
    timestamp: AwareDatetime = Field(default_factory=utc_now)
    user_id: str | None = None
    correlation_id: UUID | None = None


class Query(Message):
    """A question answered from read models only."""


class EventMetadata(Message):
    """Audit metadata stamped on every event by the command-handling shell."""

    causation_id: UUID | None = None
    correlation_id: UUID | None = None
    user_id: str | None = None


ENVELOPE_FIELDS = frozenset({"event_id", "stream_id", "version", "occurred_at", "metadata"})

_registry: dict[str, type[DomainEvent]] = {}


class DomainEvent(Message):
    """A fact that happened to one stream.

    The envelope (``event_id``, ``stream_id``, ``version``, ``metadata``) is filled in by the
    aggregate and the repository; subclasses add the payload fields.
    """

    event_type: ClassVar[str] = "DomainEvent"
    schema_version: ClassVar[int] = 1

    event_id: UUID = NIL_UUID
    stream_id: str = ""
    version: int = 0
    occurred_at: AwareDatetime
    metadata: EventMetadata = EventMetadata()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__
        existing = _registry.get(cls.event_type)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"event type {cls.event_type!r} is already registered by {existing.__qualname__}"
            )
        _registry[cls.event_type] = cls


def event_class(event_type: str) -> type[DomainEvent]:
    """Return the class registered for ``event_type``; raise :class:`UnknownEventType`."""
    try:
        return _registry[event_type]
    except KeyError:
        raise UnknownEventType(f"no event class registered as {event_type!r}") from None


def registered_event_types() -> dict[str, type[DomainEvent]]:
    """Return a copy of the event type registry."""
    return dict(_registry)


class LogPosition(NamedTuple):
    """A position in the global log, ordered as the log is read.

    On PostgreSQL ``transaction_id`` is the writing transaction's ``xid8``; on backends whose
    position order is commit order (SQLite, memory) it is always 0.
    """

    transaction_id: int
    position: int

    def token(self) -> str:
        """Render as a consistency token, ``"<transaction_id>.<position>"``."""
        return f"{self.transaction_id}.{self.position}"

    @classmethod
    def parse(cls, token: str) -> LogPosition:
        """Parse a consistency token; raise ``ValueError`` when it is malformed."""
        head, sep, tail = token.partition(".")
        # isascii: str.isdigit also accepts other scripts' digits and superscripts.
        if not sep or not (head + tail).isascii() or not head.isdigit() or not tail.isdigit():
            raise ValueError("malformed consistency token")
        if len(token) > 41:
            raise ValueError("malformed consistency token")
        return cls(int(head), int(tail))


LOG_START = LogPosition(0, 0)
"""The position before the first event."""


class RecordedEvent(NamedTuple):
    """An event as read from the global log."""

    position: LogPosition
    event: DomainEvent
    recorded_at: datetime
