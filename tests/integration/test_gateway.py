"""The HTTP gateway served by uvicorn on a real socket, over the in-memory bus and the embedded broker.

Users get their own events live and nobody else's (leaks are counted: zero), bad tokens get 401, forbidden
filters 403, a resumed stream misses nothing and repeats nothing, a slow client is cut with a reason while
another keeps receiving, publishing validates like ``eventbus publish``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
import yaml

from infra._bus_cursor import encode_cursor
from infra._embedded import EmbeddedBroker
from infra._gateway_app import GatewayServer, begin_shutdown, create_app
from infra._gateway_config import HttpGatewayConfig
from infra._settings import Settings
from infra._topics import apply_topics
from infra.bus import CursorExpiredError, EventBus
from tests.conftest import KafkaTarget, make_settings
from tests.harness import until

pytestmark = pytest.mark.integration

SECRET = "integration-secret-for-the-gateway-tests-long-enough-for-any-hs!"  # noqa: S105 - a test key


@pytest.fixture(params=["memory", "embedded"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """An open bus on the fake and on Tansu (this test's own topics)."""
    if request.param == "memory":
        async with EventBus.in_memory(service="gateway-test") as opened:
            yield opened
        return
    from infra._topics import apply_topics  # noqa: PLC0415 - only the real broker needs topics applied
    from tests.conftest import KafkaTarget  # noqa: PLC0415

    broker = request.getfixturevalue("embedded_broker")
    settings = make_settings(KafkaTarget("embedded", broker.bootstrap_servers, "embedded"))
    await apply_topics(settings.connection(), replication_factor=settings.replication)
    async with EventBus.connect(settings, service="gateway-test") as opened:
        yield opened


@asynccontextmanager
async def serving(bus: EventBus, **config: Any) -> AsyncIterator[str]:
    """The gateway over ``bus`` on a free 127.0.0.1 port; its base URL."""
    app = create_app(bus, HttpGatewayConfig(**{"jwt_secret": SECRET, "heartbeat_s": 5.0, **config}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = GatewayServer(
        uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=2, access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), "the gateway listening")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        begin_shutdown(app)
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def gateway(bus: EventBus) -> AsyncIterator[str]:
    async with serving(bus) as url:
        yield url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as opened:
        yield opened


def token(sub: str, *roles: str, exp_in: float = 86_400, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "roles": list(roles), "exp": int(time.time() + exp_in), **claims}, secret)


def auth(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An ``alg=none`` token, by hand."""
    parts = (base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode() for part in (header, claims))
    return ".".join(parts) + "."


ADMIN = token("root", "admin")
SERVICE = token("billing", "service")


@dataclass
class Message:
    event: str | None = None
    id: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)


@dataclass
class Listener:
    status: int
    messages: list[Message] = field(default_factory=list)
    body: str = ""
    ended: bool = False

    @property
    def events(self) -> list[Message]:
        return [m for m in self.messages if m.event not in (None, "reset", "error")]

    def ids_of(self, kind: str) -> list[str]:
        return [json.loads(m.data)["session_id"] for m in self.events if m.event == kind]

    async def read(self, response: httpx.Response) -> None:
        current = Message()
        async for line in response.aiter_lines():
            if line == "":
                self.messages.append(current)
                current = Message()
            elif line.startswith(":"):
                current.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    current.data = value
                elif name in ("event", "id"):
                    setattr(current, name, value)
        self.ended = True


@asynccontextmanager
async def listening(client: httpx.AsyncClient, url: str, bearer: str | None, **params: str) -> AsyncIterator[Listener]:
    """``GET /v1/events`` read in the background; once this yields, the stream's subscription exists."""
    headers = auth(bearer) if bearer else {}
    if "last_event_id_header" in params:
        headers["Last-Event-ID"] = params.pop("last_event_id_header")
    async with client.stream("GET", f"{url}/v1/events", params=params, headers=headers) as response:
        listener = Listener(response.status_code)
        if response.status_code != 200:
            listener.body = (await response.aread()).decode()
            yield listener
            return
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(listener.read(response))
        try:
            yield listener
        finally:
            reader.cancel()


def booking(user: str, coach: str = "c-1", session_id: str | None = None, **more: Any) -> dict[str, Any]:
    return {
        "session_id": session_id or f"s-{uuid.uuid4().hex[:10]}",
        "coach_id": coach,
        "user_id": user,
        "scheduled_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        "session_type": "intro",
        "cost_credits": 10,
        **more,
    }


def notification(user: str) -> dict[str, Any]:
    return {
        "notification_id": f"n-{uuid.uuid4().hex[:8]}",
        "user_id": user,
        "notification_type": "session_confirmed",
        "channel": "in_app",
        "title": "Confirmed",
    }


# -- who sees what -------------------------------------------------------------------------------------


async def test_each_user_gets_their_own_events_live_and_nobody_elses(
    bus: EventBus, gateway: str, client: httpx.AsyncClient
) -> None:
    async with (
        listening(client, gateway, token("u-1", "user"), user_id="u-2", coach_id="c-2") as u1,  # ids in the query
        listening(client, gateway, token("u-2", "user")) as u2,
        listening(client, gateway, token("c-1", "coach"), types="session:*,coach:status_changed") as c1,
        listening(client, gateway, ADMIN) as admin,
    ):
        published = [
            ("session:created", booking("u-1", "c-1", "s-u1-c1")),
            ("session:created", booking("u-2", "c-2", "s-u2-c2")),
            ("session:created", booking("u-2", "c-1", "s-u2-c1")),
            ("coach:status_changed", {"coach_id": "c-1", "old_status": "online", "new_status": "busy"}),
            ("coach:status_changed", {"coach_id": "c-2", "old_status": "online", "new_status": "busy"}),
            ("notification:sent", notification("u-1")),
            ("notification:sent", notification("u-2")),
            ("user:credits_updated", {"user_id": "u-2", "delta": -10, "balance": 90, "reason": "session_completed"}),
            ("cache:coach_data_refreshed", {"coach_id": "c-1"}),
        ]
        for kind, data in published:
            await bus.publish(kind, data)
        await until(lambda: len(admin.events) == len(published), "the admin seeing every event")
        await until(lambda: len(u1.events) == 2 and len(u2.events) == 4 and len(c1.events) == 3, "everyone's own")
        await bus.settle()

    def leaks(listener: Listener, user: str, coach: str | None = None) -> int:
        wrong = 0
        for message in listener.events:
            data = json.loads(message.data)
            mine = data.get("user_id") == user or (coach is not None and data.get("coach_id") == coach)
            wrong += not mine or message.event is None or message.event.startswith(("cache:", "system:"))
        return wrong

    assert (leaks(u1, "u-1"), leaks(u2, "u-2"), leaks(c1, "c-1", coach="c-1")) == (0, 0, 0)
    assert u1.ids_of("session:created") == ["s-u1-c1"]
    assert sorted(c1.ids_of("session:created")) == ["s-u1-c1", "s-u2-c1"]  # partitions interleave freely
    assert [m.event for m in c1.events].count("coach:status_changed") == 1
    assert sorted(m.event or "" for m in admin.events) == sorted(kind for kind, _ in published)
    assert all(m.id and m.id.startswith("v1.") for m in admin.events)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        token("u-1", "admin", exp_in=-30),
        token("u-1", "admin", secret="another-secret-another-secret-another-secret-another-secret!!"),  # noqa: S106
        unsigned({"alg": "none", "typ": "JWT"}, {"sub": "u-1", "roles": ["admin"], "exp": int(time.time()) + 86_400}),
        "garbage.token.here",
        jwt.encode({"sub": "u-1", "roles": ["admin"]}, SECRET),  # no exp
    ],
    ids=["missing", "expired", "other-key", "alg-none", "garbage", "no-exp"],
)
async def test_tokens_that_are_not_valid_get_401_everywhere(
    gateway: str, client: httpx.AsyncClient, bad: str | None
) -> None:
    async with listening(client, gateway, bad) as header:
        assert header.status == 401, header.body
    params = {"access_token": bad} if bad else {}
    for method, path in [("GET", "/v1/events"), ("GET", "/v1/stats"), ("GET", "/v1/history")]:
        response = await client.request(method, f"{gateway}{path}", params=params)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = await client.post(f"{gateway}/v1/events/session:created", json=booking("u-1"), params=params)
    assert response.status_code == 401


