"""The benchmark context: sizes per mode, one event loop, scratch databases, interleaving."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FULL", "QUICK", "Bench", "Sizes", "interleave"]

T = TypeVar("T")
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does in one repetition."""

    reps: int
    cmd_seq: int  # commands per repetition, sequential (PostgreSQL)
    cmd_conc: int  # commands per repetition, 32 concurrent
    cmd_sqlite: int  # commands per repetition, SQLite
    load_gets: int  # timed loads of the 100-event aggregate
    proj_events: int  # events caught up by our runner and the raw reference
    proj_es_events: int  # events caught up by eventsourcing (one transaction per event)
    proj_reps: int
    lag_seconds: float
    http_seconds: int
    http_warmup: int
    bg_events: int  # events of the blue/green rebuild and memory scenarios (8, 9)
    bg_reps: int


QUICK = Sizes(
    reps=3,
    cmd_seq=300,
    cmd_conc=1500,
    cmd_sqlite=500,
    load_gets=150,
    proj_events=10_000,
    proj_es_events=1_000,
    proj_reps=2,
    lag_seconds=4,
    http_seconds=3,
    http_warmup=1,
    bg_events=100_000,
    bg_reps=1,
)
FULL = Sizes(
    reps=5,
    cmd_seq=1500,
    cmd_conc=6000,
    cmd_sqlite=2000,
    load_gets=500,
    proj_events=100_000,
    proj_es_events=5_000,
    proj_reps=3,
    lag_seconds=10,
    http_seconds=6,
    http_warmup=2,
    bg_events=1_000_000,
    bg_reps=1,
)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@dataclass
class Bench:
    """Shared state of one run: sizes, the event loop, the scratch PostgreSQL database."""

    sizes: Sizes
    postgres_admin_url: str
    tmp_dir: Path = field(default_factory=lambda: BENCH_DIR / ".tmp")
    postgres_url: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    _runner: asyncio.Runner | None = None
    _files: int = 0

    def __post_init__(self) -> None:
        factory = _loop_factory()
        self.loop_name = "uvloop" if factory else "asyncio"
        self._runner = asyncio.Runner(loop_factory=factory)

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on the run's one event loop."""
        assert self._runner is not None
        return self._runner.run(coro)  # type: ignore[arg-type]

    # -- SQLite ------------------------------------------------------------------------------
    def sqlite_path(self, name: str) -> Path:
        """A fresh SQLite file path (on disk, not tmpfs) with its -wal/-shm files removed."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._files += 1
        path = self.tmp_dir / f"{name}-{os.getpid()}-{self._files}.db"
        remove_sqlite(path)
        return path

    # -- PostgreSQL --------------------------------------------------------------------------
    def postgres_available(self) -> bool:
        """Whether the PostgreSQL server answers on its TCP port."""
        parts = urlsplit(self.postgres_admin_url)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 1):
                return True
        except OSError:
            return False

    async def create_database(self) -> str:
        """Create ``cqrskit_bench_<pid>`` and return its URL."""
        import asyncpg

        name = f"cqrskit_bench_{os.getpid()}"
        conn = await asyncpg.connect(self.postgres_admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        parts = urlsplit(self.postgres_admin_url)
        self.postgres_url = urlunsplit(parts._replace(path=f"/{name}"))
        return self.postgres_url

    async def drop_database(self) -> None:
        """Drop the database made by :meth:`create_database`."""
        import asyncpg

        if self.postgres_url is None:
            return
        name = urlsplit(self.postgres_url).path.lstrip("/")
        conn = await asyncpg.connect(self.postgres_admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        self.postgres_url = None

    async def reset_postgres(self) -> None:
        """Drop every table of the scratch database (fresh schema) and checkpoint."""
        import asyncpg

        assert self.postgres_url is not None
        conn = await asyncpg.connect(self.postgres_url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE")
            await conn.execute("CREATE SCHEMA public")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    def close(self) -> None:
        """Drop the scratch database, remove scratch files and close the loop."""
        if self._runner is None:
            return
        try:
            self.run(self.drop_database())
        finally:
            self._runner.close()
            self._runner = None
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def interleave(
    reps: int, variants: Mapping[str, Callable[[], Mapping[str, float]]]
) -> dict[str, dict[str, list[float]]]:
    """Run each variant once per repetition, rotating the order; collect metrics per variant.

    Each variant returns ``{metric: value}``; the result is ``{variant: {metric: [reps]}}``.
    Rotation keeps any drift of the machine from favouring whichever variant runs first.
    """
    names = list(variants)
    out: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            gc.collect()
            started = time.perf_counter()
            metrics = variants[name]()
            elapsed = time.perf_counter() - started
            for metric, value in metrics.items():
                out[name].setdefault(metric, []).append(value)
            shown = ", ".join(f"{k}={v:,.3g}" for k, v in metrics.items())
            print(f"    rep {rep + 1}/{reps} {name:<22} {shown}  ({elapsed:.1f}s)", flush=True)
    return out
