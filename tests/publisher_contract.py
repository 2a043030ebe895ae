"""The publisher's behaviour suite, run unchanged on the in-memory fake and on real brokers.

Not collected itself: a module subclasses ``PublisherContract`` as ``Test...`` and gives a ``harness`` fixture.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID, uuid4

import pytest

from infra._topics import TOPIC_SPECS
from producers import EventPublisher, KafkaConnection, PublisherConfig, caused_by, correlation_scope, murmur2_partition
from producers._publisher import PublishResult
from schemas import CATALOG, AvroCodec, Event, SessionCreated
from schemas import errors as err
from tests.events_factory import example_event

__all__ = ["PublisherContract", "PublisherHarness", "RawRecord"]

CODEC = AvroCodec()
PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}
# The record key per entity topic, stated independently of the catalog's own `eventbus.key`.
KEY_FIELD_BY_TOPIC = {"session": "session_id", "coach": "coach_id", "cache": "coach_id", "payment": "payment_id"}
KEY_FIELD_BY_TOPIC |= {"notification": "user_id", "user": "user_id", "system": "consumer_group"}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record as a reader sees it on the broker."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> bytes | None:
        """The value of header ``name`` (``None`` when absent)."""
        return next((value for key, value in self.headers if key == name), None)

    @property
    def event_id(self) -> UUID:
        """The event id from the ``event-id`` header."""
        value = self.header("event-id")
        assert value is not None, f"record without event-id header: {self.headers}"
        return UUID(value.decode())


class PublisherHarness(Protocol):
    """What the contract needs from a broker under test."""

    connection: KafkaConnection
    """A connection whose topic prefix has every entity topic (``TOPIC_SPECS``) applied."""
    config: PublisherConfig
    """The base publisher config (service ``test-service``)."""

    def publisher(self, *, connection: KafkaConnection | None = None, **config: Any) -> EventPublisher:
        """A publisher (not started) on ``connection``, with ``config`` fields over the base config."""

    async def records(self, topic: str, count: int) -> list[RawRecord]:
        """Every record of ``topic`` (a full name), waiting until at least ``count`` are there."""

    async def partitions(self, topic: str) -> int:
        """The partition count of ``topic`` as the broker reports it."""

    async def topic_exists(self, topic: str) -> bool:
        """Whether ``topic`` exists on the broker (asked without creating it)."""

    def unapplied_connection(self) -> KafkaConnection:
        """A connection whose topic prefix has no topics on the broker."""


class UnlistedEvent(Event, event_type="session:unlisted"):
    """An event type that is not in the catalog."""

    session_id: str


class SessionCreatedVariant(SessionCreated):
    """A subclass of a catalog model: not itself in the catalog."""


def topic_of(harness: PublisherHarness, event_type: str) -> str:
    return harness.connection.topic(CATALOG.spec(event_type).topic)


def session_event(session_id: str, **overrides: Any) -> Event:
    return example_event("session:created", session_id=session_id, **overrides)


def oversized_event(session_id: str = "session-big") -> Event:
    return session_event(session_id, coach_name="x" * 2000)


def unlisted_event() -> Event:
    return UnlistedEvent(session_id="session-1")


def as_stamped(event: Event, config: PublisherConfig) -> Event:
    meta = event.metadata.model_copy(update={"service": config.service, "version": config.service_version})
    return event.model_copy(update={"metadata": meta})


async def stored_by_id(harness: PublisherHarness, event_type: str, count: int) -> dict[UUID, RawRecord]:
    return {r.event_id: r for r in await harness.records(topic_of(harness, event_type), count)}


def encoded(value: object | None) -> bytes | None:
    return None if value is None else str(value).encode()


async def assert_only_record_is(harness: PublisherHarness, publisher: EventPublisher, topic: str) -> None:
    """Publish a sentinel to ``topic``: it must be the topic's first and only record."""
    sentinel = await publisher.publish(session_event("session-1"))
    records = await harness.records(topic, 1)
    assert [r.event_id for r in records] == [sentinel.event_id]
    assert sentinel.offset == 0


