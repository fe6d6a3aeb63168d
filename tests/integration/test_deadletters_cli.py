"""``cqrskit deadletters list | retry | skip`` against real SQLite files and PostgreSQL.

The service is the orders service plus ``vip``, a projection under the ``park`` policy whose
handler fails on customers named in :data:`BROKEN` until the test fixes it. Commands are sent
through a runtime; the CLI runs in-process (``--service`` names :data:`service`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

from typer.testing import CliRunner, Result

from cqrskit.backend import open_backend
from cqrskit.cli import app
from cqrskit.config import Settings
from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.service import Runtime
from orders.customer import CustomerRegistered, RegisterCustomer
from orders.service import service as orders_service

SERVICE = "tests.integration.test_deadletters_cli:service"
BROKEN: set[str] = set()
"""Customer names the ``vip`` handler fails on."""

VIP_ROWS = sql("SELECT customer_id, name FROM vip_customers ORDER BY seq")


class Vip(Projection):
    """Customers in registration order; parks a customer whose handler keeps failing."""

    name = "vip"
    max_retries: ClassVar[int] = 0
    on_failure: ClassVar[str] = "park"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS vip_customers (seq bigserial PRIMARY KEY,"
            " customer_id text UNIQUE NOT NULL, name text NOT NULL)",
            sqlite="CREATE TABLE IF NOT EXISTS vip_customers (seq INTEGER PRIMARY KEY"
            " AUTOINCREMENT, customer_id TEXT UNIQUE NOT NULL, name TEXT NOT NULL)",
        ),
    )
    truncate = (sql("DELETE FROM vip_customers"),)

    @on(CustomerRegistered)
    def _registered(self, event: CustomerRegistered) -> Iterator[Statement]:
        if event.name in BROKEN:
            raise ValueError(f"cannot project {event.name}")
        yield sql("INSERT INTO vip_customers (customer_id, name) VALUES ($1, $2)")(
            event.customer_id, event.name
        )


def _projections() -> list[Projection]:
    return [*orders_service.projections(), Vip()]


service = dataclasses.replace(orders_service, projections=_projections)


def cli(*args: str) -> Result:
    runner = CliRunner(env={"CQRSKIT_DATABASE_URL": None, "CQRSKIT_SERVICE": None})
    return runner.invoke(app, [*args])


def ok(*args: str) -> Result:
    result = cli(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def failed(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("error: ")
    return result.stderr


def park_customers(url: str, *names: str, broken: set[str]) -> None:
    """Register customers, with the handler failing on ``broken``; apply every projection."""
    BROKEN.clear()
    BROKEN.update(broken)

    async def work() -> None:
        runtime = await Runtime.open(service, Settings(database_url=url))
        try:
            for name in names:
                command = RegisterCustomer(
                    customer_id=uuid.uuid4(), name=name, email=f"{name.lower()}@example.com"
                )
                result = await runtime.command_bus.dispatch(command)
            await runtime.catch_up(until=result.position)
        finally:
            await runtime.close()

    asyncio.run(work())


def vip_names(url: str) -> list[str]:
    async def work() -> list[str]:
        backend = await open_backend(url, migrate=False)
        try:
            return [row["name"] for row in await backend.read_models.fetch(VIP_ROWS)]
        finally:
            await backend.close()

    return asyncio.run(work())


def listed(url: str, *extra: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        ok(
            "deadletters", "list", *extra, "--json", "--database-url", url, "--service", SERVICE
        ).stdout
    )
    return rows


def test_list_retry_after_fix_then_the_stream_flows(database_url: str) -> None:
    park_customers(database_url, "Ada", "Mallory", "Bob", broken={"Mallory"})
    rows = listed(database_url)
    assert [(r["projection"], r["status"], r["attempts"]) for r in rows] == [("vip", "parked", 1)]
    assert "cannot project Mallory" in rows[0]["error"]
    stream = rows[0]["stream_id"]
    table = ok("deadletters", "list", "--database-url", database_url, "--service", SERVICE)
    assert "vip" in table.stdout
    assert "parked" in table.stdout
    names = vip_names(database_url)
    assert names == ["Ada", "Bob"]

    still = cli(
        "deadletters",
        "retry",
        "vip",
        stream,
        "--database-url",
        database_url,
        "--service",
        SERVICE,
    )
    assert "the handler failed again" in failed(still, 1)
    assert listed(database_url)[0]["attempts"] == 2

    BROKEN.clear()  # the fix
    done = ok(
        "deadletters",
        "retry",
        "vip",
        stream,
        "--json",
        "--database-url",
        database_url,
        "--service",
        SERVICE,
    )
    assert json.loads(done.stdout)["applied"] == 1
    names = vip_names(database_url)
    assert names == ["Ada", "Bob", "Mallory"]
    assert listed(database_url, "--all") == []
    again = cli(
        "deadletters",
        "retry",
        "vip",
        stream,
        "--database-url",
        database_url,
        "--service",
        SERVICE,
    )
    assert "no parked events" in failed(again, 1)
    status = json.loads(
        ok(
            "projections",
            "status",
            "--json",
            "--database-url",
            database_url,
            "--service",
            SERVICE,
        ).stdout
    )
    assert next(r for r in status if r["name"] == "vip")["parked"] == 0


def test_skip_keeps_the_record(database_url: str) -> None:
    park_customers(database_url, "Mallory", "Eve", broken={"Mallory", "Eve"})
    rows = listed(database_url)
    assert len(rows) == 2
    status = json.loads(
        ok(
            "projections",
            "status",
            "--json",
            "--database-url",
            database_url,
            "--service",
            SERVICE,
        ).stdout
    )
    assert next(r for r in status if r["name"] == "vip")["parked"] == 2
    first = rows[0]
    bad_id = cli(
        "deadletters",
        "skip",
        "vip",
        first["stream_id"],
        "--id",
        str(rows[1]["id"]),
        "--database-url",
        database_url,
        "--service",
        SERVICE,
    )
    assert "no parked dead letter" in failed(bad_id, 1)
    ok(
        "deadletters",
        "skip",
        "vip",
        first["stream_id"],
        "--id",
        str(first["id"]),
        "--database-url",
        database_url,
        "--service",
        SERVICE,
    )
    skipped = listed(database_url, "--all")
    assert [(r["id"], r["status"]) for r in skipped] == [
        (first["id"], "skipped"),
        (rows[1]["id"], "parked"),
    ]
    assert skipped[0]["resolved_at"] is not None
    assert [r["id"] for r in listed(database_url)] == [rows[1]["id"]]
    assert vip_names(database_url) == []


def test_bad_input_gets_clean_errors(sqlite_url: str) -> None:
    ok("migrate", "--database-url", sqlite_url, "--service", SERVICE)
    unknown = cli(
        "deadletters", "retry", "nope", "s-1", "--database-url", sqlite_url, "--service", SERVICE
    )
    assert "unknown projection 'nope'" in failed(unknown, 2)
    unknown = cli("deadletters", "list", "nope", "--database-url", sqlite_url, "--service", SERVICE)
    assert "unknown projection" in failed(unknown, 2)
    malformed = cli(
        "deadletters",
        "skip",
        "vip",
        "s-1",
        "--id",
        "x1",
        "--database-url",
        sqlite_url,
        "--service",
        SERVICE,
    )
    assert malformed.exit_code == 2
    assert "Traceback" not in malformed.stdout + malformed.stderr
    negative = cli(
        "deadletters",
        "skip",
        "vip",
        "s-1",
        "--id",
        "0",
        "--database-url",
        sqlite_url,
        "--service",
        SERVICE,
    )
    assert negative.exit_code == 2
    nothing = cli(
        "deadletters", "skip", "vip", "s-1", "--database-url", sqlite_url, "--service", SERVICE
    )
    assert "no parked events in stream 's-1'" in failed(nothing, 1)
    assert (
        "no dead letters"
        in ok("deadletters", "list", "--database-url", sqlite_url, "--service", SERVICE).stdout
    )
    missing = cli(
        "deadletters", "list", "--database-url", sqlite_url + ".absent", "--service", SERVICE
    )
    failed(missing, 1)
