"""HTTP idempotency and preconditions for command endpoints.

A route that takes :data:`Once` sends its command through :meth:`CommandOnce.send`:

- ``Idempotency-Key`` (optional, 1-200 visible ASCII characters): the key under which the
  command is recorded, scoped to the caller (the command's user id, else ``"anonymous"``).
  The request is hashed (method, path, query, canonical JSON body, ``If-Match``); a retry
  with the same key and request gets the first response again (the first command's ids and
  consistency token, header ``Idempotent-Replayed: true``) and stores nothing; the same key
  with another request is 422; a retry while the first is still running is 409. Without the
  header the command is recorded under its fresh command id (nothing to retry with).
- ``If-Match: "<version>"`` (routes that name a stream): the command is refused with 412
  Precondition Failed (problem body with ``current_version``) unless the stream is at that
  version when the command's events are appended; nothing is stored. ``*`` matches any
  version. Reads return the version as a strong ``ETag`` (``"3"``).

A rejected command (any 4xx) stores nothing, so its key is not consumed: a corrected
request may reuse it.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response

from cqrskit.http.app import Commands, CommandSender
from cqrskit.idempotency import MAX_KEY_LENGTH, idempotent, request_hash
from cqrskit.messages import Command

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "REPLAYED_HEADER",
    "CommandOnce",
    "Once",
    "etag",
    "get_once",
    "parse_if_match",
]

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_NEVER = -2  # an If-Match that names no version: no stream is at it

C = TypeVar("C", bound=Command)


def etag(version: int) -> str:
    """Render a stream version as a strong entity tag."""
    return f'"{version}"'


def parse_if_match(value: str) -> int | None:
    """The version an ``If-Match`` value names (``None`` for ``*``; unparseable: none)."""
    value = value.strip()
    if value == "*":
        return None
    if len(value) >= 3 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if inner.isascii() and inner.isdigit() and len(inner) <= 18:
            return int(inner)
    return _NEVER


class CommandOnce:
    """Sends one request's command with its idempotency key and precondition."""

    def __init__(
        self,
        commands: CommandSender,
        request: Request,
        response: Response,
        key: str | None,
        if_match: str | None,
    ) -> None:
        self._commands = commands
        self._request = request
        self._response = response
        self._key = key
        self._if_match = if_match

    async def send(self, command: C, *, stream_id: str | None = None) -> tuple[C, str | None]:
        """Dispatch ``command`` once per key; return the deciding command and its token.

        On a replay the returned command is the first request's (its server-chosen ids are
        the ones to answer with). ``stream_id`` is the stream ``If-Match`` refers to.
        """
        expect: dict[str, int] = {}
        if self._if_match is not None and stream_id is not None:
            version = parse_if_match(self._if_match)
            if version is not None:
                expect[stream_id] = version
        digest = None
        if self._key is not None:
            request = self._request
            digest = request_hash(
                request.method,
                request.url.path,
                request.url.query,
                await request.body(),
                self._if_match or "",
            )
        with idempotent(self._key, request_hash=digest, expect=expect) as outcome:
            token = await self._commands.send(command)
        if outcome.replayed:
            self._response.headers[REPLAYED_HEADER] = "true"
        first = outcome.command
        if not isinstance(first, type(command)):
            return command, token
        return first, token


async def get_once(
    request: Request,
    response: Response,
    commands: Commands,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_KEY_HEADER,
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            pattern=r"^[\x21-\x7e]+$",
        ),
    ] = None,
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=64)] = None,
) -> CommandOnce:
    """A :class:`CommandOnce` for this request (a FastAPI dependency)."""
    key = None if idempotency_key is None else f"http:{idempotency_key}"
    return CommandOnce(commands, request, response, key, if_match)


Once = Annotated[CommandOnce, Depends(get_once)]
