"""The private crash-test cluster: a crash really is one, and committed rows survive it.

Each crash mode is followed by WAL crash recovery on the next start (the server log says so),
every row committed before it is still there (``fsync`` and ``synchronous_commit`` are on),
and cleanup leaves neither a server process nor the cluster's directory behind.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.reliability.pgcluster import CrashMode, PgCluster, process_alive

pytestmark = pytest.mark.faults

MODES: tuple[CrashMode, ...] = ("immediate", "sigkill", "postmaster")
RECOVERY = "database system was not properly shut down; automatic recovery in progress"


async def count_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM acknowledged"))
    finally:
        await conn.close()


async def test_committed_rows_survive_every_crash_mode_and_cleanup_leaves_nothing() -> None:
    cluster = PgCluster.create()
    try:
        url = cluster.url()
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE acknowledged (n INT PRIMARY KEY)")
        await conn.close()
        for n, mode in enumerate(MODES, start=1):
            conn = await asyncpg.connect(url)
            await conn.execute("INSERT INTO acknowledged VALUES ($1)", n)  # committed: acked
            pid = cluster.postmaster_pid
            assert pid is not None
            cluster.crash(mode)
            assert not cluster.running
            assert not process_alive(pid)
            conn.terminate()
            cluster.start()
            assert await count_rows(url) == n
        assert cluster.crashes == len(MODES)
        assert cluster.log.read_text().count(RECOVERY) == len(MODES)
        pid = cluster.postmaster_pid
    finally:
        cluster.cleanup()
    assert pid is not None
    assert not process_alive(pid)
    assert not cluster.root.exists()
