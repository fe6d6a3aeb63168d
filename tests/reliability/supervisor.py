"""A process supervisor for fault tests: real API and worker processes, faults on a seed.

:class:`Supervisor` starts ``cqrskit serve`` (uvicorn) and ``cqrskit worker`` as real
subprocesses with the environment a test gives them, waits (bounded) until each is ready
(``GET /health`` answers 200; a worker has printed that it follows the log), and injects
process faults: SIGKILL and restart, SIGSTOP for a while then SIGCONT, a graceful restart.

Faults follow a schedule drawn from ``random.Random(seed)``. The seed is printed (pytest
shows it with a failure); ``CQRSKIT_FAULT_SEED=<seed>`` replays the same schedule. A test
may plan faults of its own kinds (a database crash) on the same seed and run them through
:meth:`Supervisor.run` with its own actions.

Children run in their own process groups with their output in one log file each (a pipe
nobody reads would block a chatty child). :meth:`Supervisor.close` kills every child, and
runs on ``with`` exit and at interpreter exit, so a failing test leaves no process behind.

    with Supervisor(tmp_path) as sup:
        api = sup.api(database_url, projections=False)
        worker = sup.worker(database_url)
        await sup.start(api, worker)
        faults = sup.plan(count=3, window=10.0, targets=[worker.name], actions=["kill"])
        await sup.run(faults)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "FAULT_SEED_ENV",
    "READY_TIMEOUT",
    "Child",
    "Fault",
    "FaultAction",
    "Supervisor",
    "fault_seed",
    "free_port",
]

ROOT = Path(__file__).resolve().parents[2]
FAULT_SEED_ENV = "CQRSKIT_FAULT_SEED"
READY_TIMEOUT = 60.0
"""Longest a child may take to become ready (a bound, not a timing assertion)."""
_WORKER_READY = "projections following"
_EXIT_TIMEOUT = 30.0


def fault_seed() -> int:
    """The seed from ``CQRSKIT_FAULT_SEED``, or a new random one."""
    value = os.environ.get(FAULT_SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(1 << 31)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    # The parent's CQRSKIT_* settings (a Makefile's database URL...) must not leak into a
    # child: it gets exactly the settings the test gives it.
    base = {k: v for k, v in os.environ.items() if not k.startswith("CQRSKIT_")}
    return {**base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}


class Child:
    """One supervised process: how to start it, how to tell it is ready, its log."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        url: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.url = url
        """The base URL of an HTTP child (readiness is ``GET /health``)."""
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []
        """The exit status of every stop awaited so far (``-9``: SIGKILL)."""
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """The running process's pid."""
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (its output is appended to :attr:`log`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n=== {self.name}: start {self.starts} ===\n".encode())
            out.flush()
            self._log_offset = out.tell()
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=_child_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self, *, since_start: bool = False) -> str:
        """The child's log (all starts, or only the current one's)."""
        try:
            with self.log.open("rb") as log:
                if since_start:
                    log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """The last lines of the log, for failure messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    async def _ready_once(self, client: httpx.AsyncClient) -> bool:
        if self.url is None:
            return _WORKER_READY in self.output(since_start=True)
        try:
            response = await client.get(f"{self.url}/health", timeout=2.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the child serves (``/health`` 200) or follows the log (a worker)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while not await self._ready_once(client):
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise RuntimeError(f"{self.name} exited ({code}) before ready:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready in {timeout} s:\n{self.tail()}")
                await asyncio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's process group (no-op once it has exited)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    async def wait_exit(self, timeout: float = _EXIT_TIMEOUT) -> int:
        """Wait (bounded) for the process to exit; return its exit status."""
        process = self.process
        if process is None:
            raise RuntimeError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        while (code := process.poll()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not exit in {timeout} s")
            await asyncio.sleep(0.02)
        self.exits.append(code)
        return code

    async def kill(self) -> int:
        """SIGKILL the child and wait for it to be gone."""
        self.signal(signal.SIGKILL)
        return await self.wait_exit()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (sockets open, nothing answers)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.signal(signal.SIGCONT)

    async def terminate(self, timeout: float = _EXIT_TIMEOUT) -> int:
        """SIGTERM (after SIGCONT, in case it is paused); SIGKILL if it outlives ``timeout``."""
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except RuntimeError:
            return await self.kill()

    async def restart(self, *, graceful: bool = False) -> None:
        """Stop the child (SIGKILL, or SIGTERM when ``graceful``), start it, wait until ready."""
        if self.running:
            await (self.terminate() if graceful else self.kill())
        self.start()
        await self.wait_ready()

    def force_stop(self) -> None:
        """Kill the child's whole group now and reap it (cleanup; never raises)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_EXIT_TIMEOUT)


@dataclass(frozen=True)
class Fault:
    """One planned fault: ``action`` on ``target``, ``at`` seconds into the run."""

    at: float
    target: str
    action: str
    duration: float
    """How long the fault lasts (a pause, a database kept down), where that applies."""

    def __str__(self) -> str:
        return f"t+{self.at:.2f}s {self.action} {self.target} for {self.duration:.2f}s"


