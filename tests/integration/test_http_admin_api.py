"""The JSON admin API the operator dashboard reads, through a real server on SQLite and PostgreSQL.

The service is the orders service plus two projections of this module: ``gated``, which
lists customers in a table and whose handler fails on the customer named ``Gate`` while
:data:`GATE` is closed (so a rebuild can be held mid-way, deterministically), and
``tableless``, which declares no tables (so it cannot be rebuilt blue/green).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import pytest

from cqrskit.messages import LOG_START
from cqrskit.projections.generations import live_tables
from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import Statement, sql
from orders.customer import CustomerRegistered
from orders.service import service as orders_service
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve
from tests.integration.test_http_hostile import assert_safe_rejection

API = "/api/v1"
BATCH = 4
GATE = {"closed": False}
SECRET = "handler-secret-7c1e"
EVENT_KEYS = {
    "position",
    "stream_id",
    "version",
    "event_type",
    "event_id",
    "occurred_at",
    "recorded_at",
    "metadata",
    "data",
}
STATUS_KEYS = {
    "projection",
    "state",
    "applied",
    "total",
    "percent",
    "eta_seconds",
    "error",
    "started_at",
    "finished_at",
}


class Gated(Projection):
    """Customers by name; fails on ``Gate`` while the gate is closed."""

    name = "gated"
    max_retries: ClassVar[int] = 10_000
    tables = ("gated_customers",)
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS gated_customers (customer_id text PRIMARY KEY,"
            " name text NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM gated_customers"),)

    @on(CustomerRegistered)
    def _registered(self, event: CustomerRegistered) -> Iterator[Statement]:
        if event.name == "Gate" and GATE["closed"]:
            raise ValueError(f"SELECT {SECRET} FROM gated_customers")  # noqa: S608 (a canary)
        yield sql("INSERT INTO gated_customers (customer_id, name) VALUES ($1, $2)")(
            event.customer_id, event.name
        )


class Tableless(Projection):
    """Declares no tables: only an in-place rebuild could rebuild it."""

    name = "tableless"


def _projections() -> list[Projection]:
    return [*orders_service.projections(), Gated(), Tableless()]


service = dataclasses.replace(orders_service, projections=_projections)


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    GATE["closed"] = False
    async with serve(database_url, service=service, projection_batch_size=BATCH) as served:
        yield served
    GATE["closed"] = False


async def register(api: Served, name: str, headers: dict[str, str] | None = None) -> str:
    response = await api.client.post(
        f"{API}/customers",
        json={"name": name, "email": f"{name.lower()}@example.com"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["customer_id"])


async def gated_rows(api: Served) -> list[tuple[str, str]]:
    generation = await live_tables(api.runtime.backend.read_models).generation(Gated())
    table = "gated_customers" if generation <= 1 else f"gated_customers__g{generation}"
    # The table name is this module's constant plus a generation number; nothing is input.
    query = sql(f"SELECT customer_id, name FROM {table} ORDER BY customer_id")  # noqa: S608
    rows = await api.runtime.backend.read_models.fetch(query)
    return [(str(row["customer_id"]), str(row["name"])) for row in rows]


async def rebuild_status(api: Served, name: str) -> dict[str, Any]:
    response = await api.client.get(f"/admin/projections/{name}/rebuild")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == STATUS_KEYS
    return body


async def until_status(api: Served, name: str, *, done: Any) -> dict[str, Any]:
    """Poll the rebuild status until ``done(status)``; every status seen must be sane."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        status = await rebuild_status(api, name)
        assert 0 <= status["applied"] <= max(status["total"], status["applied"])
        assert 0.0 <= status["percent"] <= 100.0
        if done(status):
            return status
        assert status["state"] == "running", status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.02)


async def all_events(api: Served) -> list[Any]:
    await api.visible_head()  # on PostgreSQL a fresh commit is readable a moment later
    return await api.runtime.backend.store.read_all(after=LOG_START, limit=100_000)


