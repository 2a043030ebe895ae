"""The gateway's screens in headless Chromium, against ``eventbus gateway`` as a process on the embedded broker.

A client signs in through the development stand-in and sees its booking within a second of the publish; a failed
booking shows its reason; a second client never sees the first one's events; the gateway killed (SIGKILL) and
restarted, the page resumes by itself and shows every event once, in order; coach statuses, notifications and the
stats panel update live.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import pytest

from infra.bus import EventBus
from tests.e2e.conftest import Gateway, Publisher, Screens, booking, eventually, live, unique

if TYPE_CHECKING:
    from playwright.async_api import Page, Route

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

log = logging.getLogger("tests.e2e")

VISIBLE_WITHIN_S = 1.0
"""The issue's bound: a booking is on the client's page within a second of the publish returning."""


async def rows(page: Page) -> list[dict[str, str]]:
    """The bookings activity rows, oldest first: event id, type and session id of each."""
    found: list[dict[str, str]] = await page.eval_on_selector_all(
        '[data-testid="event-row"]',
        "els => els.map(e => ({seq: e.dataset.seq, id: e.dataset.eventId, type: e.dataset.eventType,"
        " session: e.dataset.sessionId}))",
    )
    return sorted(found, key=lambda row: int(row["seq"]))


async def text_of(page: Page, selector: str) -> str:
    """The trimmed text of the first element matching ``selector``."""
    return (await page.locator(selector).first.inner_text()).strip()


# -- the client's bookings -----------------------------------------------------------------------------


async def test_a_client_signs_in_sees_a_booking_within_a_second_and_a_failure_with_its_reason(
    screens: Screens, publish: Publisher, gateway: Gateway
) -> None:
    client = unique("u1")
    page = await screens.page()
    await page.goto(f"{gateway.url}/")  # the gateway's home page is the screens' login
    await page.wait_for_selector('[data-testid="dev-login"]')
    assert page.url.endswith("/ui/#/login")
    await page.get_by_label("Subject").fill(client)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url("**/ui/#/bookings")
    await live(page)
    assert await text_of(page, '[data-testid="who-sub"]') == client
    assert await page.get_by_test_id("booking-status").get_attribute("data-state") == "idle"

    session = unique("s")
    await publish("session:created", booking(client, session))
    published_at = time.monotonic()
    card = page.locator(f'[data-testid="booking"][data-session-id="{session}"]')
    await card.wait_for(timeout=5000)
    latency = time.monotonic() - published_at
    log.info("session:created visible on the client's page %.0f ms after the publish returned", latency * 1000)
    assert latency < VISIBLE_WITHIN_S, f"visible after {latency:.3f} s"
    assert await card.get_attribute("data-status") == "confirmed"
    assert "Career mentoring with Ada Lovelace" in await card.inner_text()
    banner = page.get_by_test_id("booking-status")
    assert await banner.get_attribute("data-state") == "success"
    assert "Session booked!" in await banner.inner_text()

    failed = unique("s")
    reason = "Ada Lovelace is not available at that time <b>sorry</b>"
    await publish(
        "session:creation_failed",
        {"session_id": failed, "user_id": client, "coach_id": "c-ada", "session_type": "Intro", "error": reason},
    )
    error_card = page.locator(f'[data-testid="booking"][data-session-id="{failed}"][data-status="failed"]')
    await error_card.wait_for(timeout=5000)
    assert await error_card.get_by_test_id("booking-reason").inner_text() == f"Reason: {reason}"
    assert await error_card.locator("b").count() == 0  # event text is text, never markup
    assert await banner.get_attribute("data-state") == "error"
    assert reason in await banner.inner_text()
    assert [row["type"] for row in await rows(page)] == ["session:created", "session:creation_failed"]


async def test_a_second_client_never_sees_the_first_clients_events(screens: Screens, publish: Publisher) -> None:
    first, second = unique("u1"), unique("u2")
    page_1 = await screens.signed_in(first, "user")
    page_2 = await screens.signed_in(second, "user")
    firsts = [unique("s") for _ in range(3)]
    for session in firsts[:2]:
        await publish("session:created", booking(first, session))
    theirs = unique("s")
    await publish("session:created", booking(second, theirs))
    await publish("session:creation_failed", {"session_id": firsts[2], "user_id": first, "error": "no credits"})

    await eventually(lambda: _count(page_1, 3), "the first client's three events")
    await eventually(lambda: _count(page_2, 1), "the second client's event")
    await asyncio.sleep(0.5)  # anything more for the second client would have arrived by now
    assert sorted(row["session"] for row in await rows(page_1)) == sorted(firsts)  # partitions interleave freely
    seen = await rows(page_2)
    assert [row["session"] for row in seen] == [theirs]
    assert await page_2.locator('[data-testid="booking"]').count() == 1
    assert await page_2.get_by_test_id("stream-count").get_attribute("data-count") == "1"
    body = await page_2.inner_text("body")
    assert not any(session in body for session in firsts)
    assert first not in body


async def _count(page: Page, expected: int) -> bool:
    return len(await rows(page)) >= expected


@dataclass
class Published:
    """An event published for the page's client: its id, session and type, in publish order."""

    event_id: str
    session: str
    event_type: str


