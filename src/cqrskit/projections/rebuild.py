"""Blue/green rebuilds: build a new generation beside the live one, then switch atomically.

While the live generation keeps serving queries and following the log, a shadow runner
replays the whole log from the start into the next generation's tables (``<name>__g<n>``)
in bounded batches, each committed with the shadow's own checkpoint (``<name>@g<n>``), so an
interrupted rebuild resumes where it stopped. When the shadow is within one batch of the
head, one transaction

1. applies to the shadow whatever the live checkpoint is ahead of it (at most a batch),
2. moves the live checkpoint to the shadow's position (never backwards), conditionally on the
   live checkpoint the switch read (a live batch committed meanwhile makes it try again),
3. records the new generation and version in ``projection_versions``, deletes the shadow's
   checkpoint row and drops the old generation's tables.

After the commit the old generation is gone: a live runner still holding a batch for it
fails on the dropped tables (or the moved checkpoint) and writes nothing, then follows the new
generation (see ``ProjectionRunner._check_switched``). The shadow runner has no listeners: no
publisher or cache hears of replayed batches; at the switch the live runner's listeners hear
of one rewind (the cache drops everything of the projection) and one commit at the new
position. Guarantees 3 and 4 of DESIGN.md hold for the shadow as for any runner: each batch
is one short transaction.

Only one rebuild of a projection may run at a time (the CLI command, or the runner that owns
the projection when its code version was bumped). A worker's automatic rebuild is fenced by
its lease like its live batches: once the lease is taken over, neither its shadow batches nor
its switch can commit. The switch also checks that the shadow it built is still the recorded
one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, LogPosition, RecordedEvent
from cqrskit.projections.generations import VERSIONS_DDL, execute, live_tables
from cqrskit.projections.projection import physical_name
from cqrskit.projections.runner import ProjectionRunner, RebuildProgress
from cqrskit.projections.staging import stage
from cqrskit.read_models.protocol import Statement, sql

__all__ = ["BlueGreenRebuild", "follow", "needs_rebuild", "shadow_name"]

_log = logging.getLogger("cqrskit.projections")

_SHADOW = sql("SELECT shadow_generation, shadow_version FROM projection_versions WHERE name = $1")
_START_SHADOW = sql(
    "UPDATE projection_versions SET shadow_generation = $2, shadow_version = $3 WHERE name = $1"
)
_SWITCH = sql(
    "UPDATE projection_versions SET generation = $2, version = $3, shadow_generation = NULL,"
    " shadow_version = NULL WHERE name = $1"
)
_FORGET = sql("DELETE FROM projection_checkpoints WHERE name = $1")


def shadow_name(name: str, generation: int) -> str:
    """Return the checkpoint name of a projection's shadow generation."""
    return f"{name}@g{generation}"


def _drop(table: str) -> Statement:
    # Table names are the projection's declared constants, never input.
    return Statement(sql(f"DROP TABLE IF EXISTS {table}"), ())


async def needs_rebuild(runner: ProjectionRunner) -> bool:
    """Whether the live tables were built by an older version than the code's."""
    if not runner.projection.tables:
        return False
    _, version = await live_tables(runner.read_models).row(runner.projection)
    return version < runner.projection.version


