"""The ``/ui`` dashboard in headless Chromium against a real server (SQLite; one on PostgreSQL).

The service is the orders service plus the ``vip`` projection of
:mod:`tests.integration.test_deadletters_cli`, which parks the customers named in ``BROKEN``
(a poison event). Orders and customers are created through the HTTP API, as a client would;
the assertions read only what the page shows, waiting (bounded) for the page's polling to
catch up. Each state is saved as a screenshot (see ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

from cqrskit.http.ui import CONTENT_SECURITY_POLICY
from cqrskit.messages import LOG_START, utc_now
from cqrskit.store.protocol import ANY_VERSION, StreamAppend
from tests.browser.conftest import Screenshots
from tests.integration import test_deadletters_cli as fixture_service
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve
from tests.integration.test_http_health import register
from tests.integration.test_http_orders import customer, order, product
from tests.integration.test_poison_events import Counted
from tests.reliability.tier import TIER

pytestmark = pytest.mark.browser

WAIT_MS = DEADLINE_SECONDS * 1000
"""Bound on every wait for the page (polls every 1.5 s): a bound, not a timing assertion."""
ADMIN_KEY = "ops-secret-key"
VIEWER_KEY = "viewer-secret-key"
KEYS = f"{ADMIN_KEY}=ada:admin,{VIEWER_KEY}=bob"
EVENTS_PAGE = 50
LARGE_LOG = TIER.pick(fast=3_000, full=300_000)
"""Events in the log the event browser pages through (``CQRSKIT_FAULT_TIER=full``: 300k)."""
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(autouse=True)
def _poison_free() -> Iterator[None]:
    fixture_service.BROKEN.clear()
    yield
    fixture_service.BROKEN.clear()


@asynccontextmanager
async def dashboard(database_url: str, **settings: Any) -> AsyncIterator[Served]:
    async with serve(database_url, service=fixture_service.service, **settings) as served:
        yield served


async def open_ui(page: Page, api: Served) -> None:
    await page.goto(f"{api.url}/ui")


def projection_row(page: Page, name: str) -> Any:
    return page.locator(f'#projections tbody tr[data-projection="{name}"]')


async def test_positions_advance_as_orders_are_created(
    page: Page, screenshots: Screenshots, database_url: str
) -> None:
    async with dashboard(database_url) as api:
        await open_ui(page, api)
        rows = page.locator("#projections tbody tr")
        names = [runner for runner in api.runtime.runners]
        await expect(rows).to_have_count(len(names), timeout=WAIT_MS)
        await expect(page.locator("#events-empty")).to_be_visible(timeout=WAIT_MS)
        start = (await api.head()).token()
        await expect(projection_row(page, "order_detail").locator(".position")).to_have_text(
            start, timeout=WAIT_MS
        )
        await screenshots("empty")

        ada = await customer(api, "Ada Lovelace", "ada@example.com")
        widget = await product(api, "Blue Widget", "19.99", 100)
        for quantity in (1, 2, 3):
            await order(api, ada, (widget, quantity, "19.99"))
        await api.settle()
        head = (await api.head()).token()
        assert head != start
        for name in names:
            await expect(projection_row(page, name).locator(".position")).to_have_text(
                head, timeout=WAIT_MS
            )
            await expect(projection_row(page, name).locator(".lag-events")).to_have_text("0")
        await expect(page.locator("#head")).to_have_text(head)
        # The event browser was on the log's last page: it shows the new events by itself.
        written = await api.runtime.backend.store.count_after(LOG_START)
        await expect(page.locator("#events tbody tr")).to_have_count(written, timeout=WAIT_MS)
        await expect(page.locator("#events-empty")).to_be_hidden()
        await expect(page.locator("#c-total")).to_have_text(re.compile(r"^[1-9]"), timeout=WAIT_MS)
        await screenshots("advanced")

        # The API goes away: a banner says so, the last values stay; it clears on recovery.
        async def unreachable(route: Route) -> None:
            await route.abort()

        await page.route("**/admin/**", unreachable)
        banner = page.locator("#banner")
        await expect(banner).to_be_visible(timeout=WAIT_MS)
        await expect(banner).to_contain_text("unreachable")
        await expect(projection_row(page, "order_detail").locator(".position")).to_have_text(head)
        await screenshots("unreachable")
        await page.unroute("**/admin/**", unreachable)
        await expect(banner).to_be_hidden(timeout=WAIT_MS)


async def test_a_poison_event_is_flagged_then_retried_from_the_page(
    page: Page, screenshots: Screenshots, sqlite_url: str
) -> None:
    async with dashboard(sqlite_url) as api:
        await open_ui(page, api)
        await expect(page.locator("#dead-empty")).to_be_visible(timeout=WAIT_MS)
        await expect(projection_row(page, "vip")).to_have_attribute("data-flagged", "false")

        fixture_service.BROKEN.add("Mallory")
        for name in ("Ada", "Mallory", "Bob"):
            await register(api, name)
        vip = projection_row(page, "vip")
        await expect(vip).to_have_attribute("data-flagged", "true", timeout=WAIT_MS)
        await expect(vip.locator(".parked")).to_have_text("1")
        await expect(vip.locator(".state")).to_contain_text("1 parked")
        dead = page.locator('#dead tbody tr[data-projection="vip"]')
        await expect(dead).to_have_count(1, timeout=WAIT_MS)
        await expect(dead).to_contain_text("cannot project Mallory")
        stream = await dead.get_attribute("data-stream")
        assert stream is not None
        await expect(page.locator("#dead-empty")).to_be_hidden()
        await screenshots("flagged")

        fixture_service.BROKEN.discard("Mallory")  # the handler is fixed
        retry = page.get_by_role("button", name=f"Retry stream {stream} in vip")
        await retry.focus()
        await page.keyboard.press("Enter")  # buttons work from the keyboard
        await expect(page.locator("#status")).to_contain_text(
            f"Retried stream {stream} in vip: 1 applied", timeout=WAIT_MS
        )
        await expect(page.locator("#dead-empty")).to_be_visible(timeout=WAIT_MS)
        await expect(vip).to_have_attribute("data-flagged", "false", timeout=WAIT_MS)
        await expect(vip.locator(".parked")).to_have_text("0")
        await screenshots("recovered")
        assert await fixture_service_names(api) == ["Ada", "Bob", "Mallory"]


async def fixture_service_names(api: Served) -> list[str]:
    rows = await api.runtime.backend.read_models.fetch(fixture_service.VIP_ROWS)
    return [row["name"] for row in rows]


async def test_a_rebuild_runs_from_the_page_to_done(
    page: Page, screenshots: Screenshots, sqlite_url: str
) -> None:
    async with dashboard(sqlite_url) as api:
        ids = await asyncio.gather(
            *(customer(api, f"Customer{n}", f"c{n}@example.com") for n in range(40))
        )
        await api.settle()
        head = (await api.head()).token()
        await open_ui(page, api)
        row = projection_row(page, "customer_summary")
        await expect(row.locator(".position")).to_have_text(head, timeout=WAIT_MS)

        await page.get_by_role("button", name="Rebuild customer_summary").click()
        progress = row.locator("progress")
        await expect(progress).to_be_visible(timeout=WAIT_MS)
        await screenshots("running")
        text = row.get_by_test_id("rebuild-text")
        await expect(text).to_have_attribute("data-state", "done", timeout=WAIT_MS)
        await expect(text).to_contain_text("Rebuild done")
        assert await progress.get_attribute("value") == "100"
        await expect(page.locator("#status")).to_contain_text("Rebuild of customer_summary done")
        await expect(row.get_by_role("button", name="Rebuild customer_summary")).to_be_enabled()
        await expect(row.locator(".position")).to_have_text(head, timeout=WAIT_MS)
        await screenshots("done")
        for customer_id in (ids[0], ids[-1]):  # the rebuilt read model answers
            answer = await api.client.get(f"/api/v1/customers/{customer_id}/summary")
            assert answer.status_code == 200, answer.text


async def test_the_event_browser_pages_and_shows_a_streams_metadata(
    page: Page, screenshots: Screenshots, sqlite_url: str
) -> None:
    async with dashboard(sqlite_url, api_keys=KEYS) as api:
        api.client.headers["X-API-Key"] = ADMIN_KEY
        correlation = str(uuid.uuid4())
        marked = await api.client.post(
            "/api/v1/customers",
            json={"name": "Grace", "email": "grace@example.com"},
            headers={"X-Correlation-ID": correlation},
        )
        assert marked.status_code == 201, marked.text
        stream = f"customer-{marked.json()['customer_id']}"
        total = EVENTS_PAGE + 15
        await asyncio.gather(*(register(api, f"Customer{n}") for n in range(total - 1)))
        await api.settle()
        records = await api.runtime.backend.store.read_all(after=LOG_START, limit=total)
        assert len(records) == total
        assert await api.runtime.backend.store.count_after(LOG_START) == total
        first, second = records[0], records[EVENTS_PAGE]

        await open_ui(page, api)
        await page.get_by_label("Admin API key").fill(ADMIN_KEY)
        await page.get_by_role("button", name="Use this key").click()
        events = page.locator("#events tbody tr")
        await expect(events).to_have_count(EVENTS_PAGE, timeout=WAIT_MS)
        await expect(events.first).to_have_attribute("data-position", first.position.token())
        await expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
        await screenshots("page-1")

        await page.get_by_role("button", name="Next page").click()
        await expect(events.first).to_have_attribute(
            "data-position", second.position.token(), timeout=WAIT_MS
        )
        await expect(events).to_have_count(total - EVENTS_PAGE)
        await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
        await expect(page.locator("#events-page")).to_contain_text("Page 2")
        await screenshots("page-2")

        await page.get_by_role("button", name="Previous page").click()
        await expect(events.first).to_have_attribute(
            "data-position", first.position.token(), timeout=WAIT_MS
        )
        await expect(events).to_have_count(EVENTS_PAGE)

        await page.get_by_role("button", name=f"Show the history of stream {stream}").click()
        history = page.locator("#stream-events tbody tr")
        await expect(history).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#stream-id")).to_have_text(stream)
        await expect(history.locator(".user")).to_have_text("ada")
        await expect(history.locator(".correlation")).to_have_text(correlation)
        await expect(history.locator(".causation")).to_have_text(UUID_TEXT)
        await expect(history).to_contain_text("CustomerRegistered")
        await expect(page.locator("#stream-heading")).to_be_focused()
        await screenshots("stream")


async def test_with_auth_on_the_page_asks_for_a_key_and_shows_no_data(
    page: Page, screenshots: Screenshots, sqlite_url: str
) -> None:
    async with dashboard(sqlite_url, api_keys=KEYS) as api:
        shell = await api.client.get("/ui")  # anonymous: the shell is public, and empty
        assert shell.status_code == 200
        assert shell.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "<script>" not in shell.text  # the script is a file, never inline
        api.client.headers["X-API-Key"] = ADMIN_KEY
        await register(api, "Ada")
        await api.settle()

        await open_ui(page, api)
        auth = page.locator("#auth")
        await expect(auth).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#auth-message")).to_contain_text("enter an API key")
        await expect(page.locator("#dashboard")).to_be_hidden()
        await expect(page.locator("#status")).to_contain_text("401")
        await expect(page.get_by_label("Admin API key")).to_be_focused()
        body = await page.locator("body").inner_text()
        for name in api.runtime.runners:
            assert name not in body
        await expect(page.locator("#projections tbody tr")).to_have_count(0)
        await screenshots("prompt")

        await page.get_by_label("Admin API key").fill(VIEWER_KEY)
        await page.get_by_role("button", name="Use this key").click()
        await expect(page.locator("#auth-message")).to_contain_text(
            "does not have the admin role", timeout=WAIT_MS
        )
        await expect(page.locator("#dashboard")).to_be_hidden()
        await screenshots("forbidden")

        await page.get_by_label("Admin API key").fill("not-a-key")
        await page.get_by_role("button", name="Use this key").click()
        await expect(page.locator("#auth-message")).to_contain_text(
            "was not accepted", timeout=WAIT_MS
        )
        await expect(page.locator("#dashboard")).to_be_hidden()

        await page.get_by_label("Admin API key").fill(ADMIN_KEY)
        await page.get_by_role("button", name="Use this key").click()
        await expect(projection_row(page, "vip")).to_be_visible(timeout=WAIT_MS)
        await expect(auth).to_be_hidden()
        stored = await page.evaluate("sessionStorage.getItem('cqrskit.apiKey')")
        assert stored == ADMIN_KEY


async def test_a_large_log_is_browsed_one_page_at_a_time(
    page: Page, screenshots: Screenshots, sqlite_url: str
) -> None:
    async with dashboard(sqlite_url) as api:
        store = api.runtime.backend.store
        streams, per_stream = 10, 100
        for chunk in range(LARGE_LOG // (streams * per_stream)):
            await store.append(
                *(
                    StreamAppend(
                        f"counter-{chunk}-{s}",
                        ANY_VERSION,
                        [Counted(n=n, occurred_at=utc_now()) for n in range(per_stream)],
                    )
                    for s in range(streams)
                )
            )
        assert await store.count_after(LOG_START) == LARGE_LOG
        wanted = await store.read_all(after=LOG_START, limit=3 * EVENTS_PAGE + 1)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))

        await open_ui(page, api)
        events = page.locator("#events tbody tr")
        await expect(events).to_have_count(EVENTS_PAGE, timeout=WAIT_MS)
        for shown in range(1, 4):
            await page.get_by_role("button", name="Next page").click()
            await expect(page.locator("#events-page")).to_contain_text(
                f"Page {shown + 1}", timeout=WAIT_MS
            )
            first = wanted[shown * EVENTS_PAGE].position.token()
            await expect(events.first).to_have_attribute("data-position", first)
            await expect(events).to_have_count(EVENTS_PAGE)
        await screenshots("page-4")

        # Every read of the log asked for one page; the whole log was never requested.
        reads = [url for url in requested if "/admin/events" in url]
        assert len(reads) == 4, reads
        assert all(f"limit={EVENTS_PAGE}" in url for url in reads), reads