async def outage(page: Page, client: str, gateway: Gateway, bus: EventBus, publish: Publisher) -> list[Published]:
    """One event live; SIGKILL the gateway; five published while it is down (four the client's); restart it on
    the same port; one more live. What the client should see, in publish order."""
    kept, later = unique("s-kept"), unique("s-later")
    answer = await publish("session:created", booking(client, kept))
    expected = [Published(answer["event_id"], kept, "session:created")]
    await page.locator(f'[data-testid="booking"][data-session-id="{kept}"]').wait_for(timeout=5000)

    gateway.kill()
    await page.wait_for_selector('[data-testid="stream-state"][data-state="reconnecting"]', timeout=10_000)
    ada = {"coach_id": "c-ada", "user_id": client}
    moved = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    cancelled = {**ada, "scheduled_at": moved, "cancelled_by": "coach", "reason": "double booking"}
    while_down = [
        ("session:updated", {**ada, "session_id": kept, "changed_fields": ["notes"]}),
        ("session:updated", {**ada, "session_id": kept, "changed_fields": ["scheduled_at"], "scheduled_at": moved}),
        ("session:created", booking(client, later)),
        ("session:cancelled", {**cancelled, "session_id": later}),
        ("session:created", booking(unique("someone-else"), unique("s"))),  # not the client's: never shown
    ]
    for event_type, data in while_down:
        result = await bus.publish(event_type, data)
        if data["user_id"] == client:
            expected.append(Published(str(result.event_id), data["session_id"], event_type))
    await asyncio.to_thread(gateway.start)
    after = unique("s-after")
    answer = await publish("session:created", booking(client, after))
    expected.append(Published(answer["event_id"], after, "session:created"))
    return expected


async def shown_exactly_once_in_order(page: Page, expected: list[Published]) -> None:
    """Every expected event has one row, none more; each session's rows in publish order (one session, one
    partition); the page was never reloaded and streams live again."""
    await eventually(lambda: _count(page, len(expected)), f"{len(expected)} events on the page", timeout_s=30)
    await asyncio.sleep(1.0)  # a repeated event would show up now
    shown = await rows(page)
    ids = [row["id"] for row in shown]
    assert len(ids) == len(set(ids)), f"an event shown twice: {ids}"
    assert sorted(ids) == sorted(item.event_id for item in expected)
    for session in {item.session for item in expected}:
        assert [(row["id"], row["type"]) for row in shown if row["session"] == session] == [
            (item.event_id, item.event_type) for item in expected if item.session == session
        ]
    assert ids[-1] == expected[-1].event_id  # published live after the restart: the last one
    assert await page.evaluate("window.__notReloaded === true")
    assert await page.get_by_test_id("stream-state").get_attribute("data-state") == "live"
    assert await page.get_by_test_id("stream-count").get_attribute("data-count") == str(len(expected))


