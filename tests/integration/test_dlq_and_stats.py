"""Dead letters end to end on a real broker: poison and undecodable records, listing, replay; and getStats()."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
from infra._reader import ReadRecord, read_all
from infra._settings import Settings
from infra._stats import collect_stats
from infra._topics import REPLAY_LOG_TOPIC, TOPIC_SPECS, apply_topics
from producers import EventPublisher, OutgoingRecord
from schemas import AvroCodec, SessionCreated
from schemas.errors import FatalHandlerError
from tests.conftest import KafkaTarget, make_settings
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
async def _running(settings: Settings, shop: _Shop, tmp_path: Path, *more: _Shop) -> AsyncIterator[None]:
    database = Database(f"sqlite:///{tmp_path}/dedup.sqlite")
    await database.migrate([PROCESSED_EVENTS_MIGRATION])
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            [shop.group, *(other.group for other in more)],
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
            connection, config = settings.connection(), settings.publisher_config("t")
            first = await replay_dead_letters(connection, config, group=shop.group.name)
            assert len(first.replayed) == len(poison)
            assert first.skipped_undecodable == len(garbage)
            second = await replay_dead_letters(connection, config, group=shop.group.name)
            assert (second.replayed, second.skipped_replayed) == ([], len(poison))
            again = await replay_dead_letters(connection, config, group=shop.group.name, again=True)  # no double-apply
            assert len(again.replayed) == len(poison)
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
    source = f"{settings.connection().topic('system')}/{report.replayed[0]['dead_letters'][0]}"
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
        "EVENTBUS_BOOTSTRAP_SERVERS": settings.connection().bootstrap_servers,
        "EVENTBUS_PROFILE": settings.profile,
        "EVENTBUS_TOPIC_PREFIX": settings.connection().topic_prefix,
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


async def test_a_record_three_groups_dead_lettered_is_replayed_once_and_then_not_again(
    settings: Settings, tmp_path: Path
) -> None:
    shops = [_Shop(f"shop{n}-{uuid.uuid4().hex[:8]}") for n in range(3)]
    connection, config = settings.connection(), settings.publisher_config("t")
    async with EventPublisher(connection=connection, config=config) as publisher:
        await publisher.publish(_session("poison-0"))
    async with _running(settings, shops[0], tmp_path, *shops[1:]):
        await _until(lambda: all(shop.calls == ["poison-0"] for shop in shops))
        deadline = time.monotonic() + 30
        while len(letters := await list_dead_letters(connection)) < len(shops):
            assert time.monotonic() < deadline, f"only {len(letters)} dead letters"
            await asyncio.sleep(0.2)
        assert len({dead.original for dead in letters}) == 1
        for shop in shops:
            shop.fixed = True

        dry = await replay_dead_letters(connection, config, dry_run=True)
        report = await replay_dead_letters(connection, config)
        second = await replay_dead_letters(connection, config)

        (entry,) = report.replayed
        assert entry["groups"] == sorted(shop.group.name for shop in shops)
        assert sorted(entry["dead_letters"]) == sorted(dead.location for dead in letters)
        assert dry.replayed == [{**entry, "replayed_to": None}]
        assert (second.replayed, second.skipped_replayed) == ([], len(shops))
        await _until(lambda: all(shop.calls == ["poison-0", "poison-0"] for shop in shops))
        await asyncio.sleep(0.5)
    assert all(shop.applied == ["poison-0"] for shop in shops)
    assert [r.offset for r in await _records(settings, "session")] == [0, 1]  # the original and one replay
    marks = [dead.replayed for dead in await list_dead_letters(connection)]
    assert all(mark is not None and mark.replayed_to == entry["replayed_to"] for mark in marks)


async def _records(settings: Settings, entity: str) -> list[ReadRecord]:
    return [record async for record in read_all(settings.connection(), [entity])]


def _seed_dead_letters(settings: Settings, group: str) -> list[SessionCreated]:
    """Two events on the session topic, a dead letter of ``group`` for each, and one undecodable dead letter."""
    events = [_session(f"seed-{n}") for n in range(2)]
    topic = settings.connection().topic("session")

    async def seed() -> None:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("t")) as publisher:
            for event in events:
                record = publisher.prepare(event)
                where = await publisher.publish_record(record)
                letter = example_event(
                    "system:error",
                    consumer_group=group,
                    original_topic=topic,
                    original_partition=where.partition,
                    original_offset=where.offset,
                    original_key=record.key,
                    original_headers=[{"key": k, "value": v} for k, v in record.headers],
                    original_value=record.value,
                    original_event_type=event.event_type,
                    original_event_id=event.event_id,
                )
                await publisher.publish(letter)
            garbage = example_event(
                "system:error",
                consumer_group=group,
                original_topic=topic,
                original_offset=999,
                original_value=b"not avro",
                original_event_type=None,
                original_event_id=None,
                error_type="CorruptMessageError",
            )
            await publisher.publish(garbage)

    asyncio.run(seed())
    return events


def test_dlq_replay_twice_sends_nothing_the_second_time_and_a_dry_run_lists_exactly_what_is_sent(
    settings: Settings,
) -> None:
    events = _seed_dead_letters(settings, "cli-replay")
    env = {
        "EVENTBUS_BOOTSTRAP_SERVERS": settings.connection().bootstrap_servers,
        "EVENTBUS_PROFILE": settings.profile,
        "EVENTBUS_TOPIC_PREFIX": settings.connection().topic_prefix,
    }
    runner = CliRunner()

    def replay(*args: str) -> dict[str, Any]:
        result = runner.invoke(main, ["dlq", "replay", "--json", *args], env=env)
        assert result.exit_code == 0, result.output
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def session_records() -> dict[str, ReadRecord]:
        """The session topic's records by ``topic/partition/offset``."""
        records = asyncio.run(_records(settings, "session"))
        return {f"{r.topic}/{r.partition}/{r.offset}": r for r in records}

    originals = session_records()
    dry = replay("--dry-run")
    assert session_records().keys() == originals.keys()  # the dry run sent nothing
    real = replay()
    after_real = session_records()
    second = replay()

    assert [entry["event_id"] for entry in real["replayed"]] == [str(event.event_id) for event in events]
    assert dry["replayed"] == [{**entry, "replayed_to": None} for entry in real["replayed"]]
    assert after_real.keys() - originals.keys() == {entry["replayed_to"] for entry in real["replayed"]}
    sent = [after_real[entry["replayed_to"]] for entry in real["replayed"]]
    codec = AvroCodec()
    for record, entry in zip(sent, real["replayed"], strict=True):
        assert record.key is not None
        assert record.key.decode() == entry["key"]
        assert [[k, v.decode()] for k, v in record.headers] == entry["headers"]
        assert hashlib.sha256(record.value or b"").hexdigest() == entry["value_sha256"]
        assert str(codec.decode(record.value or b"").event_id) == entry["event_id"]
    assert (second["count"], second["skipped_replayed"], second["skipped_undecodable"]) == (0, 2, 1)
    assert real["skipped_undecodable"] == 1
    assert session_records().keys() == after_real.keys()  # the second run sent nothing

    listed = runner.invoke(main, ["dlq", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    marks = {entry["original_event_id"]: entry["replayed"] for entry in json.loads(listed.stdout)}
    assert {key: (mark or {}).get("replayed_to") for key, mark in marks.items()} == {
        **{entry["event_id"]: entry["replayed_to"] for entry in real["replayed"]},
        None: None,
    }
    table = runner.invoke(main, ["dlq", "list"], env=env)
    assert "3 dead letters, 2 replayed" in table.stdout

    first_letter = real["replayed"][0]["dead_letters"][0]
    again = replay("--again", "--letter", first_letter)
    garbage = replay("--include-undecodable", "--error", "CorruptMessage*")
    assert [entry["dead_letters"] for entry in again["replayed"]] == [[first_letter]]
    assert [entry["event_id"] for entry in garbage["replayed"]] == [None]
    relisted = json.loads(runner.invoke(main, ["dlq", "list", "--json", "--letter", first_letter], env=env).stdout)
    assert [entry["replayed"]["times"] for entry in relisted] == [2]


def test_without_a_replay_log_list_shows_no_marks_and_replay_refuses_before_sending(kafka_target: KafkaTarget) -> None:
    older = make_settings(kafka_target)  # topics applied by a version without the replay log
    specs = tuple(spec for spec in TOPIC_SPECS if spec.name != REPLAY_LOG_TOPIC)
    asyncio.run(apply_topics(older.connection(), replication_factor=1, specs=specs))
    events = _seed_dead_letters(older, "older")
    env = {
        "EVENTBUS_BOOTSTRAP_SERVERS": older.bootstrap_servers,
        "EVENTBUS_PROFILE": older.profile,
        "EVENTBUS_TOPIC_PREFIX": older.topic_prefix,
    }
    runner = CliRunner()

    listed = runner.invoke(main, ["dlq", "list", "--json"], env=env)
    replay = runner.invoke(main, ["dlq", "replay"], env=env)

    assert listed.exit_code == 0, listed.output
    assert [entry["replayed"] for entry in json.loads(listed.stdout)] == [None] * 3
    assert replay.exit_code == 1
    assert "create it with `eventbus topics apply`" in replay.stderr
    assert len(asyncio.run(_records(older, "session"))) == len(events)