async def test_a_type_filter_the_role_may_not_read_is_403_and_an_unknown_one_400(
    gateway: str, client: httpx.AsyncClient
) -> None:
    user = token("u-1", "user")
    for types, expected in [
        ("system:error", 403),
        ("cache:*", 403),
        ("session:*,coach:status_changed", 403),  # coach events are about coaches
        ("nope:*", 400),
        ("session:*", 200),
        ("*", 200),
    ]:
        async with listening(client, gateway, user, types=types) as listener:
            assert listener.status == expected, (types, listener.body)
    async with listening(client, gateway, SERVICE) as service:
        assert service.status == 403
    async with listening(client, gateway, None, access_token=user, types="session:*") as query_token:
        assert query_token.status == 200


# -- resuming --------------------------------------------------------------------------------------------


async def test_resuming_with_last_event_id_delivers_exactly_the_missed_events(
    bus: EventBus, gateway: str, client: httpx.AsyncClient
) -> None:
    user = token("u-1", "user")
    async with listening(client, gateway, user, types="session:*") as first:
        for n in (1, 2):
            await bus.publish("session:created", booking("u-1", session_id=f"s-{n}"))
        await until(lambda: len(first.events) == 2, "the first two")
    cursor = first.events[-1].id
    assert cursor is not None
    for n in (3, 4):  # while the browser is away, among other users' events
        await bus.publish("session:created", booking("u-2", session_id=f"s-other-{n}"))
        await bus.publish("session:created", booking("u-1", session_id=f"s-{n}"))
    async with listening(client, gateway, user, types="session:*", last_event_id_header=cursor) as resumed:
        await bus.publish("session:created", booking("u-1", session_id="s-5"))
        await until(lambda: len(resumed.events) >= 3, "the missed two and the new one")
        await bus.settle()
    assert sorted(resumed.ids_of("session:created")) == ["s-3", "s-4", "s-5"]  # each once, none before the id
    async with listening(client, gateway, user, types="session:*", last_event_id=cursor) as by_query:
        await until(lambda: len(by_query.events) >= 3, "the same three, resumed by query parameter")
        await bus.settle()
    assert sorted(by_query.ids_of("session:created")) == ["s-3", "s-4", "s-5"]