async def test_the_page_resumes_after_the_gateway_is_killed_and_restarted_without_losing_or_repeating_an_event(
    screens: Screens, publish: Publisher, gateway: Gateway, bus: EventBus
) -> None:
    client = unique("u3")
    page = await screens.signed_in(client, "user")
    await page.evaluate("window.__notReloaded = true")
    began = time.monotonic()
    expected = await outage(page, client, gateway, bus, publish)
    await shown_exactly_once_in_order(page, expected)
    log.info("killed, restarted, every event shown once: %.1f s", time.monotonic() - began)
    state = page.get_by_test_id("stream-state")
    # The browser resumed by itself: one EventSource, reconnected with its Last-Event-ID.
    assert (await state.get_attribute("data-sources"), await state.get_attribute("data-opens")) == ("1", "2")
    cancelled = page.locator('[data-testid="booking"][data-status="cancelled"]')
    assert await cancelled.get_attribute("data-session-id") == expected[3].session


async def test_a_page_whose_event_source_gave_up_makes_a_new_one_from_its_last_event(
    screens: Screens, publish: Publisher, gateway: Gateway, bus: EventBus
) -> None:
    client = unique("u8")
    page = await screens.page()
    await page.goto(f"{gateway.url}/ui/#/login?sub={client}&role=user&go=1")
    await live(page)
    await page.evaluate("window.__notReloaded = true")
    refused: list[str] = []
    opened: list[str] = []

    async def answer(route: Route) -> None:
        """The browser's own reconnection (no ?last_event_id=) gets a 503: its EventSource gives up (CLOSED)."""
        if not refused and "last_event_id=" not in route.request.url:
            refused.append(route.request.url)
            await route.fulfill(status=503, body="starting")
        else:
            opened.append(route.request.url)
            await route.continue_()

    await page.route(lambda url: "/v1/events" in url, answer)
    expected = await outage(page, client, gateway, bus, publish)
    await shown_exactly_once_in_order(page, expected)  # so the new EventSource resumed from the right event
    assert len(refused) == 1
    assert opened
    assert all(httpx.URL(url).params.get("last_event_id", "").startswith("v1.") for url in opened)
    assert await page.get_by_test_id("stream-state").get_attribute("data-sources") == "2"


async def test_reset_and_error_frames_from_the_gateway_are_shown_and_the_stream_goes_on(
    screens: Screens, gateway: Gateway
) -> None:
    """The frames the gateway sends for a cursor too old (``reset``) and a client too slow (``error``), served to
    the page by hand: both are shown; the page keeps its events and streams live again afterwards."""
    client = unique("u9")
    session = unique("s")
    event = {**booking(client, session), "metadata": {"event_id": str(uuid.uuid4()), "event_type": "session:created"}}
    slow = json.dumps({"reason": "slow_consumer", "message": "the reader fell more than 1000 events behind"})
    expired = json.dumps({"reason": "cursor_expired", "message": "retention removed the events after your cursor"})
    frames = [
        f"retry: 100\n\nid: v1.fake\nevent: session:created\ndata: {json.dumps(event)}\n\n"
        f"event: error\ndata: {slow}\n\n",
        f"retry: 100\n\nevent: reset\nid\ndata: {expired}\n\n",
    ]
    served: list[str] = []

    async def answer(route: Route) -> None:
        if frames:
            served.append(route.request.url)
            await route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=frames.pop(0))
        else:
            await route.continue_()

    page = await screens.page()
    await page.route(lambda url: "/v1/events" in url, answer)
    await page.goto(f"{gateway.url}/ui/#/login?sub={client}&role=user&go=1")
    error = page.locator('[data-testid="stream-notice"][data-kind="error"]')
    reset = page.locator('[data-testid="stream-notice"][data-kind="reset"]')
    await error.wait_for(timeout=10_000)
    await reset.wait_for(timeout=10_000)
    assert "fell more than 1000 events behind" in await error.inner_text()
    assert "retention removed the events" in await reset.inner_text()
    assert await page.get_by_role("alert").filter(has_text="Stream restarted from now").count() == 1
    await live(page)
    assert len(served) == 2
    assert [row["session"] for row in await rows(page)] == [session]
    await reset.get_by_role("button", name="Dismiss").click()
    assert await reset.count() == 0


