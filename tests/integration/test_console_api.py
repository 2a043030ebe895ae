"""The operator console's API in process (httpx over ASGI), on the embedded broker and on Apache Kafka.

Roles (admin reads, operator also writes), the overview, dead letters (list, inspect, a dry run that shows exactly
what is sent, a replay handled once, never twice by accident), the flow of one booking in causal order with who
handled each event, a group's page, offsets reset only while the group has no members, the explorer and schemas.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from consumers import (
    PROCESSED_EVENTS_MIGRATION,
    ConsumerGroup,
    Database,
    HandlerContext,
    ProcessedEventStore,
    group_id,
    run_groups,
)
from infra._console_api import ConsoleSources, close_console
from infra._gateway_app import create_app
from infra._gateway_config import HttpGatewayConfig
from infra._settings import Settings
from infra.bus import EventBus
from producers import EventPublisher, KafkaConnection, kafka_admin
from schemas import NotificationRequested, SessionCompleted, SessionCreated
from schemas.errors import FatalHandlerError
from tests.events_factory import example_event
from tests.harness import until

pytestmark = pytest.mark.integration

SECRET = "console-integration-secret-long-enough-for-hs256-tokens!!"  # noqa: S105 - a test key


def _token(sub: str, *roles: str) -> dict[str, str]:
    value = jwt.encode({"sub": sub, "roles": list(roles), "exp": int(time.time()) + 3600}, SECRET)
    return {"Authorization": f"Bearer {value}"}


ADMIN = _token("root", "admin")
OPERATOR = _token("ops", "operator")
USER = _token("u-1", "user")


class _Shop:
    """A group refusing ``poison`` sessions until fixed; effects (and ``processed_events``) once per event."""

    def __init__(self) -> None:
        self.group = ConsumerGroup(f"shop-{uuid.uuid4().hex[:8]}")
        self.fixed = False
        self.applied: list[str] = []
        self.group.add(SessionCreated, self._created)
        self.group.add(NotificationRequested, self._noted)

    async def _created(self, event: SessionCreated, ctx: HandlerContext) -> None:
        if event.session_id.startswith("poison") and not self.fixed:
            raise FatalHandlerError(f"{event.session_id} breaks a business rule")
        async with ctx.effects() as tx:
            if tx.first_time:
                self.applied.append(event.session_id)

    async def _noted(self, event: NotificationRequested, ctx: HandlerContext) -> None:
        async with ctx.effects():
            pass


@dataclass
class Console:
    client: httpx.AsyncClient
    settings: Settings
    shop: _Shop
    database: Database
    publisher: EventPublisher

    async def get(self, path: str, headers: dict[str, str] = ADMIN, **params: Any) -> Any:
        response = await self.client.get(f"/v1/console{path}", headers=headers, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] = OPERATOR) -> httpx.Response:
        return await self.client.post(f"/v1/console{path}", headers=headers, json=body)


@asynccontextmanager
async def _groups_running(settings: Settings, shop: _Shop, database: Database) -> AsyncIterator[None]:
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            [shop.group],
            connection=settings.connection(),
            publisher_config=settings.publisher_config("test"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(backoff_initial_s=0.01),
            stop=stop,
            store=ProcessedEventStore(database),
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=30)
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
async def console(settings: Settings, tmp_path: Path) -> AsyncIterator[Console]:
    """The gateway's app with the console over ``settings``' topics, a shop group, its sqlite database."""
    database = Database(f"sqlite:///{tmp_path}/console.sqlite")
    await database.migrate([PROCESSED_EVENTS_MIGRATION])
    shop = _Shop()
    sources = ConsoleSources(
        settings.connection(),
        settings.publisher_config("console-test"),
        [shop.group],
        database,
        engine=settings.profile,
        sample_interval_s=1.0,
    )
    async with (
        EventBus.connect(settings, service="console-test") as bus,
        EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher,
    ):
        app = create_app(bus, HttpGatewayConfig(jwt_secret=SECRET), console=sources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console", timeout=30) as client:
            try:
                yield Console(client, settings, shop, database, publisher)
            finally:
                await close_console(app)
    await database.close()


async def _dead_letters_of(console: Console, group: str) -> list[dict[str, Any]]:
    """The group's dead letters once there is one (30 s at most)."""
    deadline = time.monotonic() + 30
    while not (items := (await console.get("/dead-letters", group=group))["items"]):
        assert time.monotonic() < deadline, "no dead letter"
        await asyncio.sleep(0.3)
    items_: list[dict[str, Any]] = items
    return items_


