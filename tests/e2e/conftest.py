"""Fixtures of the screens' end-to-end tests: ``eventbus gateway`` as a real process, Debian's headless Chromium.

One gateway per test module (its own topic prefix on the session's embedded broker, a fixed HS256 secret so tokens
survive a restart), one browser per module, a new browser context (cookies, sessionStorage) per signed-in page.
Chromium is the system's (``/usr/bin/chromium``, or ``EVENTBUS_CHROMIUM``), driven by Playwright: nothing is ever
downloaded. Without it these tests skip with a hint locally, and fail in CI (``CI=true``), like the Apache Kafka
variants.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from infra._embedded import EmbeddedBroker
from infra._settings import Settings
from infra._topics import apply_topics
from infra.bus import EventBus
from tests.conftest import IN_CI, KafkaTarget, make_settings

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, ViewportSize

SECRET = "e2e-screens-secret-that-is-long-enough-for-hs256!"  # noqa: S105 - a test key
"""Fixed, so a token issued before a restart is still good after it."""

CHROMIUM = Path(os.environ.get("EVENTBUS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_HINT = f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or set EVENTBUS_CHROMIUM"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_token(sub: str = "e2e-publisher") -> str:
    """A ``service`` token (publishes), signed with ``SECRET``."""
    return jwt.encode({"sub": sub, "roles": ["service"], "exp": int(time.time()) + 3600}, SECRET)


def user_token(sub: str, *roles: str, secret: str = SECRET, **claims: str) -> str:
    """A token for ``sub`` with ``roles`` (default ``user``), signed with ``secret``."""
    payload = {"sub": sub, "roles": list(roles or ("user",)), "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, secret)


@dataclass
class Gateway:
    """``eventbus gateway`` (or ``subcommand``, ``console --no-browser`` say) in a child process on a fixed port:
    started, killed, restarted by the tests."""

    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    subcommand: tuple[str, ...] = ("gateway",)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8123``."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The venv's ``eventbus`` script when there is one, otherwise the same CLI through this interpreter."""
        script = Path(sys.executable).with_name("eventbus")
        prefix = [str(script)] if script.exists() else [sys.executable, "-c", "from infra._cli import main; main()"]
        return [*prefix, *self.subcommand, "--port", str(self.port), "--log-format", "text", "--log-level", "WARNING"]

    def start(self) -> float:
        """Start the process and wait until ``/readyz`` answers 200; the seconds that took."""
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = began + READY_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            if self.process.poll() is not None:
                raise AssertionError(f"the gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway was not ready within {READY_TIMEOUT_S:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, open streams just break."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL when it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class Publisher:
    """Publishes through the gateway (``POST /v1/events/{type}`` with a service token), as a service would."""

    client: httpx.AsyncClient
    gateway: Gateway
    token: str = field(default_factory=service_token)

    async def __call__(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        """Publish; the gateway's answer (topic, partition, offset, event_id)."""
        response = await self.client.post(
            f"{self.gateway.url}/v1/events/{event_type}",
            json=data,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer


def unique(prefix: str) -> str:
    """An id of this run only (the module's topics are shared by its tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def booking(user: str, session_id: str, **more: Any) -> dict[str, Any]:
    """The data of a ``session:created`` for ``user``."""
    return {
        "session_id": session_id,
        "coach_id": "c-ada",
        "coach_name": "Ada Lovelace",
        "user_id": user,
        "scheduled_at": (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0).isoformat(),
        "session_type": "Career mentoring",
        "cost_credits": 10,
        "duration_minutes": 45,
        **more,
    }


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_tokens() -> bool:
    """Whether the module's gateway issues development tokens (a module overrides this to turn them off)."""
    return True


@pytest.fixture(scope="module")
async def e2e_settings(embedded_broker: EmbeddedBroker) -> Settings:
    """Settings with this module's own topic prefix, its topics applied."""
    settings = make_settings(KafkaTarget("embedded", embedded_broker.bootstrap_servers, "embedded"))
    await apply_topics(settings.connection(), replication_factor=settings.replication)
    return settings


@pytest.fixture(scope="module")
def gateway(e2e_settings: Settings, dev_tokens: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``eventbus gateway`` on a free port of 127.0.0.1, for the whole module."""
    connection = e2e_settings.connection()
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")} | {
        "EVENTBUS_BOOTSTRAP_SERVERS": connection.bootstrap_servers,
        "EVENTBUS_PROFILE": "embedded",
        "EVENTBUS_TOPIC_PREFIX": connection.topic_prefix,
        "EVENTBUS_HTTP_JWT_SECRET": SECRET,
        "EVENTBUS_HTTP_DEV_TOKENS": "true" if dev_tokens else "false",
        "EVENTBUS_HTTP_HEARTBEAT_S": "5",
    }
    process = Gateway(free_port(), env, tmp_path_factory.mktemp("gateway") / "gateway.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for publishing and API checks."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as client:
        yield client


@pytest.fixture(scope="module")
def publish(http: httpx.AsyncClient, gateway: Gateway) -> Publisher:
    """``await publish("session:created", data)`` through the gateway."""
    return Publisher(http, gateway)


@pytest.fixture(scope="module")
async def bus(e2e_settings: Settings) -> AsyncIterator[EventBus]:
    """A bus on the module's topics, for publishing while the gateway is down."""
    async with EventBus.connect(e2e_settings, service="e2e-booking") as opened:
        yield opened


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system's Chromium; skipped without it locally, failed in CI."""
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"CI runs the screens' end-to-end tests, but {CHROMIUM_HINT}")
        pytest.skip(CHROMIUM_HINT)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through Playwright (never a downloaded browser)."""
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only where a browser runs

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Screens:
    """Opens signed-in pages on the module's gateway; closes their contexts at the end of the test."""

    browser: Browser
    gateway: Gateway
    contexts: list[BrowserContext] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    async def page(self) -> Page:
        """A new page in a new context (its own sessionStorage), 1280x800."""
        context = await self.browser.new_context(viewport=VIEWPORT)
        self.contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: self.console_errors.append(f"pageerror: {error}"))
        return page

    async def signed_in(self, sub: str, *roles: str, screen: str = "", **ids: str) -> Page:
        """A page signed in through the stand-in's prefilled link (``&go=1``), its stream live."""
        page = await self.page()
        query = httpx.QueryParams(
            {
                "sub": sub,
                "roles": ",".join(roles or ("user",)),
                "go": "1",
                **ids,
                **({"next": screen} if screen else {}),
            }
        )
        await page.goto(f"{self.gateway.url}/ui/#/login?{query}")
        await live(page)
        return page

    async def close(self) -> None:
        """Close every context opened."""
        for context in self.contexts:
            with contextlib.suppress(Exception):
                await context.close()


async def live(page: Page, timeout_s: float = 15.0) -> None:
    """Wait until the page's event stream is open (the gateway holds its subscription)."""
    await page.wait_for_selector('[data-testid="stream-state"][data-state="live"]', timeout=timeout_s * 1000)


@pytest.fixture
async def screens(browser: Browser, gateway: Gateway) -> AsyncIterator[Screens]:
    """Signed-in pages for one test; no page may throw an uncaught error."""
    opened = Screens(browser, gateway)
    try:
        yield opened
    finally:
        await opened.close()
    assert opened.console_errors == []


async def eventually(check: Any, what: str, timeout_s: float = 10.0) -> None:
    """Poll the async ``check`` until it is truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)
