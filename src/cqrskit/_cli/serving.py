"""``cqrskit serve | worker | migrate | demo-data``: run a service and manage its database."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Annotated

import typer
from rich.table import Table

from cqrskit._cli.common import (
    DEFAULT_SERVICE,
    CliError,
    DatabaseUrl,
    ServicePath,
    catch_up_alongside,
    load_service,
    make_settings,
    open_runtime,
    out_console,
    redact,
    reported,
    run,
    stop_event,
)
from cqrskit.backend import open_backend
from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.projections.lease import PostgresLease, run_leased
from cqrskit.service import Runtime

__all__ = ["demo_data", "migrate", "serve", "worker"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

LogLevel = Annotated[
    str,
    typer.Option(
        "--log-level",
        envvar="CQRSKIT_LOG_LEVEL",
        help=f"One of {', '.join(_LOG_LEVELS)}.",
    ),
]


def _log_level(level: str) -> str:
    level = level.lower()
    if level not in _LOG_LEVELS:
        raise CliError(f"--log-level must be one of {', '.join(_LOG_LEVELS)}", 2)
    return level


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _preflight(settings: Settings) -> None:
    # Reach the database before uvicorn starts, so a bad URL is one clear line, not a
    # failed lifespan with a traceback.
    backend = await open_backend(settings.database_url, migrate=False)
    await backend.close()


def serve(
    host: Annotated[str, typer.Option(envvar="CQRSKIT_HOST", help="Interface to bind.")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option(envvar="CQRSKIT_PORT", min=1, max=65535, help="TCP port.")
    ] = 8000,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not create or update tables on start.")
    ] = False,
    no_projections: Annotated[
        bool,
        typer.Option(
            "--no-projections",
            help="Do not run projections in this process (run `cqrskit worker` instead).",
        ),
    ] = False,
    log_level: LogLevel = "info",
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
) -> None:
    """Serve the HTTP API under uvicorn (OpenAPI docs at /docs); stop with Ctrl-C or SIGTERM.

    Projections run in the same process unless --no-projections is given.
    """
    with reported():
        level = _log_level(log_level)
        # Flags only switch things off, so CQRSKIT_MIGRATE=false and the like still apply.
        switches = {"migrate": False} if no_migrate else {}
        if no_projections:
            switches["run_projections"] = False
        settings = make_settings(database_url, host=host, port=port, log_level=level, **switches)
        svc = load_service(service)
        run(lambda: _preflight(settings))
        try:
            import uvicorn

            from cqrskit.http.app import create_app
            from cqrskit.http.request_head import guarded_http
        except ImportError as exc:
            raise CliError(f"the HTTP layer is unavailable: {exc}") from None
        _configure_logging(level)
        app = create_app(svc, settings)
        out_console().print(
            f"serving [bold]{svc.title}[/bold] on http://{host}:{port}"
            f" (docs at http://{host}:{port}/docs), database {redact(settings.database_url)}",
            highlight=False,
            soft_wrap=True,
        )
        # uvicorn bounds neither the time nor the size of a request head: the guarded
        # protocol does (408 / 431), so slowloris clients cannot pile up.
        http = guarded_http(max_bytes=settings.max_header_bytes, timeout=settings.header_timeout)
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level=level, lifespan="on", http=http)
        )
        server.run()
        if not server.started:
            raise CliError("the server did not start (see the log above)")


def _start_leased(runtime: Runtime, stop: asyncio.Event, ttl: float) -> list[asyncio.Task[None]]:
    # One lease per projection: this worker runs those it owns and stands by for the rest.
    tasks = [
        asyncio.create_task(
            run_leased(
                runner,
                PostgresLease(runtime.settings.database_url, name, ttl=ttl),
                stop,
                poll=min(1.0, ttl / 3),
            ),
            name=f"lease:{name}",
        )
        for name, runner in runtime.runners.items()
    ]
    if runtime.publisher is not None:
        tasks.append(asyncio.create_task(runtime.publisher.run(stop), name="publisher"))
    return tasks


def worker(
    log_level: LogLevel = "info",
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
    lease_ttl: Annotated[
        float,
        typer.Option(
            "--lease-ttl",
            min=0.3,
            help="PostgreSQL: seconds without a heartbeat before a standby takes a lease over.",
        ),
    ] = 10.0,
) -> None:
    """Run every projection (no HTTP) until Ctrl-C or SIGTERM.

    Use with `serve --no-projections` to keep read-model work out of the API processes. On
    PostgreSQL start as many workers as you like, on any machines: each projection is owned
    by one worker at a time through a lease, the others stand by and take over when its owner
    dies or stops heartbeating. On SQLite run one worker.
    """

    async def body() -> None:
        level = _log_level(log_level)
        settings = make_settings(database_url, log_level=level)
        svc = load_service(service)
        _configure_logging(level)
        # Listen for signals before connecting: a SIGTERM during start-up still stops cleanly.
        stop = stop_event()
        async with open_runtime(svc, settings, migrate=settings.migrate) as runtime:
            leased: list[asyncio.Task[None]] = []
            if runtime.backend.read_models.dialect == "postgres":
                leased = _start_leased(runtime, stop, lease_ttl)
            else:
                runtime.start_projections()
            out_console().print(
                f"worker: {len(runtime.runners)} projections following"
                f" {redact(settings.database_url)}"
                f"{' (leased: one worker at a time owns each)' if leased else ''};"
                " Ctrl-C or SIGTERM stops",
                highlight=False,
                soft_wrap=True,
            )
            await stop.wait()
            await asyncio.gather(*leased, return_exceptions=True)
        out_console().print("worker: stopped")

    run(body)


def migrate(
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
) -> None:
    """Create or update the event store schema and every projection's tables (idempotent)."""

    async def body() -> None:
        settings = make_settings(database_url)
        svc = load_service(service)
        async with open_runtime(svc, settings, migrate=True) as runtime:
            names = ", ".join(runtime.runners) or "none"
        out_console().print(
            f"migrated {redact(settings.database_url)}: event store and projections ({names})",
            highlight=False,
            soft_wrap=True,
        )

    run(body)


