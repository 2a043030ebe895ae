"""The operator console in headless Chromium, over ``eventbus gateway`` and the marketplace's real groups.

The ``notifications`` and ``credits`` groups run in this process on the module's topics and a SQLite database that
the gateway reads too (who handled which event, when). A completion the user cannot pay is dead-lettered by
``credits``: it shows in Dead letters within seconds; after the fix (credits granted) its replay from the page is
handled once; a read-only admin gets 403. The Flow page of a booking lists its events in causal order.

With ``EVENTBUS_CONSOLE_SCREENSHOTS=<dir>`` the pages are saved there as PNGs too
(``tests/e2e/console_screenshots.py`` does that for ``docs/screens``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from consumers import (
    ConsumerGroup,
    Database,
    GroupSettings,
    MemoryCache,
    ProcessedEventStore,
    Resources,
    run_groups,
)
from consumers.groups.credits import get_balance, grant_credits, ledger
from infra._composition import marketplace_groups, marketplace_migrations
from infra._settings import Settings
from producers import EventPublisher, correlation_scope
from schemas import SessionCompleted, SessionCreated
from tests.e2e.conftest import SECRET, Gateway, Screens, free_port

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SHOTS = os.environ.get("EVENTBUS_CONSOLE_SCREENSHOTS")


@dataclass
class Market:
    """The marketplace's groups running here, their database and a publisher on the module's topics."""

    database: Database
    publisher: EventPublisher
    groups: list[ConsumerGroup]

    async def booking(self, user: str, *, complete: bool = True) -> tuple[SessionCreated, SessionCompleted | None]:
        """A booking of ``user`` (and its completion), under the correlation id ``booking-<session id>``."""
        session_id = f"s-{uuid.uuid4().hex[:8]}"
        when = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        created = SessionCreated(
            session_id=session_id,
            coach_id="c-ada",
            coach_name="Ada Lovelace",
            user_id=user,
            client_name="Lucía Fernández",
            scheduled_at=when,
            session_type="Career mentoring",
            cost_credits=10,
            duration_minutes=60,
        )
        completed = None
        with correlation_scope(f"booking-{session_id}"):
            await self.publisher.publish(created)
            if complete:
                completed = SessionCompleted(
                    session_id=session_id,
                    coach_id="c-ada",
                    user_id=user,
                    cost_credits=10,
                    completed_at=datetime.now(UTC),
                    duration_minutes=60,
                )
                await self.publisher.publish(completed)
        return created, completed


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The groups' SQLite database, shared with the gateway process (it reads ``processed_events``)."""
    return f"sqlite:///{tmp_path_factory.mktemp('console')}/market.sqlite"


@pytest.fixture(scope="module")
async def market(e2e_settings: Settings, database_url: str) -> AsyncIterator[Market]:
    """``notifications`` and ``credits`` running on the module's topics until the module ends."""
    database = Database(database_url)
    await database.migrate(marketplace_migrations())
    registry = marketplace_groups(Resources(database=database, cache=MemoryCache(), settings=GroupSettings()))
    groups = [registry.get("notifications"), registry.get("credits")]
    stop, started = asyncio.Event(), asyncio.Event()
    connection = e2e_settings.connection()
    task = asyncio.create_task(
        run_groups(
            groups,
            connection=connection,
            publisher_config=e2e_settings.publisher_config("e2e-groups"),
            consumer_config=e2e_settings.consumer_config(),
            runtime_config=e2e_settings.runtime_config(backoff_initial_s=0.01),
            stop=stop,
            store=ProcessedEventStore(database),
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=60)
        async with EventPublisher(connection=connection, config=e2e_settings.publisher_config("booking")) as publisher:
            yield Market(database, publisher, groups)
    finally:
        stop.set()
        await task
        await database.close()


@pytest.fixture(scope="module")
def gateway(
    e2e_settings: Settings, market: Market, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """``eventbus console --no-browser`` (the gateway, console on) over the module's topics and the groups' database."""
    del market  # started first: the database exists and is migrated
    connection = e2e_settings.connection()
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")} | {
        "EVENTBUS_BOOTSTRAP_SERVERS": connection.bootstrap_servers,
        "EVENTBUS_PROFILE": "embedded",
        "EVENTBUS_TOPIC_PREFIX": connection.topic_prefix,
        "EVENTBUS_HTTP_JWT_SECRET": SECRET,
        "EVENTBUS_HTTP_DEV_TOKENS": "true",
        "EVENTBUS_HTTP_HEARTBEAT_S": "5",
        "EVENTBUS_DATABASE_URL": database_url,
    }
    process = Gateway(
        free_port(), env, tmp_path_factory.mktemp("gateway") / "gateway.log", subcommand=("console", "--no-browser")
    )
    process.start()
    assert f"eventbus console: {process.url}/ui/console/" in process.log_tail()
    try:
        yield process
    finally:
        process.stop()


async def console_page(screens: Screens, sub: str, role: str, page_name: str) -> Page:
    """A page signed in to the console through the login link, showing ``page_name`` ("flow?id=...")."""
    page = await screens.page()
    query = httpx.QueryParams({"sub": sub, "role": role, "go": "1", "next": page_name})
    await page.goto(f"{screens.gateway.url}/console/#/login?{query}")
    await page.wait_for_selector('[data-testid="who-sub"]', timeout=15_000)
    return page


async def shot(page: Page, name: str) -> None:
    """Save the page as ``<EVENTBUS_CONSOLE_SCREENSHOTS>/<name>.png`` when asked to (the directory must exist)."""
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=False)


