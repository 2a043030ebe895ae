"""Retry tiers on a real broker: the group creates its delayed topics, retries there, then dead-letters."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from consumers import ConsumerGroup, HandlerContext, run_groups
from infra._dlq import list_dead_letters
from infra._reader import existing_topics
from infra._settings import Settings
from producers import EventPublisher
from schemas import SessionCreated
from schemas.errors import RetriableHandlerError
from tests.events_factory import example_event

pytestmark = pytest.mark.integration


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_records_move_through_retry_topics_then_to_the_dead_letter_topic(settings: Settings) -> None:
    group = ConsumerGroup(f"tiers-{uuid.uuid4().hex[:8]}")
    calls: dict[str, list[str]] = {"flaky": [], "broken": []}

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        calls[event.session_id].append(ctx.topic)
        if event.session_id == "broken" or len(calls["flaky"]) <= 2:
            raise RetriableHandlerError("try later")

    stop, started = asyncio.Event(), asyncio.Event()
    runtime = settings.runtime_config(backoff_initial_s=0.01, max_attempts=2).model_copy(
        update={"retry_tiers_s": (0.3, 0.6)}
    )
    connection = settings.connection()
    task = asyncio.create_task(
        run_groups(
            [group],
            connection=connection,
            publisher_config=settings.publisher_config("t"),
            consumer_config=settings.consumer_config(),
            runtime_config=runtime,
            stop=stop,
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=30)
        async with EventPublisher(connection=connection, config=settings.publisher_config("t")) as publisher:
            for session_id in ("flaky", "broken"):
                await publisher.publish(example_event("session:created", session_id=session_id))
        await _until(lambda: len(calls["broken"]) == 4 and len(calls["flaky"]) == 3)
        retry_1, retry_2 = (connection.topic(f"retry.{group.name}.{n}") for n in (1, 2))
        assert calls["flaky"] == [connection.topic("session"), connection.topic("session"), retry_1]
        assert calls["broken"] == [connection.topic("session")] * 2 + [retry_1, retry_2]
        assert {retry_1, retry_2} <= await existing_topics(connection)
        deadline = time.monotonic() + 20
        while not (letters := await list_dead_letters(connection, group=group.name)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task
    assert len(letters) == 1
    letter = letters[0].letter
    assert letter.original_topic == connection.topic("session")
    assert letter.attempts == 4