async def test_admin_projections_is_the_health_body_and_200_when_failing(api: Served) -> None:
    await register(api, "Ada")
    await api.settle()
    admin = await api.client.get("/admin/projections")
    health = await api.client.get("/health/projections")
    assert admin.status_code == health.status_code == 200
    a, h = admin.json(), health.json()
    assert set(a) == set(h) == {"status", "head", "projections"}
    assert a["head"] == h["head"]
    # Throughput, ages and a blocking transaction elsewhere in the cluster may move between
    # the two calls; what a settled log decides may not.
    stable = ("name", "position", "head", "lag_events", "failures", "parked")
    assert [[p[k] for k in stable] for p in a["projections"]] == [
        [p[k] for k in stable] for p in h["projections"]
    ]
    assert [set(p) for p in a["projections"]] == [set(p) for p in h["projections"]]

    GATE["closed"] = True  # the live runner now fails on Gate, and gives up after no retries
    api.runtime.runners["gated"].max_retries = 0
    await register(api, "Gate")
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (health := await api.client.get("/health/projections")).status_code != 503:
        assert time.monotonic() < deadline, health.text
        await asyncio.sleep(0.02)
    admin = await api.client.get("/admin/projections")
    assert admin.status_code == 200
    assert admin.json()["status"] == "failing"
    gated = next(p for p in admin.json()["projections"] if p["name"] == "gated")
    assert (gated["state"], gated["level"]) == ("failed", "fail")


async def test_rebuild_reports_progress_and_runs_to_done_keeping_the_read_model(
    api: Served,
) -> None:
    assert (await rebuild_status(api, "gated"))["state"] == "idle"
    for n in range(3 * BATCH):
        await register(api, f"Before{n}")
    await register(api, "Gate")
    for n in range(BATCH):
        await register(api, f"After{n}")
    await api.settle()
    before = await gated_rows(api)
    assert len(before) == 4 * BATCH + 1

    GATE["closed"] = True  # the shadow generation will get stuck at Gate
    started = await api.client.post("/admin/projections/gated/rebuild")
    assert started.status_code == 202, started.text
    assert started.json() == {"projection": "gated", "state": "running"}

    stuck = await until_status(api, "gated", done=lambda s: s["applied"] >= 3 * BATCH)
    assert stuck["state"] == "running"
    assert stuck["total"] == len(await all_events(api))
    assert stuck["applied"] < stuck["total"]
    assert 0.0 < stuck["percent"] < 100.0
    assert stuck["error"] is None
    assert stuck["finished_at"] is None
    assert stuck["started_at"] is not None
    health = (await api.client.get("/admin/projections")).json()
    gated = next(p for p in health["projections"] if p["name"] == "gated")
    assert gated["state"] == "rebuilding"
    assert gated["rebuild"]["applied"] >= 3 * BATCH

    again = await api.client.post("/admin/projections/gated/rebuild")
    assert_safe_rejection(again, 409)
    assert again.json()["type"] == "urn:cqrskit:problem:rebuild-running"
    assert await gated_rows(api) == before  # queries still read the old generation

    GATE["closed"] = False
    await register(api, "During")  # the live generation keeps following the log meanwhile
    done = await until_status(api, "gated", done=lambda s: s["state"] == "done")
    assert done["applied"] == done["total"] >= len(before)
    assert done["percent"] == 100.0
    assert done["eta_seconds"] is None
    assert done["error"] is None
    assert done["started_at"] == stuck["started_at"]
    assert done["finished_at"] is not None
    assert done["finished_at"] >= done["started_at"]
    await api.settle()
    after = await gated_rows(api)
    assert sorted(name for _, name in after) == sorted([*(n for _, n in before), "During"])
    assert await live_tables(api.runtime.backend.read_models).generation(Gated()) == 2
    projections = (await api.client.get("/admin/projections")).json()["projections"]
    assert next(p for p in projections if p["name"] == "gated")["state"] == "running"