async def test_overview_group_explorer_schemas_render(screens: Screens, market: Market) -> None:
    """The overview lists the topics, the marketplace's groups and the broker; the group page's lag is pushed
    live; the explorer, schemas and offsets pages render."""
    await market.booking(f"u-{uuid.uuid4().hex[:6]}", complete=False)
    page = await console_page(screens, "ops", "operator", "overview")
    await page.wait_for_selector('[data-testid="overview"][data-loaded="true"]', timeout=20_000)
    groups = await page.locator('[data-testid="overview-group"]').all_inner_texts()
    assert {"notifications", "credits", "payments"} <= set(groups)
    topics = await page.locator('[data-testid="overview-topics"]').inner_text()
    assert "session" in topics
    assert "Tansu" in await page.locator('[data-testid="tile-broker"]').inner_text()
    assert "Fetch v" in await page.locator('[data-testid="overview-protocol"]').inner_text()

    await page.goto(f"{screens.gateway.url}/console/#/group?name=credits")
    await page.wait_for_selector('[data-testid="group-partitions"]', timeout=20_000)
    live = page.locator('[data-testid="group-live"]')
    await page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=\"group-live\"]').dataset.updates) >= 3", timeout=20_000
    )
    assert await live.get_attribute("data-lag") is not None
    assert await page.locator('[data-testid="group-state"]').inner_text() in {"Stable", "Unknown"}
    rates = await page.locator('[data-testid="group-rates"]').inner_text()
    assert all(label in rates for label in ("Handled/s", "Failed/s", "Retried/s", "Dead-lettered/s"))
    await page.wait_for_selector('[data-testid="group-rates-chart"]')

    await page.goto(f"{screens.gateway.url}/console/#/explorer?topic=session")
    await page.wait_for_selector('[data-testid="explorer-row"]', timeout=20_000)
    await page.locator('[data-testid="explorer-row"]').first.click()
    await page.wait_for_selector('[data-testid="explorer-event"]')

    await page.goto(f"{screens.gateway.url}/console/#/schemas")
    await page.wait_for_selector('[data-testid="schema-row"]', timeout=20_000)
    assert len(await page.locator('[data-testid="schema-fingerprint"]').inner_text()) == 16

    await page.goto(f"{screens.gateway.url}/console/#/offsets?group=credits")
    await page.wait_for_selector('[data-testid="offsets-dry-run"]', timeout=20_000)
    await page.wait_for_selector('[data-testid="offsets-busy"]', timeout=20_000)  # credits runs: refused


async def test_poison_appears_and_its_replay_after_the_fix_is_handled_once(screens: Screens, market: Market) -> None:
    """A completion the user cannot pay shows in Dead letters within seconds; admin gets 403 on replay; after
    credits are granted the operator's replay (dry run, confirm) deducts once; a second replay sends nothing."""
    user = f"u-poor-{uuid.uuid4().hex[:6]}"
    page = await console_page(screens, "ops", "operator", "dead-letters?group=credits")
    await page.wait_for_selector('[data-testid="dead-letter-count"][data-count]', timeout=20_000)
    began = time.monotonic()
    _, completed = await market.booking(user)
    assert completed is not None
    row = page.locator(f'[data-testid="dead-letter-row"][data-event-id="{completed.event_id}"]')
    await row.wait_for(timeout=20_000)
    appeared_s = time.monotonic() - began
    assert appeared_s < 15, f"the dead letter showed after {appeared_s:.1f} s"
    await row.click()
    detail = page.locator('[data-testid="dead-letter-detail"]')
    await page.wait_for_selector('[data-testid="detail-event"]')
    assert "InsufficientCreditsError" in await detail.locator('[data-testid="detail-error"]').inner_text()
    assert completed.session_id in await detail.locator('[data-testid="detail-event"]').inner_text()
    assert await detail.locator('[data-testid="detail-hex"]').inner_text()
    await shot(page, "console-dead-letters")

    admin = await console_page(screens, "boss", "admin", "dead-letters?group=credits")
    admin_row = admin.locator(f'[data-testid="dead-letter-row"][data-event-id="{completed.event_id}"]')
    await admin_row.click()
    await admin.locator('[data-testid="replay-one"]').click()
    refused = admin.locator('[data-testid="replay-error"]')
    await refused.wait_for(timeout=10_000)
    assert await admin.locator('[data-testid="replay-box"]').get_attribute("data-status") == "403"
    assert "operator" in await refused.inner_text()

    await grant_credits(market.database, market.publisher, user, 50)  # the fix
    await page.locator('[data-testid="replay-one"]').click()
    dry = page.locator('[data-testid="replay-dry-run"]')
    await dry.wait_for(timeout=10_000)
    assert await dry.get_attribute("data-count") == "1"
    assert "session:completed" in await page.locator('[data-testid="replay-plan"]').inner_text()
    await page.locator('[data-testid="replay-confirm"]').click()
    outcome = page.locator('[data-testid="replay-outcome"]')
    await outcome.wait_for(timeout=20_000)
    assert await outcome.get_attribute("data-count") == "1"
    await page.locator(
        f'[data-testid="dead-letter-row"][data-event-id="{completed.event_id}"][data-replayed="true"]'
    ).wait_for(timeout=10_000)

    deadline = time.monotonic() + 20
    while await get_balance(market.database, user) != 40:
        assert time.monotonic() < deadline, "the replayed completion was not handled"
        await asyncio.sleep(0.2)
    await page.locator('[data-testid="replay-one"]').click()  # again, by accident: nothing to send
    await page.wait_for_selector('[data-testid="replay-dry-run"][data-count="0"]', timeout=10_000)
    assert await page.locator('[data-testid="replay-confirm"]').is_disabled()
    await asyncio.sleep(2.0)
    deductions = [entry for entry in await ledger(market.database, user) if entry.delta < 0]
    assert len(deductions) == 1
    assert await get_balance(market.database, user) == 40