async def _tally(runtime: Runtime, after: LogPosition) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    position = after
    while page := await runtime.backend.store.read_all(after=position, limit=5000):
        counts.update(record.event.event_type for record in page)
        position = page[-1].position
    return counts


def _catch_up_note(pending: int | None) -> str:
    if pending is None:
        return ""
    if pending == 0:
        return "; projections are up to date"
    # On PostgreSQL, events of still-open transactions elsewhere are not readable yet.
    return f"; up to {pending:,} events are not yet applied (a worker or serve will apply them)"


def demo_data(
    orders: Annotated[
        int, typer.Option("--orders", min=0, max=1_000_000, help="How many orders to create.")
    ] = 300,
    catch_up: Annotated[
        bool,
        typer.Option(
            "--catch-up/--no-catch-up",
            help="Bring every projection up to date afterwards (leave it to a worker with"
            " --no-catch-up).",
        ),
    ] = True,
    database_url: DatabaseUrl = None,
    service: ServicePath = DEFAULT_SERVICE,
) -> None:
    """Load a realistic sample (customers, products, orders) through the command bus."""

    async def body() -> None:
        settings = make_settings(database_url)
        svc = load_service(service)
        if svc.demo_data is None:
            raise CliError(f"service {svc.title!r} has no demo data", 2)
        async with open_runtime(svc, settings, migrate=True) as runtime:
            before = await runtime.backend.store.head()
            started = time.perf_counter()
            commands = await svc.demo_data(runtime, orders)
            elapsed = time.perf_counter() - started
            counts = await _tally(runtime, before)
            pending = None
            if catch_up:
                for runner in runtime.runners.values():
                    await catch_up_alongside(runner)
                pending = max((lag.lag_events for lag in await runtime.lag()), default=0)
        table = Table(title=f"demo data for {svc.title}")
        table.add_column("event type", style="bold")
        table.add_column("count", justify="right")
        for event_type, count in sorted(counts.items()):
            table.add_row(event_type, f"{count:,}")
        console = out_console()
        console.print(table)
        console.print(
            f"{commands:,} commands, {sum(counts.values()):,} events in {elapsed:.1f} s"
            + _catch_up_note(pending),
            highlight=False,
            soft_wrap=True,
        )

    run(body)
