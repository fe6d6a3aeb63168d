"""The ``cqrskit`` command line against real SQLite files (and PostgreSQL where cheap).

Most commands run in-process through typer's ``CliRunner``; ``serve``, ``worker`` and
``status --watch`` run as real processes and are stopped with signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from cqrskit.backend import open_backend
from cqrskit.cli import app
from cqrskit.projections.generations import LiveReadModels
from cqrskit.read_models.protocol import sql
from orders.service import service

DEADLINE = 30.0
"""Upper bound for waits on real processes (a bound, not a timing assertion)."""

ORDER_DETAIL_TABLES = (
    "order_detail_customers",
    "order_detail_products",
    "order_detail_orders",
    "order_detail_items",
)
COMMANDS = ("serve", "worker", "migrate", "demo-data", "projections", "events")


def cli(*args: str) -> Result:
    """Run the CLI in-process; the environment does not leak into the test."""
    runner = CliRunner(env={"CQRSKIT_DATABASE_URL": None, "CQRSKIT_SERVICE": None})
    return runner.invoke(app, list(args))


def ok(*args: str) -> Result:
    result = cli(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def status(url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        ok("projections", "status", "--json", "--database-url", url).stdout
    )
    return rows


def assert_clean_failure(result: Result, code: int | None = None) -> None:
    assert result.exit_code != 0
    if code is not None:
        assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr


def read_model_rows(url: str) -> dict[str, list[Mapping[str, Any]]]:
    async def read() -> dict[str, list[Mapping[str, Any]]]:
        backend = await open_backend(url, migrate=False)
        # A blue/green rebuild moves the tables to a new generation; read the live one.
        read_models = LiveReadModels.wrap(backend.read_models, service.projections())
        try:
            return {
                table: await read_models.fetch(
                    sql(f"SELECT * FROM {table} ORDER BY 1, 2")  # noqa: S608 - constant names
                )
                for table in ORDER_DETAIL_TABLES
            }
        finally:
            await backend.close()

    return asyncio.run(read())


def cqrskit_command() -> list[str]:
    script = Path(sys.executable).parent / "cqrskit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cqrskit.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def demo_url(sqlite_url: str) -> str:
    """A SQLite database holding a small demo sample, projections caught up."""
    ok("demo-data", "--orders", "40", "--database-url", sqlite_url)
    return sqlite_url


def test_every_command_has_help() -> None:
    top = ok("--help").stdout
    for command in COMMANDS:
        assert command in top
    for args in (
        ["serve"],
        ["worker"],
        ["migrate"],
        ["demo-data"],
        ["projections", "status"],
        ["projections", "rebuild"],
        ["projections", "list"],
        ["events", "show"],
        ["events", "tail"],
    ):
        text = ok(*args, "--help").stdout
        assert "--database-url" in text
        assert "--service" in text


def test_migrate_twice_is_idempotent(database_url: str) -> None:
    for _ in range(2):
        assert "migrated" in ok("migrate", "--database-url", database_url).stdout
    rows = status(database_url)
    assert {row["name"] for row in rows} >= {"order_detail", "customer_orders"}
    assert all(row["lag_events"] == 0 for row in rows)


def test_demo_data_then_rebuild_all_leaves_no_lag(database_url: str) -> None:
    loaded = ok("demo-data", "--orders", "25", "--no-catch-up", "--database-url", database_url)
    assert "OrderCreated" in loaded.stdout
    assert "commands" in loaded.stdout
    behind = status(database_url)
    assert all(row["lag_events"] > 0 for row in behind)
    ok("projections", "rebuild", "--all", "--database-url", database_url)
    caught_up = status(database_url)
    assert all(row["lag_events"] == 0 for row in caught_up)
    assert all(row["position"] == row["head"] for row in caught_up)


def test_demo_data_catches_up_by_default(demo_url: str) -> None:
    rows = status(demo_url)
    assert rows
    assert all(row["lag_events"] == 0 and row["updated_at"] for row in rows)
    table = ok("projections", "status", "--database-url", demo_url).stdout
    assert "order_detail" in table
    assert "lag events" in table


def test_rebuild_shows_progress_and_keeps_read_model_contents(database_url: str) -> None:
    ok("demo-data", "--orders", "30", "--database-url", database_url)
    before = read_model_rows(database_url)
    assert before["order_detail_orders"]
    result = ok("projections", "rebuild", "order_detail", "--database-url", database_url)
    assert "events/s" in result.stdout
    assert "rebuilt order_detail" in result.stdout
    assert read_model_rows(database_url) == before


def test_projections_list_names_every_projection() -> None:
    rows = json.loads(ok("projections", "list", "--json").stdout)
    names = {row["name"] for row in rows}
    assert {"order_detail", "customer_orders", "order_search"} <= names
    detail = next(row for row in rows if row["name"] == "order_detail")
    assert "OrderCreated" in detail["handles"]


def test_events_show_prints_history_with_metadata(demo_url: str) -> None:
    tail = json.loads(
        ok("events", "tail", "-n", "100", "--json", "--database-url", demo_url).stdout
    )
    assert len(tail) == 100
    created = next(row for row in tail if row["event_type"] == "OrderCreated")
    stream = created["stream_id"]
    history = json.loads(ok("events", "show", stream, "--json", "--database-url", demo_url).stdout)
    assert [row["version"] for row in history] == list(range(1, len(history) + 1))
    first = history[0]
    assert first["event_type"] == "OrderCreated"
    assert first["metadata"]["causation_id"]
    assert first["metadata"]["correlation_id"]
    assert first["data"]["order_id"] == created["data"]["order_id"]
    table = ok("events", "show", stream, "--database-url", demo_url).stdout
    assert "OrderCreated" in table
    assert "causation" in table
    assert first["metadata"]["causation_id"][:8] in table


def test_events_tail_is_in_log_order(demo_url: str) -> None:
    rows = json.loads(ok("events", "tail", "-n", "5", "--json", "--database-url", demo_url).stdout)
    positions = [int(row["position"].split(".")[1]) for row in rows]
    assert len(rows) == 5
    assert positions == sorted(positions)
    assert "last 5 events" in ok("events", "tail", "-n", "5", "--database-url", demo_url).stdout


@pytest.mark.parametrize(
    "stream_id",
    [
        "order-'; DROP TABLE events; --",
        'order-"quoted"',
        "order-\x00nul",
        "[bold red]markup[/]",
        "x" * 5000,
    ],
)
def test_hostile_stream_ids_fail_cleanly_and_harm_nothing(demo_url: str, stream_id: str) -> None:
    result = cli("events", "show", stream_id, "--database-url", demo_url)
    assert_clean_failure(result)
    if "markup" in stream_id:
        assert "[bold red]markup[/]" in result.stderr
    assert len(json.loads(ok("events", "tail", "--json", "--database-url", demo_url).stdout)) == 20


def test_unknown_stream_says_so(demo_url: str) -> None:
    result = cli(
        "events", "show", "order-00000000-0000-0000-0000-000000000000", "--database-url", demo_url
    )
    assert_clean_failure(result, 1)
    assert "has no events" in result.stderr


def test_unknown_projection_is_a_usage_error(demo_url: str) -> None:
    result = cli("projections", "rebuild", "no_such_projection", "--database-url", demo_url)
    assert_clean_failure(result, 2)
    assert "order_detail" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["projections", "status", "--database-url", "not a url"],
        ["projections", "status", "--database-url", "mysql://root@localhost/db"],
        ["migrate", "--database-url", "sqlite://"],
        ["projections", "list", "--service", "no.such.module:service"],
        ["projections", "list", "--service", "orders.service"],
        ["projections", "list", "--service", "orders.service:nothing"],
        ["projections", "list", "--service", "os:path"],
        ["projections", "list", "--service", "../etc/passwd:x"],
        ["projections", "rebuild"],
        ["demo-data", "--service", "orders.service:missing"],
        ["serve", "--log-level", "loud"],
    ],
)
def test_bad_input_is_a_clean_usage_error(args: list[str], sqlite_url: str) -> None:
    if "--database-url" not in args:
        args = [*args, "--database-url", sqlite_url]
    assert_clean_failure(cli(*args), 2)


def test_missing_sqlite_file_is_not_created_by_read_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nothing/here.db"
    for args in (["projections", "status"], ["events", "show", "order-1"], ["events", "tail"]):
        assert_clean_failure(cli(*args, "--database-url", url), 1)
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["projections", "status"],
        ["events", "tail"],
        ["demo-data", "--orders", "1"],
    ],
)
def test_unreachable_postgres_is_one_line(args: list[str]) -> None:
    result = cli(*args, "--database-url", "postgresql://postgres:secret@127.0.0.1:1/x")
    assert_clean_failure(result, 1)
    assert "unavailable" in result.stderr or "reach" in result.stderr
    assert "secret" not in result.output


def test_real_process_reports_errors_without_traceback(tmp_path: Path) -> None:
    bad = subprocess.run(
        [*cqrskit_command(), "migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr + bad.stdout
    good = subprocess.run(
        [*cqrskit_command(), "migrate"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "CQRSKIT_DATABASE_URL": "sqlite:///env.db"},
    )
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "env.db").exists()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(DEADLINE)


def spawn(processes: list[subprocess.Popen[str]], *args: str, cwd: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*cqrskit_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "CQRSKIT_PROJECTION_POLL_INTERVAL": "0.2"},
    )
    processes.append(process)
    return process


def spawn_worker(
    processes: list[subprocess.Popen[str]], url: str, cwd: Path
) -> subprocess.Popen[str]:
    """Start ``cqrskit worker`` and wait until it says it is following the log."""
    worker = spawn(processes, "worker", "--database-url", url, cwd=cwd)
    assert worker.stdout is not None
    assert "projections following" in worker.stdout.readline(), worker.communicate()
    return worker


def stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str]:
    process.send_signal(sig)
    out, err = process.communicate(timeout=DEADLINE)
    return out, err


def test_serve_answers_health_and_stops_on_sigterm(
    sqlite_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    server = spawn(
        processes, "serve", "--port", str(port), "--database-url", sqlite_url, cwd=tmp_path
    )
    deadline = time.monotonic() + DEADLINE
    while True:
        assert server.poll() is None, server.communicate()
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "serve did not answer /health"
            time.sleep(0.1)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    out, err = stop(server, signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why.
    assert server.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert "Traceback" not in out + err
    assert f"http://127.0.0.1:{port}" in out


def test_worker_catches_up_and_stops_on_sigterm(
    sqlite_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    ok("demo-data", "--orders", "20", "--no-catch-up", "--database-url", sqlite_url)
    assert all(row["lag_events"] > 0 for row in status(sqlite_url))
    worker = spawn_worker(processes, sqlite_url, tmp_path)
    deadline = time.monotonic() + DEADLINE
    while not all(row["lag_events"] == 0 for row in status(sqlite_url)):
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "worker did not catch up"
        time.sleep(0.1)
    # New events after the catch-up are followed live.
    ok("demo-data", "--orders", "2", "--no-catch-up", "--database-url", sqlite_url)
    while not all(row["lag_events"] == 0 for row in status(sqlite_url)):
        assert time.monotonic() < deadline, "worker did not follow new events"
        time.sleep(0.1)
    out, err = stop(worker, signal.SIGTERM)
    assert worker.returncode == 0, err
    assert "worker: stopped" in out
    assert "Traceback" not in out + err


def test_status_watch_refreshes_until_interrupted(
    demo_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    watcher = spawn(
        processes,
        "projections",
        "status",
        "--watch",
        "0.2",
        "--json",
        "--database-url",
        demo_url,
        cwd=tmp_path,
    )
    assert watcher.stdout is not None
    snapshots = [json.loads(watcher.stdout.readline()) for _ in range(2)]
    assert all(row["lag_events"] == 0 for snapshot in snapshots for row in snapshot)
    _, err = stop(watcher, signal.SIGINT)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err


def wait_for_no_lag(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not all(row["lag_events"] == 0 for row in status(url)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "projections did not catch up"
        time.sleep(0.1)


def test_rebuild_and_demo_data_beside_a_running_worker(
    database_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    ok("demo-data", "--orders", "30", "--database-url", database_url)
    worker = spawn_worker(processes, database_url, tmp_path)
    wait_for_no_lag(database_url, worker)
    # Both commands write the same projections the worker is following.
    ok("demo-data", "--orders", "30", "--database-url", database_url)
    ok("projections", "rebuild", "--all", "--batch-size", "50", "--database-url", database_url)
    wait_for_no_lag(database_url, worker)
    beside = read_model_rows(database_url)
    stop(worker, signal.SIGTERM)
    assert worker.returncode == 0
    ok("projections", "rebuild", "order_detail", "--database-url", database_url)
    assert read_model_rows(database_url) == beside
