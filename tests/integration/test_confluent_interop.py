"""Byte compatibility with the reference implementation of the Confluent wire format, both ways.

The reference is confluent-kafka's ``AvroSerializer`` / ``AvroDeserializer`` with the same registry
client as ours: its in-memory ``mock://`` registry (one URL, and one registry, per test), and also a
real Schema Registry when ``EVENTBUS_TEST_SCHEMA_REGISTRY_URL`` is set. The reference uses
TopicRecordNameStrategy, as we do. End to end, a publisher with ``wire_format=confluent`` and the
reference serializer write to the same topic, and one consumer group of ours handles both.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.schema_registry import topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers import ConsumerGroup, GroupRunner, HandlerContext, KafkaConsumerTransport
from consumers.testing import InMemoryConsumerTransport
from infra._topics import apply_topics
from producers import EventPublisher, KafkaConnection, OutgoingRecord, PublisherConfig, codec_for, registry_client
from schemas import CATALOG, AvroCodec, Event, EventSpec, SessionCreated, schema_text
from tests.conftest import KafkaTarget, make_settings
from tests.events_factory import example_event
from tests.harness import new_broker

pytestmark = pytest.mark.integration

REAL_REGISTRY = os.environ.get("EVENTBUS_TEST_SCHEMA_REGISTRY_URL")


@pytest.fixture(params=["mock", "real"] if REAL_REGISTRY else ["mock"])
def registry_url(request: pytest.FixtureRequest) -> str:
    """A registry of this test's own: a fresh ``mock://`` one, or the configured real one."""
    if request.param == "real":
        assert REAL_REGISTRY is not None
        return REAL_REGISTRY
    return f"mock://interop-{uuid.uuid4().hex}"


