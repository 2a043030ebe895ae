"""One trace end to end on the embedded broker: ``POST /v1/events/session:created`` to the gateway (in process,
over httpx's ASGI transport), its publish, the ``notifications`` group handling it, the ``notification:sent``
follow-ups it publishes, and the ``analytics`` group handling both (``run_groups``, SQLite in ``tmp_path``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from consumers import Database, GroupSettings, MemoryCache, ProcessedEventStore, Resources, run_groups
from consumers.groups import analytics, notifications
from infra._composition import marketplace_migrations
from infra._embedded import EmbeddedBroker
from infra._gateway_app import create_app
from infra._gateway_config import HttpGatewayConfig
from infra._settings import Settings
from infra._topics import apply_topics
from infra.bus import EventBus
from tests.conftest import KafkaTarget, make_settings
from tests.harness import until
from tests.tracing_support import traced

pytestmark = pytest.mark.integration

SECRET = "integration-secret-for-the-tracing-test-long-enough-for-hs256!"  # noqa: S105 - a test key


@pytest.fixture
async def settings(embedded_broker: EmbeddedBroker) -> Settings:
    value = make_settings(KafkaTarget("embedded", embedded_broker.bootstrap_servers, "embedded"))
    await apply_topics(value.connection(), replication_factor=value.replication)
    return value


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    opened = Database(f"sqlite:///{tmp_path}/tracing.sqlite")
    await opened.migrate(marketplace_migrations())
    try:
        yield opened
    finally:
        await opened.close()


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


def _parent(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    return next((s for s in spans if span.parent is not None and _span_id(s) == span.parent.span_id), None)


def _attribute(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


async def test_a_posted_event_is_one_trace_through_the_gateway_publisher_notifications_and_analytics(
    settings: Settings, database: Database
) -> None:
    prefix = settings.connection().topic_prefix
    session, notification = f"{prefix}session", f"{prefix}notification"
    resources = Resources(database=database, cache=MemoryCache(), settings=GroupSettings())
    groups = [notifications.build(resources), analytics.build(resources)]
    token = jwt.encode({"sub": "billing", "roles": ["service"], "exp": int(time.time() + 600)}, SECRET)
    booking = {
        "session_id": f"s-{uuid.uuid4().hex[:10]}",
        "coach_id": "c-traced",
        "user_id": "u-traced",
        "scheduled_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        "session_type": "intro",
        "cost_credits": 10,
    }
    with traced() as exporter:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_groups(
                groups,
                connection=settings.connection(),
                publisher_config=settings.publisher_config("tracing-test"),
                consumer_config=settings.consumer_config(),
                runtime_config=settings.runtime_config(backoff_initial_s=0.01),
                stop=stop,
                store=ProcessedEventStore(database),
                started=started,
            )
        )
        try:
            await asyncio.wait_for(started.wait(), timeout=60)
            async with EventBus.connect(settings, service="gateway-test") as bus:
                app = create_app(bus, HttpGatewayConfig(jwt_secret=SECRET))
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
                    response = await client.post(
                        "/v1/events/session:created", json=booking, headers={"Authorization": f"Bearer {token}"}
                    )
                assert response.status_code == 201, response.text

                def analytics_saw(topic: str) -> list[ReadableSpan]:
                    return [
                        s
                        for s in exporter.get_finished_spans()
                        if s.name == f"process {topic}" and _attribute(s, "eventbus.group") == "analytics"
                    ]

                await until(
                    lambda: analytics_saw(session) and analytics_saw(notification),
                    "analytics handling the booking and a notification:sent",
                    timeout_s=60,
                )
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=60)
        spans = list(exporter.get_finished_spans())

    [server] = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "POST /v1/events/{event_type}"
    assert server.parent is None
    traced_spans = [s for s in spans if s.context is not None and s.context.trace_id == server.context.trace_id]
    [publish] = [s for s in traced_spans if s.name == f"publish {session}"]
    assert _parent(publish, spans) is server
    processes = {_attribute(s, "eventbus.group"): s for s in traced_spans if s.name == f"process {session}"}
    assert set(processes) == {"notifications", "analytics"}
    assert all(_parent(s, spans) is publish for s in processes.values())
    assert _attribute(processes["notifications"], "messaging.consumer.group.name") == f"{prefix}notifications"
    follow_ups = [s for s in traced_spans if s.name == f"publish {notification}"]
    assert follow_ups
    assert all(_parent(s, spans) is processes["notifications"] for s in follow_ups)
    assert {_attribute(s, "eventbus.event_type") for s in follow_ups} == {"notification:sent"}
    seen = [s for s in traced_spans if s.name == f"process {notification}"]
    assert seen
    assert all(_parent(s, spans) in follow_ups for s in seen)
    assert {_attribute(s, "eventbus.group") for s in seen} == {"analytics"}
    print(_tree(server, traced_spans))  # noqa: T201 - the trace, for the README and for whoever reads -s


def _tree(root: ReadableSpan, spans: list[ReadableSpan], depth: int = 0) -> str:
    group = _attribute(root, "eventbus.group")
    line = "  " * depth + f"{root.name} [{root.kind.name}{f', group {group}' if group else ''}]"
    children = sorted((s for s in spans if _parent(s, spans) is root), key=lambda s: s.start_time or 0)
    return "\n".join([line, *(_tree(child, spans, depth + 1) for child in children)])
