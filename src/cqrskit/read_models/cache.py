"""A Redis read-through cache for hot queries, invalidated exactly by the projections.

:class:`RedisQueryCache` is query-bus middleware (for queries registered with
:class:`~cqrskit.query_bus.Cached`) and a
:class:`~cqrskit.projections.listeners.CommitListener` of the projections those queries read.

How it stays exact: every cached answer lives under a key that contains the current
*version* of each tag it depends on (``<projection>:<tag>`` from the query's ``tags`` plus
``<projection>:*``). A version is a random string, never reused. After a runner commits a
batch, the cache gives every tag the batch touched (``Projection.cache_tags``) a fresh
version, and records the batch's position per projection. A lookup reads the versions, the
answer and the positions in one round trip (a Lua script); a miss reads the database and
stores the answer under the versions it read *before* the database read.

Guarantees:

1. Once a batch's invalidation has completed, no lookup returns an answer older than that
   batch: an answer read from the database before the commit was stored under a version
   that no longer exists. A slow reader can never put an old value back.
2. A query waiting for a consistency token is answered from Redis only when the recorded
   position of every projection it reads is at or after the token; otherwise from the
   database. Invalidations done by another process (``cqrskit worker``) are covered too.
3. Redis down, slow, flushed or holding garbage never fails a query: every Redis call has a
   short timeout, after an error Redis is left alone for ``retry_after`` seconds and queries
   go to the database; an unreadable value is a miss and is overwritten; a flush only
   causes misses (missing versions are created afresh).
4. Nothing on the write or projection path waits for Redis beyond one timeout per batch.
   Invalidations that fail are kept (bounded: past ``max_pending`` tags a projection's
   whole cache is invalidated instead) and retried with backoff; until they succeed this
   process answers those queries from the database.

Answers from this process may only be stale when another process's invalidation failed
(Redis unreachable from the worker but not from the API); ``ttl`` bounds that window.
Errors are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from pydantic import BaseModel, ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cqrskit.messages import LOG_START, LogPosition, Query, RecordedEvent
from cqrskit.middleware import Next
from cqrskit.projections.projection import Projection
from cqrskit.query_bus import Registration, consistency_requirement

__all__ = ["RedisQueryCache"]

_log = logging.getLogger("cqrskit.cache")

ALL = "*"

# KEYS: n tag keys, then position keys. ARGV: n, value-key prefix, fresh version, tag ttl (ms).
_LOOKUP = """
local n = tonumber(ARGV[1])
local versions = {}
for i = 1, n do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) ~= 'string' then
    redis.call('SET', KEYS[i], ARGV[3], 'PX', ARGV[4])
    v = ARGV[3]
  end
  versions[i] = v
