"""An injection corpus against every query parameter and path id of the API, on both backends.

The GET operations and their parameters come from the app's own OpenAPI document, so a new
route or parameter is covered without touching this file. Every value of the corpus goes
into every parameter in turn (the others keep valid values). Each answer must be below 500,
arrive well under a second (``pg_sleep`` and friends never run), and leak nothing; after the
whole run the event count and every table's row count are what they were.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from cqrskit.read_models.protocol import sql
from tests.integration.http_server import Served, serve
from tests.integration.test_http_hostile import setup_order

API = "/api/v1"
SLOW = 1.0
CORPUS = [
    "'",
    '"',
    "' OR '1'='1",
    "1 OR 1=1",
    "1; DROP TABLE events; --",
    "' UNION SELECT event_id, data FROM events --",
    "1) UNION SELECT NULL, NULL--",
    "pg_sleep(5)",
    "'; SELECT pg_sleep(5); --",
    "1' AND (SELECT 1 FROM pg_sleep(5)) IS NULL --",
    "randomblob(500000000)",
    "%",
    "_",
    "%_%",
    "a%",
    "\\%",
    "\x00",
    "a\x00b",
    "x" * 5000,
    "created_at; --",
    "total_amount DESC, (SELECT 1)",
    "unknown_field",
    "ada & !(bob | carol)",
    '"ada" OR bob*',
    "NEAR(ada bob)",
    "ada:*",
    "-widget",
    "^",
    "{{7*7}}",
    "../../etc/passwd",
    "\u202e\ufeff",
    "-1",
    "0",
    "99999999999999999999999",
    "NaN",
    "1e309",
]
LEAKS = ("Traceback", 'File "', ".py", "sqlite3", "asyncpg", "SELECT ", "syntax error")
WILDCARDS = {"%", "_", "%_%", "\\%"}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url) as served:
        yield served


async def _table_counts(api: Served) -> dict[str, int]:
    read_models = api.runtime.backend.read_models
    if api.runtime.backend.url.startswith("sqlite"):
        catalog = sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT LIKE '%fts_%'"
        )
    else:
        catalog = sql(
            "SELECT table_name AS name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    counts = {}
    for row in await read_models.fetch(catalog):
        name = str(row["name"])
        # The name comes from the database catalog, quoted as an identifier.
        count = sql(f'SELECT count(*) AS n FROM "{name}"')  # noqa: S608
        counts[name] = int((await read_models.fetch(count))[0]["n"])
    return counts


def _operations(document: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    found = []
    for path, item in document["paths"].items():
        get = item.get("get")
        if get is not None and path.startswith(API):
            found.append((path, list(get.get("parameters", []))))
    return found


async def test_corpus_against_every_parameter(api: Served) -> None:
    customer_id, product_id, order_id = await setup_order(api)
    await api.settle()
    valid = {"order_id": order_id, "customer_id": customer_id, "product_id": product_id}
    document = (await api.client.get("/openapi.json")).json()
    operations = _operations(document)
    assert len(operations) >= 5
    before_events = await api.head()
    before = await _table_counts(api)
    assert before  # the read models exist and were counted
    tried = 0
    for path, parameters in operations:
        for parameter in parameters:
            where, name = parameter["in"], parameter["name"]
            if where not in ("path", "query"):
                continue
            for value in CORPUS:
                url = path
                for p in parameters:
                    if p["in"] == "path":
                        chosen = value if p["name"] == name else valid[p["name"]]
                        url = url.replace("{" + p["name"] + "}", quote(str(chosen), safe=""))
                params = {name: value} if where == "query" else None
                started = time.monotonic()
                response = await api.client.get(url, params=params)
                elapsed = time.monotonic() - started
                tried += 1
                context = (path, name, value[:40], response.status_code)
                assert response.status_code < 500, (*context, response.text[:300])
                assert elapsed < SLOW, (*context, elapsed)
                for leak in LEAKS:
                    assert leak not in response.text, (*context, leak)
                if response.status_code >= 400:
                    assert response.headers["content-type"] == "application/problem+json"
                    if len(value) > 3:
                        assert value not in response.text, context
                if path.endswith("/search") and name == "q" and value in WILDCARDS:
                    assert response.status_code == 200
                    assert response.json()["total"] == 0, context  # no LIKE wildcard matches
    assert tried > 10 * len(CORPUS)
    assert await api.head() == before_events
    assert await _table_counts(api) == before
    assert (await api.client.get(f"{API}/orders/{order_id}")).status_code == 200
