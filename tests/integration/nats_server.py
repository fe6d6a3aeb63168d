"""Run a private ``nats-server -js`` that a test can stop, kill and restart.

The machine's own NATS keeps serving other work; tests start their own process on a free
port with its JetStream store in the test's temporary directory, so a restart keeps the
stream (file storage) and the port (clients reconnect to the same URL)::

    with running_nats(tmp_path) as server:
        ... server.url ...
        server.restart()

Without the ``nats-server`` binary the test is skipped, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import reachable

__all__ = ["NatsServer", "free_port", "nats_server_binary", "running_nats"]

_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")
START_SECONDS = 15.0


def nats_server_binary() -> str:
    """Return the path of ``nats-server``; skip (locally) or fail (under CI) without it."""
    found = os.environ.get("CQRSKIT_TEST_NATS_SERVER") or shutil.which("nats-server")
    for path in (found, *_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    message = "nats-server is not installed"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """One ``nats-server`` with JetStream, its store under ``directory``."""

    def __init__(self, binary: str, directory: Path, port: int | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None:
            raise RuntimeError("nats-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "nats-server.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.directory / "jetstream"),
                "-l",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_SECONDS
        while not reachable("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not listen on {self.port}; see {log}")
            time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``, else SIGTERM) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port with the same store."""
        self.stop(kill=kill)
        self.start()


@contextmanager
def running_nats(tmp_path: Path, *, start: bool = True) -> Iterator[NatsServer]:
    """A private server for one test (not started with ``start=False``), stopped at the end."""
    server = NatsServer(nats_server_binary(), tmp_path / "nats")
    if start:
        server.start()
    try:
        yield server
    finally:
        server.stop()
