"""A private, throwaway PostgreSQL cluster that crash tests may kill at will.

Every other test shares the server on 5432, so a crash test must never stop it. This module
``initdb``s a cluster into a temporary directory, starts it on a free port of 127.0.0.1 with
durable settings (``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``), its unix
socket in the same directory, and trust authentication for the ``postgres`` role.
:meth:`PgCluster.crash` kills it the way a power cut or an OOM killer would
(``pg_ctl stop -m immediate``, SIGKILL of the postmaster and every backend, or of the
postmaster alone), so the next
:meth:`PgCluster.start` runs crash recovery from the WAL.

PostgreSQL refuses to run as root, so under root the binaries run as the ``postgres`` OS user
(``runuser -u postgres --``) and the directory is handed to that user.

    with PgCluster.create() as cluster:
        url = cluster.url()
        cluster.crash()
        cluster.start()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest

__all__ = ["BIN_DIR", "CrashMode", "PgCluster", "process_alive", "require_pgcluster"]

BIN_DIR = Path(os.environ.get("CQRSKIT_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where ``initdb``, ``pg_ctl`` and ``postgres`` live (``CQRSKIT_PG_BIN`` overrides)."""
OS_USER = "postgres"
_START_TIMEOUT = 60
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_sync_method": "fdatasync",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

CrashMode = Literal["immediate", "sigkill", "postmaster"]


def _missing() -> str | None:
    """Why a private cluster cannot be made here (``None`` when it can)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN_DIR / tool).is_file():
            return f"PostgreSQL server binaries not found ({BIN_DIR / tool})"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "runuser is not installed (needed to run PostgreSQL as a non-root user)"
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"there is no {OS_USER!r} OS user to run PostgreSQL as"
    return None


def require_pgcluster() -> None:
    """Skip (locally) or fail (under ``CI``) when a private cluster cannot be made."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the backends of a postmaster), from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class PgCluster:
    """One private PostgreSQL cluster in a temporary directory (see the module docstring)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self.crashes = 0

    @classmethod
    def create(cls) -> PgCluster:
        """``initdb`` a new cluster on a free port and start it."""
        require_pgcluster()
        root = Path(tempfile.mkdtemp(prefix="cqrskit-pg-"))
        cluster = cls(root, _free_port())
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam(OS_USER)
                os.chown(root, user.pw_uid, user.pw_gid)
            cluster._run(
                "initdb",
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
            settings = {
                **_SETTINGS,
                "port": str(cluster.port),
                "unix_socket_directories": f"'{root}'",
            }
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write("\n# cqrskit crash tests\n")
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
            cluster.start()
        except BaseException:
            cluster.cleanup()
            raise
        return cluster

    def url(self, database: str = "postgres") -> str:
        """A URL of ``database`` on this cluster (TCP on 127.0.0.1, role ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = [str(BIN_DIR / tool), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._argv(tool, *args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT + 30,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from ``postmaster.pid`` (``None`` when stopped)."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive."""
        return self.postmaster_pid is not None

    def start(self) -> None:
        """Start the server and wait until it accepts connections (crash recovery included)."""
        timeout = str(_START_TIMEOUT)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", timeout, "start")

    def stop(self) -> None:
        """Stop the server cleanly (a shutdown checkpoint; nothing to recover)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def crash(self, mode: CrashMode = "immediate") -> None:
        """Kill the server with no shutdown checkpoint; the next start recovers from the WAL.

        ``immediate``: ``pg_ctl stop -m immediate`` (every process quits at once, like
        SIGQUIT). ``sigkill``: SIGKILL to the postmaster and all its backends at once, as an
        OOM killer or a lost container would. ``postmaster``: SIGKILL to the postmaster
        alone; its backends notice and quit by themselves (in-flight queries may still get an
        answer or an error). Returns once no server process is left.
        """
        pid = self.postmaster_pid
        if pid is None:
            raise RuntimeError("the cluster is not running")
        if mode == "immediate":
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        else:
            backends = _children(pid)
            for victim in (pid, *backends) if mode == "sigkill" else (pid,):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            self._wait_gone([pid, *backends])
        self.crashes += 1

    def _wait_gone(self, pids: list[int]) -> None:
        # The next postmaster refuses to start while an old backend still holds shared memory,
        # or while the pid in postmaster.pid exists at all (a zombie not yet reaped counts).
        deadline = time.monotonic() + 30
        while any(process_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server processes {pids} outlived SIGKILL")
            time.sleep(0.01)
        reaped = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            if time.monotonic() > reaped:
                # Dead but never reaped by their parent: the lock file is stale for sure.
                (self.data / "postmaster.pid").unlink(missing_ok=True)
                return
            time.sleep(0.01)

    def cleanup(self) -> None:
        """Kill the server if it runs and delete the cluster's directory (idempotent)."""
        with contextlib.suppress(Exception):
            if self.running:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        pid = self.postmaster_pid
        if pid is not None:  # pg_ctl could not stop it: take it down by force
            for victim in (pid, *_children(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
