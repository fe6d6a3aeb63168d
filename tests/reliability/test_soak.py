"""The soak: a long mixed load on the whole deployment while faults of every kind come and go.

Each fault test elsewhere injects one kind of fault into a small setup. This one runs the
orders service the way it is deployed and draws its faults from all of them at random, so
what one fault leaves behind (a pool full of dead connections, a worker half-way through a
batch, a frozen process holding a lock) meets the next:

- two ``cqrskit serve`` processes without projections and one ``cqrskit worker`` running
  every projection, all reaching a private PostgreSQL cluster through a :class:`FaultProxy`,
  and the Redis query cache through another;
- command clients (:class:`OrdersLoad`, every request under its own ``Idempotency-Key``)
  and query clients sharing one client that sends each request to either API process, as a
  load balancer without health checks would; queries carry the consistency token of a
  command the load saw acknowledged;
- a fault schedule drawn from ``random.Random(seed)``: PostgreSQL crashed (``-m
  immediate``, SIGKILL of every server process, or of the postmaster alone) and restarted;
  the PostgreSQL link slowed, blackholed, reset, or cut right after an append's commit and
  kept down; the Redis link slowed, blackholed or reset; the worker SIGKILLed and
  restarted; an API process frozen (SIGSTOP, then SIGCONT) or SIGKILLed and restarted. The
  kinds are dealt like a shuffled deck, every kind once before any twice; between two faults
  the load runs healthy for a while, and after each the service must acknowledge a command
  again within a bound. The seed is printed; ``CQRSKIT_FAULT_SEED`` replays the same
  sequence (a run does the prefix of it that fits its time).

It lasts ``TIER.pick(fast=25 s, full=2 min, soak=30 min)`` of load (``CQRSKIT_SOAK_SECONDS``
overrides). Then everything is healed, every unknown outcome is retried with its key until
definite, and the checks of the other fault tests apply to the whole run: no answer but a
2xx, a domain 4xx or a 503 problem+json with ``Retry-After`` (nor any request outliving the
client's bound); nothing acknowledged lost, nothing refused stored, nothing doubled, versions
contiguous (``check_history``); every query given a token answered either consistently, and
then with the acknowledged state, or flagged stale; the worker's read models equal a rebuild
(``assert_converged``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cqrskit.config import Settings
from cqrskit.http import CONSISTENCY_HEADER
from cqrskit.http.consistency import CONSISTENCY_STATE_HEADER, CONSISTENCY_TIMEOUT_HEADER
from cqrskit.messages import LogPosition
from cqrskit.service import Runtime
from orders.service import service as orders_service
from tests.conftest import require_service
from tests.reliability.history import Outcome, assert_converged, check_history, wait_caught_up
from tests.reliability.orders_load import OrdersLoad, Request
from tests.reliability.pgcluster import CrashMode, PgCluster
from tests.reliability.proxy import APPEND_STATEMENTS, FaultProxy
from tests.reliability.report import record
from tests.reliability.supervisor import Child, Fault, FaultAction, Supervisor
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

SECONDS_ENV = "CQRSKIT_SOAK_SECONDS"
SECONDS = float(os.environ.get(SECONDS_ENV) or TIER.pick(fast=25.0, full=120.0, soak=1800.0))
"""Seconds of load (faults included); setup and the checks afterwards come on top."""
WRITERS = TIER.pick(fast=3, full=6, soak=8)
READERS = TIER.pick(fast=2, full=2, soak=3)
GAP = TIER.pick(fast=(0.5, 1.5), full=(1.0, 4.0), soak=(2.0, 10.0))
"""Seconds of healthy load before each fault (drawn from this range)."""
REQUEST_TIMEOUT = 2.0
"""The API processes' ``CQRSKIT_REQUEST_TIMEOUT``."""
CLIENT_TIMEOUT = 20.0
"""A client gives up after this long: longer than any fault keeps a request waiting (the
longest pause plus the request deadline), so a request that runs into it has hung."""
RECOVERY_BOUND = 60.0
"""Longest the service may take to acknowledge a command again after a fault (a bound)."""
CUT_BOUND = 30.0
"""Longest the load may take to commit an append once a cut after commit is armed."""
READ_WAIT = 2.0
"""What a query with a token asks to wait for its projections (``X-Consistency-Timeout``)."""
PG_LATENCY = 0.1
"""Seconds added each way to every chunk on a slow PostgreSQL link."""
REDIS_LATENCY = 0.5
"""Seconds added to Redis's answers on a slow link (past the cache's 0.25 s timeout)."""
ERROR_KINDS = {"urn:cqrskit:problem:unavailable", "urn:cqrskit:problem:timeout"}
APIS = ("api-1", "api-2")
CRASH_MODES: tuple[CrashMode, ...] = ("immediate", "sigkill", "postmaster")
PG_LINK, REDIS_LINK = "postgres-link", "redis-link"

