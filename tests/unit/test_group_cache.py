"""The ``cache`` group on the fake broker, over real Redis and the in-process cache: a coach change
deletes the coach's profile key and the coach list key, then publishes ``cache:coach_data_refreshed``
naming them (the same event on every delivery, invariant 5); an unreachable Redis is retried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest

from consumers import ConsumerGroup, Database, RetryPolicy, RuntimeConfig, follow_up_id
from consumers._cache import Cache, MemoryCache, RedisCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.cache import COACH_LIST_KEY, MIGRATIONS, build, coach_keys, coach_profile_key
from consumers.testing import InMemoryBroker
from producers import EventPublisher
from schemas import AvroCodec, CacheCoachDataRefreshed, Event, SystemErrorEvent
from tests.events_factory import example_event
from tests.harness import FAST, REDIS_URL, run_until_drained

CODEC = AvroCodec()
COACH_TYPES = ["coach:profile_updated", "coach:rating_updated", "coach:status_changed"]


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    value: Cache = RedisCache(REDIS_URL) if request.param == "redis" else MemoryCache()
    yield value
    await value.close()


def cache_group(cache: Cache, retry: RetryPolicy | None = None) -> ConsumerGroup:
    # The group touches no database; an unopened in-memory engine satisfies Resources.
    resources = Resources(database=Database("sqlite://"), cache=cache, settings=GroupSettings())
    return build(resources, retry=retry)


def refreshed(broker: InMemoryBroker) -> list[CacheCoachDataRefreshed]:
    events = [CODEC.decode(record.value) for record in broker.records("cache")]
    return [event for event in events if isinstance(event, CacheCoachDataRefreshed)]


def test_key_names_are_the_ones_the_web_application_uses() -> None:
    assert coach_profile_key("coach-7") == "eventbus:coach:coach-7:profile"
    assert COACH_LIST_KEY == "eventbus:coaches:list"
    assert coach_keys("coach-7") == ["eventbus:coach:coach-7:profile", "eventbus:coaches:list"]
    assert MIGRATIONS == []


@pytest.mark.parametrize("event_type", COACH_TYPES)
async def test_a_coach_change_deletes_both_keys_and_publishes_the_refresh(
    cache: Cache, broker: InMemoryBroker, publisher: EventPublisher, event_type: str
) -> None:
    coach = f"coach-{uuid4().hex[:12]}"
    other = coach_profile_key(f"other-{uuid4().hex[:12]}")
    keys = coach_keys(coach)
    for key in [*keys, other]:
        await cache.set(key, b"cached", ttl_s=60)
    source = example_event(event_type, coach_id=coach)
    await publisher.publish(source)

    await run_until_drained(cache_group(cache), broker, publisher)

    assert [await cache.get(key) for key in keys] == [None, None]
    assert await cache.get(other) == b"cached", "another coach's profile stays cached"
    (event,) = refreshed(broker)
    assert (event.coach_id, event.invalidated_keys) == (coach, keys)
    assert event.event_id == follow_up_id("cache", source.event_id, "cache:coach_data_refreshed", 0)
    assert event.metadata.causation_id == source.event_id
    await cache.delete(other)


async def test_a_redelivered_change_publishes_the_same_refresh_event_again(
    cache: Cache, broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    coach = f"coach-{uuid4().hex[:12]}"
    source = example_event("coach:profile_updated", coach_id=coach)
    await publisher.publish_many([source, source])
    await cache.set(coach_profile_key(coach), b"stale")

    await run_until_drained(cache_group(cache), broker, publisher)

    events = refreshed(broker)
    assert len(events) == 2
    assert len({event.event_id for event in events}) == 1
    unstamped = [event.model_dump(exclude={"metadata": {"occurred_at"}}) for event in events]
    assert unstamped[0] == unstamped[1], "only the publication time differs"
    assert await cache.get(coach_profile_key(coach)) is None


async def test_an_unreachable_redis_is_retried_then_dead_lettered(
    broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    """The handler waits for the cache within its bound, then the runtime dead-letters with the reason."""
    unreachable = RedisCache("redis://127.0.0.1:1/0")
    source: Event = example_event("coach:status_changed", coach_id=f"coach-{uuid4().hex[:12]}")
    await publisher.publish(source)
    patience = RetryPolicy(initial_s=0.01, max_s=0.05, bound_s=0.3)
    try:
        await run_until_drained(
            cache_group(unreachable, patience), broker, publisher, config=RuntimeConfig(**FAST, max_attempts=2)
        )
    finally:
        await unreachable.close()

    (letter,) = [CODEC.decode(record.value) for record in broker.records("system")]
    assert isinstance(letter, SystemErrorEvent)
    assert (letter.consumer_group, letter.error_type, letter.attempts) == ("cache", "RetryBoundExceededError", 2)
    assert "cache kept failing" in letter.error_message
    assert "redis DEL failed" in letter.error_message
    assert refreshed(broker) == []