async def test_an_id_that_is_not_ours_is_400(gateway: str, client: httpx.AsyncClient) -> None:
    for bad in ("garbage", "v1.not-base64!", encode_cursor({("another-cluster.session", 0): 5})):
        async with listening(client, gateway, token("u-1", "user"), last_event_id_header=bad) as listener:
            assert listener.status == 400, listener.body
            assert "Last-Event-ID" in listener.body


class _RetentionPassedBus(EventBus):
    """The in-memory bus, but every resume token points before what the topics still hold."""

    def stream(self, patterns: Sequence[str], *, after: str | None = None, **options: Any) -> Any:
        if after is not None:
            raise CursorExpiredError("session/0 no longer holds offset 1 (it starts at 40): start again")
        return super().stream(patterns, **options)


async def test_an_expired_id_gets_a_reset_event_then_live_events(client: httpx.AsyncClient) -> None:
    async with _RetentionPassedBus.in_memory() as bus, serving(bus) as url:
        cursor = encode_cursor({("session", 0): 1})
        async with listening(client, url, token("u-1", "user"), last_event_id_header=cursor) as listener:
            await bus.publish("session:created", booking("u-1", session_id="s-live"))
            await until(lambda: len(listener.events) == 1, "the live event after the reset")
    reset = listener.messages[1]
    assert (reset.event, reset.id) == ("reset", "")  # an empty id: the browser forgets the expired one
    assert json.loads(reset.data)["reason"] == "cursor_expired"
    assert listener.ids_of("session:created") == ["s-live"]


# -- slow clients, heartbeats, disconnects ---------------------------------------------------------