async def test_failed_rebuild_reports_an_error_without_its_text_and_can_start_again(
    api: Served,
) -> None:
    for name in ("Ada", "Gate", "Bob"):
        await register(api, name)
    await api.settle()
    before = await gated_rows(api)
    GATE["closed"] = True
    gated = api.runtime.runners["gated"].projection
    assert isinstance(gated, Gated)
    gated.max_retries = 0  # type: ignore[misc]  # this instance only (a ClassVar elsewhere)
    started = await api.client.post("/admin/projections/gated/rebuild")
    assert started.status_code == 202, started.text
    failed = await until_status(api, "gated", done=lambda s: s["state"] == "failed")
    assert failed["error"] is not None
    assert "CustomerRegistered" in failed["error"]
    for leak in (SECRET, "SELECT", "Traceback", "gated_customers"):
        assert leak not in json.dumps(failed)
    assert failed["finished_at"] is not None
    assert await gated_rows(api) == before

    GATE["closed"] = False
    restarted = await api.client.post("/admin/projections/gated/rebuild")
    assert restarted.status_code == 202, restarted.text
    done = await until_status(api, "gated", done=lambda s: s["state"] == "done")
    assert done["error"] is None
    assert await gated_rows(api) == before


async def test_rebuild_of_an_orders_projection_keeps_its_answers(api: Served) -> None:
    customer = await register(api, "Ada")
    await api.settle()
    path = f"{API}/customers/{customer}/summary"
    before = (await api.get_eventually(path)).json()
    response = await api.client.post("/admin/projections/customer_summary/rebuild")
    assert response.status_code == 202, response.text
    await until_status(api, "customer_summary", done=lambda s: s["state"] == "done")
    assert (await api.client.get(path)).json() == before


async def test_rebuild_refuses_unknown_and_tableless_projections(api: Served) -> None:
    for method in ("GET", "POST"):
        missing = await api.client.request(method, "/admin/projections/nope/rebuild")
        assert assert_safe_rejection(missing, 404)["detail"] == "projection not found"
    tableless = await api.client.post("/admin/projections/tableless/rebuild")
    assert assert_safe_rejection(tableless, 409)["type"].endswith("rebuild-unsupported")
    assert (await rebuild_status(api, "tableless"))["state"] == "idle"