FaultAction = Callable[[Fault], Awaitable[None]]
"""Carries out one fault; returns once the target is back (or the fault is over)."""

_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for supervisor in list(_live):
        supervisor.close()


class Supervisor:
    """Starts children, injects process faults on a seeded schedule, always cleans up."""

    def __init__(self, log_dir: Path, *, seed: int | None = None) -> None:
        self.log_dir = log_dir
        self.seed = fault_seed() if seed is None else seed
        self.rng = random.Random(self.seed)
        self.children: dict[str, Child] = {}
        self.done: list[Fault] = []
        print(f"fault seed: {self.seed} ({FAULT_SEED_ENV}={self.seed} replays this schedule)")
        _live.add(self)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, url: str | None = None
    ) -> Child:
        """Register a child (not started yet); ``url`` makes ``/health`` its readiness."""
        if name in self.children:
            raise ValueError(f"a child named {name!r} exists already")
        child = Child(name, argv, env, self.log_dir / f"{name}.log", url=url)
        self.children[name] = child
        return child

    def api(
        self,
        database_url: str,
        *,
        name: str = "api",
        projections: bool = False,
        service: str = "orders.service:service",
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """``cqrskit serve`` on a free port of 127.0.0.1 (without projections by default)."""
        port = free_port()
        argv = [sys.executable, "-m", "cqrskit.cli", "serve", "--port", str(port)]
        argv += ["--service", service, "--log-level", "warning"]
        if not projections:
            argv.append("--no-projections")
        settings = {"CQRSKIT_DATABASE_URL": database_url, **(env or {})}
        return self.spawn(name, argv, settings, url=f"http://127.0.0.1:{port}")

    def worker(
        self,
        database_url: str,
        *,
        name: str = "worker",
        service: str = "orders.service:service",
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """``cqrskit worker``: every projection of ``service`` in its own process."""
        argv = [sys.executable, "-m", "cqrskit.cli", "worker", "--service", service]
        settings = {
            "CQRSKIT_DATABASE_URL": database_url,
            "CQRSKIT_PROJECTION_POLL_INTERVAL": "0.2",
            **(env or {}),
        }
        return self.spawn(name, argv, settings)

    async def start(self, *children: Child) -> None:
        """Start ``children`` together and wait until every one is ready."""
        for child in children:
            child.start()
        await asyncio.gather(*(child.wait_ready() for child in children))

    def plan(
        self,
        *,
        count: int,
        window: float,
        targets: Sequence[str],
        actions: Sequence[str],
        duration: tuple[float, float] = (0.3, 2.0),
    ) -> list[Fault]:
        """Draw ``count`` faults over ``window`` seconds from the seeded generator (printed)."""
        faults = sorted(
            (
                Fault(
                    at=round(self.rng.uniform(0.0, window), 3),
                    target=self.rng.choice(list(targets)),
                    action=self.rng.choice(list(actions)),
                    duration=round(self.rng.uniform(*duration), 3),
                )
                for _ in range(count)
            ),
            key=lambda fault: fault.at,
        )
        for fault in faults:
            print(f"planned fault: {fault}")
        return faults

    async def run(
        self,
        faults: Sequence[Fault],
        actions: Mapping[str, FaultAction] | None = None,
        *,
        stop: asyncio.Event | None = None,
    ) -> list[Fault]:
        """Carry out ``faults`` one after another at their times; return those done.

        A fault whose time has passed (the previous one took longer) runs at once. Built-in
        actions on children: ``kill`` (SIGKILL, start again, wait ready), ``pause`` (SIGSTOP
        for ``duration``, then SIGCONT), ``restart`` (SIGTERM, start again, wait ready).
        ``actions`` adds or overrides actions by name. ``stop`` ends the run early.
        """
        table: dict[str, FaultAction] = {
            "kill": self._kill,
            "pause": self._pause,
            "restart": self._restart,
            **(actions or {}),
        }
        began = time.monotonic()
        done: list[Fault] = []
        for fault in faults:
            wait = began + fault.at - time.monotonic()
            if stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(wait, 0.0))
                if stop.is_set():
                    break
            elif wait > 0:
                await asyncio.sleep(wait)
            print(f"fault at t+{time.monotonic() - began:.2f}s: {fault}")
            await table[fault.action](fault)
            done.append(fault)
            self.done.append(fault)
        return done

    async def _kill(self, fault: Fault) -> None:
        await self.children[fault.target].restart()

    async def _restart(self, fault: Fault) -> None:
        await self.children[fault.target].restart(graceful=True)

    async def _pause(self, fault: Fault) -> None:
        child = self.children[fault.target]
        child.pause()
        try:
            await asyncio.sleep(fault.duration)  # the fault itself: frozen this long
        finally:
            child.resume()

    def close(self) -> None:
        """Kill every child (SIGKILL to its group) and reap it; idempotent."""
        for child in self.children.values():
            child.force_stop()
        _live.discard(self)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