async def _committed(connection: KafkaConnection, group: ConsumerGroup, topic: str) -> dict[int, int]:
    async with kafka_admin(connection, "test") as admin:
        found = await admin.committed_offsets(group_id(connection, group), [(topic, p) for p in range(6)])
    return {partition: offset for (_, partition), offset in found.items()}


async def _when_empty(console: Console, group: str, body: dict[str, Any]) -> httpx.Response:
    """POST the reset until the group is empty (Apache Kafka may keep a departed member a moment): 200."""
    deadline = time.monotonic() + 60
    while True:
        answer = await console.post(f"/groups/{group}/offsets", body)
        if answer.status_code != 409 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert answer.status_code == 200, answer.text
    return answer


def _session(session_id: str, **metadata: Any) -> SessionCreated:
    event = example_event("session:created", session_id=session_id)
    assert isinstance(event, SessionCreated)
    return event.with_metadata(**metadata) if metadata else event


async def test_roles_overview_schemas_and_pages(console: Console) -> None:
    """401 without a token, 403 for a user, the overview and schemas for admin, the pages served as files."""
    assert (await console.client.get("/v1/console/overview")).status_code == 401
    assert (await console.client.get("/v1/console/overview", headers=USER)).status_code == 403
    await console.publisher.publish(_session("s-overview"))
    overview = await console.get("/overview")
    topics = {topic["entity"]: topic for topic in overview["topics"]}
    assert topics["session"]["partitions"] == 6
    assert topics["session"]["records"] >= 1
    assert [group["name"] for group in overview["groups"]] == [console.shop.group.name]
    assert overview["broker"]["engine"] in {"Tansu (embedded)", "Apache Kafka"}
    assert overview["broker"]["version"].startswith("Fetch v")
    assert overview["dead_letters"]["total"] == 0
    assert (await console.get("/whoami", OPERATOR))["may_operate"] is True
    assert (await console.get("/whoami"))["may_operate"] is False

    schemas = {item["event_type"]: item for item in (await console.get("/schemas"))["schemas"]}
    assert schemas["session:created"]["groups"] == [console.shop.group.name]
    assert len(schemas["session:created"]["fingerprint"]) == 16
    assert schemas["session:created"]["schema"]["type"] == "record"
    assert "session_id" in schemas["session:created"]["example"]

    page = await console.client.get("/console/", follow_redirects=True)
    assert page.status_code == 200
    assert str(page.url).endswith("/ui/console/")
    assert "console.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await console.client.get("/ui/console/pages/deadletters.js")).status_code == 200


async def test_dead_letters_inspect_dry_run_replay_once(console: Console) -> None:
    """A poison record is dead-lettered; inspected decoded and as hex; admin may not replay (403); the operator's
    dry run shows the record; after the fix the replay is handled once and a second replay sends nothing."""
    shop = console.shop
    poison = _session(f"poison-{uuid.uuid4().hex[:6]}")
    async with _groups_running(console.settings, shop, console.database):
        await console.publisher.publish(_session("good-1"))
        await console.publisher.publish(poison)
        [item] = await _dead_letters_of(console, shop.group.name)
        assert item["event_id"] == str(poison.event_id)
        assert item["error_type"] == "FatalHandlerError"
        assert item["replayed"] is None
        filtered = await console.get("/dead-letters", error="Fatal*", topic="session", type="session:*")
        assert [found["location"] for found in filtered["items"]] == [item["location"]]
        assert (await console.get("/dead-letters", error="NoSuchError"))["count"] == 0

        detail = await console.get(f"/dead-letters/{item['location']}")
        assert detail["event"]["session_id"] == poison.session_id
        assert "breaks a business rule" in detail["error_message"]
        assert detail["traceback"]
        assert detail["value_hex"] == bytes.fromhex(detail["value_hex"]).hex()
        assert any(header["key"] == "event-type" for header in detail["headers"])
        missing = await console.client.get("/v1/console/dead-letters/0/999999", headers=ADMIN)
        assert missing.status_code == 404

        body = {"letters": [item["location"]], "dry_run": True}
        assert (await console.post("/dead-letters/replay", body, ADMIN)).status_code == 403
        assert (await console.post("/dead-letters/replay", {"dry_run": True})).status_code == 400
        dry = (await console.post("/dead-letters/replay", body)).json()
        assert dry["dry_run"] is True
        assert dry["count"] == 1
        [planned] = dry["replayed"]
        assert planned["event_id"] == str(poison.event_id)
        assert planned["dead_letters"] == [item["location"]]
        assert planned["replayed_to"] is None
        assert shop.applied == ["good-1"]

        shop.fixed = True
        done = (await console.post("/dead-letters/replay", {**body, "dry_run": False})).json()
        assert done["count"] == 1
        assert done["replayed"][0]["replayed_to"]
        await until(lambda: poison.session_id in shop.applied, "the replayed event handled", 30)
        again = await console.post("/dead-letters/replay", {"filter": {"group": shop.group.name}, "dry_run": False})
        assert again.json()["count"] == 0
        assert again.json()["skipped_replayed"] == 1
        await asyncio.sleep(1.0)
        assert shop.applied.count(poison.session_id) == 1
        marked = (await console.get("/dead-letters", group=shop.group.name, replayed="true"))["items"]
        assert [found["location"] for found in marked] == [item["location"]]
        overview = await console.get("/overview")
        assert overview["dead_letters"]["by_group"] == {shop.group.name: 1}
        assert overview["dead_letters"]["by_error_type"] == {"FatalHandlerError": 1}


