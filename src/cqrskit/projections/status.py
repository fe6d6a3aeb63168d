"""Lag and state of each projection: what health checks, metrics, the CLI and alerts read.

:func:`projection_lag` measures positions against the log's head, and ages by the clock that
stamped the events' ``recorded_at`` (the database server's on PostgreSQL), never this
process's own: a process whose clock is minutes off still reports the real lag.
:func:`projection_status`
adds what the runners of this process know (state, throughput, last error, the failing
event, parked events) and judges each projection against :class:`LagThresholds`:

- ``failed``: the runner's handler failed on an event (retrying or stopped at it);
- ``rebuilding``: a rebuild is replaying the log;
- ``stalled``: lag over the warn threshold and no progress in the last window;
- ``catching_up``: behind the head and making progress; ``running``: caught up.

``level`` is ``fail`` when the projection failed or its lag reached a fail threshold (or it
stalled past one), ``warn`` at a warn threshold, else ``ok``. :class:`LagMonitor` logs a
structured warning once per crossing into a worse level (and once when it recovers).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cqrskit.errors import PersistenceError
from cqrskit.messages import LogPosition, utc_now
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.store.protocol import EventStore

if TYPE_CHECKING:
    from cqrskit.config import Settings
    from cqrskit.service import Runtime

__all__ = [
    "LATENCY_BUCKETS",
    "LagMonitor",
    "LagThresholds",
    "Meter",
    "ProjectionLag",
    "ProjectionStatus",
    "lag_thresholds",
    "projection_lag",
    "projection_status",
]

_log = logging.getLogger("cqrskit.projections.lag")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the append-to-visible latency histogram."""
_WINDOW = 60.0
_JITTER = 0.001
"""Ages this far below zero are jitter between estimates of one clock: observed as 0."""


