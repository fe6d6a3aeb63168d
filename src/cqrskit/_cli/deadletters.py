"""``cqrskit deadletters list | retry | skip``: the parked events of projections."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
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
    open_runtime,
    out_console,
    run,
)
from cqrskit.errors import NotFound
from cqrskit.projections.deadletters import (
    SettleResult,
    dead_letter_json,
    retry_dead_letters,
    skip_dead_letters,
)

__all__ = ["app"]

app = typer.Typer(
    help="List, retry or skip events that projections parked after their handler failed.",
    no_args_is_help=True,
)

_Projection = Annotated[str, typer.Argument(help="The projection (see `projections list`).")]
_Stream = Annotated[str, typer.Argument(help="The stream whose parked events to settle.")]


def _known(service: str, name: str | None) -> list[str]:
    known = [p.name for p in load_service(service).projections()]
    if name is not None and name not in known:
        raise CliError(f"unknown projection {name!r}; known projections: {', '.join(known)}", 2)
    return known


@app.command("list")
def list_dead_letters(
    projection: Annotated[
        str | None, typer.Argument(help="Only this projection's dead letters.")
    ] = None,
    stream: Annotated[str | None, typer.Option("--stream", help="Only this stream.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include skipped events too.")] = False,
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
) -> None:
    """List parked events (and with --all the skipped ones), in log order."""

    async def body() -> None:
        settings = make_settings(database_url)
        _known(service, projection)
        async with open_runtime(load_service(service), settings, migrate=False) as runtime:
            rows = await runtime.backend.read_models.dead_letters(projection, stream_id=stream)
        rows = [row for row in rows if all_ or row.status == "parked"]
        if as_json:
            typer.echo(json.dumps([dead_letter_json(row) for row in rows], indent=2))
            return
        if not rows:
            out_console().print("no dead letters", highlight=False)
            return
        table = Table(title="dead letters", box=box.SIMPLE_HEAD)
        table.add_column("id", justify="right", no_wrap=True)
        table.add_column("projection", no_wrap=True)
        table.add_column("stream / version", overflow="fold")
        table.add_column("status", no_wrap=True)
        table.add_column("tries", justify="right", no_wrap=True)
        table.add_column("error", overflow="fold")
        for row in rows:
            table.add_row(
                str(row.id),
                Text(row.projection),
                Text(f"{row.stream_id} v{row.version}"),
                Text(row.status, style="red" if row.status == "parked" else "dim"),
                str(row.attempts),
                Text(row.error),
            )
        out_console().print(table)

    run(body)


def _report(result: SettleResult, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.__dict__, indent=2))
    else:
        out_console().print(
            Text(
                f"{result.projection} / {result.stream_id}: applied {result.applied},"
                f" skipped {result.skipped}, still parked {result.remaining}"
            ),
            soft_wrap=True,
        )
    if result.error is not None:
        raise CliError(f"the handler failed again: {result.error}")


@app.command()
def retry(
    projection: _Projection,
    stream: _Stream,
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
) -> None:
    """Apply a stream's parked events in order, exactly once (after fixing the handler)."""

    async def body() -> None:
        settings = make_settings(database_url)
        svc = load_service(service)
        _known(service, projection)
        async with open_runtime(svc, settings, migrate=False) as runtime:
            try:
                result = await retry_dead_letters(
                    runtime.backend.store,
                    runtime.backend.read_models,
                    list(svc.projections()),
                    projection,
                    stream,
                )
            except NotFound:
                raise CliError(
                    f"{projection!r} has no parked events in stream {stream!r}"
                ) from None
        _report(result, as_json)

    run(body)


@app.command()
def skip(
    projection: _Projection,
    stream: _Stream,
    ids: Annotated[
        list[int] | None,
        typer.Option("--id", min=1, help="Skip only this dead letter id (repeatable)."),
    ] = None,
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
) -> None:
    """Mark a stream's parked events skipped: never applied, kept as a record."""

    async def body() -> None:
        settings = make_settings(database_url)
        svc = load_service(service)
        _known(service, projection)
        async with open_runtime(svc, settings, migrate=False) as runtime:
            try:
                result = await skip_dead_letters(
                    runtime.backend.read_models, list(svc.projections()), projection, stream, ids
                )
            except NotFound as exc:
                what = f"dead letter {exc.identifier}" if exc.kind == "parked event" else "events"
                raise CliError(
                    f"{projection!r} has no parked {what} in stream {stream!r}"
                ) from None
        _report(result, as_json)

    run(body)