async def test_flow_in_causal_order_with_handlers_and_dead_letters(console: Console) -> None:
    """A booking's events across topics come back as a causation tree, with the group that handled each."""
    shop = console.shop
    root = _session(f"poison-flow-{uuid.uuid4().hex[:6]}")
    flow = str(root.event_id)
    first = example_event("notification:requested").with_metadata(correlation_id=flow, causation_id=root.event_id)
    completed = example_event("session:completed", session_id=root.session_id).with_metadata(
        correlation_id=flow, causation_id=root.event_id
    )
    second = example_event("notification:requested").with_metadata(correlation_id=flow, causation_id=completed.event_id)
    assert isinstance(completed, SessionCompleted)
    stranger = example_event("notification:requested")
    async with _groups_running(console.settings, shop, console.database):
        for event in (root, first, completed, second, stranger):
            await console.publisher.publish(event)
        data: dict[str, Any] = {}

        async def complete() -> bool:
            data.update(await console.get(f"/flow/{flow}"))
            handled = [e for e in data["events"] if e["handled_by"]]
            return data["count"] == 4 and len(handled) == 2 and data["dead_letters"] == 1

        deadline = time.monotonic() + 30
        while not await complete():
            assert time.monotonic() < deadline, data
            await asyncio.sleep(0.3)
    events = data["events"]
    assert [(e["event_type"], e["depth"]) for e in events] == [
        ("session:created", 0),
        ("notification:requested", 1),
        ("session:completed", 1),
        ("notification:requested", 2),
    ]
    assert events[0]["event_id"] == flow
    assert events[0]["dead_letters"][0]["group"] == shop.group.name
    assert events[0]["handled_by"] == []
    assert [h["group"] for h in events[1]["handled_by"]] == [shop.group.name]
    assert events[2]["handled_by"] == []  # the shop does not handle session:completed
    assert str(stranger.event_id) not in {e["event_id"] for e in events}


