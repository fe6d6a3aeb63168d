"""Property tests of the whole HTTP API from its own OpenAPI document (schemathesis).

A real uvicorn server on a SQLite file runs in a thread of its own; schemathesis generates
requests for every operation (valid and invalid) and checks that no answer is a 5xx and
that every documented response matches its schema. Bounded: a few examples per operation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from cqrskit.config import Settings
from cqrskit.http import create_app

MAX_EXAMPLES = 25


class _ServerThread:
    """uvicorn serving the orders app on an ephemeral port, in its own thread and loop."""

    def __init__(self, database_url: str) -> None:
        from orders.service import service

        app = create_app(
            service,
            Settings(
                database_url=database_url,
                consistency_timeout=0.05,  # generated tokens point far ahead: do not wait
                projection_poll_interval=0.25,
            ),
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("schemathesis") / "orders.db"
    with _ServerThread(f"sqlite:///{path}") as url:
        yield url


def _check(case: Any, url: str) -> None:
    case.call_and_validate(
        base_url=url, checks=[not_a_server_error, response_schema_conformance], timeout=10
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_answers_without_5xx_and_matches_its_schema(api_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every route of the service, health and metrics
    calls: list[str] = []
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            calls.append(case.operation.label)
            _check(case, api_url)

        try:
            check()
        except Unsatisfiable:
            # An operation without parameters or body has no invalid request to send.
            assert mode is GenerationMode.NEGATIVE
    assert len(set(calls)) >= 10
