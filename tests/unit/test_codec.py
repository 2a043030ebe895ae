"""The Avro codec: round trips, the single-object wire format, schema evolution, typed errors."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime

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
    Event,
    EventBusError,
    EventSpec,
    SessionCreated,
    UnknownEventTypeError,
    UnknownSchemaError,
    read_fingerprint,
)
from schemas._schema_files import load_event_schemas
from tests.strategies import model_strategy

SPECS = list(CATALOG)
IDS = [spec.event_type for spec in SPECS]
CODEC = AvroCodec()
FEW = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def encoded(spec: EventSpec) -> st.SearchStrategy[bytes]:
    """Encoded events of one type."""
    return model_strategy(spec.model).map(CODEC.encode)


# -- round trip ------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_event_type_round_trips_through_bytes(spec: EventSpec) -> None:
    @FEW
    @given(event=model_strategy(spec.model))
    def round_trip(event: Event) -> None:
        decoded = CODEC.decode(CODEC.encode(event))
        assert type(decoded) is spec.model
        assert decoded == event
        assert decoded.model_dump() == event.model_dump()

    round_trip()


# -- wire format -----------------------------------------------------------------

_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint of the Avro specification, as an integer."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def test_own_crc64_matches_the_avro_specification_reference_values() -> None:
    assert crc64_avro(b"") == _EMPTY
    # Avro's share/test/data/schema-tests.txt lists these (as signed longs, same bits).
    assert crc64_avro(b'"null"') == 7195948357588979594
    assert crc64_avro(b'"int"') == 8247732601305521295


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_wire_format_is_magic_then_little_endian_crc64_of_canonical_form(spec: EventSpec) -> None:
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(spec.schema))
    expected = crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert spec.fingerprint == expected

    @SOME
    @given(data=encoded(spec))
    def check(data: bytes) -> None:
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == expected
        assert read_fingerprint(data) == expected

    check()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_body_decodes_with_plain_fastavro(spec: EventSpec) -> None:
    schema = fastavro.parse_schema(spec.schema)

    @SOME
    @given(event=model_strategy(spec.model))
    def check(event: Event) -> None:
        body = io.BytesIO(CODEC.encode(event)[10:])
        record = fastavro.schemaless_reader(body, schema, None)
        assert body.read() == b""
        assert record == event.model_dump()

    check()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_shown_schema_is_self_contained(spec: EventSpec) -> None:
    parsed = fastavro.parse_schema(copy.deepcopy(spec.schema), named_schemas={})
    assert isinstance(parsed, dict)
    assert parsed["name"] == spec.schema["name"]


# -- schema evolution --------------------------------------------------------------


class SessionCreatedV2(SessionCreated):
    referral_code: str | None = None


def _v2_spec() -> EventSpec:
    (v1,) = [s for s in load_event_schemas() if s["eventbus.event_type"] == "session:created"]
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "referral_code", "type": ["null", "string"], "default": None})
    return EventSpec.build(SessionCreatedV2, v2)


V2 = _v2_spec()
V1_EVENT = SessionCreated(
    session_id="s1",
    coach_id="c1",
    user_id="u1",
    scheduled_at=datetime(2030, 5, 1, 9, 30, tzinfo=UTC),
    session_type="Mentoría Individual",
    cost_credits=3,
)


def test_v2_reader_decodes_v1_bytes_with_the_new_field_none() -> None:
    v1_bytes = CODEC.encode(V1_EVENT)
    codec = AvroCodec(Catalog([V2]))
    with pytest.raises(UnknownSchemaError):
        codec.decode(v1_bytes)
    assert codec.register(CATALOG.spec("session:created").schema) == read_fingerprint(v1_bytes)
    decoded = codec.decode(v1_bytes)
    assert isinstance(decoded, SessionCreatedV2)
    assert decoded.referral_code is None
    assert decoded.model_dump(exclude={"referral_code"}) == V1_EVENT.model_dump()


def test_v1_reader_decodes_v2_bytes_ignoring_the_new_field() -> None:
    v2_event = SessionCreatedV2(**V1_EVENT.model_dump(), referral_code="friend-7")
    v2_bytes = AvroCodec(Catalog([V2])).encode(v2_event)
    assert read_fingerprint(v2_bytes) == V2.fingerprint != CATALOG.spec("session:created").fingerprint
    codec = AvroCodec()
    with pytest.raises(UnknownSchemaError):
        codec.decode(v2_bytes)
    codec.register(V2.schema)
    decoded = codec.decode(v2_bytes)
    assert type(decoded) is SessionCreated
    assert decoded == V1_EVENT


# -- typed errors ------------------------------------------------------------------


def _header(spec: EventSpec) -> bytes:
    return b"\xc3\x01" + spec.fingerprint


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", CorruptMessageError),
        (b"\xc3", CorruptMessageError),
        (b"\xc3\x01\x00\x01\x02", CorruptMessageError),
        (b"\xc3\x02" + bytes(8) + b"\x00", CorruptMessageError),
        (b"{}" + bytes(16), CorruptMessageError),
    ],
    ids=["empty", "one-byte", "truncated-header", "wrong-magic-version", "json"],
)
def test_malformed_header_is_a_corrupt_message(data: bytes, error: type[DecodeError]) -> None:
    with pytest.raises(error):
        CODEC.decode(data)


def test_unknown_fingerprint_is_an_unknown_schema_error_carrying_it() -> None:
    fp = bytes.fromhex("0123456789abcdef")
    with pytest.raises(UnknownSchemaError) as info:
        CODEC.decode(b"\xc3\x01" + fp + b"\x00")
    assert info.value.fingerprint == fp
    assert isinstance(info.value, DecodeError)
    assert fp.hex() in str(info.value)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_truncation_of_a_body_is_a_corrupt_message(spec: EventSpec) -> None:
    @SOME
    @given(data=encoded(spec))
    def check(data: bytes) -> None:
        for end in range(10, len(data)):
            with pytest.raises(CorruptMessageError):
                CODEC.decode(data[:end])

    check()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_trailing_garbage_is_a_corrupt_message(spec: EventSpec) -> None:
    @SOME
    @given(data=encoded(spec), garbage=st.binary(min_size=1, max_size=8))
    def check(data: bytes, garbage: bytes) -> None:
        with pytest.raises(CorruptMessageError, match="unread bytes"):
            CODEC.decode(data + garbage)

    check()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_random_body_after_a_valid_header_decodes_or_raises_a_decode_error(spec: EventSpec) -> None:
    @FEW
    @given(body=st.binary(max_size=200))
    def fuzz(body: bytes) -> None:
        try:
            event = CODEC.decode(_header(spec) + body)
        except DecodeError:
            return
        assert type(event) is spec.model

    fuzz()


def test_body_that_breaks_the_model_is_a_corrupt_message() -> None:
    spec = CATALOG.spec("session:created")
    record = V1_EVENT.model_dump()
    record["session_id"] = ""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, spec.parsed, record)
    with pytest.raises(CorruptMessageError, match="session_id"):
        CODEC.decode(_header(spec) + buffer.getvalue())


def test_body_with_a_mismatched_event_type_is_a_corrupt_message() -> None:
    spec = CATALOG.spec("session:created")
    record = V1_EVENT.model_dump()
    record["metadata"]["event_type"] = "session:updated"
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, spec.parsed, record)
    with pytest.raises(CorruptMessageError, match="event_type"):
        CODEC.decode(_header(spec) + buffer.getvalue())


def test_encoding_an_event_whose_class_is_not_in_the_catalog_is_refused() -> None:
    v2_event = SessionCreatedV2(**V1_EVENT.model_dump())
    with pytest.raises(UnknownEventTypeError, match="session:created"):
        CODEC.encode(v2_event)


def test_codec_errors_share_the_eventbus_root() -> None:
    for error in (CorruptMessageError, UnknownSchemaError, UnknownEventTypeError, DecodeError):
        assert issubclass(error, EventBusError)
