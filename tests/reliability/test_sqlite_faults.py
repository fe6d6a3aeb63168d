"""SQLite storage faults: ``fsync``/``fdatasync`` and ``pwrite``/``write`` really fail.

The orders service runs in a child process (:mod:`tests.reliability.sqlite_fault_child`) under
``fiu-run -x``: libfiu's POSIX preload wraps the C library's I/O calls, and the test turns
failure points on and off from outside with ``fiu-ctrl`` while commands flow. SQLite sees the
same errors a full disk or a dying device would give it.

What it proves (DESIGN.md section 2, guarantee 1, on SQLite):

- while every ``fsync`` (or every ``pwrite``) fails, no command is acknowledged: a commit that
  could not be made durable surfaces as the framework's ``OperationalError`` (HTTP 503),
  never as a success and never as a raw ``sqlite3`` error;
- after an I/O error the writer is not wedged: the next command without faults succeeds;
- with faults at random moments, then a crash (SIGKILL) and a restart without faults, every
  acknowledged command is in the log exactly once, per-stream versions are contiguous, and
  ``PRAGMA integrity_check`` is ok;
- a failed commit is an *unknown* outcome, not a definite failure: SQLite may already have
  written its commit frame to the WAL, and after a crash recovery finds it. Retrying every
  unknown command with its command id stores each exactly once;
- the restarted service works: projections converge to a rebuild from scratch.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from cqrskit._sqlite import sqlite_path_from_url
from cqrskit.config import Settings
from cqrskit.messages import Command
from cqrskit.service import Runtime
from orders.customer import RegisterCustomer
from orders.order import CreateOrder
from orders.product import AddProduct, RestockProduct
from orders.service import service
from orders.values import Address, OrderLine
from tests.reliability.history import (
    History,
    Operation,
    Outcome,
    assert_converged,
    check_history,
)
from tests.reliability.report import record
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
DEADLINE = 30.0
"""Bound on any single wait for the child (a hang past it is a wedged writer)."""

SEED = int(os.environ.get("CQRSKIT_FAULT_SEED") or random.randrange(2**32))

# Failure points that make a commit impossible: while one is on, nothing may be acknowledged.
BLOCKING_FAULTS = {
    "fsync": "posix/io/sync/*",  # fsync and fdatasync (SQLite syncs the WAL with fdatasync)
    "pwrite": "posix/io/rw/pwrite",  # the WAL's frames are written with pwrite
}
SHORT_WRITES = "posix/io/rw/pwrite/reduce"
"""Every ``pwrite`` writes fewer bytes than asked (as POSIX allows): SQLite must finish it."""
# Failure points switched on at random moments with a probability.
RANDOM_FAULTS = {
    "posix/io/sync/*": 0.25,
    "posix/io/rw/pwrite": 0.03,
    "posix/io/rw/write": 0.05,
    SHORT_WRITES: 0.2,
}
UNKNOWN_ERRORS = {"OperationalError", "PersistenceError"}
"""The framework's storage errors: the commit may or may not have happened."""

ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")
PRICE = Decimal("2.50")


def require_fiu() -> tuple[str, str]:
    """``fiu-run`` and ``fiu-ctrl``, or skip (CI unset) / fail (CI set) without them."""
    run, ctrl = shutil.which("fiu-run"), shutil.which("fiu-ctrl")
    if run and ctrl:
        return run, ctrl
    message = "fiu-run/fiu-ctrl not found (Debian package fiu-utils)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip")
    pytest.skip(message)