async def test_event_pages_cover_the_log_in_order_without_duplicates(api: Served) -> None:
    correlation = str(uuid.uuid4())
    for n in range(11):
        await register(api, f"Page{n}", headers={"X-Correlation-ID": correlation})
    log = await all_events(api)
    assert len(log) == 11
    pages, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 3} if after is None else {"limit": 3, "after": after}
        response = await api.client.get("/admin/events", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next", "head"}
        assert body["head"] == log[-1].position.token()
        pages.append(body["items"])
        after = body["next"]
        if after is None:
            break
        assert after == body["items"][-1]["position"]
    assert [len(page) for page in pages] == [3, 3, 3, 2]
    items = [item for page in pages for item in page]
    assert [i["position"] for i in items] == [r.position.token() for r in log]
    assert [i["event_id"] for i in items] == [str(r.event.event_id) for r in log]
    first, record = items[0], log[0]
    assert set(first) == EVENT_KEYS
    assert first["event_type"] == "CustomerRegistered"
    assert first["stream_id"] == record.event.stream_id
    assert first["version"] == 1
    assert first["recorded_at"] == record.recorded_at.isoformat()
    assert first["data"] == {
        "customer_id": getattr(record.event, "customer_id", None),
        "name": "Page0",
        "email": "page0@example.com",
    }
    meta = first["metadata"]
    assert set(meta) == {"user_id", "causation_id", "correlation_id"}
    assert meta["correlation_id"] == correlation
    assert meta["user_id"] is None
    assert meta["causation_id"] == str(record.event.metadata.causation_id)

    at_end = (await api.client.get("/admin/events", params={"after": body["head"]})).json()
    assert at_end["items"] == []
    assert at_end["next"] is None


async def test_stream_history_pages_by_version(api: Served) -> None:
    added = await api.client.post(
        f"{API}/products", json={"name": "Widget", "unit_price": "2.50", "stock": 1}
    )
    product = added.json()["product_id"]
    for quantity in (1, 2, 3, 4):
        restocked = await api.client.post(
            f"{API}/products/{product}/restock", json={"quantity": quantity}
        )
        assert restocked.status_code == 200, restocked.text
    stream = f"product-{product}"
    pages, after = [], 0
    while after is not None:
        response = await api.client.get(
            f"/admin/streams/{stream}/events", params={"after_version": after, "limit": 2}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"stream_id", "items", "next_version"}
        assert body["stream_id"] == stream
        pages.append([(i["version"], i["event_type"]) for i in body["items"]])
        after = body["next_version"]
    assert pages == [
        [(1, "ProductAdded"), (2, "ProductRestocked")],
        [(3, "ProductRestocked"), (4, "ProductRestocked")],
        [(5, "ProductRestocked")],
    ]
    whole = (await api.client.get(f"/admin/streams/{stream}/events")).json()
    assert whole["next_version"] is None
    first = whole["items"][0]
    assert set(first) == EVENT_KEYS
    assert first["data"]["unit_price"] == "2.50"
    log = {r.event.event_id: r for r in await all_events(api)}
    for item in whole["items"]:
        assert item["position"] == log[uuid.UUID(item["event_id"])].position.token()
    past = await api.client.get(f"/admin/streams/{stream}/events", params={"after_version": 5})
    assert past.status_code == 200
    assert past.json()["items"] == []
    assert past.json()["next_version"] is None


async def test_stats_count_commands_requests_and_show_the_head(api: Served) -> None:
    for name in ("Ada", "Bob"):
        await register(api, name)
    refused = await api.client.post(f"{API}/products/{uuid.uuid4()}/restock", json={"quantity": 1})
    assert refused.status_code == 404
    missing = await api.client.get("/admin/streams/nobody/events")
    assert missing.status_code == 404
    response = await api.client.get("/admin/stats")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"commands", "requests", "events"}
    assert body["commands"]["total"] == 3
    assert body["commands"]["failed"] == 1
    assert body["commands"]["per_second"] > 0
    assert body["requests"]["total"] >= 4  # this request is counted once it has answered
    assert body["requests"]["errors_4xx"] == 2
    assert body["requests"]["errors_5xx"] == 0
    assert body["events"] == {"head": (await api.visible_head()).token()}


HOSTILE: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("GET", "/admin/events", {"after": "not-a-token"}, 422),
    ("GET", "/admin/events", {"after": "1.2.3"}, 422),
    ("GET", "/admin/events", {"after": "-1.5"}, 422),
    ("GET", "/admin/events", {"after": "1." + "9" * 20}, 422),
    ("GET", "/admin/events", {"after": "9" * 20 + ".1"}, 422),
    ("GET", "/admin/events", {"after": "0." + "1" * 5000}, 422),
    ("GET", "/admin/events", {"after": "٣.٣"}, 422),
    ("GET", "/admin/events", {"limit": "100000000"}, 422),
    ("GET", "/admin/events", {"limit": "501"}, 422),
    ("GET", "/admin/events", {"limit": "0"}, 422),
    ("GET", "/admin/events", {"limit": "-5"}, 422),
    ("GET", "/admin/events", {"limit": "1e3"}, 422),
    ("GET", "/admin/streams/x/events", {"limit": "501"}, 422),
    ("GET", "/admin/streams/x/events", {"after_version": "-1"}, 422),
    ("GET", "/admin/streams/x/events", {"after_version": "9" * 30}, 422),
    ("GET", "/admin/streams/no-such-stream/events", None, 404),
    ("GET", "/admin/streams/..%2F..%2Fetc%2Fpasswd/events", None, 404),
    ("GET", "/admin/streams/../../etc/passwd/events", None, 404),
    ("GET", "/admin/streams/x%00y/events", None, 422),
    ("GET", "/admin/streams/x%09y/events", None, 422),
    ("GET", "/admin/streams/x%0Ay/events", None, 404),  # no route matches across a newline
    ("GET", "/admin/streams/" + "s" * 10_240 + "/events", None, 422),
    ("GET", "/admin/streams/x%27%3B%20DROP%20TABLE%20events%3B%20--/events", None, 404),
    ("GET", "/admin/projections/..%2F..%2Fetc/rebuild", None, 404),
    ("POST", "/admin/projections/" + "p" * 10_240 + "/rebuild", None, 422),
    ("POST", "/admin/projections/order_summary'--/rebuild", None, 404),
    ("DELETE", "/admin/projections/gated/rebuild", None, 405),
    ("POST", "/admin/events", None, 405),
]


