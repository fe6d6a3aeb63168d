"""What every CLI command shares: options, service loading, opening a runtime, clean errors.

Errors never reach the user as a traceback: :func:`run` turns every failure into one red line
on stderr and a non-zero exit code (2 for bad input on the command line, 1 for everything
else, 130 after Ctrl-C). Set ``CQRSKIT_TRACEBACK=1`` to see the traceback of an unexpected
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from cqrskit._sqlite import sqlite_path_from_url
from cqrskit.config import Settings
from cqrskit.errors import CqrskitError, OperationalError, ProjectionError
from cqrskit.messages import LogPosition
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.service import Runtime, Service

__all__ = [
    "DEFAULT_SERVICE",
    "CliError",
    "DatabaseUrl",
    "JsonFlag",
    "ServicePath",
    "catch_up_alongside",
    "err_console",
    "fail",
    "load_service",
    "make_settings",
    "open_runtime",
    "out_console",
    "redact",
    "reported",
    "require_database",
    "run",
    "stop_event",
]

T = TypeVar("T")

DEFAULT_SERVICE = "orders.service:service"
_SCHEMES = ("sqlite", "postgresql", "postgres", "memory")
_SERVICE_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="CQRSKIT_DATABASE_URL",
        show_default="sqlite:///data/orders.db",
        help="Database to use: sqlite:///relative/path.db, sqlite:////absolute/path.db, "
        "postgresql://user@host:5432/db or memory://.",
    ),
]
ServicePath = Annotated[
    str,
    typer.Option(
        "--service",
        envvar="CQRSKIT_SERVICE",
        help="The service to run, as module:attribute naming a cqrskit.service.Service.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class CliError(Exception):
    """A failure to report as one line; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def out_console() -> Console:
    """A console on the current stdout (looked up per call so test runners can swap it)."""
    return Console(file=sys.stdout)


def err_console() -> Console:
    """A console on the current stderr."""
    return Console(file=sys.stderr)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one red line on stderr and exit with ``code``."""
    # Text, not markup: a stream id or URL containing "[...]" must print as typed.
    err_console().print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def redact(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def make_settings(database_url: str | None, **overrides: Any) -> Settings:
    """Build settings from the environment, with the given flags taking precedence."""
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid configuration: {problems}", 2) from None
    _check_url(settings.database_url)
    return settings


def _check_url(url: str) -> None:
    if any(ord(c) < 32 for c in url):
        raise CliError("database URL contains control characters", 2)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        raise CliError("database URL is malformed", 2) from None
    if scheme not in _SCHEMES:
        raise CliError(
            "database URL must start with sqlite://, postgresql:// or memory://"
            " (for example sqlite:///data/orders.db)",
            2,
        )
    if scheme == "sqlite":
        try:
            sqlite_path_from_url(url)
        except ValueError as exc:
            raise CliError(f"bad SQLite URL: {exc}", 2) from None


def load_service(path: str) -> Service:
    """Import ``module:attribute`` and return the :class:`Service` it names."""
    if not _SERVICE_PATH.match(path):
        raise CliError(
            f"service must look like module:attribute (for example {DEFAULT_SERVICE}),"
            f" got {path!r}",
            2,
        )
    module_name, _, attribute = path.partition(":")
    # Like uvicorn, resolve services in the current directory too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CliError(f"cannot import service module {module_name!r}: {exc}", 2) from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise CliError(f"{module_name!r} has no attribute {attribute!r}", 2)
        target = getattr(target, name)
    if not isinstance(target, Service):
        raise CliError(f"{path!r} is a {type(target).__name__}, not a cqrskit Service", 2)
    return target


def require_database(settings: Settings) -> None:
    """Fail unless an SQLite URL names an existing file (read-only commands create nothing)."""
    url = settings.database_url
    if urlsplit(url).scheme == "sqlite" and not sqlite_path_from_url(url).exists():
        raise CliError(
            f"no database at {url} (run `cqrskit migrate` or `cqrskit serve` first,"
            " or pass --database-url)"
        )


@contextlib.asynccontextmanager
async def open_runtime(
    service: Service, settings: Settings, *, migrate: bool
) -> AsyncIterator[Runtime]:
    """Open a runtime for ``service`` (migrating when asked) and close it afterwards."""
    if not migrate:
        require_database(settings)
    runtime = await Runtime.open(service, settings.model_copy(update={"migrate": migrate}))
    try:
        yield runtime
    finally:
        await runtime.close()


async def catch_up_alongside(
    runner: ProjectionRunner,
    *,
    limit: int | None = None,
    progress: Callable[[LogPosition, int], None] | None = None,
    attempts: int = 50,
) -> None:
    """Drain the log into one projection while other processes may be running it too.

    When a runner elsewhere (a live ``serve`` or ``worker``) commits first, our batch is
    discarded (nothing written) and we continue from the checkpoint it left. A failure with
    the checkpoint unchanged is a real one (a failing handler) and propagates.
    """
    for attempt in range(1, attempts + 1):
        try:
            await runner.catch_up(limit=limit, progress=progress)
            return
        except ProjectionError:
            stored = await runner.read_models.checkpoint(runner.name)
            if stored == runner.status.checkpoint or attempt == attempts:
                raise
            await asyncio.sleep(0.01 * attempt)


def stop_event() -> asyncio.Event:
    """Return an event that SIGINT or SIGTERM sets (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.contextmanager
def reported(hint: str | None = None) -> Iterator[None]:
    """Turn any failure inside the block into a one-line error and an exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except CliError as exc:
        fail(exc.message, exc.code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OperationalError as exc:
        fail(f"database unavailable: {exc}" + (f" ({hint})" if hint else ""))
    except CqrskitError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        fail(f"cannot reach the database: {exc.strerror or exc}")
    except Exception as exc:
        if os.environ.get("CQRSKIT_TRACEBACK"):
            raise
        if type(exc).__module__.startswith("asyncpg"):
            fail(f"database error: {exc}")
        fail(f"unexpected error: {type(exc).__name__}: {exc}")


def run(work: Callable[[], Coroutine[Any, Any, T]], *, hint: str | None = None) -> T:
    """Run ``work()`` in a new event loop, reporting failures as :func:`reported` does."""
    with reported(hint):
        return asyncio.run(work())
    raise AssertionError("unreachable")
