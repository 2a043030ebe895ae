"""The Confluent Schema Registry wire format, pure: framing, subjects, caching, both formats read, typed errors.

Interoperability with the reference implementation (confluent-kafka's serializers) is in
``tests/integration/test_confluent_interop.py``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from infra._settings import Settings, load_settings
from producers import EventPublisher, KafkaConnection, PublisherConfig, RegistrySchemaIds, codec_for
from schemas import (
    CATALOG,
    AvroCodec,
    MemorySchemaIds,
    confluent_header,
    read_schema_id,
    subject_name,
)
from schemas.errors import (
    ConfigurationError,
    CorruptMessageError,
    DecodeError,
    SchemaRegistryError,
    UnknownSchemaError,
    UnknownSchemaIdError,
)
from tests.events_factory import example_event

SPEC = CATALOG.spec("session:created")


class CountingIds(MemorySchemaIds):
    """``MemorySchemaIds`` that counts the calls and can be taken down."""

    def __init__(self) -> None:
        super().__init__()
        self.id_calls = 0
        self.schema_calls = 0
        self.down = False

    def id_for(self, subject: str, schema: dict[str, Any]) -> int:
        self.id_calls += 1
        if self.down:
            raise SchemaRegistryError("registry unreachable", retriable=True)
        return super().id_for(subject, schema)

    def schema_for(self, schema_id: int) -> dict[str, Any]:
        self.schema_calls += 1
        if self.down:
            raise SchemaRegistryError("registry unreachable", retriable=True)
        return super().schema_for(schema_id)


def confluent(ids: MemorySchemaIds | None = None, **options: Any) -> AvroCodec:
    return AvroCodec(wire_format="confluent", schema_ids=ids or MemorySchemaIds(), **options)


def test_the_header_is_magic_byte_zero_then_the_big_endian_four_byte_id() -> None:
    assert confluent_header(1) == b"\x00\x00\x00\x00\x01"
    assert confluent_header(0x01020304) == b"\x00\x01\x02\x03\x04"
    assert read_schema_id(b"\x00\x01\x02\x03\x04body") == 0x01020304
    with pytest.raises(ValueError, match="4-byte"):
        confluent_header(2**31)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_confluent_record_is_the_header_of_the_registered_id_then_the_single_object_body(compiled: bool) -> None:
    ids = MemorySchemaIds()
    codec = confluent(ids, compiled=compiled, topic_prefix="dev.")
    event = example_event("session:created")
    data = codec.encode(event)
    subject = "dev.session-coaching.eventbus.SessionCreated"
    assert ids.subjects == {subject: [1]}
    assert data[:5] == b"\x00\x00\x00\x00\x01"
    single = AvroCodec(compiled=compiled).encode(event)
    assert data[5:] == single[10:]  # the same Avro body under either header
    assert json.loads(json.dumps(ids.schema_for(1))) == SPEC.schema  # the whole schema: logical types, docs
    assert codec.subject(SPEC) == subject == subject_name("dev.session", SPEC.schema)


def test_compiled_and_fastavro_write_the_same_confluent_bytes_for_every_type() -> None:
    ids = MemorySchemaIds()
    fast, reference = confluent(ids), confluent(ids, compiled=False)
    for spec in CATALOG:
        event = example_event(spec.event_type)
        updates = {"event_id": str(event.metadata.event_id), "service": "svc", "version": "2"}
        assert fast.encode_with(spec, event, updates) == reference.encode_with(spec, event, updates)


def test_one_codec_reads_both_formats_whatever_it_writes() -> None:
    ids = MemorySchemaIds()
    single, conf = AvroCodec(schema_ids=ids), confluent(ids)
    for spec in CATALOG:
        event = example_event(spec.event_type)
        for data in (single.encode(event), conf.encode(event)):
            assert single.decode(data) == event
            assert conf.decode(data) == event


def test_registration_on_first_use_then_ids_and_schemas_come_from_the_cache() -> None:
    ids = CountingIds()
    codec = confluent(ids)
    assert ids.subjects == {}  # nothing registered before an event of the type is written
    records = [codec.encode(example_event("session:created")) for _ in range(50)]
    assert ids.id_calls == 1
    reader = AvroCodec(schema_ids=ids)
    for data in records:
        reader.decode(data)
    assert ids.schema_calls == 1


def test_the_registry_down_is_a_retriable_error_never_a_wrong_decode_and_nothing_is_cached() -> None:
    ids = CountingIds()
    data = confluent(MemorySchemaIds()).encode(example_event("session:created"))
    ids.id_for("x", SPEC.schema)  # the same id 1, in the resolver the reader uses
    ids.down = True
    reader, writer = AvroCodec(schema_ids=ids), confluent(ids)
    with pytest.raises(SchemaRegistryError) as raised:
        reader.decode(data)
    assert raised.value.retriable
    assert not isinstance(raised.value, DecodeError)  # the runtime must not dead-letter it as undecodable
    with pytest.raises(SchemaRegistryError):
        writer.encode(example_event("session:created"))
    ids.down = False
    assert reader.decode(data).event_type == "session:created"
    assert writer.encode(example_event("session:created"))[:5] == confluent_header(1)


def test_an_id_the_registry_does_not_have_is_an_unknown_schema_not_retriable() -> None:
    data = confluent_header(99) + confluent(MemorySchemaIds()).encode(example_event("session:created"))[5:]
    with pytest.raises(UnknownSchemaIdError) as raised:
        AvroCodec(schema_ids=MemorySchemaIds()).decode(data)
    assert isinstance(raised.value, UnknownSchemaError)
    assert raised.value.schema_id == 99
    assert not raised.value.retriable


def test_a_confluent_record_without_a_registry_configured_is_an_unknown_schema() -> None:
    data = confluent().encode(example_event("session:created"))
    with pytest.raises(UnknownSchemaIdError, match="no Schema Registry"):
        AvroCodec().decode(data)


def test_a_registered_schema_that_is_no_catalog_event_is_an_unknown_schema() -> None:
    ids = MemorySchemaIds()
    other = {"type": "record", "name": "Other", "namespace": "elsewhere", "fields": [{"name": "x", "type": "int"}]}
    schema_id = ids.id_for("t-elsewhere.Other", other)
    with pytest.raises(UnknownSchemaIdError, match=r"elsewhere\.Other is not an event"):
        AvroCodec(schema_ids=ids).decode(confluent_header(schema_id) + b"\x02")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00\x00\x01",  # shorter than the 5-byte header
        b"\x01\x00\x00\x00\x01\x02",  # neither c301 nor 00
        b"{}" + bytes(16),
    ],
)
def test_bad_magic_or_a_truncated_header_is_a_corrupt_message(data: bytes) -> None:
    with pytest.raises(CorruptMessageError):
        AvroCodec(schema_ids=MemorySchemaIds()).decode(data)


def test_a_truncated_body_or_trailing_bytes_are_corrupt_in_the_confluent_format_too() -> None:
    ids = MemorySchemaIds()
    data = confluent(ids).encode(example_event("session:created"))
    reader = AvroCodec(schema_ids=ids)
    with pytest.raises(CorruptMessageError):
        reader.decode(data[:-3])
    with pytest.raises(CorruptMessageError, match="unread bytes"):
        reader.decode(data + b"\x00")


def test_a_newer_writer_with_an_optional_field_is_read_by_the_catalog_schema() -> None:
    ids = MemorySchemaIds()
    v2 = json.loads(json.dumps(SPEC.schema))
    v2["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    schema_id = ids.id_for(subject_name("session", v2), v2)
    event = example_event("session:created")
    record = {**event.model_dump(), "channel": "web"}
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(v2), record)
    decoded = AvroCodec(schema_ids=ids).decode(confluent_header(schema_id) + buffer.getvalue())
    assert decoded == event


def test_the_wire_format_is_refused_unknown_or_without_a_registry() -> None:
    with pytest.raises(ValueError, match="unknown wire format"):
        AvroCodec(wire_format="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs schema_ids"):
        AvroCodec(wire_format="confluent")
    with pytest.raises(ConfigurationError, match="EVENTBUS_SCHEMA_REGISTRY_URL"):
        codec_for(KafkaConnection(), PublisherConfig(wire_format="confluent"))
    with pytest.raises(ConfigurationError, match="EVENTBUS_SCHEMA_REGISTRY_URL"):
        EventPublisher(config=PublisherConfig(wire_format="confluent"))


def test_without_a_registry_the_deployment_codec_is_the_plain_single_object_one() -> None:
    codec = codec_for(KafkaConnection())
    assert codec.wire_format == "single-object"
    assert codec.schema_ids is None


def test_settings_choose_the_wire_format_and_mask_the_registry_secrets() -> None:
    settings = Settings(
        wire_format="confluent",
        schema_registry_url="mock://unit-settings",
        schema_registry_username="svc",
        schema_registry_password="s3cret",  # noqa: S106 - a test value
        topic_prefix="p.",
    )
    shown = settings.describe()
    assert shown["wire_format"] == "confluent"
    assert shown["schema_registry_password"] == "**********"  # noqa: S105 - the mask
    assert "s3cret" not in repr(settings) + repr(settings.connection()) + json.dumps(shown)
    codec = settings.codec()
    assert codec.wire_format == "confluent"
    assert codec.subject(SPEC) == "p.session-coaching.eventbus.SessionCreated"
    url = Settings(schema_registry_url="https://svc:pw@registry:8081").describe()["schema_registry_url"]
    assert url == "https://svc:**********@registry:8081"
    with pytest.raises(ConfigurationError, match="EVENTBUS_WIRE_FORMAT"):
        load_settings(wire_format="avro")


def test_the_settings_are_read_from_eventbus_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_WIRE_FORMAT", "confluent")
    monkeypatch.setenv("EVENTBUS_SCHEMA_REGISTRY_URL", "http://registry:8081")
    settings = Settings()
    assert settings.publisher_config().wire_format == "confluent"
    assert settings.connection().schema_registry_url == "http://registry:8081"


class _FailingClient:
    """A registry client whose every request fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def register_schema(self, subject: str, schema: object) -> int:
        raise self.error

    def get_schema(self, schema_id: int) -> object:
        raise self.error