KINDS = (
    "postgres_crash",
    "postgres_latency",
    "postgres_blackhole",
    "postgres_reset",
    "postgres_cut_after_commit",
    "redis",
    "worker_kill",
    "api_pause",
    "api_kill",
)
"""The deck the schedule deals from."""
DURATIONS: dict[str, tuple[float, float]] = {
    "postgres_crash": (0.3, 2.0),  # kept down this long
    "postgres_latency": (1.0, 4.0),
    "postgres_blackhole": (1.0, 4.0),  # past the request deadline at times
    "postgres_reset": (0.5, 2.5),
    "postgres_cut_after_commit": (0.3, 2.0),  # the network kept down after the cut
    "redis": (1.0, 3.0),
    "worker_kill": (0.0, 0.0),
    "api_pause": (0.5, 3.0),  # frozen this long
    "api_kill": (0.0, 0.0),
}


# --- the schedule ---------------------------------------------------------------------------


def kind(fault: Fault) -> str:
    """A fault's kind for the figures: ``postgres_crash``, ``redis_reset``, ``api_kill``..."""
    if fault.action.startswith("crash:"):
        return "postgres_crash"
    return f"{fault.target.split('-')[0]}_{fault.action}"  # postgres-link, api-1, worker...


def plan(rng: random.Random, count: int) -> list[Fault]:
    """Deal ``count`` faults from shuffled decks of :data:`KINDS` (every kind once per deck).

    A fault's ``at`` is the healthy load before it, counted from the end of the previous
    fault's recovery.
    """
    planned: list[Fault] = []
    deck: list[str] = []
    for _ in range(count):
        if not deck:
            deck = list(KINDS)
            rng.shuffle(deck)
        drawn = deck.pop()
        healthy = round(rng.uniform(*GAP), 3)
        duration = round(rng.uniform(*DURATIONS[drawn]), 3)
        target, action = _target_and_action(drawn, rng)
        planned.append(Fault(healthy, target, action, duration))
    return planned


def _target_and_action(kind: str, rng: random.Random) -> tuple[str, str]:
    if kind == "postgres_crash":
        return "postgres", f"crash:{rng.choice(CRASH_MODES)}"
    if kind.startswith("postgres_"):
        return PG_LINK, kind.removeprefix("postgres_")
    if kind == "redis":
        return REDIS_LINK, rng.choice(["latency", "blackhole", "reset"])
    if kind == "worker_kill":
        return "worker", "kill"
    return rng.choice(APIS), kind.removeprefix("api_")


# --- clients --------------------------------------------------------------------------------


class Balanced(httpx.AsyncClient):
    """Sends each request to one of the API processes at random, as a load balancer without
    health checks would (a request to a killed process fails; the caller retries it), and
    remembers the slowest answer."""

    def __init__(self, urls: list[str], seed: int) -> None:
        super().__init__(base_url=urls[0], timeout=CLIENT_TIMEOUT)
        self.targets = [httpx.URL(url) for url in urls]
        self.rng = random.Random(f"{seed}/balance")
        self.slowest = 0.0

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        target = self.rng.choice(self.targets)
        request.url = request.url.copy_with(port=target.port)
        request.headers["Host"] = f"{target.host}:{target.port}"
        started = time.monotonic()
        try:
            return await super().send(request, **kwargs)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)


