"""Blue/green rebuilds started on request inside a running process, and their outcome.

:class:`RebuildJobs` belongs to a :class:`~cqrskit.service.Runtime`; operator endpoints
(``POST /admin/projections/{name}/rebuild``) start a :class:`BlueGreenRebuild` of one
runner's projection as a background task here and read its progress back. Guarantees:

1. At most one rebuild of a projection runs in this process: starting another while one
   runs (a job here, or the automatic rebuild of a bumped code version) raises
   :class:`RebuildRunning`.
2. Every task is referenced until it ends and is cancelled by :meth:`RebuildJobs.close`
   (the runtime closes it before its backend). A cancelled rebuild resumes from its shadow's
   checkpoint the next time it is started.
3. A failed job's ``error`` names what happened in one line without the exception's text
   (which may quote SQL or a handler's data); the full error goes to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cqrskit.errors import OperationalError, PersistenceError, ProjectionError
from cqrskit.messages import utc_now
from cqrskit.projections.rebuild import BlueGreenRebuild
from cqrskit.projections.runner import PoisonEvent, ProjectionRunner, RebuildProgress

__all__ = ["JobState", "RebuildJob", "RebuildJobs", "RebuildRunning"]

_log = logging.getLogger("cqrskit.projections")

JobState = Literal["idle", "running", "done", "failed"]


class RebuildRunning(ProjectionError):
    """A rebuild of this projection is already running."""


@dataclass
class RebuildJob:
    """One rebuild of one projection: its state and progress."""

    projection: str
    state: JobState = "idle"
    applied: int = 0
    total: int = 0
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: RebuildProgress | None = field(default=None, repr=False)

    @property
    def percent(self) -> float:
        """Share of the log replayed, 0 to 100 (100 once done)."""
        if self.state == "done":
            return 100.0
        if self.progress is not None:
            return round(self.progress.percent, 1)
        return 0.0 if self.total <= 0 else round(min(100.0, 100.0 * self.applied / self.total), 1)

    @property
    def eta_seconds(self) -> float | None:
        """Estimated seconds left while running (``None`` before the first batch)."""
        if self.state != "running" or self.progress is None:
            return None
        eta = self.progress.eta_seconds
        return None if eta is None else round(eta, 1)

    def as_json(self) -> dict[str, object]:
        """The job as the admin API shows it."""
        if self.state == "running" and self.progress is not None:
            self.applied, self.total = self.progress.applied, self.progress.total
        return {
            "projection": self.projection,
            "state": self.state,
            "applied": self.applied,
            "total": self.total,
            "percent": self.percent,
            "eta_seconds": self.eta_seconds,
            "error": self.error,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
        }


class RebuildJobs:
    """The rebuilds this process started on request, by projection name."""

    def __init__(self) -> None:
        self._jobs: dict[str, RebuildJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, runner: ProjectionRunner, *, batch_size: int) -> RebuildJob:
        """Start a blue/green rebuild of ``runner``'s projection in the background.

        Raises :class:`RebuildRunning` when one is already running, and
        :class:`~cqrskit.errors.ProjectionError` when the projection declares no tables
        (only an in-place rebuild can rebuild it, which queries would see).
        """
        name = runner.name
        if self.running(runner):
            raise RebuildRunning(f"a rebuild of {name} is already running")
        rebuild = BlueGreenRebuild(runner, batch_size=batch_size)
        job = RebuildJob(name, state="running", started_at=utc_now())

        def advance(progress: RebuildProgress) -> None:
            job.progress = progress

        rebuild.progress = advance
        self._jobs[name] = job
        task = asyncio.create_task(self._run(job, rebuild), name=f"rebuild-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda _: self._tasks.pop(name, None))
        return job

    def running(self, runner: ProjectionRunner) -> bool:
        """Whether a rebuild of ``runner``'s projection runs in this process."""
        task = self._tasks.get(runner.name)
        return (task is not None and not task.done()) or runner.status.rebuild is not None

    def get(self, runner: ProjectionRunner) -> RebuildJob:
        """The last job of ``runner``'s projection (``idle`` when none was started here).

        The automatic rebuild of a bumped code version shows as ``running`` too.
        """
        job = self._jobs.get(runner.name)
        if job is not None:
            if job.state == "running" and job.progress is None:
                # Counted before the first batch, which reports progress when it commits.
                job.progress = runner.status.rebuild
            return job
        progress = runner.status.rebuild
        if progress is None:
            return RebuildJob(runner.name)
        started = utc_now() - timedelta(seconds=time.monotonic() - progress.started_at)
        return RebuildJob(runner.name, "running", started_at=started, progress=progress)

    async def close(self) -> None:
        """Cancel every running rebuild and wait for it to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, job: RebuildJob, rebuild: BlueGreenRebuild) -> None:
        try:
            await rebuild.run()
        except asyncio.CancelledError:
            self._finish(job, "failed", "cancelled: the process is shutting down")
            raise
        except Exception as exc:
            _log.error("projection %s: rebuild failed", job.projection, exc_info=exc)
            self._finish(job, "failed", _describe(exc))
        else:
            if job.progress is not None:
                job.total = job.progress.total
            job.applied = job.total
            self._finish(job, "done", None)

    def _finish(self, job: RebuildJob, state: JobState, error: str | None) -> None:
        if job.progress is not None and state == "failed":
            job.applied, job.total = job.progress.applied, job.progress.total
        job.progress = None
        job.state = state
        job.error = error
        job.finished_at = utc_now()


def _describe(exc: Exception) -> str:
    # Exception texts can quote SQL, driver messages or a handler's data: say what kind of
    # failure it was and where, never the text itself.
    if isinstance(exc, PoisonEvent):
        event = exc.record.event
        return (
            f"the projection's handler failed on {event.event_type} at"
            f" {exc.record.position.token()} (after {exc.attempts} attempts); see the log"
        )
    if isinstance(exc, OperationalError):
        return "the database was unavailable; start the rebuild again (it resumes)"
    if isinstance(exc, ProjectionError):
        return "another rebuild or a concurrent change interfered; start the rebuild again"
    if isinstance(exc, PersistenceError):
        return f"the database refused a write ({type(exc).__name__}); see the log"
    return f"the rebuild failed ({type(exc).__name__}); see the log"


def __dir__() -> list[str]:
    return list(__all__)