async def test_hostile_input_is_a_4xx_problem_that_quotes_nothing(api: Served) -> None:
    await register(api, "Ada")
    head = await api.head()
    for method, path, params, status in HOSTILE:
        # Raw paths: the client must not normalise ``..`` or re-encode what the test sends.
        url = httpx.URL(api.url).copy_with(raw_path=path.encode())
        response = await api.client.request(method, url, params=params)
        assert response.status_code == status, (method, path[:80], params, response.text)
        body = assert_safe_rejection(response, status)
        for value in (params or {}).values():
            if len(value) >= 3:
                assert value not in response.text, (path, params)
        assert "passwd" not in response.text
        assert "DROP" not in response.text
        assert "s" * 100 not in response.text
        assert "p" * 100 not in response.text
        assert body["status"] == status
    assert await api.head() == head  # nothing was written
    assert (await api.client.get("/health")).status_code == 200


async def test_shutdown_cancels_a_running_rebuild(sqlite_url: str) -> None:
    GATE["closed"] = False
    try:
        async with serve(sqlite_url, service=service, projection_batch_size=BATCH) as api:
            for name in ("Ada", "Gate", "Bob"):
                await register(api, name)
            await api.settle()
            GATE["closed"] = True  # the rebuild gets stuck at Gate and is still running at exit
            runtime = api.runtime
            started = await api.client.post("/admin/projections/gated/rebuild")
            assert started.status_code == 202, started.text
            await until_status(api, "gated", done=lambda s: s["total"] == 3)
        job = runtime.rebuilds.get(runtime.runners["gated"])
        assert job.state == "failed"
        assert job.error is not None
        assert "shutting down" in job.error
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "rebuild-gated"]
    finally:
        GATE["closed"] = False


KEYS = json.dumps(
    {
        "clerk-key-5b0d7a": {"user_id": "clerk", "roles": ["clerk"]},
        "root-key-91c4e2": {"user_id": "root", "roles": ["admin"]},
    }
)
ROUTES = [
    ("GET", "/admin/projections", 200),
    ("GET", "/admin/projections/gated/rebuild", 200),
    ("POST", "/admin/projections/gated/rebuild", 202),
    ("GET", "/admin/events", 200),
    ("GET", "/admin/streams/nobody/events", 404),
    ("GET", "/admin/stats", 200),
]


async def test_with_auth_on_every_admin_route_needs_the_admin_role(sqlite_url: str) -> None:
    GATE["closed"] = False
    async with serve(sqlite_url, service=service, api_keys=KEYS) as api:
        await register(api, "Ada", headers={"Authorization": "Bearer clerk-key-5b0d7a"})
        for method, path, _ in ROUTES:
            anonymous = await api.client.request(method, path)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["content-type"] == "application/problem+json"
            wrong = await api.client.request(method, path, headers={"X-API-Key": "nope"})
            assert wrong.status_code == 401, (method, path, wrong.text)
            clerk = await api.client.request(
                method, path, headers={"Authorization": "Bearer clerk-key-5b0d7a"}
            )
            assert clerk.status_code == 403, (method, path, clerk.text)
            assert clerk.headers["content-type"] == "application/problem+json"
            for response in (anonymous, wrong, clerk):
                assert "key-" not in response.text
        assert (await rebuild_status_as_root(api))["state"] == "idle"  # nothing was started
        for method, path, ok in ROUTES:
            root = await api.client.request(
                method, path, headers={"Authorization": "Bearer root-key-91c4e2"}
            )
            assert root.status_code == ok, (method, path, root.text)


async def rebuild_status_as_root(api: Served) -> dict[str, Any]:
    response = await api.client.get(
        "/admin/projections/gated/rebuild", headers={"Authorization": "Bearer root-key-91c4e2"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