class Readers:
    """Query clients: reads of what the load saw acknowledged, with its consistency token.

    A read given a command's token must answer ``consistent`` with a state that includes the
    command (a shipped or cancelled order says so), or be flagged ``stale`` (its projections
    were behind for longer than the read would wait: a worker down); a 404 is only allowed
    stale. Reads without a token (statistics, search) must answer 200. Any of them may get a
    503 problem+json with ``Retry-After`` (the database out) or lose its connection (an API
    process killed), never another error.
    """

    def __init__(self, load: OrdersLoad, client: httpx.AsyncClient) -> None:
        self.load = load
        self.client = client
        self.answers: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.terminal_checked = 0
        """Consistent reads of an order the load saw shipped or cancelled (state compared)."""

    async def loop(self, number: int, stop: asyncio.Event) -> None:
        """One reader: a query, a short pause (pacing: a steady load, not a benchmark)."""
        rng = random.Random(f"{self.load.seed}/read/{number}")
        while not stop.is_set():
            await self.read_once(rng)
            await asyncio.sleep(0.05)

    def _pick(self, rng: random.Random) -> Request | None:
        """An acknowledged request with a token, or ``None`` (a sample of the load so far)."""
        requests = self.load.requests
        for _ in range(10):
            if not requests:
                return None
            request = requests[rng.randrange(len(requests))]
            result = request.result
            if request.outcome is not Outcome.OK or not result or "consistency_token" not in result:
                continue
            if "order_id" in result or "customer_id" in result:
                return request
        return None

    async def read_once(self, rng: random.Random) -> None:
        request = self._pick(rng)
        if request is None or rng.random() < 0.15:
            path = rng.choice(["/api/v1/orders/statistics", "/api/v1/orders/search?q=Product"])
            await self._get(path, None, None)
            return
        assert request.result is not None
        result = request.result
        if "order_id" in result:
            path = f"/api/v1/orders/{result['order_id']}"
        else:
            path = f"/api/v1/customers/{result['customer_id']}/summary"
        status = result.get("status")
        await self._get(path, str(result["consistency_token"]), status)

    async def _get(self, path: str, token: str | None, acknowledged: object) -> None:
        headers = {}
        if token is not None:
            headers = {CONSISTENCY_HEADER: token, CONSISTENCY_TIMEOUT_HEADER: str(READ_WAIT)}
        try:
            response = await self.client.get(path, headers=headers)
        except httpx.TransportError as exc:
            self.answers[type(exc).__name__] += 1
            return
        state = response.headers.get(CONSISTENCY_STATE_HEADER, "none")
        status = response.status_code
        self.answers[f"{status} {state}"] += 1
        if status == 503:
            problem = response.headers.get("content-type", "").startswith("application/problem")
            if not (problem and response.headers.get("Retry-After")):
                self.problems.append(f"GET {path}: 503 without problem+json or Retry-After")
        elif token is None:
            if status != 200:
                self.problems.append(f"GET {path}: {status} {response.text[:200]}")
        elif state not in ("consistent", "stale"):
            self.problems.append(f"GET {path} with a token: {status}, no {state!r} state")
        elif status == 404 and state == "stale":
            pass  # acknowledged, not projected yet, and the read would not wait longer
        elif status != 200:
            self.problems.append(f"GET {path} ({state}): {status} {response.text[:200]}")
        elif state == "consistent" and acknowledged in ("shipped", "cancelled"):
            seen = response.json().get("status")
            self.terminal_checked += 1
            if seen != acknowledged:
                self.problems.append(f"GET {path}: consistent read says {seen}, not {acknowledged}")


def bad_answers(load: OrdersLoad) -> list[str]:
    """Every command attempt that hung, or got a 5xx other than 503 problem+json with
    ``Retry-After``, or a 404/412/422 (refusals no client of acknowledged entities earns)."""
    bad = []
    for request in load.requests:
        for attempt in request.attempts:
            where = f"{request.method} {request.path}"
            if attempt.status is None:
                if attempt.kind.endswith("Timeout"):
                    bad.append(f"{where}: no answer within {CLIENT_TIMEOUT} s ({attempt.kind})")
            elif attempt.status >= 500 and not (
                attempt.status == 503 and attempt.kind in ERROR_KINDS and attempt.retry_after
            ):
                bad.append(f"{where}: {attempt}")
            elif attempt.status in (404, 412, 422):
                bad.append(f"{where}: refused {attempt}")
    return bad


# --- faults ---------------------------------------------------------------------------------


