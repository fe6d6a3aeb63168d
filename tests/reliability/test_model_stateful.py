"""Command bus + event store + projections against a pure-Python model, on SQLite and PostgreSQL.

A small bank (accounts, deposits, withdrawals, transfers across two streams) runs random
programs: commands through the bus with right and wrong ``expect`` versions, raw appends with
right, wrong and ``ANY`` expected versions, retries with the same command id, reuses of a
command id with another payload, partial projection batches, projection crashes (a batch
cancelled at a random await), in-place and blue/green rebuilds, and whole-runtime restarts
(aggregate cache and snapshot memory gone). Snapshots are taken every 3 events.

Every operation's outcome is predicted by the model and must match. After every step:

- the log equals the model's log, event for event (ids included: they derive from the
  command id), and the history checker finds nothing lost, leaked, duplicated or missing;
- each projection's rows equal the model's read model folded over exactly the log prefix its
  checkpoint names (so a crash never applies a batch without its checkpoint or twice);
- every stored snapshot holds the model's state at its version and that version's event id.

``test_sqlite_and_postgres_agree`` runs the same generated programs on both backends and
compares their observation traces (outcomes, versions, event ids, checkpoints, read rows).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cqrskit.aggregate import Aggregate, applies
from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.config import Settings
from cqrskit.errors import (
    ConcurrencyError,
    IdempotencyKeyReused,
    InvalidState,
    PreconditionFailed,
)
from cqrskit.idempotency import command_hash
from cqrskit.messages import LOG_START, Command, DomainEvent, EventMetadata, RecordedEvent
from cqrskit.projections.generations import LiveReadModels
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.rebuild import BlueGreenRebuild
from cqrskit.query_bus import QueryBus
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from cqrskit.repository import Repository, event_id_for
from cqrskit.service import Runtime, Service
from cqrskit.store.protocol import ANY_VERSION, StreamAppend
from tests.conftest import create_postgres_database, drop_postgres_database, require_postgres
from tests.reliability.history import History, check_history, read_log
from tests.reliability.report import record
from tests.reliability.tier import TIER

STEPS = TIER.pick(fast=30, full=60, soak=120)
PROGRAMS = TIER.pick(fast=12, full=60, soak=200)
"""Programs per backend for the stateful machine."""
PAIRED = TIER.pick(fast=8, full=30, soak=100)
"""Programs run on both backends for the trace comparison."""

ACCOUNTS = ("a", "b", "c")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
FIGURES: Counter[str] = Counter()

# --- the service under test -----------------------------------------------------------------


class Deposited(DomainEvent):
    event_type = "model_stateful.Deposited"
    amount: int


class Withdrawn(DomainEvent):
    event_type = "model_stateful.Withdrawn"
    amount: int


class Account(Aggregate):
    """A balance that may not go negative; snapshotted every 3 events."""

    category = "acct"
    snapshot_version = 1
    snapshot_every = 3

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.balance = 0

    def snapshot_state(self) -> dict[str, Any]:
        return {"balance": self.balance}

    @classmethod
    def from_snapshot(cls, aggregate_id: str, state: dict[str, Any]) -> Self:
        account = cls(aggregate_id)
        account.balance = int(state["balance"])
        return account

    def deposit(self, amount: int, command: Command) -> None:
        self._raise(Deposited(amount=amount, occurred_at=command.timestamp))

    def withdraw(self, amount: int, command: Command) -> None:
        if amount > self.balance:
            raise InvalidState("insufficient funds")
        self._raise(Withdrawn(amount=amount, occurred_at=command.timestamp))

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount

    @applies(Withdrawn)
    def _withdrawn(self, event: Withdrawn) -> None:
        self.balance -= event.amount


class Deposit(Command):
    account: str
    amount: int


class Withdraw(Command):
    account: str
    amount: int


class Transfer(Command):
    source: str
    target: str
    amount: int


async def _deposit(command: Deposit, repo: Repository) -> None:
    account = await repo.get(Account, command.account)
    if account is None:
        account = Account(command.account)
        repo.add(account)
    account.deposit(command.amount, command)


async def _withdraw(command: Withdraw, repo: Repository) -> None:
    account = await repo.get(Account, command.account)
    if account is None:
        raise InvalidState("no such account")
    account.withdraw(command.amount, command)


async def _transfer(command: Transfer, repo: Repository) -> None:
    if command.source == command.target:
        raise InvalidState("transfer to the same account")
    source = await repo.get(Account, command.source)
    if source is None:
        raise InvalidState("no such account")
    source.withdraw(command.amount, command)
    target = await repo.get(Account, command.target)
    if target is None:
        target = Account(command.target)
        repo.add(target)
    target.deposit(command.amount, command)


_BALANCE = sql(
    "INSERT INTO acct_balances (stream_id, balance, events, last_version) VALUES ($1, $2, 1, $3)"
    " ON CONFLICT (stream_id) DO UPDATE SET balance = acct_balances.balance + excluded.balance,"
    " events = acct_balances.events + 1, last_version = excluded.last_version"
)


class Balances(Projection):
    """Balance, event count and last version per account."""

    name = "acct_balances"
    tables = ("acct_balances",)
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS acct_balances (stream_id TEXT PRIMARY KEY,"
            " balance BIGINT NOT NULL, events BIGINT NOT NULL, last_version BIGINT NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM acct_balances"),)
    max_retries = 0

    @on(Deposited)
    def _deposited(self, event: Deposited) -> Iterator[Statement]:
        yield _BALANCE(event.stream_id, event.amount, event.version)

    @on(Withdrawn)
    def _withdrawn(self, event: Withdrawn) -> Iterator[Statement]:
        yield _BALANCE(event.stream_id, -event.amount, event.version)


_JOURNAL = sql(
    "INSERT INTO acct_journal (event_id, stream_id, version, kind, amount)"
    " VALUES ($1, $2, $3, $4, $5)"
)


class Journal(Projection):
    """Every event once: the primary key has no ON CONFLICT, so a replayed event fails."""

    name = "acct_journal"
    tables = ("acct_journal",)
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS acct_journal (event_id TEXT PRIMARY KEY,"
            " stream_id TEXT NOT NULL, version BIGINT NOT NULL, kind TEXT NOT NULL,"
            " amount BIGINT NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM acct_journal"),)
    max_retries = 0

    @on(Deposited)
    def _deposited(self, event: Deposited) -> Iterator[Statement]:
        yield _JOURNAL(str(event.event_id), event.stream_id, event.version, "D", event.amount)

    @on(Withdrawn)
    def _withdrawn(self, event: Withdrawn) -> Iterator[Statement]:
        yield _JOURNAL(str(event.event_id), event.stream_id, event.version, "W", event.amount)


PROJECTIONS = ("acct_balances", "acct_journal")


def _register(commands: CommandBus, _queries: QueryBus, _read_models: ReadModelStore) -> None:
    commands.register(Deposit, _deposit)
    commands.register(Withdraw, _withdraw)
    commands.register(Transfer, _transfer)


service = Service(title="bank", projections=lambda: [Balances(), Journal()], register=_register)

# --- operations ------------------------------------------------------------------------------

Expect = str  # "none" (no If-Match), "right", "wrong"


@dataclass(frozen=True)
class Send:
    """A command through the bus, optionally naming the version its main stream must be at."""

    kind: str
    account: str
    other: str
    amount: int
    expect: Expect


@dataclass(frozen=True)
class Retry:
    """Send an earlier command again: same id, same payload."""

    pick: int


@dataclass(frozen=True)
class Reuse:
    """Send an earlier command's id with another amount."""

    pick: int
    delta: int


