"""SQLite durability: WAL with ``synchronous=FULL``, and acknowledged commits survive a hard kill.

A process that is killed loses nothing it acknowledged: the events whose positions it printed
are in the file when it is opened again, and the file passes ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

from cqrskit._sqlite import SQLiteDatabase, sqlite_path_from_url
from cqrskit.backend import open_backend
from cqrskit.messages import LOG_START, LogPosition
from cqrskit.testing.contracts import Deposited

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}

_PRAGMAS = "PRAGMA journal_mode", "PRAGMA synchronous"


def _pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
    journal, synchronous = (conn.execute(p).fetchone()[0] for p in _PRAGMAS)
    return str(journal), int(synchronous)


async def test_both_connections_use_wal_and_synchronous_full(tmp_path: Path) -> None:
    db = await SQLiteDatabase.open(tmp_path / "pragmas.db")
    try:
        assert await db.write(_pragmas) == ("wal", 2)
        assert await db.read(_pragmas) == ("wal", 2)
    finally:
        await db.close()


# Appends through the command bus and prints each acknowledged position, then dies.
_APPENDER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from datetime import UTC, datetime
    from cqrskit.backend import open_backend
    from cqrskit.store.protocol import ANY_VERSION, StreamAppend
    from cqrskit.testing.contracts import deposit

    async def main() -> None:
        backend = await open_backend(sys.argv[1])
        count, how = int(sys.argv[2]), sys.argv[3]
        n = 0
        while count == 0 or n < count:
            n += 1
            result = await backend.store.append(
                StreamAppend(f"acct-{n % 5}", ANY_VERSION, [deposit(str(n), note="x" * 500)])
            )
            print(result.position.token(), str(result.events[0].event.event_id), flush=True)
        if how == "exit":
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def _spawn(url: str, count: int, how: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _APPENDER,
        url,
        str(count),
        how,
        cwd=ROOT,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def _parse(lines: list[bytes]) -> list[tuple[LogPosition, str]]:
    acknowledged = []
    for line in lines:
        token, event_id = line.decode().split()
        acknowledged.append((LogPosition.parse(token), event_id))
    return acknowledged


async def _assert_present_and_intact(url: str, acknowledged: list[tuple[LogPosition, str]]) -> None:
    assert acknowledged, "the child acknowledged nothing"
    path = sqlite_path_from_url(url)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    backend = await open_backend(url)
    try:
        log = await backend.store.read_all(after=LOG_START, limit=1_000_000)
        stored = {record.position: str(record.event.event_id) for record in log}
        assert all(isinstance(record.event, Deposited) for record in log)
        for position, event_id in acknowledged:
            assert stored.get(position) == event_id, f"acknowledged event at {position} lost"
        # What was stored is a contiguous prefix of the log: no torn transactions.
        assert [r.position.position for r in log] == list(range(1, len(log) + 1))
    finally:
        await backend.close()


async def test_acknowledged_appends_survive_exit_without_cleanup(sqlite_url: str) -> None:
    process = await _spawn(sqlite_url, 20, "exit")
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    acknowledged = _parse(out.splitlines())
    assert len(acknowledged) == 20
    await _assert_present_and_intact(sqlite_url, acknowledged)


async def test_acknowledged_appends_survive_sigkill(sqlite_url: str) -> None:
    process = await _spawn(sqlite_url, 25, "kill")
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -signal.SIGKILL, err.decode()
    acknowledged = _parse(out.splitlines())
    assert len(acknowledged) == 25
    await _assert_present_and_intact(sqlite_url, acknowledged)


async def test_acknowledged_appends_survive_sigkill_at_an_arbitrary_moment(
    sqlite_url: str,
) -> None:
    """Killed from outside while appending nonstop: possibly in the middle of a commit."""
    process = await _spawn(sqlite_url, 0, "kill")
    assert process.stdout is not None
    lines: list[bytes] = []
    while len(lines) < 40:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line, (await process.communicate())[1].decode()
        lines.append(line)
    process.kill()
    rest, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -signal.SIGKILL
    # A final line may be cut off by the kill; only whole lines were acknowledged.
    lines.extend(line for line in rest.splitlines(keepends=True) if line.endswith(b"\n"))
    await _assert_present_and_intact(sqlite_url, _parse(lines))