async def test_a_slow_client_is_cut_with_a_reason_and_never_slows_the_others(
    bus: EventBus, client: httpx.AsyncClient
) -> None:
    async with serving(bus, queue_size=20, heartbeat_s=10.0) as url:
        host, port = url.removeprefix("http://").split(":")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing, with a tiny buffer
        raw.connect((host, int(port)))
        reader, writer = await asyncio.open_connection(sock=raw, limit=1024)
        path = f"/v1/events?types=session:created&access_token={token('u-1', 'user')}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        await until(lambda: bus.subscription_count == 1, "the slow client's stream")
        async with listening(client, url, token("u-1", "user"), types="session:created") as fast:
            big = "x" * 16_000
            rounds = 0
            while bus.subscription_count == 2 and rounds < 80:
                for n in range(5):
                    await bus.publish("session:created", booking("u-1", coach_name=big, session_id=f"s-{rounds}-{n}"))
                rounds += 1
                await until(lambda: len(fast.events) == 5 * rounds, "the fast client keeping up")  # noqa: B023
            assert bus.subscription_count == 1, "the slow client's stream should have been dropped"
            received = (await asyncio.wait_for(reader.read(), 30)).decode()  # everything it was sent, then EOF
            await bus.publish("session:created", booking("u-1", session_id="s-after"))
            await until(lambda: len(fast.events) == 5 * rounds + 1, "the fast client still receiving")
        writer.close()
    assert "event: error" in received
    assert "slow_consumer" in received
    assert received.count("event: session:created") < 5 * rounds


async def test_heartbeats_keep_an_idle_stream_alive_and_a_closed_client_frees_its_stream(
    bus: EventBus, client: httpx.AsyncClient
) -> None:
    async with serving(bus, heartbeat_s=0.2) as url:
        async with listening(client, url, token("u-1", "user")) as listener:
            await until(lambda: any("ping" in m.comments for m in listener.messages), "a heartbeat")
            assert bus.subscription_count == 1
        await until(lambda: bus.subscription_count == 0, "the stream closed with the client", timeout_s=5)


# -- publishing, admin endpoints, health, docs ------------------------------------------------------


async def test_services_publish_with_the_same_validation_as_the_cli(
    bus: EventBus, gateway: str, client: httpx.AsyncClient
) -> None:
    created = await client.post(
        f"{gateway}/v1/events/session:created", json=booking("u-1", session_id="s-posted"), headers=auth(SERVICE)
    )
    assert created.status_code == 201, created.text
    position = created.json()
    assert {"topic", "partition", "offset", "event_id"} <= set(position)
    [stored] = await bus.history(1, type="session:created")
    assert (str(stored.event_id), getattr(stored, "session_id", None)) == (position["event_id"], "s-posted")

    invalid = await client.post(
        f"{gateway}/v1/events/session:created", json=booking("u-1", cost_credits="ten"), headers=auth(SERVICE)
    )
    assert invalid.status_code == 422
    assert invalid.json()["detail"]["fields"] == ["cost_credits"]
    assert (await client.post(f"{gateway}/v1/events/nope:made_up", json={}, headers=auth(SERVICE))).status_code == 404
    assert (await client.post(f"{gateway}/v1/events/system:error", json={}, headers=auth(SERVICE))).status_code == 403
    for role in ("user", "coach"):
        forbidden = await client.post(
            f"{gateway}/v1/events/session:created", json=booking("u-1"), headers=auth(token("u-1", role))
        )
        assert forbidden.status_code == 403
    not_an_object = await client.post(f"{gateway}/v1/events/session:created", json=[1], headers=auth(SERVICE))
    assert not_an_object.status_code == 422


async def test_stats_and_history_are_for_admins(bus: EventBus, gateway: str, client: httpx.AsyncClient) -> None:
    await bus.publish("session:created", booking("u-1", session_id="s-hist"))
    for bearer in (token("u-1", "user"), token("c-1", "coach"), SERVICE):
        for path in ("/v1/stats", "/v1/history"):
            assert (await client.get(f"{gateway}{path}", headers=auth(bearer))).status_code == 403
    stats = await client.get(f"{gateway}/v1/stats", headers=auth(ADMIN))
    assert stats.status_code == 200
    assert stats.json()["eventsByType"]["session:created"] >= 1
    history = await client.get(f"{gateway}/v1/history", params={"limit": 5, "type": "session:*"}, headers=auth(ADMIN))
    assert history.status_code == 200
    assert history.json()[-1]["session_id"] == "s-hist"
    bad = await client.get(f"{gateway}/v1/history", params={"type": "nope:*"}, headers=auth(ADMIN))
    assert bad.status_code == 400