class Meter:
    """Progress samples and the append-to-visible latency histogram of one runner.

    A latency is ``now - recorded_at`` where ``now`` comes from the event store's clock
    (:meth:`~cqrskit.store.protocol.EventStore.now`), the one that stamped ``recorded_at``.
    An age below zero by more than :data:`_JITTER` means the two readings disagree (a clock
    stepped, or no store clock was given): it is counted in ``skewed`` and kept out of the
    histogram, where a 0 would pass for a fast commit.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._samples: deque[tuple[float, int]] = deque()
        self.applied = 0
        self.last_progress: float | None = None
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.skewed = 0

    def committed(
        self, events: int, recorded_at: list[datetime], now: datetime | None = None
    ) -> None:
        """Count ``events`` applied now; observe ``now - recorded_at`` of each.

        ``now`` is the store's current time (default: this process's clock, right only
        where this process stamped ``recorded_at``).
        """
        tick = self._clock()
        self.applied += events
        self.last_progress = tick
        self._samples.append((tick, events))
        while self._samples and self._samples[0][0] < tick - _WINDOW:
            self._samples.popleft()
        wall = utc_now() if now is None else now
        for moment in recorded_at:
            seconds = (wall - moment).total_seconds()
            if seconds < -_JITTER:
                self.skewed += 1
                continue
            seconds = max(0.0, seconds)
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def throughput(self) -> float:
        """Events per second over the last minute (or since the meter started)."""
        now = self._clock()
        applied = sum(n for t, n in self._samples if t >= now - _WINDOW)
        span = min(_WINDOW, now - self._started)
        return applied / span if span > 0 else 0.0

    def progressed_within(self, seconds: float) -> bool:
        """Whether anything was applied in the last ``seconds``."""
        return self.last_progress is not None and self._clock() - self.last_progress <= seconds


@dataclass(frozen=True)
class ProjectionLag:
    """How far one projection is behind the head of the log."""

    name: str
    position: LogPosition
    head: LogPosition
    lag_events: int
    lag_seconds: float
    updated_at: datetime | None


async def projection_lag(
    store: EventStore, read_models: ReadModelStore, names: list[str]
) -> list[ProjectionLag]:
    """Measure each named projection against the store's head.

    ``lag_seconds`` is the age of the oldest event the projection has not applied (0 when it
    is caught up), measured by the store (:meth:`~cqrskit.store.protocol.EventStore.backlog`)
    with the clock that stamped ``recorded_at``: one round trip per lagging projection.
    """
    head = await store.head()
    stored = {row.name: row for row in await read_models.checkpoints()}
    out = []
    for name in names:
        row = stored.get(name)
        position = row.position if row else LogPosition(0, 0)
        lag_events, lag_seconds = 0, 0.0
        if position < head:
            lag_events, lag_seconds = await store.backlog(position)
            if not lag_events:
                lag_seconds = 0.0
        out.append(
            ProjectionLag(
                name, position, head, lag_events, lag_seconds, row.updated_at if row else None
            )
        )
    return out


@dataclass(frozen=True)
class LagThresholds:
    """When lag is worth a warning and when it fails the health check (``None``: never)."""

    warn_seconds: float | None = 30.0
    fail_seconds: float | None = 300.0
    warn_events: int | None = None
    fail_events: int | None = None

    def level(self, lag: ProjectionLag) -> str:
        """``fail``, ``warn`` or ``ok`` for this lag alone."""
        for name, seconds, events in (
            ("fail", self.fail_seconds, self.fail_events),
            ("warn", self.warn_seconds, self.warn_events),
        ):
            if lag.lag_events and seconds is not None and lag.lag_seconds >= seconds:
                return name
            if events is not None and lag.lag_events >= events > 0:
                return name
        return "ok"


def lag_thresholds(settings: Settings) -> LagThresholds:
    """The thresholds named by ``CQRSKIT_LAG_{WARN,FAIL}_{SECONDS,EVENTS}``."""
    return LagThresholds(
        settings.lag_warn_seconds,
        settings.lag_fail_seconds,
        settings.lag_warn_events,
        settings.lag_fail_events,
    )


@dataclass(frozen=True)
class ProjectionStatus:
    """One projection, as health, metrics and ``cqrskit projections status`` show it."""

    lag: ProjectionLag
    state: str
    level: str
    throughput: float = 0.0
    failures: int = 0
    last_error: str | None = None
    failing_position: LogPosition | None = None
    parked: int = 0
    blocked_by: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The projection's (or publisher's) name."""
        return self.lag.name

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (positions as consistency tokens)."""
        lag = self.lag
        return {
            "name": lag.name,
            "state": self.state,
            "level": self.level,
            "position": lag.position.token(),
            "head": lag.head.token(),
            "lag_events": lag.lag_events,
            "lag_seconds": round(lag.lag_seconds, 3),
            "throughput": round(self.throughput, 3),
            "failures": self.failures,
            "last_error": self.last_error[:500] if self.last_error else None,
            "failing_position": self.failing_position.token() if self.failing_position else None,
            "parked": self.parked,
            "blocked_by": self.blocked_by,
            "updated_at": lag.updated_at.isoformat() if lag.updated_at else None,
            **self.extra,
        }


def _state(
    runner_state: str | None, meter: Meter | None, lag: ProjectionLag, t: LagThresholds
) -> str:
    if runner_state in ("failed", "rebuilding"):
        return runner_state
    behind = lag.lag_events > 0
    warn = t.warn_seconds if t.warn_seconds is not None else t.fail_seconds
    over = behind and warn is not None and lag.lag_seconds >= warn
    if over and (meter is None or not meter.progressed_within(warn or 0.0)):
        return "stalled"
    return "catching_up" if behind else "running"


async def projection_status(runtime: Runtime, thresholds: LagThresholds) -> list[ProjectionStatus]:
    """Lag, state and level of every projection of ``runtime`` (and its NATS publisher)."""
    lags = await runtime.lag()
    read_models = runtime.backend.read_models
    parked: dict[str, int] = {}
    try:
        dead = await read_models.dead_letters()
    except PersistenceError:  # a database migrated before dead letters existed
        dead = []
    for row in dead:
        if row.status == "parked":
            parked[row.projection] = parked.get(row.projection, 0) + 1
    blocker = await _blocker(runtime)
    out = []
    for lag in lags:
        if blocker is not None:
            # Committed but behind the read fence: unapplied too, only not yet readable.
            lag = dataclasses.replace(
                lag,
                lag_events=lag.lag_events + blocker["held_events"],
                lag_seconds=max(lag.lag_seconds, blocker["held_seconds"]),
            )
        runner: Any = runtime.runners.get(lag.name)
        if runner is None and runtime.publisher is not None and lag.name == runtime.publisher.name:
            runner = runtime.publisher
        status = runner.status if runner is not None else None
        meter: Meter | None = getattr(status, "meter", None)
        runner_state = str(status.state) if status is not None else None
        # A blue/green rebuild beside the live tables (see cqrskit.projections.rebuild).
        rebuild = getattr(status, "rebuild", None)
        if rebuild is not None and runner_state != "failed":
            runner_state = "rebuilding"
        state = _state(runner_state, meter, lag, thresholds)
        level = thresholds.level(lag)
        if state == "failed":
            level = "fail"
        elif state == "stalled" and level == "ok":
            level = "warn"
        out.append(
            ProjectionStatus(
                lag,
                state,
                level,
                throughput=meter.throughput() if meter is not None else 0.0,
                failures=status.failures if status is not None else 0,
                last_error=status.last_error if status is not None else None,
                failing_position=getattr(status, "failing_position", None),
                parked=parked.get(lag.name, 0),
                blocked_by=blocker,
                extra={} if rebuild is None else {"rebuild": _rebuild_json(rebuild)},
            )
        )
    return out


def _rebuild_json(rebuild: Any) -> dict[str, Any]:
    eta = rebuild.eta_seconds
    return {
        "version": rebuild.version,
        "generation": rebuild.generation,
        "applied": rebuild.applied,
        "total": rebuild.total,
        "percent": round(rebuild.percent, 1),
        "eta_seconds": None if eta is None else round(eta, 1),
    }


async def _blocker(runtime: Runtime) -> dict[str, Any] | None:
    # PostgreSQL only: the oldest transaction holding an xid holds the log's read fence.
    oldest = getattr(runtime.backend.store, "oldest_transaction", None)
    if oldest is None:
        return None
    found: dict[str, Any] | None = await oldest()
    return found


class LagMonitor:
    """Logs a structured warning when a projection crosses a threshold (once per crossing)."""

    def __init__(self, runtime: Runtime, thresholds: LagThresholds) -> None:
        self.runtime = runtime
        self.thresholds = thresholds
        self.levels: dict[str, str] = {}

    def observe(self, statuses: list[ProjectionStatus]) -> None:
        """Log each projection whose level changed since the last observation."""
        for status in statuses:
            before = self.levels.get(status.name, "ok")
            self.levels[status.name] = status.level
            if status.level == before:
                continue
            fields = status.as_json()
            fields["previous_level"] = before
            if status.level == "ok":
                _log.info("projection %s recovered", status.name, extra={"projection": fields})
            else:
                _log.warning(
                    "projection %s lag %s: %s, %d events, %.1f s behind",
                    status.name,
                    status.level,
                    status.state,
                    status.lag.lag_events,
                    status.lag.lag_seconds,
                    extra={"projection": fields},
                )

    async def run(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Check every ``interval`` seconds until ``stop`` is set (errors are logged)."""
        while not stop.is_set():
            try:
                self.observe(await projection_status(self.runtime, self.thresholds))
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("checking projection lag failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
