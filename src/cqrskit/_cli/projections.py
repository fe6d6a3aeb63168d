"""``cqrskit projections list | status | rebuild``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

import typer
from rich import box
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from cqrskit._cli.common import (
    DEFAULT_SERVICE,
    CliError,
    DatabaseUrl,
    JsonFlag,
    ServicePath,
    catch_up_alongside,
    load_service,
    make_settings,
    open_runtime,
    out_console,
    require_database,
    run,
    stop_event,
)
from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START
from cqrskit.projections.rebuild import BlueGreenRebuild
from cqrskit.projections.runner import ProjectionRunner, RebuildProgress
from cqrskit.projections.status import ProjectionStatus, lag_thresholds, projection_status
from cqrskit.service import Runtime

__all__ = ["app"]

app = typer.Typer(
    help="Inspect and rebuild projections (the read models).",
    no_args_is_help=True,
)

_MIGRATE_HINT = "check --database-url; a new database needs `cqrskit migrate` first"


@app.command("list")
def list_projections(
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
) -> None:
    """List the service's projections and the event types each one handles."""

    async def body() -> None:
        make_settings(database_url)
        projections = load_service(service).projections()
        if as_json:
            rows = [
                {"name": p.name, "version": p.version, "handles": sorted(p.handled_types)}
                for p in projections
            ]
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title="projections")
        table.add_column("name", style="bold")
        table.add_column("version", justify="right")
        table.add_column("handles")
        for p in projections:
            table.add_row(p.name, str(p.version), ", ".join(sorted(p.handled_types)))
        out_console().print(table)

    run(body)


_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _note(status: ProjectionStatus) -> str:
    note = status.last_error or ""
    if status.failing_position is not None:
        note = f"failing at {status.failing_position.token()}: {note}"
    if status.blocked_by is not None:
        b = status.blocked_by
        note = (
            f"{note} held back by transaction pid {b['pid']} xid {b['xid']} ({b['state']}),"
            f" open {b['xact_age_seconds']:.0f} s since {b['xact_start']}"
        ).strip()
    return note[:500]


def _status_table(statuses: list[ProjectionStatus]) -> Group:
    head = statuses[0].lag.head.token() if statuses else "-"
    table = Table(title=f"projections (head {head})", box=box.SIMPLE_HEAD)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for column in ("position", "lag events", "lag seconds", "events/s"):
        table.add_column(column, justify="right", no_wrap=True)
    parked = any(status.parked for status in statuses)
    if parked:
        table.add_column("parked", justify="right", no_wrap=True)
    notes: list[Text] = []
    for status in statuses:
        lag, style = status.lag, _STYLES.get(status.level, "red")
        cells: list[str | Text] = [
            Text(status.name),
            Text(status.state, style=style),
            lag.position.token(),
            Text(f"{lag.lag_events:,}", style=style),
            Text(f"{lag.lag_seconds:.1f}", style=style),
            f"{status.throughput:,.1f}",
        ]
        if parked:
            cells.append(Text(str(status.parked), style="red" if status.parked else ""))
        table.add_row(*cells)
        note = _note(status)
        if note:
            notes.append(Text(f"{status.name}: {note}", style=style))
    return Group(table, *notes)


async def _statuses(runtime: Runtime) -> list[ProjectionStatus]:
    return await projection_status(runtime, lag_thresholds(runtime.settings))


async def _watch(runtime: Runtime, console: Console, every: float, as_json: bool) -> None:
    stop = stop_event()
    while True:
        statuses = await _statuses(runtime)
        if as_json:
            typer.echo(json.dumps([status.as_json() for status in statuses]))
        else:
            if console.is_terminal:
                console.clear()
            console.print(_status_table(statuses))
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            continue