@pytest.mark.parametrize(
    ("status", "code", "retriable"),
    [(503, 50003, True), (500, 50001, True), (429, 42901, True), (409, 409, False), (401, 40101, False)],
)
def test_registry_refusals_are_typed_and_retriable_only_when_trying_again_can_help(
    status: int, code: int, retriable: bool
) -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError  # noqa: PLC0415

    resolver = RegistrySchemaIds(_FailingClient(ClientError(status, code, "nope")))
    with pytest.raises(SchemaRegistryError) as raised:
        resolver.id_for("s", SPEC.schema)
    assert raised.value.retriable is retriable
    assert raised.value.status == status
    with pytest.raises(SchemaRegistryError):
        resolver.schema_for(1)


def test_an_id_the_registry_answers_404_for_is_an_unknown_schema() -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError  # noqa: PLC0415

    resolver = RegistrySchemaIds(_FailingClient(ClientError(404, 40403, "Schema not found")))
    with pytest.raises(UnknownSchemaIdError):
        resolver.schema_for(7)


def test_an_unreachable_registry_is_a_retriable_error() -> None:
    connection = KafkaConnection(schema_registry_url="http://127.0.0.1:9", request_timeout_s=1)
    codec = codec_for(connection, PublisherConfig(wire_format="confluent"))
    with pytest.raises(SchemaRegistryError, match="unreachable") as raised:
        codec.encode(example_event("session:created"))
    assert raised.value.retriable
    with pytest.raises(SchemaRegistryError, match="unreachable"):
        AvroCodec(schema_ids=codec.schema_ids).decode(confluent_header(3) + b"\x00")
