"""``cqrskit events show STREAM | tail``: read the event store as an operator."""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cqrskit._cli.common import (
    DEFAULT_SERVICE,
    CliError,
    DatabaseUrl,
    JsonFlag,
    ServicePath,
    load_service,
    make_settings,
    out_console,
    require_database,
    run,
)
from cqrskit.backend import Backend, open_backend
from cqrskit.config import Settings
from cqrskit.messages import ENVELOPE_FIELDS, LOG_START, DomainEvent, LogPosition, RecordedEvent

__all__ = ["app"]

app = typer.Typer(help="Read the event store: one stream's history, or the end of the log.")

_MAX_STREAM_ID = 1000
_PAGE = 5000


def _check_stream_id(stream_id: str) -> None:
    if not stream_id or len(stream_id) > _MAX_STREAM_ID:
        raise CliError(f"a stream id has 1 to {_MAX_STREAM_ID} characters", 2)
    if any(ord(c) < 32 or ord(c) == 127 for c in stream_id):
        raise CliError("a stream id cannot contain control characters", 2)


@contextlib.asynccontextmanager
async def _backend(settings: Settings) -> AsyncIterator[Backend]:
    require_database(settings)
    backend = await open_backend(settings.database_url, migrate=False)
    try:
        yield backend
    finally:
        await backend.close()


def _event_json(event: DomainEvent, position: LogPosition | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stream_id": event.stream_id,
        "version": event.version,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "occurred_at": event.occurred_at.isoformat(),
        "metadata": event.metadata.model_dump(mode="json"),
        "data": event.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS)),
    }
    if position is not None:
        row = {"position": position.token(), **row}
    return row


def _short(value: object) -> str:
    # Ids are shown like short git hashes; --json has them whole.
    return "" if value is None else str(value)[:8]


def _payload(event: DomainEvent) -> Text:
    data = event.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS))
    return Text(
        "\n".join(
            f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
            for key, value in data.items()
        )
    )


@app.command()
def show(
    stream_id: Annotated[
        str, typer.Argument(metavar="STREAM", help="Stream id, e.g. order-<uuid>.")
    ],
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
) -> None:
    """Show one stream's audit trail: version, type, time, user, causation, correlation, payload.

    The user is the verified principal that sent the command (empty: anonymous), causation
    the command's id, correlation the request's ``X-Correlation-ID`` (else the command id).
    """

    async def body() -> None:
        _check_stream_id(stream_id)
        settings = make_settings(database_url)
        load_service(service)  # registers the service's event classes
        async with _backend(settings) as backend:
            events = await backend.store.read_stream(stream_id)
        if not events:
            raise CliError(f"stream {stream_id!r} has no events")
        if as_json:
            typer.echo(json.dumps([_event_json(e) for e in events], indent=2, ensure_ascii=False))
            return
        table = Table(title=Text(f"{stream_id} ({len(events)} events)"))
        table.add_column("version", justify="right")
        table.add_column("type", no_wrap=True)
        for column in ("occurred_at", "user", "causation", "correlation"):
            table.add_column(column, no_wrap=True, min_width=8 if column == "user" else None)
        table.add_column("payload", overflow="fold")
        for e in events:
            meta = e.metadata
            table.add_row(
                str(e.version),
                Text(e.event_type, style="bold"),
                e.occurred_at.strftime("%Y-%m-%d\n%H:%M:%S"),
                Text(meta.user_id or ""),
                _short(meta.causation_id),
                _short(meta.correlation_id),
                _payload(e),
            )
        out_console().print(table)

    run(body)


async def _last(backend: Backend, limit: int) -> list[RecordedEvent]:
    store = backend.store
    head = await store.head()
    if head.transaction_id == 0:
        # Positions are dense integers in commit order here: seek instead of scanning.
        start = LogPosition(0, max(0, head.position - limit))
        return (await store.read_all(after=start, limit=limit))[-limit:]
    window: collections.deque[RecordedEvent] = collections.deque(maxlen=limit)
    after = LOG_START
    while page := await store.read_all(after=after, limit=_PAGE):
        window.extend(page)
        after = page[-1].position
    return list(window)


@app.command()
def tail(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many events.")
    ] = 20,
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
) -> None:
    """Show the last events of the global log, oldest first."""

    async def body() -> None:
        settings = make_settings(database_url)
        load_service(service)
        async with _backend(settings) as backend:
            records = await _last(backend, limit)
        if as_json:
            rows = [_event_json(r.event, r.position) for r in records]
            typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
            return
        table = Table(title=f"last {len(records)} events")
        table.add_column("position", justify="right", no_wrap=True)
        table.add_column("stream", overflow="fold")
        table.add_column("version", justify="right", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("occurred_at", no_wrap=True)
        table.add_column("user", no_wrap=True, min_width=8)
        table.add_column("causation", no_wrap=True)
        table.add_column("payload", overflow="fold")
        for r in records:
            e = r.event
            table.add_row(
                r.position.token(),
                Text(e.stream_id),
                str(e.version),
                Text(e.event_type, style="bold"),
                e.occurred_at.strftime("%Y-%m-%d\n%H:%M:%S"),
                Text(e.metadata.user_id or ""),
                _short(e.metadata.causation_id),
                _payload(e),
            )
        out_console().print(table)

    run(body)
