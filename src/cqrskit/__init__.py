"""cqrskit: asyncio-native CQRS and event sourcing."""

from cqrskit.aggregate import Aggregate, applies
from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.errors import (
    CommandRejected,
    ConcurrencyError,
    CqrskitError,
    InvalidState,
    NoHandlerFoundError,
    NotFound,
    OperationalError,
    PersistenceError,
    ProjectionError,
    RuleViolation,
)
from cqrskit.messages import Command, DomainEvent, EventMetadata, LogPosition, Query, RecordedEvent
from cqrskit.projections.projection import Projection, on
from cqrskit.query_bus import QueryBus
from cqrskit.read_models.protocol import Sql, Statement, sql
from cqrskit.repository import Repository

__all__ = [
    "Aggregate",
    "Command",
    "CommandBus",
    "CommandRejected",
    "CommandResult",
    "ConcurrencyError",
    "CqrskitError",
    "DomainEvent",
    "EventMetadata",
    "InvalidState",
    "LogPosition",
    "NoHandlerFoundError",
    "NotFound",
    "OperationalError",
    "PersistenceError",
    "Projection",
    "ProjectionError",
    "Query",
    "QueryBus",
    "RecordedEvent",
    "Repository",
    "RuleViolation",
    "Sql",
    "Statement",
    "applies",
    "on",
    "sql",
]


def __dir__() -> list[str]:
    return list(__all__)