class BlueGreenRebuild:
    """Rebuild ``live``'s projection into a new generation and switch to it."""

    def __init__(
        self,
        live: ProjectionRunner,
        *,
        batch_size: int = 1000,
        progress: Callable[[RebuildProgress], None] | None = None,
    ) -> None:
        if not live.projection.tables:
            raise ProjectionError(f"{live.name} declares no tables: rebuild it in place")
        self.live = live
        self.batch_size = batch_size
        self.progress = progress

    async def run(self) -> LogPosition:
        """Build the shadow, switch to it, and return the live checkpoint after the switch."""
        live = self.live
        projection, read_models, store = live.projection, live.read_models, live.store
        tables = live_tables(read_models)
        generation, _ = await tables.row(projection)
        await read_models.migrate([VERSIONS_DDL])
        target = await self._target(generation)
        shadow = ProjectionRunner(
            store,
            read_models,
            projection,
            batch_size=self.batch_size,
            checkpoint_name=shadow_name(projection.name, target),
            generation=target,
            on_failure="stop",
        )
        shadow.fence = live.fence  # a worker that lost its lease cannot build or switch either
        # Nobody reads the shadow before the switch, whose commit is flushed (and with it,
        # in WAL order, every shadow batch before it): a crash loses batches only together
        # with their checkpoint, and the rebuild resumes from there.
        shadow.durable = False
        await shadow.migrate()
        status = RebuildProgress(projection.version, target, await store.count_after(LOG_START))
        fresh = await read_models.checkpoint(shadow.checkpoint_name) == LOG_START
        status.applied = (
            0
            if fresh
            else status.total
            - await store.count_after(await read_models.checkpoint(shadow.checkpoint_name))
        )
        live.status.rebuild = status

        if fresh:
            # A shadow at the start holds nothing a checkpoint vouches for: empty it (a staged
            # COPY interrupted before its checkpoint moved may have left rows).
            fence = [] if live.fence is None else [live.fence]
            await execute(
                read_models,
                [
                    *fence,
                    *(Statement(projection.physical(t, target), ()) for t in projection.truncate),
                ],
            )
        base = status.applied

        def advance(_position: LogPosition, applied: int) -> None:
            status.applied = min(status.total, base + applied)
            if self.progress is not None:
                self.progress(status)

        try:
            if fresh:
                await stage(shadow, batch_size=self.batch_size, progress=advance)
            while True:
                base = status.applied
                shadow.status.events_applied = 0
                checkpoint = await shadow.catch_up(limit=self.batch_size, progress=advance)
                status.total = status.applied + await store.count_after(checkpoint)
                if status.total - status.applied > self.batch_size:
                    continue
                if await self._switch(shadow, generation, target, checkpoint):
                    break
                await asyncio.sleep(0.01)
        finally:
            live.status.rebuild = None
        return await read_models.checkpoint(projection.name)

    async def _target(self, generation: int) -> int:
        # Resume an interrupted rebuild of the same version; otherwise start the next one.
        name, version = self.live.name, self.live.projection.version
        row = await self.live.read_models.fetchone(_SHADOW, name)
        if row and row["shadow_generation"] and row["shadow_version"] == version:
            return int(row["shadow_generation"])
        target = generation + 1
        if row and row["shadow_generation"]:
            target = max(target, int(row["shadow_generation"]) + 1)
            await self._drop_generation(int(row["shadow_generation"]))
        await execute(self.live.read_models, [_START_SHADOW(name, target, version)])
        return target

    async def _drop_generation(self, generation: int) -> None:
        projection = self.live.projection
        drops = [_drop(physical_name(t, generation)) for t in projection.tables]
        await execute(
            self.live.read_models, [*drops, _FORGET(shadow_name(projection.name, generation))]
        )

    async def _switch(
        self, shadow: ProjectionRunner, old: int, target: int, at: LogPosition
    ) -> bool:
        live = self.live
        projection, read_models = live.projection, live.read_models
        row = await read_models.fetchone(_SHADOW, projection.name)
        if row is None or row["shadow_generation"] != target:
            raise ProjectionError(
                f"{projection.name}: another rebuild took over generation {target}"
            )
        expected = await read_models.checkpoint(projection.name)
        statements: list[Statement] = [] if live.fence is None else [live.fence]
        position = max(at, expected)
        if at < expected:
            statements += shadow._statements(await self._between(at, expected))
        statements += [
            _SWITCH(projection.name, target, projection.version),
            _FORGET(shadow.checkpoint_name),
            *(_drop(physical_name(t, old)) for t in projection.tables),
        ]
        try:
            await read_models.commit(
                projection.name, statements, expected=expected, position=position
            )
        except ProjectionError:
            return False  # the live runner committed meanwhile: catch up and try again
        live_tables(read_models).switched(projection.name, target, projection.version)
        _log.info("projection %s: switched to generation %d", projection.name, target)
        for listener in live.listeners:
            await live._tell(listener.rewound(projection))
            await live._tell(listener.committed(projection, position, []))
        return True

    async def _between(self, after: LogPosition, until: LogPosition) -> list[RecordedEvent]:
        events: list[RecordedEvent] = []
        while after < until:
            page = await self.live.store.read_all(after=after, limit=self.batch_size)
            page = [record for record in page if record.position <= until]
            if not page:
                break
            events += page
            after = page[-1].position
        return events


async def follow(runner: ProjectionRunner, stop: asyncio.Event, *, batch_size: int = 1000) -> None:
    """Run ``runner`` live; when its code version was bumped, rebuild blue/green alongside."""
    rebuild: asyncio.Task[LogPosition] | None = None
    try:
        if await needs_rebuild(runner):
            rebuild = asyncio.create_task(BlueGreenRebuild(runner, batch_size=batch_size).run())
            rebuild.add_done_callback(_report)
    except Exception:
        _log.exception("projection %s: cannot check its version", runner.name)
    try:
        await runner.run(stop)
    finally:
        if rebuild is not None:
            rebuild.cancel()
            await asyncio.gather(rebuild, return_exceptions=True)


def _report(task: asyncio.Task[LogPosition]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("blue/green rebuild failed", exc_info=task.exception())
