"""The one error tree of cqrskit.

Adapters translate driver exceptions into these classes at their boundary; nothing above an
adapter ever sees a ``sqlite3`` or ``asyncpg`` exception. HTTP status codes are not part of
this module: :mod:`cqrskit.http` maps each class to a status.
"""

from __future__ import annotations

__all__ = [
    "CommandInProgress",
    "CommandRejected",
    "ConcurrencyError",
    "CqrskitError",
    "IdempotencyKeyReused",
    "IntegrityError",
    "InvalidState",
    "NoHandlerFoundError",
    "NotFound",
    "OperationalError",
    "PersistenceError",
    "PreconditionFailed",
    "ProjectionError",
    "RuleViolation",
    "UnknownEventType",
]


class CqrskitError(Exception):
    """Base of every error cqrskit raises on purpose."""


class ConcurrencyError(CqrskitError):
    """An append's expected version did not match the stream's current version.

    Nothing was written. ``current_version`` is the version the store saw, when known.
    """

    def __init__(
        self, stream_id: str, expected: int | None, current_version: int | None = None
    ) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {expected}, found {current_version}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.current_version = current_version


class PreconditionFailed(CqrskitError):
    """A command named the version it expects an aggregate at, and the aggregate is elsewhere.

    Unlike :class:`ConcurrencyError` this is never retried: the caller decided on a state
    that no longer holds. Nothing was stored. ``current_version`` is the version found.
    """

    def __init__(self, stream_id: str, expected: int, current_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {expected}, found {current_version}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.current_version = current_version


class IdempotencyKeyReused(CqrskitError):
    """A command's idempotency key is already recorded for a different request."""


class CommandInProgress(CqrskitError):
    """A command with the same idempotency key is still running; retry later."""


class CommandRejected(CqrskitError):
    """The domain refused a command; no event was stored."""


class RuleViolation(CommandRejected):
    """A business rule forbids the command (for example: not enough stock)."""


class InvalidState(CommandRejected):
    """The aggregate is in a state where the command makes no sense (for example: shipped)."""


class NotFound(CqrskitError):
    """An aggregate or read-model row that the caller named does not exist."""

    def __init__(self, kind: str, identifier: str) -> None:
        super().__init__(f"{kind} not found")
        self.kind = kind
        self.identifier = identifier


class NoHandlerFoundError(CqrskitError):
    """A bus was asked to dispatch a message type that has no registered handler."""


class UnknownEventType(CqrskitError):
    """A stored event names a type (or schema version) that no class is registered for."""


class ProjectionError(CqrskitError):
    """A projection could not apply an event or commit its batch."""


class PersistenceError(CqrskitError):
    """The storage layer failed."""


class IntegrityError(PersistenceError):
    """A storage constraint was violated in a way that is not a version conflict."""


class OperationalError(PersistenceError):
    """The database is unreachable, locked or out of resources; retrying later may work."""