@dataclass
class FaultedChild:
    """The child process, its socket, and the commands awaiting an outcome."""

    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    fiu_ctrl: str
    fifo_prefix: str
    stderr_path: Path
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    faults_enabled: int = 0

    async def _read_outcomes(self) -> None:
        while line := await self.reader.readline():
            answer = json.loads(line)
            self.pending.pop(answer["command_id"]).set_result(answer)
        for future in self.pending.values():
            future.set_exception(AssertionError(f"the child died: {self.stderr()}"))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    async def dispatch(self, commands: list[Command]) -> list[dict[str, Any]]:
        """Send ``commands`` at once (they run concurrently) and wait for every outcome."""
        futures = []
        for command in commands:
            future = asyncio.get_running_loop().create_future()
            self.pending[str(command.command_id)] = future
            futures.append(future)
            request = {"type": type(command).__name__, "command": command.model_dump(mode="json")}
            self.writer.write(json.dumps(request).encode() + b"\n")
        await self.writer.drain()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), DEADLINE))
        except TimeoutError:
            raise AssertionError(
                f"no outcome within {DEADLINE} s: the writer is wedged (seed {SEED})\n"
                + self.stderr()
            ) from None

    async def control(self, *commands: str) -> None:
        """Run libfiu remote-control commands in the child (``fiu-ctrl -c ...``)."""
        args = [a for c in commands for a in ("-c", c)]
        ctrl = await asyncio.create_subprocess_exec(
            self.fiu_ctrl,
            "-f",
            self.fifo_prefix,
            *args,
            str(self.process.pid),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(ctrl.communicate(), DEADLINE)
        assert ctrl.returncode == 0, f"fiu-ctrl {commands}: {out.decode()}"
        self.faults_enabled += sum(c.startswith("enable") for c in commands)


@asynccontextmanager
async def faulted_child(url: str, tmp_path: Path, *options: str) -> AsyncIterator[FaultedChild]:
    """Start the child under ``fiu-run -x``; SIGKILL it on exit (a crash, not a shutdown)."""
    fiu_run, fiu_ctrl = require_fiu()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    prefix = str(tmp_path / "fiu-ctrl")
    stderr_path = tmp_path / "child.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            fiu_run,
            "-x",
            "-f",
            prefix,
            sys.executable,
            "-m",
            "tests.reliability.sqlite_fault_child",
            url,
            str(theirs.fileno()),
            *options,
            pass_fds=(theirs.fileno(),),
            cwd=ROOT,
            env=ENV,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    child = FaultedChild(process, reader, writer, fiu_ctrl, prefix, stderr_path)
    outcomes: asyncio.Task[None] | None = None
    try:
        ready = await asyncio.wait_for(reader.readline(), DEADLINE)
        assert ready, f"the child did not start: {child.stderr()}"
        outcomes = asyncio.create_task(child._read_outcomes())
        yield child
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        writer.close()
        if outcomes is not None:
            await asyncio.gather(outcomes, return_exceptions=True)


@dataclass
class Workload:
    """Commands of the orders service over a few shared products and customers."""

    rng: random.Random
    products: list[UUID] = field(default_factory=lambda: [uuid4() for _ in range(3)])
    customers: list[UUID] = field(default_factory=list)

    def setup(self) -> list[Command]:
        return [
            AddProduct(product_id=p, name=f"Product {i}", unit_price=PRICE, stock=1_000_000)
            for i, p in enumerate(self.products)
        ]

    def next(self) -> Command:
        """A new customer, a restock of a shared product, or an order reserving stock."""
        roll = self.rng.random()
        if roll < 0.3 or not self.customers:
            customer_id = uuid4()
            return RegisterCustomer(
                customer_id=customer_id, name="Ada", email=f"{customer_id.hex[:12]}@example.com"
            )
        if roll < 0.6:
            return RestockProduct(product_id=self.rng.choice(self.products), quantity=5)
        lines = [
            OrderLine(product_id=p, quantity=self.rng.randint(1, 3), unit_price=PRICE)
            for p in self.rng.sample(self.products, self.rng.randint(1, 2))
        ]
        return CreateOrder(
            order_id=uuid4(),
            customer_id=self.rng.choice(self.customers),
            items=lines,
            shipping_address=ADDRESS,
        )

    def acknowledged(self, command: Command) -> None:
        """Orders go only to customers whose registration was acknowledged."""
        if isinstance(command, RegisterCustomer):
            self.customers.append(command.customer_id)


def stream_of(command: Command) -> str:
    """The main stream a command writes (informational for the history)."""
    if isinstance(command, RegisterCustomer):
        return f"customer-{command.customer_id}"
    if isinstance(command, CreateOrder):
        return f"order-{command.order_id}"
    assert isinstance(command, AddProduct | RestockProduct)
    return f"product-{command.product_id}"


@dataclass
class Run:
    """The history of one child's life, and what the test saw along the way."""

    history: History = field(default_factory=History)
    commands: dict[UUID, Command] = field(default_factory=dict)
    operations: dict[UUID, Operation] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    acknowledged_under_blocking_fault: list[str] = field(default_factory=list)
    failed_under_blocking_fault: int = 0

    async def send(
        self,
        child: FaultedChild,
        workload: Workload,
        commands: list[Command],
        blocking_fault: str | None = None,
    ) -> list[bool]:
        """Dispatch ``commands`` in the child, record every outcome, return which were ok."""
        for command in commands:
            self.commands[command.command_id] = command
            op = self.history.begin(command.command_id, stream_of(command))
            self.operations[command.command_id] = op
        answers = await child.dispatch(commands)
        for command, answer in zip(commands, answers, strict=True):
            op = self.operations[command.command_id]
            if answer["ok"]:
                self.history.ok(op, "ok", events=answer["events"])
                workload.acknowledged(command)
                if blocking_fault is not None:
                    self.acknowledged_under_blocking_fault.append(
                        f"{type(command).__name__} acknowledged while {blocking_fault} failed"
                    )
                continue
            error, module = answer["error"], answer["module"]
            if module != "cqrskit.errors" or error not in UNKNOWN_ERRORS:
                # Only storage errors are expected here; a raw sqlite3 error is a 500.
                self.unexpected.append(f"{type(command).__name__}: {module}.{error}")
            self.history.unknown(op, error)
            if blocking_fault is not None:
                self.failed_under_blocking_fault += 1
        return [bool(a["ok"]) for a in answers]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def test_io_failures_never_acknowledge_and_lose_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    print(f"CQRSKIT_FAULT_SEED={SEED}")
    rng = random.Random(SEED)
    windows = TIER.pick(fast=12, full=60, soak=300)
    random_commands = TIER.pick(fast=150, full=1000, soak=10_000)
    workload = Workload(rng)
    run = Run()
    async with faulted_child(sqlite_url, tmp_path) as child:
        assert all(await run.send(child, workload, workload.setup()))

        # 1. Controlled moments: a failure point that makes every commit impossible is on
        # while one to three commands run; none may be acknowledged. Then, without faults,
        # the next command must succeed: an I/O error must not wedge the writer.
        for window in range(windows):
            kind = list(BLOCKING_FAULTS)[window % len(BLOCKING_FAULTS)]
            await child.control(f"enable name={BLOCKING_FAULTS[kind]}")
            await run.send(
                child, workload, [workload.next() for _ in range(rng.randint(1, 3))], kind
            )
            await child.control(f"disable name={BLOCKING_FAULTS[kind]}")
            acknowledged = run.acknowledged_under_blocking_fault
            assert not acknowledged, f"{acknowledged} (seed {SEED})"
            assert not run.unexpected, f"not OperationalError: {run.unexpected} (seed {SEED})"
            assert await run.send(child, workload, [workload.next()]) == [True], (
                f"the first command after a {kind} failure failed (seed {SEED})"
            )
            # Short writes are no error: every command goes through while they happen.
            await child.control(f"enable name={SHORT_WRITES}")
            short = await run.send(child, workload, [workload.next() for _ in range(2)])
            await child.control(f"disable name={SHORT_WRITES}")
            assert short == [True, True], f"a short pwrite failed a command (seed {SEED})"

        # 2. Random moments: failure points fire with a probability while batches of
        # concurrent commands run (projections write through the same faults meanwhile).
        await child.control(
            *(f"enable_random name={n},probability={p}" for n, p in RANDOM_FAULTS.items())
        )
        sent = 0
        while sent < random_commands:
            batch = [workload.next() for _ in range(rng.randint(1, 4))]
            await run.send(child, workload, batch)
            sent += len(batch)
        await child.control(*(f"disable name={n}" for n in RANDOM_FAULTS))
        assert await run.send(child, workload, [workload.next()]) == [True]

        # 3. Crash right after a failed commit: its frame may be the WAL's last.
        await child.control(f"enable name={BLOCKING_FAULTS['fsync']}")
        await run.send(child, workload, [workload.next()], "fsync")

    assert not run.acknowledged_under_blocking_fault, run.acknowledged_under_blocking_fault
    assert not run.unexpected, f"errors other than OperationalError: {run.unexpected}"
    assert run.failed_under_blocking_fault > 0, "no fault was injected: is the preload working?"
    summary = run.history.summary()
    assert summary["unknown"] > run.failed_under_blocking_fault, "no random fault ever fired"

    # 4. Restart without faults: the file is intact and every acknowledged command is there
    # exactly once; unknown outcomes resolved either way.
    path = sqlite_path_from_url(sqlite_url)
    assert integrity(path) == "ok"
    runtime = await Runtime.open(
        service, Settings(database_url=sqlite_url, projection_poll_interval=0.1)
    )
    try:
        result = await check_history(run.history, runtime.backend.store)
        result.assert_clean()

        # 5. Every unknown command, retried with its command id, is stored exactly once.
        retried = History()
        for op in run.history.operations:
            again = retried.begin(op.command_id, op.stream_id)
            if op.outcome is Outcome.OK:
                retried.ok(again, op.response, events=op.events)
                continue
            stored = await runtime.command_bus.dispatch(run.commands[op.command_id])
            retried.ok(again, "retried", events=len(stored.events))
        final = await check_history(retried, runtime.backend.store)
        final.assert_clean()
        assert final.ok == len(run.history.operations)

        # 6. The service works again, and every read model equals a rebuild from scratch.
        after = workload.next()
        await runtime.command_bus.dispatch(after)
        runtime.start_projections()
        await assert_converged(runtime)
    finally:
        await runtime.close()
    assert integrity(path) == "ok"

    record(
        "sqlite_faults",
        seed=SEED,
        operations=summary["operations"],
        acknowledged=summary["ok"],
        unknown=summary["unknown"],
        blocking_fault_windows=windows,
        failed_under_blocking_fault=run.failed_under_blocking_fault,
        acknowledged_under_blocking_fault=len(run.acknowledged_under_blocking_fault),
        fault_enables=child.faults_enabled,
        unknown_committed=result.unknown_committed,
        unknown_absent=result.unknown_absent,
        events=final.events,
        lost=len(result.lost),
        duplicated=len(final.duplicated),
        gaps=len(final.gaps),
        integrity_check="ok",
    )


async def test_a_failed_commit_is_an_unknown_outcome(sqlite_url: str, tmp_path: Path) -> None:
    """Why a failed commit answers 503 (unknown), never 4xx (nothing stored).

    SQLite writes the commit's WAL frames and then syncs them; when the sync fails it reports
    an error and, in this process, leaves the frames unpublished (the next commit overwrites
    them). But a crash right then leaves them at the WAL's tail, and recovery replays them:
    the command the client was told failed is in the log. A retry with the same command id
    answers the original outcome instead of storing it twice.
    """
    workload = Workload(random.Random(SEED))
    run = Run()
    async with faulted_child(sqlite_url, tmp_path, "--no-projections") as child:
        assert all(await run.send(child, workload, workload.setup()))
        await child.control(f"enable name={BLOCKING_FAULTS['fsync']}")
        command = workload.next()
        assert await run.send(child, workload, [command], "fsync") == [False]
    assert not run.unexpected, run.unexpected
    assert integrity(sqlite_path_from_url(sqlite_url)) == "ok"

    runtime = await Runtime.open(service, Settings(database_url=sqlite_url))
    try:
        first = await check_history(run.history, runtime.backend.store)
        first.assert_clean()
        assert first.unknown_committed == 1, "the failed commit's frame was not recovered"
        retry = await runtime.command_bus.dispatch(command)
        run.history.ok(
            run.history.begin(command.command_id, stream_of(command)),
            "retried",
            events=len(retry.events),
        )
        again = await check_history(run.history, runtime.backend.store)
        again.assert_clean()
        assert again.events == first.events, "the retry stored the command a second time"
    finally:
        await runtime.close()
    record(
        "sqlite_failed_commit_recovered",
        seed=SEED,
        operations=len(run.history.operations),
        unknown_committed=first.unknown_committed,
        events=again.events,
        duplicated=len(again.duplicated),
    )
