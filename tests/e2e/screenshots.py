"""Screenshots of the gateway's screens for the README, with a small marketplace's events (not a test).

Starts an embedded broker and ``eventbus gateway`` (development tokens on), opens the screens in Debian's headless
Chromium, publishes bookings, coach statuses and notifications through the gateway, and saves 1280x800 PNGs.

Run from the repository root: ``.venv/bin/python -m tests.e2e.screenshots`` (writes ``docs/screens/*.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from infra._embedded import EmbeddedBroker
from infra._settings import Settings
from infra._topics import apply_topics
from tests.e2e.conftest import CHROMIUM, SECRET, VIEWPORT, Gateway, Publisher, free_port, live

log = logging.getLogger("screenshots")

CLIENT = "lucia"
COACHES = [
    ("c-ada", "Ada Lovelace"),
    ("c-grace", "Grace Hopper"),
    ("c-alan", "Alan Turing"),
    ("c-katherine", "Katherine Johnson"),
    ("c-linus", "Linus Pauling"),
    ("c-marie", "Marie Curie"),
]


def _at(days: int, hour: int) -> str:
    day = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0) + timedelta(days=days)
    return day.isoformat()


def _session(session_id: str, coach: tuple[str, str], kind: str, days: int, hour: int, **more: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "coach_id": coach[0],
        "coach_name": coach[1],
        "user_id": CLIENT,
        "client_name": "Lucía Fernández",
        "scheduled_at": _at(days, hour),
        "session_type": kind,
        "cost_credits": 10,
        "duration_minutes": 60,
        **more,
    }


async def _bookings(publish: Publisher) -> None:
    ada, grace, alan = COACHES[0], COACHES[1], COACHES[2]
    await publish("session:created", _session("s-1041", alan, "Leadership coaching", 1, 9, duration_minutes=45))
    await publish("session:created", _session("s-1042", ada, "Career mentoring", 2, 16))
    await publish(
        "session:updated",
        {
            "session_id": "s-1042",
            "coach_id": ada[0],
            "user_id": CLIENT,
            "changed_fields": ["scheduled_at"],
            "scheduled_at": _at(3, 17),
        },
    )
    await publish(
        "session:completed",
        {
            "session_id": "s-1041",
            "coach_id": alan[0],
            "user_id": CLIENT,
            "cost_credits": 10,
            "completed_at": _at(0, 10),
            "duration_minutes": 45,
        },
    )
    await publish(
        "session:creation_failed",
        {
            "session_id": "s-1043",
            "user_id": CLIENT,
            "coach_id": grace[0],
            "session_type": "Technical interview prep",
            "scheduled_at": _at(4, 11),
            "error": "Grace Hopper is fully booked on that day",
        },
    )
    await publish(
        "session:created",
        _session("s-1044", COACHES[3], "Technical interview prep", 5, 11, cost_credits=15, duration_minutes=90),
    )


async def _notifications(publish: Publisher) -> None:
    def requested(kind: str, data: dict[str, str] | None = None, **more: Any) -> dict[str, Any]:
        return {
            "notification_id": f"n-{uuid.uuid4().hex[:6]}",
            "user_id": CLIENT,
            "notification_type": kind,
            "data": data or {},
            **more,
        }

    custom = await publish(
        "notification:requested",
        requested(
            "custom",
            custom_template={
                "title": "Mensaje de tu coach",
                "body": "Ada te ha dejado material para preparar la próxima sesión.",
                "icon": "info",
                "actions": [{"action": "view", "title": "Ver detalles"}, {"action": "later", "title": "Más tarde"}],
            },
        ),
    )
    await publish(
        "notification:sent",
        {
            "notification_id": f"n-{uuid.uuid4().hex[:6]}",
            "user_id": CLIENT,
            "notification_type": "custom",
            "channel": "in_app",
            "title": "Mensaje de tu coach",
            "source_event_id": custom["event_id"],
        },
    )
    await publish(
        "notification:requested",
        requested("payment_processed", {"amount": "45.00", "currency": "EUR", "transactionId": "tx-88213"}),
    )
    await publish(
        "notification:requested",
        requested("credits_updated", {"creditsRemaining": "30", "delta": "-10"}),
    )
    await publish(
        "notification:requested",
        requested(
            "session_confirmed",
            {"coachName": "Katherine Johnson", "sessionDate": _at(5, 11)[:16].replace("T", " "), "sessionType": "prep"},
        ),
    )


async def _coaches(publish: Publisher) -> None:
    for coach_id, name in COACHES:
        await publish("coach:profile_updated", {"coach_id": coach_id, "display_name": name})
    statuses = ["online", "busy", "online", "away", "online", "online"]
    for (coach_id, _), status in zip(COACHES, statuses, strict=True):
        await publish("coach:status_changed", {"coach_id": coach_id, "old_status": "offline", "new_status": status})
    for (coach_id, _), rating, reviews in zip(
        COACHES, [4.9, 4.7, 4.8, 5.0, 4.2, 4.6], [128, 64, 97, 41, 12, 73], strict=True
    ):
        await publish("coach:rating_updated", {"coach_id": coach_id, "new_rating": rating, "review_count": reviews})
    await publish("coach:status_changed", {"coach_id": "c-linus", "old_status": "online", "new_status": "offline"})
    await publish("coach:status_changed", {"coach_id": "c-ada", "old_status": "online", "new_status": "busy"})


async def _capture(gateway: Gateway, out: Path) -> list[Path]:
    """Open the screens, publish, save one PNG per screen."""
    from playwright.async_api import Page, async_playwright  # noqa: PLC0415 - a dev dependency

    saved: list[Path] = []
    async with httpx.AsyncClient(timeout=20) as http, async_playwright() as playwright:
        publish = Publisher(http, gateway)
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)

        async def page_for(link: str) -> Page:
            context = await browser.new_context(viewport=VIEWPORT)
            page = await context.new_page()
            await page.goto(f"{gateway.url}/ui/#/login?{link}")
            return page

        async def save(page: Page, name: str) -> None:
            await page.wait_for_timeout(600)  # the arrival animation
            path = out / f"{name}.png"
            await page.screenshot(path=str(path))
            saved.append(path)

        login = await page_for(f"sub={CLIENT}&role=user")
        await login.get_by_test_id("dev-login").wait_for()
        await save(login, "login")

        client = await page_for(f"sub={CLIENT}&role=user&go=1")
        admin = await page_for("sub=ops-admin&role=admin&go=1&next=coaches")
        for page in (client, admin):
            await live(page)
        await _bookings(publish)
        await _coaches(publish)
        await _notifications(publish)
        await client.locator('[data-testid="booking"]').nth(3).wait_for()
        await save(client, "bookings")
        await admin.locator('[data-testid="coach"]').nth(5).wait_for()
        await save(admin, "coaches")
        await client.evaluate("location.hash = '#/notifications'")
        await client.locator('[data-testid="notification"]').nth(3).wait_for()
        await client.get_by_text("Pago procesado").wait_for()
        await save(client, "notifications")
        await admin.evaluate("location.hash = '#/stats'")
        await admin.get_by_test_id("stats-total").wait_for()
        await save(admin, "stats")
        await browser.close()
    return saved


async def shoot(out: Path, workdir: Path) -> list[Path]:
    """An embedded broker, the module's topics, ``eventbus gateway``; the saved PNGs."""
    broker = EmbeddedBroker()
    broker.start()
    gateway: Gateway | None = None
    try:
        prefix = f"screens{uuid.uuid4().hex[:6]}."
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, profile="embedded", topic_prefix=prefix)
        await apply_topics(settings.connection(), replication_factor=1)
        env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")} | {
            "EVENTBUS_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "EVENTBUS_PROFILE": "embedded",
            "EVENTBUS_TOPIC_PREFIX": prefix,
            "EVENTBUS_HTTP_JWT_SECRET": SECRET,
            "EVENTBUS_HTTP_DEV_TOKENS": "true",
        }
        gateway = Gateway(free_port(), env, workdir / "gateway.log")
        await asyncio.to_thread(gateway.start)
        return await _capture(gateway, out)
    finally:
        if gateway is not None:
            gateway.stop()
        broker.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.e2e.screenshots [--out docs/screens]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs/screens"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screens-") as workdir:
        saved = asyncio.run(shoot(args.out, Path(workdir)))
    for path in saved:
        log.info("%s (%d KB)", path, path.stat().st_size // 1024)


if __name__ == "__main__":
    main()