@dataclass(frozen=True)
class Raw:
    """Append deposits straight to the store with a right, wrong or ANY expected version."""

    account: str
    count: int
    expect: Expect


@dataclass(frozen=True)
class Step:
    """One projection applies one page of at most ``limit`` events."""

    projection: int
    limit: int


@dataclass(frozen=True)
class Crash:
    """A projection batch is cancelled after ``yields`` turns of the event loop."""

    projection: int
    limit: int
    yields: int


@dataclass(frozen=True)
class Rebuild:
    projection: int
    blue_green: bool
    batch: int


@dataclass(frozen=True)
class Reopen:
    """Close the runtime and open a new one on the same database (a process restart)."""


@dataclass(frozen=True)
class Settle:
    """Catch every projection up and observe the read rows."""


Op = Send | Retry | Reuse | Raw | Step | Crash | Rebuild | Reopen | Settle

accounts = st.sampled_from(ACCOUNTS)
expects = st.sampled_from(["none", "none", "right", "wrong"])
sends = st.builds(
    Send,
    kind=st.sampled_from(["deposit", "deposit", "withdraw", "transfer"]),
    account=accounts,
    other=accounts,
    amount=st.integers(1, 9),
    expect=expects,
)
retries = st.builds(Retry, pick=st.integers(0, 10_000))
reuses = st.builds(Reuse, pick=st.integers(0, 10_000), delta=st.integers(1, 5))
raws = st.builds(
    Raw,
    account=accounts,
    count=st.integers(1, 3),
    expect=st.sampled_from(["right", "wrong", "any"]),
)
projections = st.integers(0, len(PROJECTIONS) - 1)
steps = st.builds(Step, projection=projections, limit=st.integers(1, 6))
crashes = st.builds(
    Crash, projection=projections, limit=st.integers(1, 4), yields=st.integers(0, 12)
)
rebuilds = st.builds(
    Rebuild, projection=projections, blue_green=st.booleans(), batch=st.integers(1, 9)
)
# Everything but crashes, whose cut point depends on timing: the same program must give the
# same trace on both backends.
deterministic_ops: st.SearchStrategy[Op] = st.one_of(
    sends,
    sends,
    sends,
    retries,
    reuses,
    raws,
    steps,
    steps,
    rebuilds,
    st.just(Reopen()),
    st.just(Settle()),
)

