"""The compiled Avro codec: fastavro's bytes exactly, the same events back, robust decoding, fallbacks."""

from __future__ import annotations

import copy
import io
import struct
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    CATALOG,
    AvroCodec,
    Catalog,
    CorruptMessageError,
    DecodeError,
    EncodeError,
    Event,
    EventSpec,
    NotificationRequested,
    SessionCreated,
)
from schemas._codec import compiled_codec
from schemas._compiled import CompiledSchema, UnsupportedSchemaError, compile_schema
from schemas._schema_files import MAGIC, load_event_schemas
from tests.events_factory import example_event
from tests.strategies import AWARE, model_strategy

SPECS = list(CATALOG)
IDS = [spec.event_type for spec in SPECS]
COMPILED = AvroCodec()
FASTAVRO = AvroCodec(compiled=False)
FEW = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _compiled(spec: EventSpec) -> CompiledSchema:
    compiled = compiled_codec(spec)
    assert compiled is not None
    return compiled


def _plain(value: Any) -> Any:
    """Decoded values made comparable: uuids as text, floats by their bits (NaN equals NaN)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    return value


OVERRIDES = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.uuids().map(str),
        "event_type": st.text(max_size=20),  # not what the publisher does, but the wire must still match
        "service": st.text(max_size=10),
        "version": st.text(max_size=5),
        "correlation_id": st.none() | st.text(max_size=10),
        "causation_id": st.none() | st.uuids() | st.uuids().map(str),
    },
)


# -- the catalog: byte for byte, and the same events back ------------------------------------


def test_every_catalog_schema_is_compiled() -> None:
    assert set(COMPILED.compiled_types) == set(CATALOG.event_types)
    assert FASTAVRO.compiled_types == ()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_compiled_encoder_writes_what_fastavro_writes(spec: EventSpec) -> None:
    @FEW
    @given(event=model_strategy(spec.model), overrides=st.none() | OVERRIDES)
    def check(event: Event, overrides: dict[str, Any] | None) -> None:
        expected = FASTAVRO.encode_with(spec, event, copy.copy(overrides))
        assert COMPILED.encode_with(spec, event, overrides) == expected
        assert _compiled(spec).encode(event, overrides) == expected

    check()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_compiled_decoder_reads_fastavro_bytes_as_the_same_event(spec: EventSpec) -> None:
    @FEW
    @given(event=model_strategy(spec.model))
    def check(event: Event) -> None:
        data = FASTAVRO.encode(event)
        assert COMPILED.decode(data) == event
        _, fields = COMPILED.decode_dict(data)
        _, reference = FASTAVRO.decode_dict(data)
        assert _plain(fields) == _plain(reference)

    check()


def test_metadata_overrides_land_on_the_wire_only() -> None:
    spec = CATALOG.spec("session:created")
    event = example_event("session:created")
    cause = UUID("0b6f4f57-2c4b-4b57-9b1f-3c0c8a3c2d11")
    event_id = "6c1f2a55-7d0e-4a3b-8f5e-2b9c1d0e4f77"
    overrides = {
        "event_id": event_id,
        "service": "booking",
        "version": "1.2.3",
        "correlation_id": "req-42",
        "causation_id": cause,
        "not_a_field": "ignored, as by fastavro",
    }
    data = COMPILED.encode_with(spec, event, overrides)
    assert data == FASTAVRO.encode_with(spec, event, dict(overrides))
    meta = COMPILED.decode(data).metadata
    assert (meta.event_id, meta.service, meta.version) == (UUID(event_id), "booking", "1.2.3")
    assert (meta.correlation_id, meta.causation_id) == ("req-42", cause)
    assert event.metadata.service == "unknown"  # the model is untouched
    assert COMPILED.encode_with(spec, event, {}) == COMPILED.encode(event) == FASTAVRO.encode(event)


def test_a_spec_from_another_catalog_is_encoded_by_fastavro() -> None:
    (schema,) = [s for s in load_event_schemas() if s["eventbus.event_type"] == "session:created"]
    other = EventSpec.build(SessionCreated, schema)
    event = example_event("session:created")
    assert COMPILED.encode_with(other, event) == FASTAVRO.encode(event)


# -- decoding is robust: a valid event, or a DecodeError -----------------------------------------


def _header(spec: EventSpec) -> bytes:
    return MAGIC + spec.fingerprint


def _decodes_alike(data: bytes, spec: EventSpec) -> None:
    """The compiled codec decodes ``data`` or raises a DecodeError; when it decodes, fastavro agrees."""
    try:
        event = COMPILED.decode(data)
    except DecodeError:
        return
    assert type(event) is spec.model
    assert FASTAVRO.decode(data) == event  # the compiled decoder is never laxer than fastavro


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_random_bodies_decode_or_raise_a_decode_error(spec: EventSpec) -> None:
    @FEW
    @given(body=st.binary(max_size=200))
    def fuzz(body: bytes) -> None:
        _decodes_alike(_header(spec) + body, spec)
        try:
            fields, end = _compiled(spec).decode(body, 0)
        except CorruptMessageError:
            return
        assert isinstance(fields, dict)
        assert end <= len(body)

    fuzz()


_MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(min_value=0), st.integers(0, 255)),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_mutated_bodies_decode_or_raise_a_decode_error(spec: EventSpec) -> None:
    @FEW
    @given(event=model_strategy(spec.model), mutations=_MUTATIONS, cut=st.none() | st.integers(min_value=0))
    def fuzz(event: Event, mutations: list[tuple[str, int, int]], cut: int | None) -> None:
        body = bytearray(COMPILED.encode(event)[10:])
        for kind, where, byte in mutations:
            at = where % (len(body) + 1)
            if kind == "insert":
                body.insert(at, byte)
            elif at < len(body):
                body[at : at + 1] = bytes([byte]) if kind == "replace" else b""
        if cut is not None:
            del body[cut % (len(body) + 1) :]
        _decodes_alike(_header(spec) + bytes(body), spec)

    fuzz()


def _corrupt_message(data: bytes) -> str:
    with pytest.raises(CorruptMessageError) as info:
        COMPILED.decode(data)
    return str(info.value)


def test_decode_errors_name_the_problem_and_the_field() -> None:
    data = COMPILED.encode(example_event("session:created"))
    body = data[10:]
    assert "metadata.event_id: length -1" in _corrupt_message(data[:10] + b"\x01" + body[1:])
    huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    assert "metadata.event_id: length 9223372036854775807" in _corrupt_message(data[:10] + huge + body[1:])
    assert "varint at byte 10 is longer than 10 bytes" in _corrupt_message(data[:10] + b"\xff" * 12)
    assert "metadata.event_id: invalid UTF-8" in _corrupt_message(data[:11] + b"\xff" + data[12:])
    assert "truncated" in _corrupt_message(data[:-1])
    assert "truncated" in _corrupt_message(data[:40])
    assert "unread bytes" in _corrupt_message(data + b"\x00")

    status = COMPILED.encode(example_event("coach:status_changed"))  # ends with the two enum indexes
    assert "new_status: enum index 5 out of range (0..4)" in _corrupt_message(status[:-1] + b"\x0a")
    assert "new_status: enum index -1 out of range" in _corrupt_message(status[:-1] + b"\x01")
    reason = COMPILED.encode(example_event("session:cancelled", reason=None))  # ends with the union index of reason
    assert "reason: union branch index 2 out of range (0..1)" in _corrupt_message(reason[:-1] + b"\x04")
    # Stricter than fastavro, which takes -1 as the last branch and reads overlong indexes.
    assert "reason: union branch index -1 out of range" in _corrupt_message(reason[:-1] + b"\x01")
    assert "reason: union branch index 0 is not minimally encoded" in _corrupt_message(reason[:-1] + b"\x80\x00")


def test_out_of_range_timestamps_and_decimals_are_corrupt() -> None:
    spec = CATALOG.spec("payment:processed")
    record = example_event("payment:processed").model_dump()

    def body_with(amount: bytes) -> bytes:
        schema = copy.deepcopy(spec.schema)
        for f in schema["fields"]:
            if f["name"] == "amount":
                f["type"] = "bytes"  # the same wire format, without fastavro's decimal checks
        record["amount"] = amount
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
        return _header(spec) + buffer.getvalue()

    assert "amount: decimal of 6 bytes has more than 12 digits" in _corrupt_message(
        body_with((10**12).to_bytes(6, "big"))
    )
    assert COMPILED.decode(body_with((10**12 - 1).to_bytes(6, "big"))).amount == Decimal("9999999999.99")  # type: ignore[attr-defined]

    spec = CATALOG.spec("session:created")
    data = COMPILED.encode(example_event("session:created", scheduled_at=datetime(2024, 1, 1, tzinfo=UTC)))
    start = data.index(_long(1704067200000000))  # scheduled_at
    too_late = data[:start] + _long(253402300800000000) + data[start + 8 :]
    assert "scheduled_at: timestamp of 253402300800000000 µs since 1970 is out of range" in _corrupt_message(too_late)


def _long(value: int) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "long", value)
    return buffer.getvalue()


# -- encoding refuses what does not fit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (example_event("session:created").model_copy(update={"cost_credits": 2**31}), "cost_credits"),
        (example_event("session:created").model_copy(update={"cost_credits": 2**70}), "cost_credits"),
        (example_event("session:created").model_copy(update={"cost_credits": "3"}), "cost_credits"),
        (example_event("session:created").model_copy(update={"session_id": None}), "session_id"),
        (example_event("session:created").model_copy(update={"coach_name": 5}), "coach_name"),
        (example_event("session:created").model_copy(update={"scheduled_at": datetime(2024, 1, 1)}), "scheduled_at"),  # noqa: DTZ001
        (example_event("payment:processed").model_copy(update={"amount": Decimal("1.234")}), "amount"),
        (example_event("payment:processed").model_copy(update={"amount": Decimal("12345678901.23")}), "amount"),
        (example_event("payment:processed").model_copy(update={"amount": Decimal("NaN")}), "amount"),
        (example_event("payment:processed").model_copy(update={"amount": Decimal("1E+10")}), "amount"),
        (example_event("coach:status_changed").model_copy(update={"old_status": "asleep"}), "old_status"),
        (example_event("system:error").model_copy(update={"original_offset": 2**63}), "original_offset"),
        (SessionCreated.model_construct(session_id="s1"), "coach_id"),  # type: ignore[call-arg]
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_values_that_do_not_fit_raise_an_encode_error_naming_the_field(event: Event, field: str) -> None:
    with pytest.raises(EncodeError, match=f"field {field}"):
        COMPILED.encode(event)


def test_nested_values_that_do_not_fit_are_named_by_their_path() -> None:
    event = example_event("notification:requested")
    assert isinstance(event, NotificationRequested)
    assert event.custom_template is not None
    template = event.custom_template.model_copy(update={"actions": [SimpleNamespace(action=1, title="t")]})
    with pytest.raises(EncodeError, match=r"field custom_template\.actions\[\]\.action"):
        COMPILED.encode(event.model_copy(update={"custom_template": template}))


# -- every construct the compiler supports, against fastavro -----------------------------------------

_ITEM = {
    "type": "record",
    "name": "Item",
    "fields": [{"name": "key", "type": "string"}, {"name": "value", "type": ["null", "long"]}],
}
SINK: dict[str, Any] = {
    "type": "record",
    "name": "Sink",
    "namespace": "test.compiler",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "ratio", "type": "double"},
        {"name": "count", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "blob", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 3}},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": [f"c{i}" for i in range(70)]}},
        {"name": "again", "type": "Color"},
        {"name": "maybe", "type": ["string", "null"]},
        {"name": "items", "type": {"type": "array", "items": _ITEM}},
        {"name": "tags", "type": {"type": "map", "values": "int"}},
        {"name": "from", "type": "string"},
        {"name": "nested", "type": ["null", "test.compiler.Item"]},
    ],
}
SINK_CODEC = compile_schema(SINK, overridable=None)
SINK_PARSED = fastavro.parse_schema(copy.deepcopy(SINK))

_FIRST_DAY, _LAST_DAY = datetime(1, 1, 2), datetime(9999, 12, 30)  # noqa: DTZ001 - hypothesis bounds are naive
_LONG_TEXT = st.sampled_from(["é" * 600, "x" * 1500])
_INT = st.integers(-(2**31), 2**31 - 1)
_DECIMALS = st.sampled_from([Decimal(v) for v in ("0", "-0.000", "0.128", "-0.128", "-0.127", "-32.768", "1.5", "-2")])
_ITEMS = st.fixed_dictionaries({"key": st.text(max_size=5), "value": st.none() | st.integers(-(2**63), 2**63 - 1)})
SINK_VALUES = st.fixed_dictionaries(
    {
        "flag": st.booleans(),
        "ratio": st.floats(allow_nan=False),
        "count": _INT | st.sampled_from([-65, -64, 63, 64]),
        "offset": st.integers(-(2**63), 2**63 - 1) | st.integers(-(2**20), 2**20),
        "blob": st.binary(max_size=30) | st.just(bytes(range(256)) * 5),
        "text": st.text(max_size=20) | _LONG_TEXT,
        "id": st.uuids() | st.uuids().map(str),
        "at": st.datetimes(min_value=_FIRST_DAY, max_value=_LAST_DAY, timezones=st.just(UTC)) | AWARE,
        "price": _DECIMALS | st.decimals(min_value=-999, max_value=999, places=3),
        "color": st.sampled_from([f"c{i}" for i in range(70)]),
        "again": st.sampled_from(["c0", "c63", "c64", "c69"]),
        "maybe": st.none() | st.text(max_size=5),
        "items": st.lists(_ITEMS, max_size=3) | st.lists(_ITEMS, min_size=64, max_size=70),
        "tags": st.dictionaries(st.text(max_size=5), _INT, max_size=3),
        "from": st.text(max_size=5),
        "nested": st.none() | _ITEMS,
    }
)


def _as_object(record: dict[str, Any]) -> SimpleNamespace:
    """What the encoder reads: records as objects with attributes (like models), maps stay dicts."""
    values = dict(record)
    values["items"] = [SimpleNamespace(**item) for item in record["items"]]
    values["nested"] = None if record["nested"] is None else SimpleNamespace(**record["nested"])
    return SimpleNamespace(**values)


def _fastavro_bytes(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SINK_PARSED, record)
    return buffer.getvalue()


@FEW
@given(record=SINK_VALUES)
def test_every_supported_construct_is_written_as_fastavro_writes_it_and_read_back(record: dict[str, Any]) -> None:
    expected = _fastavro_bytes(record)
    assert SINK_CODEC.encode(_as_object(record), None) == expected
    decoded, end = SINK_CODEC.decode(expected, 0)
    assert end == len(expected)
    reference = fastavro.schemaless_reader(io.BytesIO(expected), SINK_PARSED, None)
    assert _plain(decoded) == _plain(reference)


@FEW
@given(body=st.binary(max_size=300))
def test_random_bodies_of_every_construct_decode_as_fastavro_does_or_are_corrupt(body: bytes) -> None:
    try:
        decoded, end = SINK_CODEC.decode(body, 0)
    except CorruptMessageError:
        return
    stream = io.BytesIO(body)
    assert _plain(decoded) == _plain(fastavro.schemaless_reader(stream, SINK_PARSED, None))
    assert end == stream.tell()


def test_generated_code_sees_only_the_names_passed_to_it() -> None:
    assert SINK_CODEC.encode.__globals__["__builtins__"] == {}
    assert SINK_CODEC.decode.__globals__["__builtins__"] == {}
    assert "def encode(e, o=None):" in SINK_CODEC.source


# -- what the compiler refuses, and the fastavro fallback ------------------------------------------


def _with_field(kind: Any, name: str = "extra") -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": [{"name": "ok", "type": "string"}, {"name": name, "type": kind}]}


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (_with_field("float"), "extra: type 'float'"),
        (_with_field({"type": "fixed", "name": "F", "size": 4}), "extra: type 'fixed'"),
        (_with_field(["null", "string", "long"]), "extra: only unions of null and one other type"),
        (_with_field(["string", "long"]), "extra: only unions of null and one other type"),
        (_with_field({"type": "int", "logicalType": "date"}), "extra: logical type 'date'"),
        (_with_field({"type": "long", "logicalType": "timestamp-millis"}), "extra: logical type 'timestamp-millis'"),
        (_with_field({"type": "bytes", "logicalType": "decimal", "precision": 2, "scale": 3}), "extra: decimal"),
        (_with_field({"type": "array", "items": {"type": "record", "name": "E", "fields": []}}), "extra[]: items"),
        (_with_field("R"), "extra: recursive type R"),
        (_with_field("Nowhere"), "extra: unknown type 'Nowhere'"),
        (_with_field("string", name="bad-name"), "field named 'bad-name'"),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, "not a record"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_unsupported_constructs_are_refused_at_compile_time(schema: dict[str, Any], problem: str) -> None:
    with pytest.raises(UnsupportedSchemaError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        compile_schema(schema)


class SessionCreatedWithRatio(SessionCreated):
    ratio: float = 0.5


def test_a_schema_the_compiler_refuses_is_encoded_and_decoded_by_fastavro() -> None:
    (schema,) = [s for s in load_event_schemas() if s["eventbus.event_type"] == "session:created"]
    schema = copy.deepcopy(schema)
    schema["fields"].append({"name": "ratio", "type": "float", "default": 0.5})
    spec = EventSpec.build(SessionCreatedWithRatio, schema)
    assert compiled_codec(spec) is None
    catalog = Catalog([spec])
    codec, reference = AvroCodec(catalog), AvroCodec(catalog, compiled=False)
    assert codec.compiled_types == ()
    event = SessionCreatedWithRatio(**example_event("session:created").model_dump(), ratio=0.25)
    data = codec.encode(event)
    assert data == reference.encode(event)
    assert codec.decode(data) == event


def test_compiled_timestamps_match_fastavro_across_the_whole_range() -> None:
    for at in (
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1978, 7, 1, tzinfo=UTC),
        datetime(1980, 1, 1, tzinfo=UTC),
        datetime(3111, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        event = example_event("session:created", scheduled_at=at)
        data = FASTAVRO.encode(event)
        assert COMPILED.encode(event) == data
        assert COMPILED.decode(data) == event