# -- coaches, notifications, stats ---------------------------------------------------------------------


async def test_coach_statuses_change_live_for_an_admin_and_a_coach_sees_only_itself(
    screens: Screens, publish: Publisher
) -> None:
    ada, grace = unique("c-ada"), unique("c-grace")
    admin = await screens.signed_in(unique("root"), "admin", screen="coaches")
    coach = await screens.signed_in(ada, "coach", screen="coaches")
    assert await admin.evaluate("document.body.dataset.route") == "coaches"
    assert await coach.evaluate("document.body.dataset.route") == "coaches"

    await publish("coach:status_changed", {"coach_id": ada, "old_status": "offline", "new_status": "online"})
    await publish("coach:status_changed", {"coach_id": grace, "old_status": "online", "new_status": "busy"})
    for page in (admin, coach):
        await page.locator(f'[data-testid="coach"][data-coach-id="{ada}"][data-status="online"]').wait_for(timeout=5000)
    await admin.locator(f'[data-testid="coach"][data-coach-id="{grace}"][data-status="busy"]').wait_for(timeout=5000)

    await publish("coach:status_changed", {"coach_id": ada, "old_status": "online", "new_status": "away"})
    card = admin.locator(f'[data-testid="coach"][data-coach-id="{ada}"]')
    await admin.locator(f'[data-testid="coach"][data-coach-id="{ada}"][data-status="away"]').wait_for(timeout=5000)
    assert "Away" in await card.get_by_test_id("coach-status").inner_text()
    assert "was Online" in await card.get_by_test_id("coach-detail").inner_text()
    await coach.locator(f'[data-testid="coach"][data-coach-id="{ada}"][data-status="away"]').wait_for(timeout=5000)
    await asyncio.sleep(0.3)
    assert await coach.locator('[data-testid="coach"]').count() == 1  # its own status only
    assert await coach.locator('[data-testid="coach-change"]').count() == 2


