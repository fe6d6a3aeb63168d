"""Idempotent commands: the record a command leaves beside its events, and how a retry finds it.

Every command the :class:`~cqrskit.command_bus.CommandBus` dispatches is recorded under a
key, scoped to its caller, in the same transaction as its events (DESIGN.md guarantee 5).
The key is the command's ``command_id`` unless the caller names one (HTTP: the
``Idempotency-Key`` header); the scope is the command's ``user_id`` (``"anonymous"`` without
one) unless the caller names one. The record holds

- a hash of the request, so the same key with another payload is refused
  (:class:`~cqrskit.errors.IdempotencyKeyReused`);
- the command as JSON, so a replay answers with the first command's server-chosen ids;
- the log positions of its events, so a replay answers with the same events and token.

A command that stores no events still records its key; a command that is rejected (the
handler raises) stores nothing, so its key stays free for a corrected retry.

Callers that cannot pass options to ``dispatch`` directly (the HTTP layer dispatches through
metrics middleware) wrap the call in :func:`idempotent`, which hands the options to the next
dispatch in the same task and reports whether it was a replay.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cqrskit.errors import CqrskitError
from cqrskit.messages import Command, LogPosition, RecordedEvent

__all__ = [
    "ANONYMOUS",
    "MAX_KEY_LENGTH",
    "CommandRecord",
    "DuplicateCommand",
    "Idempotency",
    "StoredCommand",
    "canonical_command_hash",
    "command_hash",
    "current_idempotency",
    "idempotent",
    "request_hash",
    "same_command",
]

ANONYMOUS = "anonymous"
"""The scope of keys sent by callers without a user id."""
MAX_KEY_LENGTH = 200

# Fields that differ between two sends of the same request: never part of its hash.
_VOLATILE = frozenset({"command_id", "timestamp", "correlation_id", "user_id"})
_EXCLUDE: set[str] = set(_VOLATILE)  # never mutated: pydantic's serializer takes a set


class CommandRecord(NamedTuple):
    """What an append records about the command that made it (unique per scope and key)."""

    scope: str
    key: str
    request_hash: str
    command_type: str
    command: str
    """The command as JSON (``model_dump_json``)."""


class StoredCommand(NamedTuple):
    """A recorded command and the events it stored, in log order."""

    record: CommandRecord
    events: list[RecordedEvent]

    @property
    def position(self) -> LogPosition | None:
        """The position of its last event (``None`` when it stored none)."""
        return self.events[-1].position if self.events else None


class DuplicateCommand(CqrskitError):
    """An append's command key is already recorded; nothing of that append was stored."""

    def __init__(self, scope: str, key: str) -> None:
        super().__init__("command key already recorded")
        self.scope = scope
        self.key = key


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def command_hash(command: Command) -> str:
    """Hash a command's type and payload, without its id, timestamp and caller fields.

    The payload is the command's own JSON (pydantic's serializer, fields in declaration
    order), not a re-encoded canonical form: every dispatch pays for this hash. Two
    payloads that differ only in a dict's key order hash differently here; the bus then
    compares them with :func:`canonical_command_hash` before refusing the key.
    """
    payload = command.__pydantic_serializer__.to_json(command, exclude=_EXCLUDE)
    return hashlib.sha256(b"%s\n%s" % (type(command).__name__.encode(), payload)).hexdigest()


def canonical_command_hash(command: Command) -> str:
    """Hash a command's canonical JSON (sorted keys, ASCII), as earlier releases recorded it.

    Records stored by those releases carry this hash; the bus uses it on the rare path where
    a recorded key's hash differs from the retry's, so such records still replay.
    """
    payload = command.model_dump(mode="json", exclude=set(_VOLATILE))
    text = _canonical({"type": type(command).__name__, "payload": payload})
    return hashlib.sha256(text.encode()).hexdigest()


def same_command(recorded: CommandRecord, earlier: Command, command: Command) -> bool:
    """Whether ``command`` repeats ``earlier``, the command stored in ``recorded``.

    For records whose hash is not ``command``'s :func:`command_hash`: true when the record's
    hash is the canonical one of ``command`` (stored by an earlier release), or when it is
    ``earlier``'s command hash and the two commands' canonical hashes agree (payloads equal
    but for key order). A hash from elsewhere (an HTTP request hash) never matches.
    """
    canonical = canonical_command_hash(command)
    if recorded.request_hash == canonical:
        return True
    return (
        recorded.request_hash == command_hash(earlier)
        and canonical_command_hash(earlier) == canonical
    )


def request_hash(method: str, path: str, query: str, body: bytes, *extra: str) -> str:
    """Hash an HTTP request: method, path, query string, JSON body (canonical) and extras."""
    try:
        parsed: Any = json.loads(body) if body else None
        content = _canonical(parsed)
    except ValueError:
        content = body.hex()
    text = _canonical([method.upper(), path, query, content, list(extra)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Idempotency:
    """Options for one dispatch, and what it turned out to be."""

    key: str | None = None
    scope: str | None = None
    request_hash: str | None = None
    expect: Mapping[str, int] = field(default_factory=dict)
    """Stream id -> the version the caller expects it at (HTTP ``If-Match``)."""
    command: Command | None = None
    """After dispatch: the command that decided the outcome (the first one on a replay)."""
    replayed: bool = False
    """After dispatch: whether the result is a recorded earlier outcome."""
    used: bool = False

    def record(self, command: Command) -> CommandRecord:
        """The record ``command`` leaves when dispatched with these options."""
        key = str(command.command_id) if self.key is None else self.key
        scope = self.scope or command.user_id or ANONYMOUS
        digest = command_hash(command) if self.request_hash is None else self.request_hash
        return CommandRecord(scope, key, digest, type(command).__name__, command.model_dump_json())


_current: ContextVar[Idempotency | None] = ContextVar("cqrskit_idempotency", default=None)


def current_idempotency() -> Idempotency | None:
    """Take the options set by :func:`idempotent` for this task, once (the bus calls this)."""
    options = _current.get()
    if options is None or options.used:
        return None
    options.used = True
    return options


@contextmanager
def idempotent(
    key: str | None = None,
    *,
    scope: str | None = None,
    request_hash: str | None = None,
    expect: Mapping[str, int] | None = None,
) -> Iterator[Idempotency]:
    """Apply these options to the next command dispatched in this task.

    Yields the :class:`Idempotency` object; after the dispatch its ``command`` is the command
    whose outcome was returned and ``replayed`` says whether it was an earlier one.
    """
    options = Idempotency(key, scope, request_hash, dict(expect or {}))
    token = _current.set(options)
    try:
        yield options
    finally:
        _current.reset(token)