# --- the model -------------------------------------------------------------------------------

Obs = tuple[Any, ...]
LogRow = tuple[str, int, str, int, str]
"""(stream, version, kind, amount, event id): one event as the model and the trace see it."""


@dataclass
class Model:
    """What the system must do, in plain Python."""

    log: list[LogRow] = field(default_factory=list)
    recorded: dict[UUID, tuple[str, Obs]] = field(default_factory=dict)
    """Command id -> (payload hash, first outcome) for commands that stored their key."""

    def version(self, stream: str) -> int:
        return sum(1 for row in self.log if row[0] == stream)

    def balance(self, stream: str, upto: int | None = None) -> int:
        rows = [r for r in self.log if r[0] == stream and (upto is None or r[1] <= upto)]
        return sum(r[3] if r[2] == "D" else -r[3] for r in rows)

    def dispatch(self, command: Command, expect: int | None, stream: str) -> Obs:
        digest = command_hash(command)
        first = self.recorded.get(command.command_id)
        if first is not None:
            return first[1] if first[0] == digest else ("rejected", "IdempotencyKeyReused")
        planned = self._decide(command)
        if isinstance(planned, str):
            return ("rejected", planned)
        if expect is not None and expect != self.version(stream):
            return ("rejected", "PreconditionFailed")
        stored = []
        for target, kind, amount in planned:
            version = self.version(target) + 1
            event_id = str(event_id_for(command.command_id, target, version))
            self.log.append((target, version, kind, amount, event_id))
            stored.append((target, version, event_id))
        # The log order of one append's streams is the backend's (PostgreSQL: lock order by
        # stream id, SQLite: call order); outcomes list the events by stream, and the harness
        # puts the model's rows in the order the store chose (see ``adopt_order``).
        outcome: Obs = ("ok", tuple(sorted(stored)))
        self.recorded[command.command_id] = (digest, outcome)
        return outcome

    def _decide(self, command: Command) -> list[tuple[str, str, int]] | str:
        if isinstance(command, Deposit):
            return [(f"acct-{command.account}", "D", command.amount)]
        if isinstance(command, Withdraw):
            stream = f"acct-{command.account}"
            if self.version(stream) == 0 or self.balance(stream) < command.amount:
                return "InvalidState"
            return [(stream, "W", command.amount)]
        assert isinstance(command, Transfer)
        source, target = f"acct-{command.source}", f"acct-{command.target}"
        if source == target or self.version(source) == 0:
            return "InvalidState"
        if self.balance(source) < command.amount:
            return "InvalidState"
        return [(source, "W", command.amount), (target, "D", command.amount)]

    def adopt_order(self, events: list[tuple[str, int, str]]) -> None:
        """Reorder the last append's rows as the store logged them (the same set)."""
        tail = self.log[-len(events) :]
        by_slot = {(row[0], row[1]): row for row in tail}
        assert set(by_slot) == {(s, v) for s, v, _ in events}
        self.log[-len(events) :] = [by_slot[s, v] for s, v, _ in events]

    def raw(self, stream: str, expected: int, rows: list[tuple[int, str]]) -> Obs:
        current = self.version(stream)
        if expected not in (ANY_VERSION, current):
            return ("conflict", "ConcurrencyError")
        stored = []
        for amount, event_id in rows:
            current += 1
            self.log.append((stream, current, "D", amount, event_id))
            stored.append((stream, current, event_id))
        return ("ok", tuple(stored))

    def read_model(self, projection: str, applied: int) -> list[tuple[Any, ...]]:
        prefix = self.log[:applied]
        if projection == "acct_journal":
            return sorted((eid, s, v, k, a) for s, v, k, a, eid in prefix)
        totals: dict[str, list[int]] = {}
        for s, v, k, a, _ in prefix:
            row = totals.setdefault(s, [0, 0, 0])
            row[0] += a if k == "D" else -a
            row[1] += 1
            row[2] = v
        return sorted((s, *row) for s, row in totals.items())


