"""The ``EventBus`` facade, one suite on the in-memory fake, the embedded broker and Apache Kafka: the original
``publish(type, data)``, ``subscribe`` returning an unsubscribe, ``getStats()`` and ``getEventHistory(n)``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra._bus_cursor import encode_cursor
from infra.bus import Delivered, EventBus, InvalidCursorError, SlowConsumerError
from schemas import CoachStatusChanged, Event, SessionCreated
from schemas.errors import ConfigurationError, EventValidationError
from tests.conftest import make_settings
from tests.harness import until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """An open bus on the fake, on Tansu and on Apache Kafka (this test's own topics)."""
    if request.param == "memory":
        async with EventBus.in_memory(service="bus-test") as opened:
            yield opened
        return
    from infra._topics import apply_topics  # noqa: PLC0415 - only the real brokers need topics applied
    from tests.conftest import KafkaTarget  # noqa: PLC0415

    if request.param == "embedded":
        broker = request.getfixturevalue("embedded_broker")
        target = KafkaTarget("embedded", broker.bootstrap_servers, "embedded")
    else:
        target = KafkaTarget("kafka", request.getfixturevalue("kafka_container"), "kafka")
    settings = make_settings(target)
    await apply_topics(settings.connection(), replication_factor=settings.replication)
    async with EventBus.connect(settings, service="bus-test") as opened:
        yield opened


def booking(session_id: str | None = None, user: str = "u-1") -> dict[str, Any]:
    return {
        "session_id": session_id or f"s-{uuid.uuid4().hex[:10]}",
        "coach_id": "c-1",
        "user_id": user,
        "scheduled_at": datetime.now(UTC) + timedelta(days=1),
        "session_type": "Mentoría Individual",
        "cost_credits": 10,
    }


def status(coach: str = "c-1") -> dict[str, Any]:
    return {"coach_id": coach, "old_status": "online", "new_status": "busy"}


async def test_publish_takes_the_original_type_and_data_and_says_where_the_event_went(bus: EventBus) -> None:
    result = await bus.publish("session:created", booking("s-where"))
    assert (result.topic.rsplit(".", 1)[-1], result.event_type) == ("session", "session:created")
    assert result.offset >= 0
    [event] = await bus.history(1, type="session:created")
    assert isinstance(event, SessionCreated)
    assert (event.event_id, event.session_id, event.metadata.service) == (result.event_id, "s-where", "bus-test")


async def test_typed_events_are_published_too(bus: EventBus) -> None:
    event = CoachStatusChanged.model_validate(status("c-typed"))
    result = await bus.publish(event)
    assert result.event_id == event.event_id
    with pytest.raises(ConfigurationError):
        await bus.publish(event, status())


async def test_invalid_data_names_the_field_and_nothing_is_published(bus: EventBus) -> None:
    data = booking()
    data["cost_credits"] = "ten"
    with pytest.raises(EventValidationError, match="cost_credits"):
        await bus.publish("session:created", data)
    assert await bus.history(10, type="session:created") == []


async def test_a_subscription_gets_matching_events_from_now_on_until_it_is_stopped(bus: EventBus) -> None:
    await bus.publish("session:created", booking("s-before"))
    seen: list[Event] = []
    unsubscribe = bus.subscribe("session:*", seen.append)
    await bus.publish("coach:status_changed", status())
    created = await bus.publish("session:created", booking("s-after"))
    await until(lambda: len(seen) == 1, "the booking published after subscribing")
    await bus.settle()
    assert [event.event_id for event in seen] == [created.event_id]
    assert bus.subscription_count == 1

    unsubscribe()
    unsubscribe()  # idempotent
    assert bus.subscription_count == 0
    await bus.publish("session:created", booking("s-gone"))
    await bus.settle()
    assert len(seen) == 1


async def test_many_subscriptions_share_the_feed_and_a_failing_handler_stops_none_of_them(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    everything: list[str] = []
    coaches: list[str] = []

    async def slow_async(event: Event) -> None:
        await asyncio.sleep(0)
        coaches.append(event.event_type)

    def failing(event: Event) -> None:
        raise RuntimeError(f"listener broke on {event.event_type}")

    bus.subscribe("*", lambda event: everything.append(event.event_type))
    bus.subscribe("coach:*", failing)
    bus.subscribe("coach:status_changed", slow_async)
    with caplog.at_level(logging.ERROR, logger="eventbus.bus"):
        await bus.publish("coach:status_changed", status())
        await bus.publish("session:created", booking())
        await bus.publish("coach:status_changed", status())
        await until(lambda: len(everything) == 3 and len(coaches) == 2, "every subscription's events")
    assert everything == ["coach:status_changed", "session:created", "coach:status_changed"] or sorted(
        everything
    ) == sorted(["coach:status_changed", "session:created", "coach:status_changed"])
    failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(failures) == 2
    assert "coach:*" in failures[0].getMessage()
    assert failures[0].exc_info is not None


async def test_since_a_count_delivers_the_last_ones_first_then_live_none_twice(bus: EventBus) -> None:
    earlier = [await bus.publish("session:created", booking(f"s-old-{n}")) for n in range(4)]
    seen: list[Event] = []
    bus.subscribe("session:created", seen.append, since=2)
    later = await bus.publish("session:created", booking("s-new"))
    await until(lambda: len(seen) >= 3, "two earlier bookings and the new one")
    await bus.settle()
    assert [event.event_id for event in seen] == [earlier[2].event_id, earlier[3].event_id, later.event_id]


async def test_since_a_time_delivers_what_was_stored_since_then_live(bus: EventBus) -> None:
    await bus.publish("coach:status_changed", status("c-too-old"))
    await asyncio.sleep(0.05)
    start = datetime.now(UTC)
    recent = await bus.publish("coach:status_changed", status("c-recent"))
    seen: list[Event] = []
    bus.subscribe("coach:*", seen.append, since=start)
    live = await bus.publish("coach:status_changed", status("c-live"))
    await until(lambda: len(seen) >= 2, "the recent change and the live one")
    await bus.settle()
    assert [event.event_id for event in seen] == [recent.event_id, live.event_id]


async def test_stats_are_the_original_get_stats(bus: EventBus) -> None:
    await bus.publish("session:created", booking())
    await bus.publish("coach:status_changed", status())
    await bus.publish("coach:status_changed", status())
    bus.subscribe("*", lambda event: None)
    stats = (await bus.stats()).as_dict()
    assert stats["totalEvents"] == 3
    assert stats["subscriptionCount"] == 1
    assert stats["eventsByType"] == {"coach:status_changed": 2, "session:created": 1}


async def test_history_is_the_original_get_event_history_with_a_type_filter(bus: EventBus) -> None:
    sessions = [await bus.publish("session:created", booking(f"s-h-{n}")) for n in range(3)]
    await bus.publish("coach:status_changed", status())
    assert [e.event_id for e in await bus.history(2, type="session:*")] == [r.event_id for r in sessions[1:]]
    assert len(await bus.history(50)) == 4
    assert await bus.history(0) == []


async def test_subscribing_to_a_pattern_that_matches_nothing_is_refused(bus: EventBus) -> None:
    with pytest.raises(ConfigurationError, match="matches no event type"):
        bus.subscribe("sesion:*", lambda event: None)


# -- streams: what the gateway serves, resumable by cursor ------------------------------------------


async def _take(events: AsyncIterator[Delivered], count: int) -> list[Delivered]:
    got: list[Delivered] = []
    async with asyncio.timeout(20):
        async for item in events:
            got.append(item)
            if len(got) == count:
                break
    return got


async def test_a_stream_resumed_from_a_cursor_misses_nothing_and_repeats_nothing(bus: EventBus) -> None:
    mine = {"coach_id": "c-mine"}
    async with bus.stream(
        ["coach:*", "session:created"], where=lambda e: getattr(e, "coach_id", "") == "c-mine"
    ) as events:
        first = [await bus.publish("coach:status_changed", status("c-mine")) for _ in range(2)]
        await bus.publish("coach:status_changed", status("c-other"))  # not this reader's
        got = await _take(events, 2)
    assert [item.event.event_id for item in got] == [r.event_id for r in first]
    assert all(getattr(item.event, "coach_id", None) == mine["coach_id"] for item in got)

    # while nobody reads: more events, some of them this reader's
    missed = [
        await bus.publish("session:created", {**booking(), "coach_id": "c-mine"}),
        await bus.publish("coach:status_changed", status("c-other")),
        await bus.publish("coach:status_changed", status("c-mine")),
    ]
    async with bus.stream(
        ["coach:*", "session:created"], after=got[0].cursor, where=lambda e: getattr(e, "coach_id", "") == "c-mine"
    ) as events:
        live = await bus.publish("coach:status_changed", status("c-mine"))
        resumed = await _take(events, 4)
    expected = [first[1].event_id, missed[0].event_id, missed[2].event_id, live.event_id]
    assert sorted(str(item.event.event_id) for item in resumed) == sorted(str(i) for i in expected)
    assert len({item.event.event_id for item in resumed}) == 4


async def test_a_cursor_that_is_not_ours_is_refused(bus: EventBus) -> None:
    for token in ("", "v1.", "v1.not-base64!", "v0.abc", encode_cursor({("no-such-topic", 0): 1})):
        with pytest.raises(InvalidCursorError):
            async with bus.stream(["*"], after=token):
                pass


async def test_a_reader_that_falls_behind_is_closed_and_never_slows_the_others(bus: EventBus) -> None:
    fast: list[Event] = []
    bus.subscribe("coach:*", fast.append)
    async with bus.stream(["coach:*"], max_queue=3) as events:
        for _ in range(6):
            await bus.publish("coach:status_changed", status())
        await until(lambda: len(fast) == 6, "the other subscription's six events")
        with pytest.raises(SlowConsumerError):
            await _take(events, 6)