class Faults:
    """Carries out the schedule's faults on the database, the two links and the processes."""

    def __init__(
        self,
        cluster: PgCluster,
        pg_link: FaultProxy,
        redis_link: FaultProxy,
        load: OrdersLoad,
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.links = {PG_LINK: pg_link, REDIS_LINK: redis_link}
        self.load = load
        self.rng = rng
        self.recoveries: list[float] = []

    def actions(self) -> dict[str, FaultAction]:
        """The custom actions by name (``kill`` and ``pause`` are the supervisor's)."""
        table: dict[str, FaultAction] = {f"crash:{mode}": self.crash for mode in CRASH_MODES}
        for name in ("latency", "blackhole", "reset", "cut_after_commit"):
            table[name] = self.link
        return table

    async def crash(self, fault: Fault) -> None:
        mode = CRASH_MODES[[f"crash:{m}" for m in CRASH_MODES].index(fault.action)]
        await asyncio.to_thread(self.cluster.crash, mode)
        try:
            await asyncio.sleep(fault.duration)  # the outage itself lasts this long
        finally:
            await asyncio.to_thread(self.cluster.start)

    async def link(self, fault: Fault) -> None:
        link = self.links[fault.target]
        try:
            if fault.action == "latency":
                delay = PG_LATENCY if fault.target == PG_LINK else REDIS_LATENCY
                link.latency(to_upstream=delay if fault.target == PG_LINK else 0.0, to_client=delay)
            elif fault.action == "blackhole":
                link.blackhole()
            elif fault.action == "reset":
                link.reset()
            else:
                fired = link.cut_after_commit(APPEND_STATEMENTS, then_reset=True)
                try:
                    await asyncio.wait_for(fired.wait(), CUT_BOUND)
                except TimeoutError:
                    raise AssertionError(f"no append committed within {CUT_BOUND} s") from None
            await asyncio.sleep(fault.duration)  # the fault itself lasts this long
        finally:
            link.heal()

    async def recovered(self) -> None:
        """Wait (bounded) until a command is acknowledged again; note how long it took."""
        started = time.monotonic()
        request = self.load.customer(self.rng)
        while (await self.load.attempt(request)).outcome is Outcome.UNKNOWN:
            if time.monotonic() - started > RECOVERY_BOUND:
                raise AssertionError(f"no command acknowledged {RECOVERY_BOUND} s after a fault")
            await asyncio.sleep(0.05)
        assert request.outcome is Outcome.OK, request.attempts[-1]
        self.recoveries.append(time.monotonic() - started)

    def heal(self, children: list[Child]) -> None:
        """Every link healed, every process thawed (the database is restarted by its fault)."""
        for link in self.links.values():
            link.heal()
        for child in children:
            child.resume()


async def run_schedule(
    supervisor: Supervisor, faults: Faults, schedule: list[Fault], until: float
) -> list[Fault]:
    """Healthy load, a fault, recovery; again while the next fault fits before ``until``."""
    done: list[Fault] = []
    actions = faults.actions()
    for fault in schedule:
        if time.monotonic() + fault.at + fault.duration > until:
            break
        # The supervisor waits out the healthy stretch (fault.at), then carries the fault out.
        await supervisor.run([fault], actions)
        await faults.recovered()
        done.append(fault)
    # The rest of the time: load on the recovered service.
    await asyncio.sleep(max(until - time.monotonic(), 1.0))
    return done


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def links(cluster: PgCluster) -> AsyncIterator[tuple[FaultProxy, FaultProxy]]:
    require_service("Redis", "127.0.0.1", 6379)
    async with (
        FaultProxy.for_url(cluster.url()) as pg_link,
        FaultProxy("127.0.0.1", 6379) as redis_link,
    ):
        yield pg_link, redis_link


async def visible(runtime: Runtime, load: OrdersLoad) -> None:
    """Wait (bounded) until readers see the last acknowledged command (PostgreSQL's read
    fence trails a fresh commit while an older transaction may still be in flight)."""
    tokens = [
        LogPosition.parse(str(r.result["consistency_token"]))
        for r in load.requests
        if r.outcome is Outcome.OK and r.result and "consistency_token" in r.result
    ]
    target = max(tokens)
    deadline = time.monotonic() + RECOVERY_BOUND
    while (head := await runtime.backend.store.head()) < target:
        assert time.monotonic() < deadline, f"head {head} never reached {target}"
        await asyncio.sleep(0.05)


# --- the soak -------------------------------------------------------------------------------


@pytest.mark.timeout(SECONDS * 1.5 + 300)  # the suite's 300 s is for tests of a set length
async def test_soak_mixed_load_with_random_faults(
    cluster: PgCluster, links: tuple[FaultProxy, FaultProxy], tmp_path: Path
) -> None:
    pg_link, redis_link = links
    url = pg_link.url(cluster.url())
    settings = {
        "CQRSKIT_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "CQRSKIT_DATABASE_CONNECT_TIMEOUT": "2",
        "CQRSKIT_DATABASE_COMMAND_TIMEOUT": "5",
        "CQRSKIT_POOL_SIZE": "5",
        "CQRSKIT_REDIS_URL": f"redis://127.0.0.1:{redis_link.port}/0",
        "CQRSKIT_REDIS_PREFIX": f"cqrskit-soak-{uuid.uuid4().hex[:12]}",
        "CQRSKIT_CACHE_TTL": "60",
    }
    with Supervisor(tmp_path) as supervisor:
        apis = [supervisor.api(url, name=name, env=settings) for name in APIS]
        worker = supervisor.worker(url, env=settings)
        await supervisor.start(apis[0])  # migrates the database
        await supervisor.start(apis[1], worker)
        count = int(SECONDS) + 10  # more than fit: the run takes the prefix that does
        schedule = plan(supervisor.rng, count)
        for index, fault in enumerate(schedule[:50]):
            print(
                f"planned fault {index}: after {fault.at:.2f} s healthy, {fault.action}"
                f" {fault.target} for {fault.duration:.2f} s"
            )

        started = time.monotonic()
        async with Balanced([api.url or "" for api in apis], supervisor.seed) as client:
            load = OrdersLoad(client, supervisor.seed)
            readers = Readers(load, client)
            faults = Faults(cluster, pg_link, redis_link, load, random.Random(supervisor.seed))
            stop = asyncio.Event()
            tasks = [asyncio.create_task(load.client_loop(n, stop)) for n in range(WRITERS)]
            tasks += [asyncio.create_task(readers.loop(n, stop)) for n in range(READERS)]
            try:
                done = await run_schedule(supervisor, faults, schedule, started + SECONDS)
            finally:
                faults.heal([*apis, worker])
                stop.set()
                await asyncio.gather(*tasks)
            seconds = time.monotonic() - started
            unknown_resolved = await load.resolve(timeout=max(RECOVERY_BOUND, SECONDS / 10))

        for child in (*apis, worker):
            assert child.running, f"{child.name} is not running:\n{child.tail()}"
        kinds = collections.Counter(kind(fault) for fault in done)
        assert [api.starts for api in apis] == [
            1 + sum(fault.target == api.name and fault.action == "kill" for fault in done)
            for api in apis
        ]
        assert worker.starts == 1 + kinds["worker_kill"]
        assert pg_link.stats.cut_after_commit == kinds["postgres_cut_after_commit"]
        assert cluster.crashes == kinds["postgres_crash"]

        bad = bad_answers(load)
        assert not bad, f"{len(bad)} bad answers:\n  " + "\n  ".join(bad[:30])
        assert not readers.problems, "\n".join(readers.problems[:30])

        runtime = await Runtime.open(
            orders_service, Settings(database_url=cluster.url(), run_projections=False)
        )
        try:
            store = runtime.backend.store
            await visible(runtime, load)
            history, problems = await load.history(store)
            # A first attempt may be answered from the server's own record: the bus resolved
            # a lost commit reply itself (test_ambiguous_commit.py).
            assert [p for p in problems if "answered as a replay" not in p] == []
            result = await check_history(history, store)
            result.assert_clean()
            await wait_caught_up(runtime, drive=False)  # the worker applies everything itself
            await assert_converged(runtime, drive=False)
        finally:
            await runtime.close()

    acknowledged = sum(r.outcome is Outcome.OK for r in load.requests)
    statuses = collections.Counter(a.status for r in load.requests for a in r.attempts)
    transport = sum(n for (status, _), n in load.kinds.items() if status is None)
    print(f"faults: {dict(kinds)}; commands: {dict(load.kinds)}; queries: {dict(readers.answers)}")
    record(
        "soak",
        seed=supervisor.seed,
        seconds=round(seconds),
        operations=len(load.requests),
        attempts=len(history.operations),
        queries=sum(readers.answers.values()),
        faults=len(done),
        **{f"fault_{name}": kinds[name] for name in sorted(kinds)},
        acknowledged=acknowledged,
        refused=sum(r.outcome is Outcome.FAILED for r in load.requests),
        answered_503=statuses[503],
        connection_errors=transport,
        unknown_resolved=unknown_resolved,
        unknown_committed=result.unknown_committed,
        unknown_absent=result.unknown_absent,
        queries_consistent=sum(n for k, n in readers.answers.items() if k.endswith("consistent")),
        queries_stale=sum(n for k, n in readers.answers.items() if k.endswith("stale")),
        queries_terminal_state_checked=readers.terminal_checked,
        events=result.events,
        lost=len(result.lost),
        leaked=len(result.leaked),
        duplicated=len(result.duplicated),
        slowest_answer_s=round(client.slowest, 2),
        worst_recovery_s=round(max(faults.recoveries, default=0.0), 2),
    )
    assert done, "no fault fitted in the time given"
    assert acknowledged > 10 * len(done), "too little load got through to prove anything"
    assert sum(n for k, n in readers.answers.items() if k.startswith("200")) > 0
