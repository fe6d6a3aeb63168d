"""The orders service on one SQLite file, serving commands over a Unix socket (fault tests).

``test_sqlite_faults`` runs this module under ``fiu-run -x`` and switches libfiu's POSIX failure
points on and off from outside with ``fiu-ctrl``. Those faults hit every ``write()``,
``pwrite()`` and ``fsync()`` of the process, stdout included, so requests and outcomes travel
over a Unix socket instead: ``send()``/``recv()`` are failure points of their own
(``posix/io/net/*``) that the test never enables, so an outcome always reaches the test, even
one reporting on the fault that is active while it is sent.

Protocol, one JSON object per line each way::

    -> {"type": "RestockProduct", "command": {...}}      (dispatch through the command bus)
    <- {"command_id": "...", "ok": true, "events": 1}
    <- {"command_id": "...", "ok": false, "error": "OperationalError"}

Commands run concurrently, one task each, exactly as an API process would run them; the
projections follow the log in the background all along. The test ends the process with
SIGKILL (a crash: no clean close, no final checkpoint).

    python -m tests.reliability.sqlite_fault_child SQLITE_URL SOCKET_FD [--no-projections]
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import sys
from typing import Any

from cqrskit.config import Settings
from cqrskit.messages import Command
from cqrskit.read_models.sqlite import SQLiteReadModelStore
from cqrskit.service import Runtime
from orders.customer import RegisterCustomer
from orders.order import CreateOrder
from orders.product import AddProduct, RestockProduct
from orders.service import service

__all__ = ["COMMAND_TYPES", "main"]

COMMAND_TYPES: dict[str, type[Command]] = {
    t.__name__: t for t in (AddProduct, RestockProduct, RegisterCustomer, CreateOrder)
}


async def _dispatch(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    command = COMMAND_TYPES[request["type"]].model_validate(request["command"])
    answer: dict[str, Any] = {"command_id": str(command.command_id)}
    try:
        result = await runtime.command_bus.dispatch(command)
    except Exception as exc:  # every failure is an outcome to report, never a crash
        answer.update(ok=False, error=type(exc).__name__, module=type(exc).__module__)
    else:
        answer.update(ok=True, events=len(result.events))
    return answer


async def _serve(url: str, fd: int, projections: bool) -> None:
    runtime = await Runtime.open(
        service, Settings(database_url=url, projection_poll_interval=0.1, lag_check_interval=60)
    )
    read_models = runtime.backend.read_models
    assert isinstance(read_models, SQLiteReadModelStore)
    # Checkpoint the WAL into the database file often, so checkpoints (pwrite and fsync of
    # the main file) run under the faults too, not only WAL appends.
    await read_models.db.write(_checkpoint_often)
    if projections:
        runtime.start_projections()
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(request: dict[str, Any]) -> None:
        answer = await _dispatch(runtime, request)
        async with lock:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()

    writer.write(b'{"ready": true}\n')
    await writer.drain()
    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await runtime.close()


def _checkpoint_often(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_autocheckpoint=20")


def main(argv: list[str]) -> None:
    """Serve ``argv[0]`` (a SQLite URL) on the connected socket whose descriptor is ``argv[1]``.

    ``--no-projections`` as ``argv[2]``: only commands write (nothing else touches the WAL).
    """
    asyncio.run(_serve(argv[0], int(argv[1]), argv[2:] != ["--no-projections"]))


if __name__ == "__main__":
    main(sys.argv[1:])
