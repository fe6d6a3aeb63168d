"""Lag thresholds through a real server: a stalled projection fails the health check.

A projection is stalled when it is behind by more than the warn threshold and makes no
progress; past the fail threshold ``/health/projections`` answers 503 and the Prometheus
gauges show it. On PostgreSQL a long open transaction holds the log back: status names it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import pytest

from cqrskit.messages import LOG_START, LogPosition
from cqrskit.projections.runner import ProjectionState, RunnerStatus
from cqrskit.projections.status import LagMonitor, ProjectionLag, ProjectionStatus
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve
from tests.integration.test_http_health import register, value

WARN, FAIL = 0.2, 0.6


async def health_until(api: Served, status_code: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        response = await api.client.get("/health/projections")
        if response.status_code == status_code:
            body: dict[str, Any] = response.json()
            return body
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.05)


async def test_a_stalled_projection_turns_health_to_503_and_raises_the_gauges(
    database_url: str,
) -> None:
    # Projections are not started: nothing makes progress, so the lag only grows.
    async with serve(
        database_url, run_projections=False, lag_warn_seconds=WARN, lag_fail_seconds=FAIL
    ) as api:
        healthy = await api.client.get("/health/projections")
        assert healthy.status_code == 200
        assert healthy.json()["status"] == "ok"
        await register(api, "Ada")
        body = await health_until(api, 503)
        assert body["status"] == "failing"
        for row in body["projections"]:
            assert row["state"] == "stalled"
            assert row["level"] == "fail"
            assert row["lag_events"] >= 1
            assert row["lag_seconds"] >= FAIL
            assert row["throughput"] == 0
        text = (await api.client.get("/metrics")).text
        for name in api.runtime.runners:
            assert value(text, "cqrskit_projection_lag_seconds", projection=name) >= FAIL
            assert value(text, "cqrskit_projection_lag_events", projection=name) >= 1
            assert value(text, "cqrskit_projection_state", projection=name, state="stalled") == 1
            assert value(text, "cqrskit_projection_state", projection=name, state="running") == 0
            assert value(text, "cqrskit_projection_level", projection=name) == 2
        # Once the runners start, the projections catch up and the check passes again.
        api.runtime.start_projections()
        body = await health_until(api, 200)
        assert body["status"] == "ok"
        assert {row["state"] for row in body["projections"]} == {"running"}
        text = (await api.client.get("/metrics")).text
        name = next(iter(api.runtime.runners))
        assert value(text, "cqrskit_projection_lag_seconds", projection=name) == 0
        assert value(text, "cqrskit_projection_level", projection=name) == 0
        assert value(text, "cqrskit_projection_visible_latency_seconds_count", projection=name) >= 1
        assert value(text, "cqrskit_projection_throughput", projection=name) > 0


async def test_lag_over_the_warn_threshold_only_warns(database_url: str) -> None:
    async with serve(
        database_url, run_projections=False, lag_warn_seconds=WARN, lag_fail_seconds=3600.0
    ) as api:
        await register(api, "Ada")
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            response = await api.client.get("/health/projections")
            assert response.status_code == 200, response.text
            if response.json()["status"] == "warn":
                break
            assert time.monotonic() < deadline, response.text
            await asyncio.sleep(0.05)
        assert {row["level"] for row in response.json()["projections"]} == {"warn"}


def _status(name: str, level: str, lag_seconds: float) -> ProjectionStatus:
    lag = ProjectionLag(
        name, LOG_START, LogPosition(0, 5), 5 if lag_seconds else 0, lag_seconds, None
    )
    return ProjectionStatus(lag, "stalled" if lag_seconds else "running", level)


def test_the_monitor_logs_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(runtime=None, thresholds=None)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="cqrskit.projections.lag")
    sequence = [("ok", 0.0), ("warn", 40.0), ("warn", 41.0), ("fail", 400.0), ("fail", 401.0)]
    for level, seconds in sequence:
        monitor.observe([_status("orders", level, seconds)])
    monitor.observe([_status("orders", "ok", 0.0)])
    monitor.observe([_status("orders", "ok", 0.0)])
    records = [r for r in caplog.records if r.name == "cqrskit.projections.lag"]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in records] == [
        ("WARNING", "projection orders lag warn"),
        ("WARNING", "projection orders lag fail"),
        ("INFO", "projection orders recovered"),
    ]
    fields = records[1].projection  # type: ignore[attr-defined]
    assert fields["previous_level"] == "warn"
    assert fields["lag_seconds"] == 400.0


async def test_postgres_status_names_the_transaction_holding_the_log_back(
    postgres_url: str,
) -> None:
    async with serve(postgres_url, lag_warn_seconds=WARN, lag_fail_seconds=FAIL) as api:
        await register(api, "Ada")
        await api.settle()
        holder = await asyncpg.connect(postgres_url, server_settings={"application_name": "held"})
        try:
            transaction = holder.transaction()
            await transaction.start()
            xid = await holder.fetchval("SELECT pg_current_xact_id()::text")
            pid = await holder.fetchval("SELECT pg_backend_pid()")
            await register(api, "Bob")  # committed, but behind the held transaction's fence
            body = await health_until(api, 503)
            rows = body["projections"]
            assert all(row["lag_events"] >= 1 for row in rows)
            blocked = rows[0]["blocked_by"]
            assert blocked is not None
            assert blocked["pid"] == pid
            assert blocked["xid"] == xid
            assert blocked["application"] == "held"
            assert blocked["state"] == "idle in transaction"
            assert blocked["held_events"] >= 1
            assert blocked["xact_age_seconds"] >= 1.0
            assert "query" not in blocked
            await transaction.rollback()
        finally:
            await holder.close()
        body = await health_until(api, 200)
        assert all(row["blocked_by"] is None for row in body["projections"])


class _Publisher:
    """Stands in for the NATS publisher: only its name and live status are read."""

    name = "publisher:nats"

    def __init__(self) -> None:
        self.status = RunnerStatus(
            state=ProjectionState.FAILED, failures=3, last_error="nats: no servers available"
        )


async def test_a_failing_nats_publisher_fails_the_health_check(database_url: str) -> None:
    async with serve(database_url) as api:
        api.runtime.publisher = _Publisher()  # type: ignore[assignment]
        await register(api, "Ada")
        body = await health_until(api, 503)
        row = next(r for r in body["projections"] if r["name"] == "publisher:nats")
        assert row["state"] == "failed"
        assert row["level"] == "fail"
        assert row["failures"] == 3
        assert row["last_error"] == "nats: no servers available"
        others = [r for r in body["projections"] if r["name"] != "publisher:nats"]
        assert all(r["level"] == "ok" for r in others)
        text = (await api.client.get("/metrics")).text
        assert value(text, "cqrskit_projection_failures", projection="publisher:nats") == 3
        assert (
            value(text, "cqrskit_projection_state", projection="publisher:nats", state="failed")
            == 1
        )
        api.runtime.publisher = None