async def test_health_readiness_docs_and_no_dev_tokens_by_default(gateway: str, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{gateway}/healthz")).json() == {"status": "ok"}
    assert (await client.get(f"{gateway}/readyz")).status_code == 200
    assert (await client.get(f"{gateway}/docs")).status_code == 200
    paths = (await client.get(f"{gateway}/openapi.json")).json()["paths"]
    assert {"/v1/events", "/v1/events/{event_type}", "/v1/stats", "/v1/history", "/healthz", "/readyz"} <= set(paths)
    assert "/dev/token" not in paths
    assert (await client.post(f"{gateway}/dev/token", json={"sub": "root", "roles": ["admin"]})).status_code == 404


async def test_dev_tokens_when_enabled(bus: EventBus, client: httpx.AsyncClient) -> None:
    async with serving(bus, jwt_secret=None, dev_tokens=True) as url:
        issued = await client.post(f"{url}/dev/token", json={"sub": "u-1", "roles": ["user"], "ttl_s": 60})
        assert issued.status_code == 200
        dev = issued.json()["access_token"]
        async with listening(client, url, dev, types="session:*") as listener:
            assert listener.status == 200
        assert (await client.get(f"{url}/v1/stats", headers=auth(dev))).status_code == 403
        assert (await client.get(f"{url}/v1/stats", headers=auth(token("root", "admin")))).status_code == 401


async def test_streams_end_when_the_gateway_shuts_down(bus: EventBus, client: httpx.AsyncClient) -> None:
    app = create_app(bus, HttpGatewayConfig(jwt_secret=SECRET))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = GatewayServer(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started, "the gateway listening")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with listening(client, url, ADMIN) as listener:
        begin_shutdown(app)
        assert (await client.get(f"{url}/readyz")).status_code == 503
        await until(lambda: listener.ended, "the stream ended by the shutdown", timeout_s=5)
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    sock.close()
    assert bus.subscription_count == 0


def test_the_gateway_command_serves_publishes_and_stops_cleanly_on_sigterm(embedded_broker: EmbeddedBroker) -> None:
    """``eventbus gateway`` as an operator runs it: health, a dev token, a publish and its event live, SIGTERM."""
    settings = make_settings(KafkaTarget("embedded", embedded_broker.bootstrap_servers, "embedded"))
    asyncio.run(_apply(settings))
    port = _free_tcp_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTBUS_")} | {
        "EVENTBUS_BOOTSTRAP_SERVERS": embedded_broker.bootstrap_servers,
        "EVENTBUS_PROFILE": "embedded",
        "EVENTBUS_TOPIC_PREFIX": settings.connection().topic_prefix,
        "EVENTBUS_HTTP_DEV_TOKENS": "true",
    }
    command = [sys.executable, "-c", "from infra._cli import main; main()", "gateway", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.2)
        token = httpx.post(f"{base}/dev/token", json={"sub": "svc", "roles": ["service"]}, timeout=5).json()
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        published = httpx.post(
            f"{base}/v1/events/coach:status_changed",
            headers=bearer,
            timeout=10,
            json={"coach_id": "c-cmd", "old_status": "online", "new_status": "away"},
        )
        assert published.status_code == 201, published.text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]


async def _apply(settings: Settings) -> None:
    await apply_topics(settings.connection(), replication_factor=settings.replication)


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_asyncapi_contract_is_served_as_json_and_yaml() -> None:
    """The catalog's AsyncAPI document at /asyncapi.json and /asyncapi.yaml, without a token."""
    async with EventBus.in_memory() as bus:
        app = create_app(bus, HttpGatewayConfig(dev_tokens=True))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            as_json = await client.get("/asyncapi.json")
            as_yaml = await client.get("/asyncapi.yaml")
    assert as_json.status_code == as_yaml.status_code == 200
    document = as_json.json()
    assert document["asyncapi"].startswith("3.")
    assert "session" in document["channels"]
    assert yaml.safe_load(as_yaml.text) == document
