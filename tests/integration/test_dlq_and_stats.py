"""Dead letters end to end on a real broker: poison and undecodable records, listing, replay; and getStats()."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from consumers import (
    PROCESSED_EVENTS_MIGRATION,
    REPLAY_HEADER,
    ConsumerGroup,
    Database,
    HandlerContext,
    ProcessedEventStore,
    run_groups,
)
from infra._cli import main
from infra._dlq import DeadLetter, list_dead_letters, replay_dead_letters
from infra._settings import Settings
from infra._stats import collect_stats
from producers import EventPublisher, OutgoingRecord
from schemas import SessionCreated
from schemas.errors import FatalHandlerError
from tests.events_factory import example_event

pytestmark = pytest.mark.integration


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.05)


def _session(session_id: str) -> SessionCreated:
    event = example_event("session:created", session_id=session_id)
    assert isinstance(event, SessionCreated)
    return event


class _Shop:
    """A group whose handler refuses ``poison`` sessions until fixed, recording effects once."""

    def __init__(self, name: str) -> None:
        self.group = ConsumerGroup(name)
        self.fixed = False
        self.calls: list[str] = []
        self.applied: list[str] = []
        self.group.add(SessionCreated, self._handle)

    async def _handle(self, event: SessionCreated, ctx: HandlerContext) -> None:
        self.calls.append(event.session_id)
        if event.session_id.startswith("poison") and not self.fixed:
            raise FatalHandlerError(f"{event.session_id} breaks a business rule")
        async with ctx.effects() as tx:
            if tx.first_time:
                self.applied.append(event.session_id)


@asynccontextmanager
async def _running(settings: Settings, shop: _Shop, tmp_path: Path) -> AsyncIterator[None]:
    database = Database(f"sqlite:///{tmp_path}/dedup.sqlite")
    await database.migrate([PROCESSED_EVENTS_MIGRATION])
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
        await database.close()


async def test_poison_and_undecodable_records_are_dead_lettered_byte_for_byte_and_replay_applies_once(
    settings: Settings, tmp_path: Path
) -> None:
    """Invariants 2 and 8, and replay: the group never stops, and a replayed event has its effect once."""
    shop = _Shop(f"shop-{uuid.uuid4().hex[:8]}")
    topic = settings.connection().topic("session")
    garbage = [
        OutgoingRecord(topic, b"bad-1", b"not avro at all", [("event-type", b"session:created")]),
        OutgoingRecord(topic, b"bad-2", b"\xc3\x01" + b"\x00" * 8 + b"unknown fingerprint", []),
    ]
    good = [_session(f"good-{n}") for n in range(6)]
    poison = [_session(f"poison-{n}") for n in range(2)]
    async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
        for index, event in enumerate(good):
            await publisher.publish(event)
            if index < len(poison):
                await publisher.publish(poison[index])
                await publisher.publish_record(garbage[index])
        async with _running(settings, shop, tmp_path):
            await _until(lambda: len(shop.calls) >= len(good) + len(poison))
            letters: list[DeadLetter] = []

            async def dead_letters_arrived() -> bool:
                letters[:] = await list_dead_letters(settings.connection(), group=shop.group.name)
                return len(letters) == len(poison) + len(garbage)

            deadline = time.monotonic() + 30
            while not await dead_letters_arrived():
                assert time.monotonic() < deadline, f"only {len(letters)} dead letters"
                await asyncio.sleep(0.2)
            assert sorted(shop.applied) == sorted(e.session_id for e in good)

            undecodable = sorted(
                (d.letter for d in letters if d.letter.original_event_type is None), key=lambda x: x.original_key or b""
            )
            assert [(u.original_key, u.original_value) for u in undecodable] == [(g.key, g.value) for g in garbage]
            assert {u.error_type for u in undecodable} == {"CorruptMessageError", "UnknownSchemaError"}
            assert [(h.key, h.value) for h in undecodable[0].original_headers] == garbage[0].headers
            failed = [d.letter for d in letters if d.letter.original_event_type == "session:created"]
            assert sorted(str(f.original_event_id) for f in failed) == sorted(str(p.event_id) for p in poison)
            assert all(f.error_type == "FatalHandlerError" and f.attempts == 1 for f in failed)

            shop.fixed = True
            for _ in range(2):  # replaying twice does not double-apply
                report = await replay_dead_letters(
                    settings.connection(), settings.publisher_config("t"), group=shop.group.name, event_type="session:*"
                )
                assert len(report.replayed) == len(poison)
            await _until(lambda: shop.calls.count("poison-0") == 3 and shop.calls.count("poison-1") == 3)
            await asyncio.sleep(0.5)
            assert sorted(shop.applied) == sorted([e.session_id for e in good] + [p.session_id for p in poison])


async def test_replayed_records_carry_a_header_naming_their_dead_letter(settings: Settings, tmp_path: Path) -> None:
    shop = _Shop(f"shop-{uuid.uuid4().hex[:8]}")
    seen_headers: list[dict[str, bytes]] = []

    async def spy(event: SessionCreated, ctx: HandlerContext) -> None:
        seen_headers.append(dict(ctx.headers))
        raise FatalHandlerError("always")

    shop.group = ConsumerGroup(shop.group.name)
    shop.group.add(SessionCreated, spy)
    async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
        await publisher.publish(example_event("session:created"))
        async with _running(settings, shop, tmp_path):
            await _until(lambda: len(seen_headers) == 1)
            await asyncio.sleep(0.5)
            report = await replay_dead_letters(settings.connection(), settings.publisher_config("t"))
            await _until(lambda: len(seen_headers) == 2)
    source = f"{settings.connection().topic('system')}/{report.replayed[0]['dead_letter']}"
    assert seen_headers[1][REPLAY_HEADER] == source.encode()
    assert seen_headers[1]["event-id"] == seen_headers[0]["event-id"]


async def test_stats_report_totals_types_and_lag_that_is_never_negative(settings: Settings, tmp_path: Path) -> None:
    shop = _Shop(f"shop-{uuid.uuid4().hex[:8]}")
    async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
        for n in range(5):
            await publisher.publish(example_event("session:created", session_id=f"good-{n}"))
        await publisher.publish(example_event("coach:rating_updated"))
        before = await collect_stats(settings.connection(), [shop.group])
        assert before.total_events == 6
        assert before.events_by_type == {"coach:rating_updated": 1, "session:created": 5}
        assert before.subscription_count == 1
        assert before.groups[0].lag == 5  # no commits yet: everything from the start is pending
        async with _running(settings, shop, tmp_path):
            await _until(lambda: len(shop.applied) == 5)
            deadline = time.monotonic() + 20
            while (after := await collect_stats(settings.connection(), [shop.group], count_types=False)).groups[0].lag:
                assert time.monotonic() < deadline, after
                await asyncio.sleep(0.3)
    assert all(p.lag >= 0 and (p.committed or 0) <= p.end for p in after.groups[0].partitions)
    assert sum(p.end for p in after.groups[0].partitions) == 5


def test_dlq_cli_lists_and_dry_runs_as_json(settings: Settings) -> None:
    async def seed() -> None:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
            letter = example_event(
                "system:error", consumer_group="cli-group", original_topic=settings.connection().topic("session")
            )
            await publisher.publish(letter)

    asyncio.run(seed())
    env = {
        "EVENTBUS_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "EVENTBUS_PROFILE": settings.profile,
        "EVENTBUS_TOPIC_PREFIX": settings.topic_prefix,
    }
    runner = CliRunner()
    listed = runner.invoke(main, ["dlq", "list", "--group", "cli-group", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [entry["consumer_group"] for entry in json.loads(listed.output)] == ["cli-group"]
    dry = runner.invoke(main, ["dlq", "replay", "--group", "cli-group", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["count"] == 1
    assert json.loads(dry.output)["replayed"][0]["replayed_to"] is None
    bad = runner.invoke(main, ["dlq", "list", "--since", "yesterday-ish"], env=env)
    assert bad.exit_code == 2
