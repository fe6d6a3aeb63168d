"""Facts about the machine a run measured on, and two speed probes taken at start and end.

On a shared 2-core box the effective speed drifts (about 2x within an hour), so every result
file carries a CPU probe and a disk-flush probe from both ends of the run.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sqlite3
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["cpu_probe", "fdatasync_probe", "machine_facts", "postgres_facts", "probes"]

_PACKAGES = (
    "cqrskit",
    "eventsourcing",
    "asyncpg",
    "psycopg",
    "pydantic",
    "pydantic-core",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "redis",
)
_PG_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_connections",
)


def cpu_probe(seconds: float = 0.5) -> int:
    """Run a fixed pure-Python workload for ``seconds``; return rounds per second."""
    rounds = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        table = {}
        for i in range(500):
            table[f"k{i}"] = i * 7 % 13
        digest = hashlib.sha256(repr(sorted(table.items())).encode()).hexdigest()
        rounds += len(digest) > 0
    return round(rounds / (time.perf_counter() - started))


def fdatasync_probe(directory: Path, seconds: float = 1.0) -> int:
    """Overwrite 8 KiB and ``fdatasync`` in a loop in ``directory``; return flushes per second."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fsync-probe-{os.getpid()}.tmp"
    block = os.urandom(8192)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        flushes = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            flushes += 1
        return round(flushes / (time.perf_counter() - started))
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def probes(directory: Path) -> dict[str, Any]:
    """Take both probes plus the load average now."""
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_rounds_per_s": cpu_probe(),
        "fdatasync_per_s": fdatasync_probe(directory),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine_facts() -> dict[str, Any]:
    """CPU count and model, memory, OS, Python, SQLite and package versions."""
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": _mem_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": packages,
    }


async def postgres_facts(url: str) -> dict[str, Any]:
    """The server version and the settings that bound commit throughput."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in _PG_SETTINGS}
    finally:
        await conn.close()
