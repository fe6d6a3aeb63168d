"""A stateful schemathesis run with canary secrets in the payloads (HTTP abuse, part two).

Schemathesis builds a state machine from the service's OpenAPI document plus links (added
by the test, to the document it loads): ``POST /orders`` 201 ``order_id`` feeds ``GET``,
``DELETE``, ``ship``, ``items`` and ``shipping-address`` of that order, so sequences reach
real state, not only 404s. ``POST /orders`` needs a
customer *and* a product: the test adds links to it from both creations (to the document
it loads, not the served one); each scenario starts with a valid customer and product, and
an order request that goes out without canaries is replaced by a valid order of them
(generated ones nearly never pass validation, and orders are where the links lead on).

Before each call, a canary secret (unique per value) is planted in every string of half of
the requests (body, query, path and header parameters), appended to the value in a quarter
and replacing it in another; the rest go out as generated so that state builds up.
Every response, whatever its status: no 5xx, no stack trace or source path; every error
(4xx): ``application/problem+json``, none of the hostile-input leaks (SQL, driver and table
names, file paths) and no canary. A 2xx may return a canary that was stored as data (a
customer's name), which is not an echo of rejected input.

A real uvicorn on a SQLite file serves it (the thread server of the stateless schemathesis
test). Hypothesis picks the sequences at random (its seed is in the failure report).
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.transport import Response

from tests.integration.test_http_hostile import LEAKS
from tests.integration.test_schemathesis import _ServerThread
from tests.reliability.report import record
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

CANARY = "CANARY-s3cr3t-"
"""Every planted canary starts with this; ``s3cr3t`` must never be in an error body."""
TRACES = ("Traceback", 'File "', "site-packages", ".py:", "/work/", "/usr/lib/")
SCENARIOS = TIER.pick(fast=60, full=400, soak=2000)
STEPS = TIER.pick(fast=10, full=12)
RESTARTS = 50
ADDRESS = {"street": "1 Main Street", "city": "Utrecht", "postal_code": "3511", "country": "NL"}
COVERAGE_ROUNDS = 4
ORDER_OPERATIONS = {
    "GET /api/v1/orders/{order_id}",
    "POST /api/v1/orders/{order_id}/items",
    "PUT /api/v1/orders/{order_id}/shipping-address",
    "POST /api/v1/orders/{order_id}/ship",
    "DELETE /api/v1/orders/{order_id}",
}


class Canaries:
    """Plants unique canaries in strings; counts them."""

    def __init__(self) -> None:
        self._numbers = itertools.count()
        self.planted = 0

    def plant(self, value: Any, *, replace: bool) -> Any:
        if isinstance(value, str):
            self.planted += 1
            canary = f"{CANARY}{next(self._numbers):06d}"
            return canary if replace else value + canary
        if isinstance(value, dict):
            return {key: self.plant(item, replace=replace) for key, item in value.items()}
        if isinstance(value, list):
            return [self.plant(item, replace=replace) for item in value]
        return value


def mode_of(case: Any) -> int:
    """0, 1: as generated, 2: canary appended, 3: canary instead (a function of the case)."""
    shape = repr((case.method, case.path, case.body, case.query, case.path_parameters))
    return zlib.crc32(shape.encode()) % 4


def with_order_links(url: str) -> dict[str, Any]:
    """The served OpenAPI document, plus links from new customers and products to orders.

    Schemathesis infers every other link; ``POST /orders`` takes ids from two producers,
    which it cannot infer, so it would never be reached (it is not a root either).
    """
    document: dict[str, Any] = httpx.get(f"{url}/openapi.json", timeout=10).json()
    paths = document["paths"]
    place = paths["/api/v1/orders"]["post"]["operationId"]
    links = {
        "/api/v1/customers": {"customer_id": "$response.body#/customer_id"},
        "/api/v1/products": {"items": [{"product_id": "$response.body#/product_id"}]},
    }
    for path, body in links.items():
        created = paths[path]["post"]["responses"]["201"]
        created["links"] = {"PlaceOrder": {"operationId": place, "requestBody": body}}
    # Explicit links turn inference off: spell out the order's own links too.
    order = {"order_id": "$response.body#/order_id"}
    placed = paths["/api/v1/orders"]["post"]["responses"]["201"]
    placed["links"] = {
        f"{method}{path}".replace("/", "_"): {
            "operationId": paths[path][method]["operationId"],
            "parameters": order,
        }
        for path in paths
        if path.startswith("/api/v1/orders/{order_id}")
        for method in paths[path]
    }
    return document


def seed_ids(url: str) -> dict[str, str]:
    customer = {"name": "Ada", "email": "ada@example.com"}
    product = {"name": "Widget", "unit_price": "2.00", "stock": 1_000_000}
    with httpx.Client(base_url=f"{url}/api/v1", timeout=10) as client:
        return {
            "customer_id": client.post("/customers", json=customer).json()["customer_id"],
            "product_id": client.post("/products", json=product).json()["product_id"],
        }


def run_scenarios(machine: Any) -> None:
    """Run ``SCENARIOS`` scenarios of ``machine``, in fresh sessions where Hypothesis balks.

    The server keeps the state of earlier scenarios, so a later one can draw differently
    from what Hypothesis recorded for the same choices and it stops with
    ``FlakyStrategyDefinition``; like schemathesis's own runner, start a new session then.
    """
    done = 0
    for _ in range(RESTARTS):
        before = machine.scenarios_run
        try:
            machine.run(
                settings=settings(
                    max_examples=SCENARIOS - done,
                    stateful_step_count=STEPS,
                    # Shrinking or replaying against a server that kept the state of the
                    # earlier scenarios means nothing: generate only.
                    phases=[Phase.generate],
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                    database=None,
                )
            )
            return
        except FlakyStrategyDefinition:
            done += machine.scenarios_run - before
            if done >= SCENARIOS:
                return
    raise AssertionError(f"Hypothesis balked {RESTARTS} times; {done} scenarios ran")


def header(response: Response, name: str) -> str:
    values = response.headers.get(name.lower(), [])
    return values[0] if values else ""


def check(response: Response, label: str) -> None:
    """The properties every answer has (schemathesis ran its own checks before)."""
    text = response.content.decode(errors="replace")
    where = (label, response.status_code, text[:300])
    for trace in TRACES:
        assert trace not in text, where
    if response.status_code >= 400:
        assert header(response, "content-type") == "application/problem+json", where
        for leak in LEAKS:
            assert leak not in text, where
        assert "s3cr3t" not in text, where


def test_stateful_run_with_canaries_answers_safely(tmp_path: Path) -> None:
    statuses: Counter[tuple[str, int]] = Counter()
    canaries = Canaries()
    with _ServerThread(f"sqlite:///{tmp_path}/stateful.db") as url:
        # The service's API (health, metrics and admin are in the stateless run). Valid
        # requests only: the canaries are the hostile part, and invalid creations would
        # leave no state to walk (the stateless run sends the invalid ones).
        schema = schemathesis.openapi.from_dict(with_order_links(url)).include(
            path_regex="^/api/v1/"
        )
        schema.config.generation.update(modes=[GenerationMode.POSITIVE])
        base = cast(Any, schema.as_state_machine())

        class Machine(base):  # type: ignore[misc, valid-type]
            scenarios_run: ClassVar[int] = 0
            known: dict[str, str]

            def setup(self) -> None:
                # A valid customer and a well-stocked product to order, whatever the
                # generated creations come to (generated names often fail validation).
                self.known = seed_ids(url)
                type(self).scenarios_run += 1

            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                return {"base_url": url, "timeout": 10}

            def before_call(self, case: Any) -> None:
                mode = mode_of(case)
                if mode < 2:
                    self._use_known_ids(case)
                    return
                replace = mode == 3
                for part in ("body", "query", "path_parameters", "headers"):
                    value = getattr(case, part, None)
                    if value:
                        setattr(case, part, canaries.plant(value, replace=replace))

            def _use_known_ids(self, case: Any) -> None:
                # Generated orders nearly never pass validation (names, prices, addresses)
                # and an order is where the links lead on from: place a valid one.
                if case.operation.label == "POST /api/v1/orders":
                    case.body = {
                        "customer_id": self.known["customer_id"],
                        "items": [
                            {
                                "product_id": self.known["product_id"],
                                "quantity": 1,
                                "unit_price": "2.00",
                            }
                        ],
                        "shipping_address": ADDRESS,
                    }

            def after_call(self, response: Response, case: Any) -> None:
                super().after_call(response, case)
                statuses[(case.operation.label, response.status_code)] += 1
                if response.status_code == 201:
                    created = response.json()
                    for key in ("customer_id", "product_id"):
                        if isinstance(created, dict) and key in created:
                            self.known[key] = created[key]

            def validate_response(
                self, response: Response, case: Any, *args: Any, **kwargs: Any
            ) -> None:
                case.validate_response(
                    response,
                    checks=[not_a_server_error, response_schema_conformance],
                    transport_kwargs=kwargs or None,
                )
                check(response, case.operation.label)

        # Which links a run follows is random; a short run may walk from an order to one
        # operation only. Run more scenarios (bounded) until it reached at least two.
        for _ in range(COVERAGE_ROUNDS):
            run_scenarios(Machine)
            if len({label for label, _ in statuses} & ORDER_OPERATIONS) >= 2:
                break

    requests = sum(statuses.values())
    scenarios = Machine.scenarios_run
    five_xx = sum(n for (_, status), n in statuses.items() if status >= 500)
    ok = {label for (label, status), n in statuses.items() if 200 <= status < 300}
    record(
        "http_stateful",
        requests=requests,
        scenarios=scenarios,
        operations=len({label for label, _ in statuses}),
        canaries_planted=canaries.planted,
        errors_4xx=sum(n for (_, status), n in statuses.items() if 400 <= status < 500),
        order_operations_called=len({label for label, _ in statuses} & ORDER_OPERATIONS),
        order_operations_2xx=len(ok & ORDER_OPERATIONS),
        five_xx=five_xx,
        leaks=0,
    )
    assert five_xx == 0
    assert scenarios >= SCENARIOS
    assert canaries.planted > requests // 4, (canaries.planted, requests)
    # The run reached real state: orders were placed and their links followed (generated
    # item and address bodies are mostly rejected, so their 2xx count is only a figure).
    assert ("POST /api/v1/orders", 201) in statuses, statuses
    called = {label for label, _ in statuses} & ORDER_OPERATIONS
    assert len(called) >= 2, sorted(called)