_INVALID_FIELDS = [
    pytest.param("session:created", {"session_id": ""}, id="empty-entity-id"),
    pytest.param("payment:processed", {"amount": "-5"}, id="negative-amount"),
    pytest.param("payment:failed", {"currency": "eur"}, id="currency-pattern"),
    pytest.param("session:created", {"cost_credits": -1}, id="negative-cost-credits"),
    pytest.param("user:credits_updated", {"balance": -5}, id="negative-balance"),
]


def unencodable_event() -> Event:
    return SessionCreated.model_construct(**{**dict(session_event("s")), "cost_credits": "three"})


async def provoke(harness: PublisherHarness, scenario: str) -> None:
    """Do what ``scenario`` names; it must fail."""
    make = {"unknown-event-type": unlisted_event, "too-large": oversized_event, "unencodable": unencodable_event}
    event = make.get(scenario, lambda: session_event("s"))()
    connection = harness.unapplied_connection() if scenario == "missing-topic" else None
    publisher = harness.publisher(connection=connection, max_message_bytes=1000)
    if scenario == "send-before-start":
        await publisher.send(event)
    if scenario == "publish-after-close":
        async with publisher:
            pass
    if scenario in ("publish-before-start", "publish-after-close"):
        await publisher.publish(event)
    async with publisher:
        await publisher.publish(event)


_REFUSALS: dict[str, type[err.EventBusError]] = {"publish-before-start": err.PublishFailedError}
_REFUSALS |= {"send-before-start": err.PublishFailedError, "publish-after-close": err.PublishFailedError}
_REFUSALS |= {"unknown-event-type": err.UnknownEventTypeError, "too-large": err.MessageTooLargeError}
_REFUSALS |= {"missing-topic": err.UnknownTopicError, "unencodable": err.EncodeError}
_SERIALIZER_WARNING = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
REFUSALS = [pytest.param(s, e, id=s, marks=[_SERIALIZER_WARNING] * (s == "unencodable")) for s, e in _REFUSALS.items()]