async def test_notifications_show_title_body_and_actions_as_they_arrive(screens: Screens, publish: Publisher) -> None:
    client = unique("u4")
    page = await screens.signed_in(client, "user", screen="notifications")
    custom = await publish(
        "notification:requested",
        {
            "notification_id": unique("n"),
            "user_id": client,
            "notification_type": "custom",
            "custom_template": {
                "title": "Mensaje personalizado",
                "body": "Your coach left a note <img src=x onerror=alert(1)>",
                "icon": "info",
                "actions": [{"action": "view", "title": "Ver detalles"}, {"action": "later", "title": "Más tarde"}],
            },
        },
    )
    templated = await publish(
        "notification:requested",
        {
            "notification_id": unique("n"),
            "user_id": client,
            "notification_type": "session_confirmed",
            "data": {"coachName": "Ada Lovelace", "sessionDate": "2025-06-02 14:00 UTC", "sessionType": "mentoring"},
        },
    )
    await publish(
        "notification:sent",
        {
            "notification_id": unique("n"),
            "user_id": client,
            "notification_type": "custom",
            "channel": "in_app",
            "title": "Mensaje personalizado",
            "source_event_id": custom["event_id"],
        },
    )
    first = page.locator(f'[data-testid="notification"][data-event-id="{custom["event_id"]}"]')
    await first.get_by_test_id("notification-delivery").wait_for(timeout=5000)
    assert await first.get_by_test_id("notification-title").inner_text() == "Mensaje personalizado"
    assert (
        await first.get_by_test_id("notification-body").inner_text()
        == "Your coach left a note <img src=x onerror=alert(1)>"
    )
    assert await first.locator("img").count() == 0
    buttons = first.get_by_test_id("notification-action")
    assert await buttons.all_inner_texts() == ["Ver detalles", "Más tarde"]
    assert await first.get_by_test_id("notification-delivery").inner_text() == "✓ in_app"

    second = page.locator(f'[data-testid="notification"][data-event-id="{templated["event_id"]}"]')
    await second.get_by_text("Sesión confirmada").wait_for(timeout=5000)  # rendered by the gateway's templates
    assert await second.get_by_test_id("notification-body").inner_text() == (
        "Tu sesión de mentoring con Ada Lovelace está confirmada para el 2025-06-02 14:00 UTC."
    )
    assert await second.get_by_test_id("notification-action").all_inner_texts() == ["Ver sesión"]
    assert await page.locator('[data-testid="notification"]').count() == 2  # the delivery joined its request

    await buttons.nth(1).click()
    assert await first.get_attribute("data-chosen") == "later"
    await second.get_by_test_id("notification-action").click()  # "view": to the bookings
    await page.wait_for_url("**/ui/#/bookings")


async def test_the_stats_panel_refreshes_by_itself_every_five_seconds(screens: Screens, publish: Publisher) -> None:
    page = await screens.signed_in(unique("root"), "admin", screen="stats")
    await page.evaluate("window.__notReloaded = true")
    total = page.get_by_test_id("stats-total")
    await total.wait_for(timeout=10_000)
    before = int(await total.get_attribute("data-value") or "-1")
    refreshes = int(await page.get_by_test_id("stats-updated").get_attribute("data-refreshes") or "0")
    client = unique("u5")
    for _ in range(3):
        await publish("session:created", booking(client, unique("s")))
    published_at = time.monotonic()

    async def changed() -> bool:
        return int(await total.get_attribute("data-value") or "-1") >= before + 3

    await eventually(changed, "the total to grow without a reload", timeout_s=6.5)
    log.info("the stats panel showed the new total %.1f s after the publish", time.monotonic() - published_at)
    assert await page.evaluate("window.__notReloaded === true")
    assert int(await page.get_by_test_id("stats-updated").get_attribute("data-refreshes") or "0") > refreshes
    assert await page.get_by_test_id("stats-subscriptions").get_attribute("data-value") not in (None, "")
    rows_by_type = page.locator('[data-testid="stats-type-row"][data-type="session:created"]')
    assert await rows_by_type.count() == 1
    assert await page.get_by_test_id("stats-chart").get_attribute("role") == "img"


async def test_signing_out_ends_the_session_and_the_ui_endpoints_are_served(
    screens: Screens, http: httpx.AsyncClient, gateway: Gateway
) -> None:
    page = await screens.signed_in(unique("u6"), "user")
    await page.get_by_test_id("logout").click()
    await page.wait_for_url("**/ui/#/login")
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.get_by_test_id("stream-state").get_attribute("data-state") == "idle"
    await page.evaluate("location.hash = '#/notifications'")  # signed out: the login, then back to that screen
    await page.wait_for_url("**/ui/#/login?next=notifications")
    await page.get_by_label("Subject").fill(unique("u6"))
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url("**/ui/#/notifications")

    config = (await http.get(f"{gateway.url}/v1/ui/config")).json()
    assert config["dev_tokens"] is True
    ui = await http.get(f"{gateway.url}/ui/")
    assert ui.status_code == 200
    assert "script-src 'self'" in ui.headers["content-security-policy"]
    assert (await http.get(f"{gateway.url}/v1/ui/me")).status_code == 401