async def test_group_page_and_offsets_reset_only_without_members(console: Console) -> None:
    """The group's lag per partition and members; a reset is refused (409) while it runs, a dry run changes
    nothing, a real reset moves the committed offsets; admin may not reset."""
    shop = console.shop
    connection = console.settings.connection()
    topic = connection.topic("session")
    for n in range(4):
        await console.publisher.publish(_session(f"s-{n}"))
    body: dict[str, Any] = {"topic": "session", "to": "earliest", "dry_run": True}
    async with _groups_running(console.settings, shop, console.database):
        await until(lambda: len(shop.applied) == 4, "the four sessions handled", 30)
        detail: dict[str, Any] = {}

        async def caught_up() -> bool:
            detail.update(await console.get(f"/groups/{shop.group.name}"))
            return detail["lag"] == 0 and bool(detail["members"])

        deadline = time.monotonic() + 30
        while not await caught_up():
            assert time.monotonic() < deadline, detail
            await asyncio.sleep(0.3)
        assert detail["state"] == "Stable"
        assigned = {tp for member in detail["members"] for tp in member["assignment"]}
        if console.settings.profile == "kafka":  # Tansu reports members without their assignments
            assert f"{topic}/0" in assigned
        assert {p["topic"] for p in detail["partitions"]} >= {topic}
        busy = await console.post(f"/groups/{shop.group.name}/offsets", body)
        assert busy.status_code == 409, busy.text
        assert "member" in busy.json()["detail"]["message"]
    refused = [
        (await console.post(f"/groups/{shop.group.name}/offsets", body, ADMIN)).status_code,
        (await console.post("/groups/nobody/offsets", body)).status_code,
        (await console.post(f"/groups/{shop.group.name}/offsets", {**body, "topic": "coach"})).status_code,
    ]
    assert refused == [403, 404, 404]

    before = await _committed(connection, shop.group, topic)
    assert sum(before.values()) == 4
    if console.settings.profile == "embedded":  # Tansu lists departed members forever: the operator vouches
        still = await console.post(f"/groups/{shop.group.name}/offsets", body)
        assert still.status_code == 409
        assert "consumers_stopped" in still.json()["detail"]["message"]
        body["consumers_stopped"] = True
    else:
        still = await console.post(f"/groups/{shop.group.name}/offsets", {**body, "consumers_stopped": True})
        assert still.status_code in {200, 409}  # the override means nothing on Apache Kafka
    dry = await _when_empty(console, shop.group.name, body)
    plan = {p["partition"]: p for p in dry.json()["partitions"]}
    assert sorted(plan) == list(range(6))
    assert all(p["target"] == p["low"] == 0 for p in plan.values())
    assert sum(p["lag_after"] for p in plan.values()) == 4
    assert await _committed(connection, shop.group, topic) == before
    done = await console.post(f"/groups/{shop.group.name}/offsets", {**body, "dry_run": False})
    assert done.status_code == 200, done.text
    after = await _committed(connection, shop.group, topic)
    assert all(after.get(p, 0) == 0 for p in before)
    latest = await console.post(f"/groups/{shop.group.name}/offsets", {**body, "to": "latest", "dry_run": False})
    assert latest.status_code == 200, latest.text
    assert {p: o for p, o in (await _committed(connection, shop.group, topic)).items() if o} == before
    moved = await console.post(
        f"/groups/{shop.group.name}/offsets", {**body, "to": "offset", "value": "0", "partition": 0, "dry_run": True}
    )
    assert [p["partition"] for p in moved.json()["partitions"]] == [0]


async def test_group_rates_show_handled_records_and_a_dead_letter(console: Console) -> None:
    """With the sampler running (1 s), records handled move the group's handled/s above zero and a poison's dead
    letter shows in dead-lettered/s and failed/s; nothing was retried (the shop has no retry tiers)."""
    shop = console.shop
    name = shop.group.name
    async with _groups_running(console.settings, shop, console.database):
        first = await console.get(f"/groups/{name}")  # starts the sampler
        assert set(first["rates"]) == {"handled", "failed", "retried", "dead_lettered"}
        await asyncio.sleep(1.5)
        for n in range(6):
            await console.publisher.publish(_session(f"rate-{n}"))
        await console.publisher.publish(_session("poison-rate"))
        await until(lambda: len(shop.applied) == 6, "six sessions handled", 30)
        series: dict[str, list[list[float]]] = {}

        async def rates_seen() -> bool:
            series.update((await console.get(f"/groups/{name}"))["rate_series"])
            return any(v for _, v in series["handled"]) and any(v for _, v in series["dead_lettered"])

        deadline = time.monotonic() + 30
        while not await rates_seen():
            assert time.monotonic() < deadline, series
            await asyncio.sleep(0.5)
    assert any(v > 0 for _, v in series["failed"])
    assert series["retried"]
    assert not any(v for _, v in series["retried"])


async def test_explorer_filters(console: Console) -> None:
    """Browse a topic: newest records, from an offset, by type, key, header and payload text."""
    marker = uuid.uuid4().hex[:8]
    events = [_session(f"x-{marker}-{n}") for n in range(3)]
    for event in events:
        await console.publisher.publish(event)
    newest = await console.get("/topics/session/records", limit=2)
    assert newest["matched"] == 3
    assert len(newest["records"]) == 2
    by_text = await console.get("/topics/session/records", q=f"x-{marker}-1")
    assert [r["event"]["session_id"] for r in by_text["records"]] == [f"x-{marker}-1"]
    key = by_text["records"][0]["key"]
    assert (await console.get("/topics/session/records", key=key))["matched"] >= 1
    assert (await console.get("/topics/session/records", header="event-type=session:created"))["matched"] == 3
    assert (await console.get("/topics/session/records", header="event-type=session:updated"))["matched"] == 0
    assert (await console.get("/topics/session/records", type="coach:*"))["matched"] == 0
    record = by_text["records"][0]
    since = await console.get("/topics/session/records", partition=record["partition"], offset=record["offset"])
    assert since["records"][0]["offset"] == record["offset"]
    unknown = await console.client.get("/v1/console/topics/nope/records", headers=ADMIN)
    assert unknown.status_code == 404