@app.command()
def status(
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    as_json: JsonFlag = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch", min=0.1, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C."
        ),
    ] = None,
) -> None:
    """Show each projection's state, position, lag, throughput, parked events and errors.

    Lag in seconds is the age of the oldest event the projection has not applied yet; the
    state is judged against CQRSKIT_LAG_WARN_SECONDS / CQRSKIT_LAG_FAIL_SECONDS. Run here,
    without the projection runners, ``stalled`` means behind past the warn threshold. On
    PostgreSQL a long-running transaction that holds the log back is named.
    """

    async def body() -> None:
        settings = make_settings(database_url)
        svc = load_service(service)
        async with open_runtime(svc, settings, migrate=False) as runtime:
            if watch is not None:
                await _watch(runtime, out_console(), watch, as_json)
                return
            statuses = await _statuses(runtime)
            if as_json:
                typer.echo(json.dumps([status.as_json() for status in statuses], indent=2))
            else:
                out_console().print(_status_table(statuses))

    run(body, hint=_MIGRATE_HINT)


class _RateColumn(ProgressColumn):
    """Events per second, as rich measures them over the last seconds."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("- events/s" if speed is None else f"{speed:,.0f} events/s", style="cyan")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        _RateColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=out_console(),
    )


async def _rebuild_one(runtime: Runtime, name: str, batch_size: int, in_place: bool) -> None:
    runner = runtime.runners[name]
    if not in_place and runner.projection.tables:
        await _blue_green(runner, batch_size)
        return
    total = await runtime.backend.store.count_after(LOG_START)
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(name, total=total)

        def advance(_position: object, applied: int) -> None:
            progress.update(task, completed=applied)

        try:
            await runner.rebuild(batch_size=batch_size, progress=advance)
        except ProjectionError:
            # A live runner elsewhere took some batches; carry on from where it left off.
            await catch_up_alongside(runner, limit=batch_size, progress=advance)
        progress.update(task, completed=runner.status.events_applied)
    elapsed = time.perf_counter() - started
    applied = runner.status.events_applied
    rate = applied / elapsed if elapsed > 0 else 0.0
    out_console().print(
        f"rebuilt [bold]{name}[/bold]: {applied:,} events in {elapsed:.2f} s"
        f" ({rate:,.0f} events/s), checkpoint {(runner.status.checkpoint or LOG_START).token()}",
        highlight=False,
        soft_wrap=True,
    )


async def _blue_green(runner: ProjectionRunner, batch_size: int) -> None:
    started = time.perf_counter()
    last: list[RebuildProgress] = []
    with _progress() as progress:
        task = progress.add_task(runner.name, total=None)

        def advance(status: RebuildProgress) -> None:
            last[:] = [status]
            progress.update(task, total=status.total, completed=status.applied)

        checkpoint = await BlueGreenRebuild(runner, batch_size=batch_size, progress=advance).run()
        if last:
            progress.update(task, completed=last[0].total)
    elapsed = time.perf_counter() - started
    applied = last[0].applied if last else 0
    generation = last[0].generation if last else 0
    rate = applied / elapsed if elapsed > 0 else 0.0
    out_console().print(
        f"rebuilt [bold]{runner.name}[/bold]: {applied:,} events in {elapsed:.2f} s"
        f" ({rate:,.0f} events/s) into generation {generation}, switched at checkpoint"
        f" {checkpoint.token()}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def rebuild(
    name: Annotated[
        str | None, typer.Argument(help="The projection to rebuild (see `projections list`).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Rebuild every projection.")] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Events per transaction.")
    ] = 5000,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place", help="Empty the live tables and replay into them (queries see it)."
        ),
    ] = False,
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
) -> None:
    """Rebuild a projection from the whole event log without downtime (blue/green).

    The next generation of its tables is built beside the live one, which keeps serving
    queries and following the log (in this or any other process); when it has caught up,
    reads switch to it in one transaction and the old tables are dropped. Each batch commits
    with the shadow's own checkpoint, so an interrupted rebuild resumes where it stopped the
    next time it is started. `--in-place` empties the live tables instead (queries see a
    partly rebuilt read model until it finishes).
    """

    async def body() -> None:
        if (name is None) == (not all_):
            raise CliError("give one projection NAME or --all", 2)
        settings = make_settings(database_url)
        svc = load_service(service)
        known = [p.name for p in svc.projections()]
        if name is not None and name not in known:
            raise CliError(f"unknown projection {name!r}; known projections: {', '.join(known)}", 2)
        require_database(settings)
        async with open_runtime(svc, settings, migrate=True) as runtime:
            for each in known if all_ else [name or ""]:
                await _rebuild_one(runtime, each, batch_size, in_place)

    run(body)
