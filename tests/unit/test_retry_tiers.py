"""Non-blocking retry tiers: delayed retry topics, their dead letters, and the per-key order option."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest

from consumers import ConsumerGroup, GroupRunner, HandlerContext, RuntimeConfig
from consumers._retry_tiers import RETRY_HEADER_PREFIX
from consumers.testing import InMemoryBroker
from producers import EventPublisher
from schemas import AvroCodec, SessionCreated, SystemErrorEvent
from schemas.errors import FatalHandlerError, RetriableHandlerError
from tests.events_factory import example_event
from tests.harness import new_broker, running_group, until

TIERS = (0.2, 0.4)


def _session(session_id: str) -> SessionCreated:
    event = example_event("session:created", session_id=session_id)
    assert isinstance(event, SessionCreated)
    return event


def _broker() -> InMemoryBroker:
    return new_broker(partitions={"session": 1})


# Retries here take well under 10 s; poll every 10 ms.
_until = partial(until, timeout_s=10.0, interval_s=0.01)


@asynccontextmanager
async def _running(broker: InMemoryBroker, group: ConsumerGroup, **config: object) -> AsyncIterator[GroupRunner]:
    settings = {"backoff_initial_s": 0.01, "max_attempts": 2, "retry_tiers_s": TIERS, "concurrency": 1, **config}
    async with running_group(group, broker, RuntimeConfig.model_validate(settings), assigned_timeout_s=5) as run:
        yield run.runner


async def _publish(broker: InMemoryBroker, *events: SessionCreated) -> None:
    async with EventPublisher(transport=broker.producer()) as publisher:
        for event in events:
            await publisher.publish(event)


async def test_a_retriable_failure_moves_to_a_retry_tier_and_the_partition_goes_on() -> None:
    group = ConsumerGroup("tiers-go-on")
    order: list[str] = []
    failures = {"slow": 3}  # two in place, then tier 1 fails once more, tier 2 succeeds

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        if failures.get(event.session_id, 0) > 0:
            failures[event.session_id] -= 1
            raise RetriableHandlerError("not yet")
        order.append(f"{event.session_id}@{ctx.topic}#{ctx.attempt}")

    broker = _broker()
    await _publish(broker, _session("slow"), _session("after"))
    async with _running(broker, group):
        await _until(lambda: len(order) == 2)
    assert order == ["after@session#1", "slow@retry.tiers-go-on.2#4"]
    assert [len(broker.records(f"retry.tiers-go-on.{n}")) for n in (1, 2)] == [1, 1]
    assert broker.group_offsets["tiers-go-on"][("session", 0)] == 2
    assert broker.records("system") == []


async def test_failing_through_every_tier_dead_letters_the_original_record() -> None:
    group = ConsumerGroup("tiers-exhausted")

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        raise TimeoutError("the gateway never answers")

    broker = _broker()
    await _publish(broker, _session("doomed"))
    original = broker.records("session")[0]
    async with _running(broker, group):
        await _until(lambda: len(broker.records("system")) == 1)
    letter = AvroCodec().decode(broker.records("system")[0].value)
    assert isinstance(letter, SystemErrorEvent)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == ("session", 0, 0)
    assert letter.original_value == original.value
    assert [(h.key, h.value) for h in letter.original_headers] == original.headers
    assert not any(h.key.startswith(RETRY_HEADER_PREFIX) for h in letter.original_headers)
    assert letter.attempts == 2 + len(TIERS)
    assert letter.first_failure_at < letter.last_failure_at
    assert letter.error_type == "TimeoutError"


async def test_a_fatal_failure_in_a_tier_goes_straight_to_the_dead_letter_topic() -> None:
    group = ConsumerGroup("tiers-fatal")
    calls: list[int] = []

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt <= 2:
            raise RetriableHandlerError("transient")
        raise FatalHandlerError("now it is a business rule")

    broker = _broker()
    await _publish(broker, _session("fatal"))
    async with _running(broker, group):
        await _until(lambda: len(broker.records("system")) == 1)
    assert calls == [1, 2, 3]
    assert broker.records("retry.tiers-fatal.2") == []


@pytest.mark.parametrize("keep_order", [False, True])
async def test_keep_key_order_parks_later_records_of_the_key(keep_order: bool) -> None:
    """Invariant 3's caveat: tiers break key order unless later records of the key are parked behind."""
    group = ConsumerGroup(f"tiers-order-{keep_order}")
    order: list[str] = []
    failures = {"first": 2}

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        if failures.get(event.user_id, 0) > 0:
            failures[event.user_id] -= 1
            raise RetriableHandlerError("not yet")
        order.append(f"{event.session_id}/{event.user_id}")

    broker = _broker()
    # The session topic is keyed by session id: two records of session k1 share a key, k2 has its own.
    first = example_event("session:created", session_id="k1", user_id="first")
    second = example_event("session:created", session_id="k1", user_id="second")
    other = example_event("session:created", session_id="k2", user_id="other")
    assert isinstance(first, SessionCreated)
    assert isinstance(second, SessionCreated)
    assert isinstance(other, SessionCreated)
    await _publish(broker, first, second, other)
    async with _running(broker, group, retry_keep_key_order=keep_order):
        await _until(lambda: len(order) == 3)
    if keep_order:
        assert order == ["k2/other", "k1/first", "k1/second"]
    else:
        assert order == ["k1/second", "k2/other", "k1/first"]


async def test_waiting_for_a_due_retry_holds_no_handler_slot() -> None:
    group = ConsumerGroup("tiers-slots")
    handled: list[str] = []
    failures = {"waits": 2}

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        if failures.get(event.session_id, 0) > 0:
            failures[event.session_id] -= 1
            raise RetriableHandlerError("later")
        handled.append(event.session_id)

    broker = _broker()
    await _publish(broker, _session("waits"))
    async with _running(broker, group, retry_tiers_s=(5.0,), concurrency=1):
        await _until(lambda: len(broker.records("retry.tiers-slots.1")) == 1)
        await _publish(broker, _session("fresh"))
        await _until(lambda: handled == ["fresh"], timeout_s=2)