# --- the system, driven op by op ------------------------------------------------------------

_READS = {
    "acct_balances": sql("SELECT stream_id, balance, events, last_version FROM acct_balances"),
    "acct_journal": sql("SELECT event_id, stream_id, version, kind, amount FROM acct_journal"),
}


def _row(event: RecordedEvent) -> LogRow:
    e = event.event
    assert isinstance(e, Deposited | Withdrawn)
    return (
        e.stream_id,
        e.version,
        "D" if isinstance(e, Deposited) else "W",
        e.amount,
        str(e.event_id),
    )


class Harness:
    """One backend's runtime plus the model; ``apply`` runs an op and checks its outcome."""

    def __init__(self, url: str, cleanup: Any) -> None:
        self.url = url
        self.cleanup = cleanup
        self.model = Model()
        self.history = History()
        self.sent: list[tuple[Command, str, Expect]] = []
        self.trace: list[Obs] = []
        self.counter = 0
        self._first_expect: dict[UUID, int | None] = {}
        self.runtime: Runtime
        self.reads: ReadModelStore

    @classmethod
    async def open(cls, backend: str) -> Harness:
        if backend == "sqlite":
            directory = tempfile.TemporaryDirectory(prefix="model-stateful-")
            harness = cls(f"sqlite:///{directory.name}/bank.db", directory.cleanup)
        else:
            url = await create_postgres_database()
            harness = cls(url, lambda: None)
            harness.cleanup = lambda: drop_postgres_database(url)
        await harness._open_runtime()
        FIGURES[f"{backend}_programs"] += 1
        return harness

    async def _open_runtime(self) -> None:
        self.runtime = await Runtime.open(
            service,
            Settings(
                database_url=self.url,
                pool_size=3,
                projection_batch_size=5,
                aggregate_cache_size=64,
                command_retries=3,
                lag_check_interval=3600,
            ),
        )
        self.reads = LiveReadModels.wrap(self.runtime.backend.read_models, service.projections())

    async def close(self) -> None:
        try:
            await self.runtime.close()
        finally:
            done = self.cleanup()
            if asyncio.iscoroutine(done):
                await done

    def _next_id(self) -> UUID:
        self.counter += 1
        return uuid5(NAMESPACE_URL, f"model-stateful:{self.counter}")

    def _at(self) -> datetime:
        return T0 + timedelta(seconds=self.counter)

    async def apply(self, op: Op) -> Obs:
        """Run ``op``, check the model predicted its outcome, and return the observation."""
        FIGURES["steps"] += 1
        FIGURES[type(op).__name__.lower()] += 1
        if isinstance(op, Send):
            command_id = self._next_id()
            command: Command
            if op.kind == "deposit":
                command = Deposit(
                    command_id=command_id,
                    timestamp=self._at(),
                    account=op.account,
                    amount=op.amount,
                )
            elif op.kind == "withdraw":
                command = Withdraw(
                    command_id=command_id,
                    timestamp=self._at(),
                    account=op.account,
                    amount=op.amount,
                )
            else:
                command = Transfer(
                    command_id=command_id,
                    timestamp=self._at(),
                    source=op.account,
                    target=op.other,
                    amount=op.amount,
                )
            stream = f"acct-{op.account}"
            self.sent.append((command, stream, op.expect))
            obs = await self._dispatch(command, stream, op.expect)
        elif isinstance(op, Retry | Reuse):
            if not self.sent:
                return ("nothing to retry",)
            command, stream, expect = self.sent[op.pick % len(self.sent)]
            if isinstance(op, Reuse):
                amount = getattr(command, "amount") + op.delta  # noqa: B009 - all three have it
                command = command.model_copy(update={"amount": amount, "timestamp": self._at()})
            obs = await self._dispatch(command, stream, expect, again=True)
        elif isinstance(op, Raw):
            obs = await self._raw(op)
        elif isinstance(op, Step | Crash | Rebuild):
            obs = await self._projection(op)
        elif isinstance(op, Reopen):
            await self.runtime.close()
            await self._open_runtime()
            obs = ("reopened",)
        else:
            await self.runtime.catch_up(timeout=30)
            obs = ("settled", *[tuple(await self._rows(name)) for name in PROJECTIONS])
        self.trace.append(obs)
        return obs

    async def _dispatch(
        self, command: Command, stream: str, expect: Expect, again: bool = False
    ) -> Obs:
        current = self.model.version(stream)
        version = {"none": None, "right": current, "wrong": current + 1}[expect]
        # A retry sends what was sent first: the version the first send named.
        if again and expect != "none":
            version = self._first_expect.get(command.command_id, version)
        elif expect != "none":
            self._first_expect[command.command_id] = version
        replay = command.command_id in self.model.recorded
        predicted = self.model.dispatch(command, version, stream)
        op = self.history.begin(command.command_id, stream, version)
        try:
            result: CommandResult = await self.runtime.command_bus.dispatch(
                command, expect=None if version is None else {stream: version}
            )
        except (InvalidState, PreconditionFailed, IdempotencyKeyReused) as exc:
            self.history.failed(op, type(exc).__name__)
            obs: Obs = ("rejected", type(exc).__name__)
        else:
            self.history.ok(op, "ok", events=len(result.events))
            stored = [
                (r.event.stream_id, r.event.version, str(r.event.event_id)) for r in result.events
            ]
            obs = ("ok", tuple(sorted(stored)))
            FIGURES["replayed" if replay else "committed"] += 1
            if not replay and obs == predicted:
                self.model.adopt_order(stored)
        assert obs == predicted, (
            f"{type(command).__name__} expect={version}: got {obs}, model says {predicted}"
        )
        if obs[0] == "rejected":
            FIGURES[f"rejected_{obs[1]}"] += 1
        return obs

    async def _raw(self, op: Raw) -> Obs:
        stream = f"acct-{op.account}"
        current = self.model.version(stream)
        expected = {"right": current, "wrong": current + 1, "any": ANY_VERSION}[op.expect]
        causation = self._next_id()
        rows = [(i + 1, str(uuid5(causation, str(i)))) for i in range(op.count)]
        events = [
            Deposited(
                event_id=UUID(event_id),
                amount=amount,
                occurred_at=self._at(),
                metadata=EventMetadata(causation_id=causation),
            )
            for amount, event_id in rows
        ]
        predicted = self.model.raw(stream, expected, rows)
        entry = self.history.begin(causation, stream, expected)
        try:
            appended = await self.runtime.backend.store.append(
                StreamAppend(stream, expected, events)
            )
        except ConcurrencyError:
            self.history.failed(entry, "ConcurrencyError")
            obs: Obs = ("conflict", "ConcurrencyError")
            FIGURES["conflicts"] += 1
        else:
            self.history.ok(entry, "ok", events=len(appended.events))
            obs = (
                "ok",
                tuple(
                    (r.event.stream_id, r.event.version, str(r.event.event_id))
                    for r in appended.events
                ),
            )
        assert obs == predicted, (
            f"raw append expected={expected}: got {obs}, model says {predicted}"
        )
        return obs

    async def _log(self) -> list[RecordedEvent]:
        """The whole log, once every event the model expects is readable.

        On PostgreSQL the reader's fence is cluster-wide: a transaction of anyone else on the
        server can hold back what ``read_all`` returns for a moment, never for good.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        store = self.runtime.backend.store
        while len(log := await read_log(store)) < len(self.model.log) and loop.time() < deadline:
            await store.wait_for_events(log[-1].position if log else LOG_START, 0.05)
        return log

    async def _applied(self, name: str) -> int:
        checkpoint = await self.runtime.backend.read_models.checkpoint(name)
        log = await self._log()
        return sum(1 for r in log if r.position <= checkpoint)

    async def _projection(self, op: Step | Crash | Rebuild) -> Obs:
        name = PROJECTIONS[op.projection]
        runner = self.runtime.runners[name]
        read_models = self.runtime.backend.read_models
        before = await self._applied(name)  # also waits until the whole log is readable
        total = len(self.model.log)
        if isinstance(op, Step):
            await runner.step(await read_models.checkpoint(name), op.limit)
            applied = await self._applied(name)
            assert applied == min(total, before + op.limit), (name, before, applied)
            return ("step", name, applied)
        if isinstance(op, Crash):
            task = asyncio.ensure_future(runner.catch_up(limit=op.limit))
            for _ in range(op.yields):
                await asyncio.sleep(0)  # let the batch run to some await point, then cut it
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await read_models.migrate([])  # wait for a write already handed to a thread
            applied = await self._applied(name)
            assert before <= applied <= total, (name, before, applied, total)
            FIGURES["crashes_mid_log"] += 0 < applied < total
            return ("crash", name)
        if op.blue_green:
            await BlueGreenRebuild(runner, batch_size=op.batch).run()
            await runner.catch_up()  # the live runner moves to the new generation
        else:
            await runner.rebuild(batch_size=op.batch)
        assert await self._applied(name) == total
        return ("rebuilt", name, total)

    async def _rows(self, name: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(row.values()) for row in await self.reads.fetch(_READS[name]))

    async def check(self) -> None:
        """The invariants: log == model, history clean, read models == model prefixes."""
        store = self.runtime.backend.store
        log = await self._log()
        assert [_row(r) for r in log] == self.model.log
        (await check_history(self.history, store)).assert_clean()
        for name in PROJECTIONS:
            applied = await self._applied(name)
            assert await self._rows(name) == self.model.read_model(name, applied), name
        snapshots = self.runtime.command_bus.snapshots
        assert snapshots is not None
        for account in ACCOUNTS:
            stream = f"acct-{account}"
            snapshot = await snapshots.store.load(stream)
            if snapshot is None:
                continue
            FIGURES["snapshots_checked"] += 1
            at = next(r for r in self.model.log if r[0] == stream and r[1] == snapshot.version)
            assert str(snapshot.event_id) == at[4]
            assert (
                snapshot.state.replace(" ", "")
                == f'{{"balance":{self.model.balance(stream, snapshot.version)}}}'
            )


# --- the tests -------------------------------------------------------------------------------


def _run(loop: asyncio.AbstractEventLoop, work: Any) -> Any:
    return loop.run_until_complete(work)


class BankMachine(RuleBasedStateMachine):
    """Random programs on one backend, checked against the model after every step."""

    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.harness: Harness = _run(self.loop, Harness.open(self.backend))

    def teardown(self) -> None:
        try:
            _run(self.loop, self.harness.close())
        finally:
            self.loop.close()
        _record()

    def _apply(self, op: Op) -> None:
        _run(self.loop, self.harness.apply(op))

    @rule(ops=st.lists(sends, min_size=1, max_size=4))
    def send(self, ops: list[Send]) -> None:
        # Commands are most of a real load: several per rule, so they outnumber the rest.
        for op in ops:
            self._apply(op)

    @precondition(lambda self: bool(self.harness.sent))
    @rule(op=retries)
    def retry(self, op: Retry) -> None:
        self._apply(op)

    @precondition(lambda self: bool(self.harness.sent))
    @rule(op=reuses)
    def reuse_key(self, op: Reuse) -> None:
        self._apply(op)

    @rule(op=raws)
    def raw_append(self, op: Raw) -> None:
        self._apply(op)

    @rule(op=steps)
    def step_projection(self, op: Step) -> None:
        self._apply(op)

    @rule(op=crashes)
    def crash_projection(self, op: Crash) -> None:
        self._apply(op)

    @rule(op=rebuilds)
    def rebuild(self, op: Rebuild) -> None:
        self._apply(op)

    @rule()
    def reopen(self) -> None:
        self._apply(Reopen())

    @rule()
    def settle(self) -> None:
        self._apply(Settle())

    @invariant()
    def agrees_with_the_model(self) -> None:
        _run(self.loop, self.harness.check())


class PostgresBankMachine(BankMachine):
    backend = "postgres"

    def __init__(self) -> None:
        require_postgres()
        super().__init__()


_SETTINGS = settings(
    max_examples=PROGRAMS,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# Crashes are injected (a batch cut at a random await), so these run larger in test-faults.
TestModelSQLite = pytest.mark.faults(BankMachine.TestCase)
TestModelSQLite.settings = _SETTINGS
TestModelPostgres = pytest.mark.postgres(pytest.mark.faults(PostgresBankMachine.TestCase))
TestModelPostgres.settings = _SETTINGS


async def _program(backend: str, program: list[Op]) -> list[Obs]:
    harness = await Harness.open(backend)
    try:
        for op in program:
            await harness.apply(op)
            await harness.check()
        await harness.apply(Settle())
        return harness.trace
    finally:
        await harness.close()


@pytest.mark.postgres
@settings(max_examples=PAIRED, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(deterministic_ops, min_size=5, max_size=STEPS))
def test_sqlite_and_postgres_agree(program: list[Op]) -> None:
    require_postgres()
    sqlite = asyncio.run(_program("sqlite", program))
    postgres = asyncio.run(_program("postgres", program))
    assert sqlite == postgres
    FIGURES["paired_programs"] += 1
    FIGURES["paired_steps"] += len(program)
    _record()


def _record() -> None:
    record("model_stateful", **dict(sorted(FIGURES.items())))


async def test_a_retry_that_named_a_version_gets_its_first_outcome() -> None:
    from cqrskit.store.memory import MemoryEventStore

    bus = CommandBus(MemoryEventStore())
    bus.register(Deposit, _deposit)
    await bus.dispatch(Deposit(account="a", amount=1))
    command = Deposit(account="a", amount=1)
    first = await bus.dispatch(command, expect={"acct-a": 1})
    assert await bus.dispatch(command, expect={"acct-a": 1}) == first