async def test_a_bulk_replay_of_a_filter_result_goes_in_chunks_with_its_progress(
    screens: Screens, market: Market
) -> None:
    """150 completions one user cannot pay, found by a filter (the user's id in the error); after the fix the
    filter's replay is sent in two requests (100 + 50) with a progress bar, and each completion is deducted once."""
    user = f"u-bulk-{uuid.uuid4().hex[:6]}"
    count = 150
    for _ in range(count):
        await market.booking(user)
    page = await console_page(screens, "ops", "operator", f"dead-letters?group=credits&error={user}")
    await page.wait_for_selector(f'[data-testid="dead-letter-count"][data-count="{count}"]', timeout=60_000)
    await grant_credits(market.database, market.publisher, user, 10 * count)  # the fix
    sent: list[str] = []
    page.on(
        "request",
        lambda request: sent.append(request.post_data or "") if request.url.endswith("/dead-letters/replay") else None,
    )
    await page.locator('[data-testid="replay-filter"]').click()
    await page.wait_for_selector(f'[data-testid="replay-dry-run"][data-count="{count}"]', timeout=20_000)
    await page.locator('[data-testid="replay-confirm"]').click()
    outcome = page.locator('[data-testid="replay-outcome"]')
    await outcome.wait_for(timeout=60_000)
    assert await outcome.get_attribute("data-count") == str(count)
    assert await page.locator('[data-testid="replay-progress"]').get_attribute("value") == str(count)
    assert await page.locator('[data-testid="replay-progress-text"]').inner_text() == f"{count} of {count} sent"
    assert [body.count('"dry_run":false') for body in sent] == [0, 1, 1]

    deadline = time.monotonic() + 60
    while await get_balance(market.database, user) != 0:
        assert time.monotonic() < deadline, "the replayed completions were not all handled"
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)
    deductions = [entry for entry in await ledger(market.database, user) if entry.delta < 0]
    assert len(deductions) == count


async def test_flow_of_a_booking_in_causal_order(screens: Screens, market: Market) -> None:
    """created, both notifications under it, the completion, the credit deduction and its notification; who
    handled each."""
    user = f"u-rich-{uuid.uuid4().hex[:6]}"
    await grant_credits(market.database, market.publisher, user, 100)
    created, _ = await market.booking(user)
    flow = f"booking-{created.session_id}"
    page = await console_page(screens, "ops", "operator", f"flow?id={flow}")
    expected = [
        ("session:created", 0),
        ("notification:sent", 1),  # the client's
        ("notification:sent", 1),  # the coach's
        ("session:completed", 0),
        ("user:credits_updated", 1),
        ("notification:sent", 2),
    ]
    rows: list[tuple[str, int]] = []
    deadline = time.monotonic() + 30
    while True:
        await page.wait_for_selector('[data-testid="flow"][data-loaded="true"]', timeout=20_000)
        found = page.locator('[data-testid="flow-row"]')
        rows = [
            (str(await row.get_attribute("data-type")), int(await row.get_attribute("data-depth") or 0))
            for row in await found.all()
        ]
        if rows == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
        await page.reload()
    assert rows == expected
    handled = await page.locator('[data-testid="flow-handled"]').all_inner_texts()
    assert any(text.startswith("notifications") for text in handled)
    assert any(text.startswith("credits") for text in handled)
    await shot(page, "console-flow")
    if SHOTS:  # the overview last: by now it has dead letters and an hour's samples begun
        await page.goto(f"{screens.gateway.url}/console/#/overview")
        await page.wait_for_selector('[data-testid="overview"][data-loaded="true"]', timeout=20_000)
        await shot(page, "console-overview")