class PublisherContract:
    """The behaviours every publisher transport must show. Subclass as ``Test...`` with a ``harness`` fixture."""

    async def test_publish_returns_prefixed_topic_partition_offset_event_id(self, harness: PublisherHarness) -> None:
        assert harness.connection.topic_prefix, "the contract runs under a topic prefix"
        topic = harness.connection.topic_prefix + "session"
        events = [session_event(f"session-{n}") for n in range(4)]
        async with harness.publisher() as publisher:
            results = [await publisher.publish(event) for event in events]
        stored = {r.event_id: r for r in await harness.records(topic, len(events))}
        for event, result in zip(events, results, strict=True):
            assert (result.topic, result.event_id, result.event_type) == (topic, event.event_id, "session:created")
            record = stored[event.event_id]
            assert (result.partition, result.offset) == (record.partition, record.offset)

    @pytest.mark.parametrize("event_type", CATALOG.event_types)
    async def test_every_event_type_is_keyed_by_entity_id_on_its_murmur2_partition_and_decodes_back(
        self, harness: PublisherHarness, event_type: str
    ) -> None:
        event = example_event(event_type)
        topic = topic_of(harness, event_type)
        async with harness.publisher() as publisher:
            result = await publisher.publish(event)
        (record,) = await harness.records(topic, 1)
        key = str(getattr(event, KEY_FIELD_BY_TOPIC[event_type.split(":", maxsplit=1)[0]])).encode()
        partitions = await harness.partitions(topic)
        assert partitions == PARTITIONS[CATALOG.spec(event_type).topic]
        assert record.key == key
        assert record.partition == result.partition == murmur2_partition(key, partitions)
        assert record.offset == result.offset == 0
        assert CODEC.decode(record.value) == as_stamped(event, harness.config)

    async def test_headers_are_only_event_type_and_id_when_no_ids_are_set(self, harness: PublisherHarness) -> None:
        event = example_event("coach:status_changed")
        async with harness.publisher() as publisher:
            await publisher.publish(event)
        (record,) = await harness.records(topic_of(harness, "coach:status_changed"), 1)
        assert record.headers == [("event-type", b"coach:status_changed"), ("event-id", str(event.event_id).encode())]

    async def test_correlation_and_causation_headers_appear_only_when_set(self, harness: PublisherHarness) -> None:
        cause = uuid4()
        both = session_event("session-a", metadata={"correlation_id": "corr-7", "causation_id": cause})
        only_correlation = session_event("session-b", metadata={"correlation_id": "corr-8"})
        async with harness.publisher() as publisher:
            await publisher.publish_many([both, only_correlation])
        stored = await stored_by_id(harness, "session:created", 2)
        first, second = stored[both.event_id], stored[only_correlation.event_id]
        assert [name for name, _ in first.headers] == ["event-type", "event-id", "correlation-id", "causation-id"]
        assert (first.header("correlation-id"), first.header("causation-id")) == (b"corr-7", str(cause).encode())
        assert [name for name, _ in second.headers] == ["event-type", "event-id", "correlation-id"]
        assert second.header("correlation-id") == b"corr-8"

    async def test_correlation_scope_reaches_nested_scopes_and_tasks_only(self, harness: PublisherHarness) -> None:
        async with harness.publisher() as publisher:

            async def publish(session_id: str) -> PublishResult:
                return await publisher.publish(session_event(session_id))

            expected: dict[UUID, str | None] = {(await publish("before")).event_id: None}
            with correlation_scope("req-1") as scope_id:
                assert scope_id == "req-1"
                expected[(await publish("inside")).event_id] = "req-1"
                with correlation_scope("req-2"):
                    expected[(await publish("nested")).event_id] = "req-2"
                expected[(await publish("after-nested")).event_id] = "req-1"
                task = asyncio.create_task(publish("task"))
                gathered = await asyncio.gather(publish("gathered-1"), publish("gathered-2"))
            expected[(await task).event_id] = "req-1"
            expected.update(dict.fromkeys((r.event_id for r in gathered), "req-1"))
            expected[(await publish("after")).event_id] = None
        stored = await stored_by_id(harness, "session:created", len(expected))
        for event_id, correlation in expected.items():
            record = stored[event_id]
            assert CODEC.decode(record.value).metadata.correlation_id == correlation
            assert (record.header("correlation-id"), record.header("causation-id")) == (encoded(correlation), None)

    async def test_caused_by_sets_causation_and_inherits_correlation_or_id(self, harness: PublisherHarness) -> None:
        correlated = example_event("payment:process_required", metadata={"correlation_id": "req-9"})
        uncorrelated = example_event("payment:process_required")
        async with harness.publisher() as publisher:
            with caused_by(correlated):
                first = await publisher.publish(example_event("payment:processed", payment_id="payment-a"))
            with caused_by(uncorrelated):
                second = await publisher.publish(example_event("payment:processed", payment_id="payment-b"))
            third = await publisher.publish(example_event("payment:processed", payment_id="payment-c"))
        stored = await stored_by_id(harness, "payment:processed", 3)
        expectations = [
            (first, correlated.event_id, "req-9"),
            (second, uncorrelated.event_id, str(uncorrelated.event_id)),
            (third, None, None),
        ]
        for result, causation, correlation in expectations:
            record = stored[result.event_id]
            meta = CODEC.decode(record.value).metadata
            assert (meta.causation_id, meta.correlation_id) == (causation, correlation)
            assert record.header("causation-id") == encoded(causation)
            assert record.header("correlation-id") == encoded(correlation)

    async def test_the_innermost_of_a_cause_and_a_correlation_scope_decides_the_correlation(
        self, harness: PublisherHarness
    ) -> None:
        """A correlation scope inside a cause keeps the causation; a cause inside a scope brings its correlation."""
        source = example_event("payment:process_required", metadata={"correlation_id": "req-source"})
        async with harness.publisher() as publisher:
            with caused_by(source), correlation_scope("req-inner"):
                scoped = await publisher.publish(example_event("payment:processed", payment_id="payment-a"))
            with correlation_scope("req-outer"), caused_by(source):
                caused = await publisher.publish(example_event("payment:processed", payment_id="payment-b"))
            after = await publisher.publish(example_event("payment:processed", payment_id="payment-c"))
        stored = await stored_by_id(harness, "payment:processed", 3)
        expectations = [
            (scoped, source.event_id, "req-inner"),
            (caused, source.event_id, "req-source"),
            (after, None, None),
        ]
        for result, causation, correlation in expectations:
            meta = CODEC.decode(stored[result.event_id].value).metadata
            assert (meta.causation_id, meta.correlation_id) == (causation, correlation)

    async def test_explicit_service_version_kept_else_config_stamped(self, harness: PublisherHarness) -> None:
        explicit = session_event("session-a", metadata={"service": "billing", "version": "9.9"})
        implicit = session_event("session-b")
        async with harness.publisher() as publisher:
            await publisher.publish_many([explicit, implicit])
        stored = {i: CODEC.decode(r.value) for i, r in (await stored_by_id(harness, "session:created", 2)).items()}
        kept = stored[explicit.event_id].metadata
        assert (kept.service, kept.version) == ("billing", "9.9")
        assert stored[implicit.event_id] == as_stamped(implicit, harness.config)
        assert harness.config.service == "test-service"

    async def test_with_metadata_copy_still_gets_the_publisher_service_stamped(self, harness: PublisherHarness) -> None:
        event = session_event("session-a").with_metadata(correlation_id="req-42")
        async with harness.publisher() as publisher:
            await publisher.publish(event)
        (record,) = await harness.records(topic_of(harness, "session:created"), 1)
        meta = CODEC.decode(record.value).metadata
        assert (meta.service, meta.version) == ("test-service", harness.config.service_version)
        assert meta.correlation_id == "req-42"

    async def test_send_then_flush_keeps_per_key_order(self, harness: PublisherHarness) -> None:
        keys = [f"session-{k}" for k in range(5)]
        sent: dict[str, list[UUID]] = {key: [] for key in keys}
        async with harness.publisher() as publisher:
            for n in range(200):
                key = keys[n % 5] if n % 7 else keys[n % 3]
                sent[key].append(await publisher.send(session_event(key, cost_credits=n)))
            await publisher.flush()
        stored = await stored_by_id(harness, "session:created", 200)
        assert len(stored) == 200
        for key, event_ids in sent.items():
            records = [stored[event_id] for event_id in event_ids]
            assert {r.partition for r in records} == {murmur2_partition(key.encode(), PARTITIONS["session"])}
            offsets = [r.offset for r in records]
            assert all(a < b for a, b in itertools.pairwise(offsets)), f"{key}: {offsets}"

    async def test_send_is_bounded_by_max_buffered_records(self, harness: PublisherHarness) -> None:
        sent: set[UUID] = set()
        most = 0
        async with harness.publisher(max_buffered_records=10) as publisher:
            for n in range(1000):
                sent.add(await publisher.send(session_event(f"session-{n % 20}")))
                most = max(most, publisher.pending)
            await publisher.flush()
            assert publisher.pending == 0
        assert 1 < most <= 10
        stored = await harness.records(topic_of(harness, "session:created"), 1000)
        assert {r.event_id for r in stored} == sent
        assert len(stored) == 1000

    @pytest.mark.parametrize(("event_type", "bad"), _INVALID_FIELDS)
    async def test_invalid_field_is_refused_by_catalog_parse_naming_it_and_nothing_is_sent(
        self, harness: PublisherHarness, event_type: str, bad: dict[str, Any]
    ) -> None:
        with pytest.raises(err.EventValidationError) as info:
            example_event(event_type, **bad)
        assert info.value.fields == list(bad)
        assert f"{next(iter(bad))}:" in str(info.value)
        async with harness.publisher() as publisher:
            await assert_only_record_is(harness, publisher, topic_of(harness, "session:created"))

    async def test_too_large_event_refused_with_size_and_limit_nothing_stored(self, harness: PublisherHarness) -> None:
        async with harness.publisher(max_message_bytes=1000) as publisher:
            with pytest.raises(err.MessageTooLargeError) as info:
                await publisher.publish(oversized_event())
            with pytest.raises(err.MessageTooLargeError):
                await publisher.send(oversized_event())
            assert publisher.pending == 0
            await assert_only_record_is(harness, publisher, topic_of(harness, "session:created"))
        assert info.value.limit == 1000
        assert info.value.size is not None
        assert info.value.size > 2000

    @pytest.mark.parametrize("make", [unlisted_event, lambda: SessionCreatedVariant(**dict(session_event("s")))])
    async def test_event_class_outside_the_catalog_is_refused_and_nothing_is_stored(
        self, harness: PublisherHarness, make: Callable[[], Event]
    ) -> None:
        async with harness.publisher() as publisher:
            with pytest.raises(err.UnknownEventTypeError):
                await publisher.publish(make())
            await assert_only_record_is(harness, publisher, topic_of(harness, "session:created"))

    async def test_missing_topic_is_refused_and_not_auto_created(self, harness: PublisherHarness) -> None:
        connection = harness.unapplied_connection()
        topic = connection.topic("session")
        async with harness.publisher(connection=connection) as publisher:
            with pytest.raises(err.UnknownTopicError) as info:
                await publisher.publish(session_event("session-1"))
            with pytest.raises(err.UnknownTopicError):
                await publisher.publish_many([session_event("session-2")])
        assert info.value.topic == topic
        assert "eventbus topics apply" in str(info.value)
        assert not await harness.topic_exists(topic)

    @pytest.mark.parametrize("make_invalid", [oversized_event, unlisted_event], ids=["too-large", "not-in-catalog"])
    async def test_publish_many_checks_every_event_before_sending_any(
        self, harness: PublisherHarness, make_invalid: Callable[[], Event]
    ) -> None:
        events = [session_event("session-1"), make_invalid(), session_event("session-1")]
        async with harness.publisher(max_message_bytes=1000) as publisher:
            with pytest.raises((err.MessageTooLargeError, err.UnknownEventTypeError)):
                await publisher.publish_many(events)
            await assert_only_record_is(harness, publisher, topic_of(harness, "session:created"))

    async def test_publish_many_returns_results_in_input_order(self, harness: PublisherHarness) -> None:
        types = ["session:created", "coach:status_changed", "payment:processed", "session:updated", "system:error"]
        events = [example_event(t) for t in types] + [session_event("session-2"), session_event("session-1")]
        async with harness.publisher() as publisher:
            results = await publisher.publish_many(events)
        assert [r.event_id for r in results] == [e.event_id for e in events]
        for event, result in zip(events, results, strict=True):
            assert (result.event_type, result.topic) == (event.event_type, topic_of(harness, event.event_type))
        session_topic = topic_of(harness, "session:created")
        stored = {r.event_id: r for r in await harness.records(session_topic, 4)}
        in_session = [r for r in results if r.topic == session_topic]
        assert {r.event_id for r in in_session} == set(stored)
        for r in in_session:
            assert (stored[r.event_id].partition, stored[r.event_id].offset) == (r.partition, r.offset)
        key_one = [r.offset for r in in_session if r.event_id != events[-2].event_id]  # events[-2]: session-2
        assert key_one == sorted(key_one)
        assert len(set(key_one)) == 3

    @pytest.mark.parametrize(("scenario", "expected"), REFUSALS)
    async def test_every_refusal_is_an_event_bus_error(
        self, harness: PublisherHarness, scenario: str, expected: type[err.EventBusError]
    ) -> None:
        with pytest.raises(err.EventBusError) as info:
            await provoke(harness, scenario)
        assert type(info.value) is expected