def evolved(spec: EventSpec) -> dict[str, Any]:
    """The spec's schema with a new optional field (what a newer producer writes)."""
    schema: dict[str, Any] = json.loads(json.dumps(spec.schema))
    schema["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    return schema


def reference_serializer(client: Any, schema: dict[str, Any]) -> Callable[[dict[str, Any], str], bytes]:
    """The reference writer of ``schema`` (TopicRecordNameStrategy): ``write(record, topic)``."""
    conf = {"subject.name.strategy": topic_record_subject_name_strategy}
    serializer = AvroSerializer(client, schema_text(schema), lambda event, _ctx: event, conf=conf)

    def write(record: dict[str, Any], topic: str) -> bytes:
        data = serializer(record, value_context(topic))
        assert isinstance(data, bytes)
        return data

    return write


def value_context(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def as_record(event: Event) -> dict[str, Any]:
    """The event as the reference serializer takes it (what fastavro writes)."""
    return event.model_dump()


def test_what_we_write_the_reference_reads_byte_for_byte(registry_url: str) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.session"  # a real registry is shared: subjects of this test's own
    connection = KafkaConnection(schema_registry_url=registry_url, topic_prefix=topic.removesuffix("session"))
    ours = codec_for(connection, PublisherConfig(wire_format="confluent"))
    client = registry_client(connection)
    reader = AvroDeserializer(client)
    for spec in CATALOG:
        event = example_event(spec.event_type)
        topic_name = connection.topic(spec.topic)
        data = ours.encode(event)
        reference = reference_serializer(client, spec.schema)(as_record(event), topic_name)
        assert data == reference, spec.event_type  # same subject, same id, same body
        decoded = reader(data, value_context(topic_name))
        assert CATALOG.parse(spec.event_type, decoded) == event


def test_what_the_reference_writes_we_read(registry_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    connection = KafkaConnection(schema_registry_url=registry_url, topic_prefix=prefix)
    client = registry_client(connection)
    reader = codec_for(connection)  # single-object writer: reads Confluent records all the same
    for spec in CATALOG:
        event = example_event(spec.event_type)
        data = reference_serializer(client, spec.schema)(as_record(event), connection.topic(spec.topic))
        assert data[:1] == b"\x00"
        assert reader.decode(data) == event


def test_evolution_a_new_optional_field_both_ways(registry_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    connection = KafkaConnection(schema_registry_url=registry_url, topic_prefix=prefix)
    client = registry_client(connection)
    spec = CATALOG.spec("session:created")
    topic = connection.topic(spec.topic)
    ours = codec_for(connection, PublisherConfig(wire_format="confluent"))
    event = example_event(spec.event_type)

    v1 = ours.encode(event)  # registers v1 under the subject first
    newer = reference_serializer(client, evolved(spec))({**as_record(event), "channel": "web"}, topic)
    assert newer[1:5] != v1[1:5]  # another version of the subject, another id

    # the reference's newer writer -> our (older) reader: the new field is skipped
    assert ours.decode(newer) == event
    # our older writer -> the reference reading with the newer schema: the new field takes its default
    upgraded = AvroDeserializer(client, schema_str=schema_text(evolved(spec)))
    read = upgraded(v1, value_context(topic))
    assert read["channel"] is None
    assert CATALOG.parse(spec.event_type, {k: v for k, v in read.items() if k != "channel"}) == event
    # and the newer record, read by the reference with the newer schema, keeps it
    assert upgraded(newer, value_context(topic))["channel"] == "web"


def handled_group(name: str, seen: list[Event], done: asyncio.Event, expected: int) -> ConsumerGroup:
    group = ConsumerGroup(name)

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        seen.append(event)
        if len(seen) >= expected:
            done.set()

    return group


def mixed_events(count: int) -> list[Event]:
    return [example_event("session:created", session_id=f"s-{i}") for i in range(count)]


async def run_until_done(runner: GroupRunner, done: asyncio.Event) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def test_in_memory_our_group_handles_our_confluent_records_and_the_reference_ones() -> None:
    url = f"mock://e2e-memory-{uuid.uuid4().hex}"
    connection = KafkaConnection(schema_registry_url=url)
    broker = new_broker()
    config = PublisherConfig(wire_format="confluent", enable_idempotence=False)
    ours, theirs = mixed_events(5), mixed_events(5)
    seen: list[Event] = []
    done = asyncio.Event()
    group = handled_group("interop-memory", seen, done, len(ours) + len(theirs))
    spec = CATALOG.spec("session:created")
    reference = reference_serializer(registry_client(connection), spec.schema)
    async with EventPublisher(connection=connection, config=config, transport=broker.producer()) as publisher:
        for event in ours:
            await publisher.publish(event)
        topic = connection.topic(spec.topic)
        for event in theirs:
            value = reference(as_record(event), topic)
            await publisher.publish_record(OutgoingRecord(topic, spec.key_of(event).encode(), value, []))
        assert all(record.value[:1] == b"\x00" for record in broker.records(topic))
        runner = GroupRunner(group, transport=InMemoryConsumerTransport(broker, group.name), publisher=publisher)
        await run_until_done(runner, done)
    assert sorted(e.metadata.event_id for e in seen) == sorted(e.metadata.event_id for e in ours + theirs)


async def test_on_the_broker_our_group_handles_our_confluent_records_and_the_reference_ones(
    kafka_target: KafkaTarget,
) -> None:
    settings = make_settings(kafka_target, wire_format="confluent", schema_registry_url=f"mock://e2e-{uuid.uuid4()}")
    connection = settings.connection()
    await apply_topics(connection, replication_factor=settings.replication)
    ours, theirs = mixed_events(4), mixed_events(4)
    seen: list[Event] = []
    done = asyncio.Event()
    group = handled_group(f"interop-{uuid.uuid4().hex[:6]}", seen, done, len(ours) + len(theirs))
    spec = CATALOG.spec("session:created")
    topic = connection.topic(spec.topic)
    reference = reference_serializer(registry_client(connection), spec.schema)
    async with EventPublisher(connection=connection, config=settings.publisher_config("interop")) as publisher:
        for event in ours:
            await publisher.publish(event)
        for event in theirs:
            value = reference(as_record(event), topic)
            await publisher.publish_record(OutgoingRecord(topic, spec.key_of(event).encode(), value, []))
        transport = KafkaConsumerTransport(connection, settings.consumer_config(), group_id=group.name)
        runner = GroupRunner(group, transport=transport, publisher=publisher)
        await run_until_done(runner, done)
    assert sorted(e.metadata.event_id for e in seen) == sorted(e.metadata.event_id for e in ours + theirs)
    assert all(isinstance(e, SessionCreated) for e in seen)
    assert isinstance(settings.codec(), AvroCodec)