end
local key = ARGV[2] .. redis.sha1hex(table.concat(versions, '|'))
local value = redis.pcall('GET', key)
if type(value) ~= 'string' then value = '' end
local out = {key, value}
for i = n + 1, #KEYS do
  local p = redis.pcall('GET', KEYS[i])
  if type(p) ~= 'string' then p = '' end
  out[#out + 1] = p
end
return out
"""


@dataclass
class _Pending:
    tags: set[str] = field(default_factory=set)
    everything: bool = False
    position: LogPosition | None = None


class RedisQueryCache:
    """Read-through cache of query answers in Redis, with exact invalidation."""

    def __init__(
        self,
        client: redis.Redis,
        rules: Callable[[type[Query]], Registration | None],
        *,
        prefix: str = "cqrskit",
        ttl: float = 300.0,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        self.client = client
        self._rules = rules
        self.prefix = prefix
        self.ttl = ttl
        self.timeout = timeout
        self.retry_after = retry_after
        self.max_pending = max_pending
        self.stats: Counter[tuple[str, str]] = Counter()
        """Lookups by ``(query type, outcome)``: hit, miss, bypass, error; and
        ``("invalidation", ok|error)``."""
        self._lookup = client.register_script(_LOOKUP)
        self._pending: dict[str, _Pending] = {}
        self._dirty = False
        self._down_until = 0.0
        self._lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls, url: str, rules: Callable[[type[Query]], Registration | None], **options: Any
    ) -> RedisQueryCache:
        """Connect lazily to ``url`` (``redis://host:port/db``) with short socket timeouts."""
        timeout = float(options.get("timeout", 0.25))
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, rules, **options)

    # -- reads ----------------------------------------------------------------------------

    async def __call__(self, query: Any, call_next: Next) -> Any:
        """The query-bus middleware: answer from Redis, or from the handler and store it."""
        registration = self._rules(type(query))
        if registration is None or registration.cache is None:
            return await call_next(query)
        name = type(query).__name__
        if self._dirty or time.monotonic() < self._down_until:
            self.stats[name, "bypass"] += 1
            return await call_next(query)
        rule = registration.cache
        reads = registration.reads
        tags = [self._tag(p, t) for p in reads for t in (*rule.tags(query), ALL)]
        required = consistency_requirement()
        positions = [self._position_key(p) for p in reads] if required is not None else []
        ttl = rule.ttl if rule.ttl is not None else self.ttl
        digest = hashlib.blake2b(query.model_dump_json().encode(), digest_size=16).hexdigest()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._lookup(
                    keys=[*tags, *positions],
                    args=[len(tags), f"{self.prefix}:q:{name}:{digest}:", _fresh(), _ms(ttl * 4)],
                )
        except Exception as exc:
            self._failed("lookup", exc)
            self.stats[name, "error"] += 1
            return await call_next(query)
        key, value, *marks = reply
        current = required is None or all(_parse(mark) >= required for mark in marks)
        if current and value:
            try:
                cached = rule.result_type.model_validate_json(value)
            except ValidationError:
                pass  # garbage: a miss, overwritten below
            else:
                self.stats[name, "hit"] += 1
                return cached
        self.stats[name, "miss" if current else "bypass"] += 1
        result = await call_next(query)
        if isinstance(result, BaseModel):
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.set(_text(key), result.model_dump_json(), px=_ms(ttl))
            except Exception as exc:
                self._failed("store", exc)
        return result

    # -- invalidation (CommitListener) ----------------------------------------------------

    async def committed(
        self, projection: Projection, position: LogPosition, page: Sequence[RecordedEvent]
    ) -> None:
        """Give every tag the batch touched a fresh version; record the batch's position."""
        handled = projection.handled_types
        tags: set[str] = set()
        for record in page:
            if record.event.event_type in handled:
                tags.update(projection.cache_tags(record.event))
        self._add(projection.name, tags, everything=ALL in tags, position=position)
        await self._flush()

    async def rewound(self, projection: Projection) -> None:
        """Invalidate everything cached from the projection; its position starts over."""
        self._add(projection.name, set(), everything=True, position=LOG_START)
        await self._flush()

    async def close(self) -> None:
        """Stop retrying and close the connection pool."""
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        await self.client.aclose()

    def _add(
        self, name: str, tags: Iterable[str], *, everything: bool, position: LogPosition | None
    ) -> None:
        pending = self._pending.setdefault(name, _Pending())
        pending.tags.update(tags)
        pending.everything = pending.everything or everything
        pending.position = position
        if pending.everything or len(pending.tags) > self.max_pending:
            pending.everything = True
            pending.tags.clear()

    async def _flush(self) -> bool:
        if time.monotonic() < self._down_until:
            self._failed_flush()
            return False
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return True
            try:
                async with asyncio.timeout(self.timeout):
                    await self._write(batch)
            except Exception as exc:
                self._failed("invalidation", exc)
                for name, failed in batch.items():
                    self._requeue(name, failed)
                self._failed_flush()
                return False
            self.stats["invalidation", "ok"] += 1
            self._dirty = bool(self._pending)
            return True

    def _requeue(self, name: str, failed: _Pending) -> None:
        # Older than anything queued meanwhile: keep the newer position, merge the tags.
        newer = self._pending.get(name)
        position = failed.position
        if newer is not None and newer.position is not None:
            position = newer.position
        self._add(name, failed.tags, everything=failed.everything, position=position)

    async def _write(self, batch: dict[str, _Pending]) -> None:
        version = _fresh()
        async with self.client.pipeline(transaction=True) as pipe:
            for name, pending in batch.items():
                tags = [ALL] if pending.everything else sorted(pending.tags - {ALL})
                for tag in tags:
                    pipe.set(self._tag(name, tag), version, px=_ms(self.ttl * 4))
                if pending.position is not None:
                    pipe.set(self._position_key(name), pending.position.token())
            await pipe.execute()

    def _failed_flush(self) -> None:
        self._dirty = True
        self.stats["invalidation", "error"] += 1
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_flush(), name="cqrskit-cache-retry")

    async def _retry_flush(self) -> None:
        delay = self.retry_after
        while self._dirty:
            await asyncio.sleep(max(delay, self._down_until - time.monotonic()))
            if await self._flush():
                return
            delay = min(delay * 2, 5.0)

    def _failed(self, what: str, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            _log.warning(
                "redis %s failed (%s: %s); using the database for %.1fs",
                what,
                type(exc).__name__,
                exc,
                self.retry_after,
            )
        self._down_until = time.monotonic() + self.retry_after

    def _tag(self, projection: str, tag: str) -> str:
        return f"{self.prefix}:tag:{projection}:{tag}"

    def _position_key(self, projection: str) -> str:
        return f"{self.prefix}:pos:{projection}"


def _fresh() -> str:
    return os.urandom(12).hex()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(item: object) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return str(item)


def _parse(mark: object) -> LogPosition:
    try:
        return LogPosition.parse(_text(mark))
    except ValueError:
        return LOG_START
