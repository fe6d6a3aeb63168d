"""Prometheus metrics of one HTTP app, served at ``GET /metrics``.

Each app owns a :class:`Metrics` with its own ``CollectorRegistry`` (never the process-global
one), so several apps in one process do not clash. Exposed series:

- ``cqrskit_commands_total{command, outcome}``: commands sent through
  :func:`cqrskit.http.dispatch_command`; ``outcome`` is ``ok`` or the error's class name.
- ``cqrskit_command_duration_seconds{command}``: histogram of their latency.
- ``cqrskit_http_requests_total{method, route, status}``: every request, labelled with the
  route template (``/api/v1/orders/{order_id}``), never the raw path.
- ``cqrskit_consistent_reads_total{query, outcome}``: queries given a consistency token;
  ``outcome`` is ``consistent`` or ``stale`` (the wait ran out).
- ``cqrskit_query_cache_lookups_total{query, outcome}``: Redis query cache lookups;
  ``outcome`` is ``hit``, ``miss``, ``bypass`` (answered from the database without asking
  Redis, or Redis not yet at the token) or ``error`` (Redis failed; database used).
- ``cqrskit_query_cache_invalidations_total{outcome}``: post-commit invalidations, ``ok`` or
  ``error`` (kept and retried).
- ``cqrskit_projection_lag_events{projection}``, ``cqrskit_projection_lag_seconds{projection}``,
  ``cqrskit_projection_failures{projection}`` (failed attempts),
  ``cqrskit_projection_checkpoint{projection}`` (log position),
  ``cqrskit_projection_throughput{projection}`` (events/s over the last minute),
  ``cqrskit_projection_parked_events{projection}`` (dead letters waiting),
  ``cqrskit_projection_state{projection, state}`` (1 for the current state, 0 for the others)
  and ``cqrskit_projection_level{projection}`` (0 ok, 1 warn, 2 fail): measured when scraped,
  for every projection and the NATS publisher.
- ``cqrskit_projection_visible_latency_seconds{projection}``: histogram of append-to-visible
  latency (commit of the batch minus the event's ``recorded_at``), observed by the runners of
  this process.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.messages import Command
from cqrskit.projections.status import (
    LATENCY_BUCKETS,
    Meter,
    lag_thresholds,
    projection_status,
)

if TYPE_CHECKING:
    from cqrskit.read_models.cache import RedisQueryCache
    from cqrskit.service import Runtime

__all__ = ["HttpMetrics", "Metrics", "RateWindow", "metrics_router"]

_STATES = ("running", "catching_up", "stalled", "failed", "rebuilding")
_LEVELS = {"ok": 0, "warn": 1, "fail": 2}


class RateWindow:
    """Counts events in one-second buckets to give a rate over the last ``seconds``."""

    def __init__(self, seconds: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._since = clock()
        self._buckets: collections.deque[list[int]] = collections.deque()

    def mark(self) -> None:
        """Count one event now."""
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])
            self._trim(second)

    def per_second(self) -> float:
        """Events per second over the window (over the uptime while that is shorter)."""
        now = self._clock()
        self._trim(int(now))
        span = min(float(self.seconds), max(1.0, now - self._since))
        return sum(count for _, count in self._buckets) / span

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.seconds:
            self._buckets.popleft()


class Metrics:
    """The metric families of one app, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "cqrskit_commands",
            "Commands handled, by type and outcome.",
            ["command", "outcome"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "cqrskit_command_duration_seconds",
            "Command latency in seconds.",
            ["command"],
            registry=r,
        )
        self.http_requests = Counter(
            "cqrskit_http_requests",
            "HTTP requests, by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.lag_events = Gauge(
            "cqrskit_projection_lag_events",
            "Events a projection has not applied yet.",
            ["projection"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "cqrskit_projection_lag_seconds",
            "Age of the oldest event a projection has not applied.",
            ["projection"],
            registry=r,
        )
        self.consistent_reads = Counter(
            "cqrskit_consistent_reads",
            "Queries given a consistency token, by type and outcome (consistent or stale).",
            ["query", "outcome"],
            registry=r,
        )
        self.cache = _CacheCollector()
        r.register(self.cache)
        self.failures = Gauge(
            "cqrskit_projection_failures",
            "Failed handler attempts since the projection started.",
            ["projection"],
            registry=r,
        )
        self.checkpoint = Gauge(
            "cqrskit_projection_checkpoint",
            "Log position of the projection's checkpoint.",
            ["projection"],
            registry=r,
        )
        self.throughput = Gauge(
            "cqrskit_projection_throughput",
            "Events applied per second over the last minute (runners of this process).",
            ["projection"],
            registry=r,
        )
        self.parked = Gauge(
            "cqrskit_projection_parked_events",
            "Events parked as dead letters, waiting for a retry or a skip.",
            ["projection"],
            registry=r,
        )
        self.state = Gauge(
            "cqrskit_projection_state",
            "1 for the projection's current state, 0 for the others.",
            ["projection", "state"],
            registry=r,
        )
        self.level = Gauge(
            "cqrskit_projection_level",
            "Lag level against the thresholds: 0 ok, 1 warn, 2 fail.",
            ["projection"],
            registry=r,
        )
        self.latency = _LatencyCollector()
        r.register(self.latency)
        self.command_rate = RateWindow()

    async def dispatch(self, bus: CommandBus, command: Command) -> CommandResult:
        """Dispatch ``command`` on ``bus``, counting its outcome and timing it."""
        name = type(command).__name__
        outcome = "error"
        started = time.perf_counter()
        try:
            result = await bus.dispatch(command)
            outcome = "ok"
            return result
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.commands.labels(name, outcome).inc()
            self.command_rate.mark()
            self.command_seconds.labels(name).observe(time.perf_counter() - started)

    async def refresh_projections(self, runtime: Runtime) -> None:
        """Measure projection lag now (called on every scrape); find the query cache."""
        self.cache.source = runtime.query_cache
        self.latency.meters = {name: r.status.meter for name, r in runtime.runners.items()}
        for status in await projection_status(runtime, lag_thresholds(runtime.settings)):
            name, lag = status.name, status.lag
            self.lag_events.labels(name).set(lag.lag_events)
            self.lag_seconds.labels(name).set(lag.lag_seconds)
            self.failures.labels(name).set(status.failures)
            self.checkpoint.labels(name).set(lag.position.position)
            self.throughput.labels(name).set(status.throughput)
            self.parked.labels(name).set(status.parked)
            self.level.labels(name).set(_LEVELS.get(status.level, 2))
            for state in _STATES:
                self.state.labels(name, state).set(1 if status.state == state else 0)

    def stats(self) -> dict[str, dict[str, int | float]]:
        """Totals of this process: commands (failed: any outcome but ``ok``) and requests."""
        commands = failed = requests = errors_4xx = errors_5xx = 0
        for family in self.commands.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    commands += int(sample.value)
                    failed += 0 if sample.labels["outcome"] == "ok" else int(sample.value)
        for family in self.http_requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    requests += int(sample.value)
                    status = sample.labels["status"]
                    errors_4xx += int(sample.value) if status.startswith("4") else 0
                    errors_5xx += int(sample.value) if status.startswith("5") else 0
        return {
            "commands": {
                "total": commands,
                "failed": failed,
                "per_second": round(self.command_rate.per_second(), 3),
            },
            "requests": {"total": requests, "errors_5xx": errors_5xx, "errors_4xx": errors_4xx},
        }

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    """Reads the query cache's counters at scrape time."""

    def __init__(self) -> None:
        self.source: RedisQueryCache | None = None

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "cqrskit_query_cache_lookups",
            "Redis query cache lookups, by query type and outcome.",
            labels=["query", "outcome"],
        )
        invalidations = CounterMetricFamily(
            "cqrskit_query_cache_invalidations",
            "Post-commit cache invalidations, by outcome.",
            labels=["outcome"],
        )
        stats = dict(self.source.stats) if self.source is not None else {}
        for (query, outcome), count in sorted(stats.items()):
            if query == "invalidation":
                invalidations.add_metric([outcome], count)
            else:
                lookups.add_metric([query, outcome], count)
        yield lookups
        yield invalidations


class _LatencyCollector(Collector):
    """Reads the runners' append-to-visible latency histograms at scrape time."""

    def __init__(self) -> None:
        self.meters: dict[str, Meter] = {}

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "cqrskit_projection_visible_latency_seconds",
            "Seconds from an event's append to its projection's commit.",
            labels=["projection"],
        )
        for name, meter in sorted(self.meters.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), meter.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric([name], buckets, meter.latency_sum)
        yield family


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Pure ASGI middleware counting requests by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.http_requests.labels(method, template, str(status)).inc()


def metrics_router(metrics: Metrics, runtime: Callable[[Request], Runtime]) -> APIRouter:
    """A router serving ``GET /metrics`` from ``metrics`` (lag measured per scrape)."""
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response)
    async def scrape(request: Request) -> Response:
        """Prometheus metrics of this process."""
        await metrics.refresh_projections(runtime(request))
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
