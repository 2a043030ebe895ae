"""Avro encoding of events, single-object or Confluent-framed: bytes in, bytes out, no I/O of its own.

The Confluent framing needs schema ids: a ``SchemaIdResolver`` given to the codec provides them
(the codec calls it once per subject and once per unknown id; the resolver does any I/O).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from pydantic import ValidationError

from ._base import Event
from ._catalog import CATALOG, Catalog, EventSpec, validation_error
from ._compiled import CompiledSchema, UnsupportedSchemaError, compile_schema
from ._confluent import (
    CONFLUENT_HEADER_SIZE,
    CONFLUENT_MAGIC,
    WIRE_FORMATS,
    SchemaIdResolver,
    WireFormat,
    confluent_header,
    read_schema_id,
    record_fullname,
    subject_name,
)
from ._schema_files import HEADER_SIZE, MAGIC, Schema, fingerprint, parse
from .errors import CorruptMessageError, EncodeError, UnknownSchemaError, UnknownSchemaIdError

__all__ = ["AvroCodec", "compiled_codec", "read_fingerprint"]

# What fastavro raises on bytes it cannot read (it has no error class of its own).
# A writer schema from a registry that does not resolve against the reader: SchemaResolutionError.
_READ_ERRORS = (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    StopIteration,
    SchemaResolutionError,
)
_WRITE_ERRORS = (ValueError, TypeError, KeyError, OverflowError, AttributeError)


def read_fingerprint(data: bytes) -> bytes:
    """The writer-schema fingerprint of a single-object encoded record.

    Example: ``read_fingerprint(codec.encode(event)) == CATALOG.spec_for(event).fingerprint``
    """
    if len(data) < HEADER_SIZE:
        msg = f"record of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte Avro header"
        raise CorruptMessageError(msg)
    if data[:2] != MAGIC:
        msg = f"record does not start with the Avro single-object marker c301 (got {bytes(data[:2]).hex()})"
        raise CorruptMessageError(msg)
    return bytes(data[2:HEADER_SIZE])


_Decoder = Callable[[bytes, int], tuple[dict[str, Any], int]]
_Encoder = Callable[[Event, Mapping[str, Any] | None], bytes]


@lru_cache(maxsize=256)
def _compile(schema_json: str, prefix: bytes, event_type: str) -> CompiledSchema | None:
    """The compiled codec of a catalog schema, shared by every codec; None when unsupported (fastavro then)."""
    try:
        return compile_schema(
            json.loads(schema_json),
            prefix=prefix,
            label=event_type,
            constants={"metadata.event_type": event_type},
        )
    except UnsupportedSchemaError:
        return None


def compiled_codec(spec: EventSpec, prefix: bytes | None = None) -> CompiledSchema | None:
    """The compiled encoder and decoder of a spec's writer schema, or None if it uses an unsupported construct.

    ``prefix`` is the header the encoder writes before the body: the single-object one by default.
    Example: ``compiled_codec(CATALOG.spec("session:created")).encode(event, None)``
    """
    header = MAGIC + spec.fingerprint if prefix is None else prefix
    return _compile(json.dumps(spec.schema, sort_keys=True), header, spec.event_type)


class _Writer:
    """A writer schema this codec can read: its parsed form and the reader to resolve to.

    ``decode`` is the compiled decoder when the writer schema is the catalog's own and compiled.
    """

    __slots__ = ("decode", "parsed", "reader", "spec")

    def __init__(self, parsed: Any, spec: EventSpec, *, same_as_reader: bool, decode: _Decoder | None = None) -> None:
        self.parsed = parsed
        self.spec = spec
        self.reader = None if same_as_reader else spec.parsed
        self.decode = decode


class AvroCodec:
    """Encodes events to Avro single-object (or Confluent-framed) bytes and decodes them back.

    The decoder finds the writer schema by fingerprint and resolves it against
    this catalog's (reader) schema, so older or newer writers that evolved
    compatibly are read. ``register()`` adds writer schemas other than the
    catalog's own.

    With ``compiled`` (the default), the catalog's own schemas are written and
    read by functions generated for each schema (``schemas._compiled``), byte for
    byte what fastavro writes; registered writer schemas, and any schema the
    compiler does not support, go through fastavro. ``compiled=False`` uses
    fastavro for everything (the reference, for tests and benchmarks).

    ``wire_format="confluent"`` writes the Confluent Schema Registry framing instead: magic byte 0,
    the 4-byte id that ``schema_ids`` gives the schema under the subject ``{topic_prefix}{topic}-{record
    full name}`` (asked once per event type, on its first encode), then the same body. Whatever the
    format, ``decode`` reads both framings (a topic can migrate); Confluent records need ``schema_ids``
    (the writer schema of each id is asked once and kept). Without it they are ``UnknownSchemaIdError``.

    Example: ``AvroCodec().decode(AvroCodec().encode(event)) == event``
    """

    def __init__(
        self,
        catalog: Catalog = CATALOG,
        *,
        writer_schemas: Iterable[Schema] = (),
        compiled: bool = True,
        wire_format: WireFormat = "single-object",
        schema_ids: SchemaIdResolver | None = None,
        topic_prefix: str = "",
    ) -> None:
        if wire_format not in WIRE_FORMATS:
            msg = f"unknown wire format {wire_format!r}; one of {', '.join(WIRE_FORMATS)}"
            raise ValueError(msg)
        if wire_format == "confluent" and schema_ids is None:
            msg = "the confluent wire format needs schema_ids (a Schema Registry)"
            raise ValueError(msg)
        self.catalog = catalog
        self.wire_format: WireFormat = wire_format
        self.schema_ids = schema_ids
        self.topic_prefix = topic_prefix
        self._compiled = compiled
        self._confluent = wire_format == "confluent"
        self._writers: dict[bytes, _Writer] = {}
        self._encoders: dict[str, tuple[EventSpec, _Encoder]] = {}
        self._headers: dict[tuple[str, bytes], bytes] = {}  # (topic, fingerprint) -> header, Confluent format
        self._by_id: dict[int, _Writer] = {}
        self._by_name = {record_fullname(spec.schema): spec for spec in catalog}
        for spec in catalog:
            fast = compiled_codec(spec) if compiled else None
            self._writers[spec.fingerprint] = _Writer(
                spec.parsed, spec, same_as_reader=True, decode=fast.decode if fast else None
            )
            if fast is not None and not self._confluent:  # Confluent encoders: once the id is known
                self._encoders[spec.event_type] = (spec, fast.encode)
        self._fast_types = tuple(spec.event_type for spec in catalog if self._writers[spec.fingerprint].decode)
        for schema in writer_schemas:
            self.register(schema)

    @property
    def compiled_types(self) -> tuple[str, ...]:
        """The event types this codec encodes and decodes with compiled functions (the rest use fastavro).

        Example: ``"session:created" in AvroCodec().compiled_types``
        """
        return self._fast_types

    def subject(self, spec: EventSpec) -> str:
        """The Schema Registry subject of an event type: ``{prefix}{topic}-{record full name}``.

        Example: ``AvroCodec().subject(CATALOG.spec("session:created")) == "session-coaching.eventbus.SessionCreated"``
        """
        return subject_name(f"{self.topic_prefix}{spec.topic}", spec.schema)

    def _header(self, spec: EventSpec) -> bytes:
        """The bytes before the body: the single-object header, or the Confluent one (its id asked once)."""
        if not self._confluent:
            return MAGIC + spec.fingerprint
        key = (spec.topic, spec.fingerprint)
        header = self._headers.get(key)
        if header is None:
            assert self.schema_ids is not None  # noqa: S101 - checked in __init__
            header = self._headers[key] = confluent_header(self.schema_ids.id_for(self.subject(spec), spec.schema))
        return header

    def register(self, writer_schema: Schema) -> bytes:
        """Accept records written with another version of an event's schema; returns its fingerprint.

        The schema must be self-contained and carry ``eventbus.event_type``.
        """
        event_type = str(writer_schema.get("eventbus.event_type", ""))
        spec = self.catalog.spec(event_type)
        fp = fingerprint(writer_schema)
        if fp not in self._writers:
            self._writers[fp] = _Writer(parse(writer_schema), spec, same_as_reader=False)
        return fp

    def knows(self, fp: bytes) -> bool:
        """Whether records with this writer fingerprint can be decoded."""
        return fp in self._writers

    def encode(self, event: Event) -> bytes:
        """The single-object encoding of a (validated) event.

        ``UnknownEventTypeError`` if its model is not in the catalog; ``EncodeError``
        if Avro cannot write it.
        """
        spec = self.catalog.spec_for(event)
        return self.encode_with(spec, event)

    def encode_with(self, spec: EventSpec, event: Event, metadata: dict[str, Any] | None = None) -> bytes:
        """``encode`` for a caller that already looked the spec up.

        ``metadata`` replaces metadata fields on the wire only (the publisher's
        service, version, correlation and causation), without copying the model.
        """
        compiled = self._encoders.get(spec.event_type)
        if compiled is not None and compiled[0] is spec:
            return compiled[1](event, metadata)
        return self._encode_slow(spec, event, metadata)

    def _encode_slow(self, spec: EventSpec, event: Event, metadata: dict[str, Any] | None) -> bytes:
        """``encode_with`` without a ready compiled encoder: fastavro, or a Confluent encoder compiled now."""
        header = self._header(spec)
        if self._confluent and self._compiled and spec.event_type in self.catalog:
            fast = compiled_codec(spec, header) if self.catalog.spec(spec.event_type) is spec else None
            if fast is not None:
                self._encoders[spec.event_type] = (spec, fast.encode)
                return fast.encode(event, metadata)
        if spec.flat:  # field values straight from the model: no model_dump on the hot path
            record = dict(event.__dict__)
            record["metadata"] = {**event.metadata.__dict__, **metadata} if metadata else event.metadata.__dict__
        else:
            record = event.model_dump()
            if metadata:
                record["metadata"].update(metadata)
        buffer = io.BytesIO()
        buffer.write(header)
        try:
            schemaless_writer(buffer, spec.parsed, record)
        except _WRITE_ERRORS as exc:
            msg = f"cannot encode {spec.event_type} event: {exc}"
            raise EncodeError(msg) from exc
        return buffer.getvalue()

    def decode(self, data: bytes) -> Event:
        """The event in ``data``.

        ``CorruptMessageError`` for bytes that are not a valid record,
        ``UnknownSchemaError`` for a writer schema this codec does not know.
        """
        return self.decode_dict_as_event(*self.decode_dict(data))

    def decode_dict(self, data: bytes) -> tuple[EventSpec, dict[str, Any]]:
        """The event's spec and its fields as plain Python values (not validated).

        The values are what ``model_validate`` takes. Read by the compiled decoder
        (the catalog's own writer schemas), they differ from fastavro's in one way:
        a ``uuid`` is its text (``str``), not a ``UUID`` (pydantic parses it faster
        than ``UUID()`` does), and it is not checked until validation. That decoder
        is also stricter: a negative or overlong union or enum index, an ``int``
        beyond 32 bits or a decimal beyond its precision is a ``CorruptMessageError``
        (fastavro reads them, and validation refuses most).
        """
        if data[:2] == MAGIC and len(data) >= HEADER_SIZE:
            writer = self._writers.get(bytes(data[2:HEADER_SIZE]))
            if writer is not None and writer.decode is not None:
                fields, end = writer.decode(data if type(data) is bytes else bytes(data), HEADER_SIZE)
                if end != len(data):
                    msg = f"{len(data) - end} unread bytes after the {writer.spec.event_type} body"
                    raise CorruptMessageError(msg)
                return writer.spec, fields
            if writer is not None:
                return self._read_body(writer, data, HEADER_SIZE)
        return self._decode_other(data)

    def _decode_other(self, data: bytes) -> tuple[EventSpec, dict[str, Any]]:
        """``decode_dict`` of a Confluent-framed record, or the error of a single-object one it cannot read."""
        if data[:1] != CONFLUENT_MAGIC:
            fp = read_fingerprint(data)  # CorruptMessageError, unless it is an unknown writer
            raise UnknownSchemaError(fp)
        schema_id = read_schema_id(data)
        writer = self._by_id.get(schema_id)
        if writer is None:
            writer = self._writer_of_id(schema_id)
        if writer.decode is not None:
            fields, end = writer.decode(data if type(data) is bytes else bytes(data), CONFLUENT_HEADER_SIZE)
            if end != len(data):
                msg = f"{len(data) - end} unread bytes after the {writer.spec.event_type} body"
                raise CorruptMessageError(msg)
            return writer.spec, fields
        return self._read_body(writer, data, CONFLUENT_HEADER_SIZE)

    def _writer_of_id(self, schema_id: int) -> _Writer:
        """The writer of a Schema Registry id, asked once and kept (ids are immutable in a registry).

        The event type is the schema's ``eventbus.event_type``, else the catalog event with its record
        name; the catalog's own schema (same canonical form) is read by the compiled decoder.
        ``SchemaRegistryError`` when the registry cannot answer (nothing is kept: asked again next time).
        """
        if self.schema_ids is None:
            raise UnknownSchemaIdError(schema_id, "no Schema Registry is configured to read Confluent-framed records")
        schema = self.schema_ids.schema_for(schema_id)
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise UnknownSchemaIdError(schema_id, "its schema is not an Avro record")
        event_type = schema.get("eventbus.event_type")
        spec = self._by_name.get(record_fullname(schema))
        if isinstance(event_type, str) and event_type in self.catalog:
            spec = self.catalog.spec(event_type)
        if spec is None:
            name = record_fullname(schema)
            raise UnknownSchemaIdError(schema_id, f"record {name} is not an event of the catalog")
        try:
            fp = fingerprint(schema)
            writer = self._writers.get(fp)
            if writer is None or writer.spec is not spec:
                writer = _Writer(parse(schema), spec, same_as_reader=False)
        except Exception as exc:  # fastavro's parse errors have no common class
            raise UnknownSchemaIdError(schema_id, f"its schema cannot be parsed: {exc}") from exc
        self._by_id[schema_id] = writer
        return writer

    def _read_body(self, writer: _Writer, data: bytes, start: int) -> tuple[EventSpec, dict[str, Any]]:
        """The fields of the body at ``start``, read by fastavro with ``writer``'s schema."""
        stream = io.BytesIO(data)
        stream.seek(start)
        try:
            record = schemaless_reader(stream, writer.parsed, writer.reader)
        except _READ_ERRORS as exc:
            msg = f"cannot read {writer.spec.event_type} body: {exc!r}"
            raise CorruptMessageError(msg) from exc
        if stream.tell() != len(data):
            msg = f"{len(data) - stream.tell()} unread bytes after the {writer.spec.event_type} body"
            raise CorruptMessageError(msg)
        if not isinstance(record, dict):
            msg = f"{writer.spec.event_type} body is not a record"
            raise CorruptMessageError(msg)
        return writer.spec, record

    @staticmethod
    def decode_dict_as_event(spec: EventSpec, record: dict[str, Any]) -> Event:
        """Validate decoded fields into the model; a record that breaks it is corrupt."""
        try:
            return spec.model.model_validate(record)
        except ValidationError as exc:
            error = validation_error(spec.event_type, exc)
            raise CorruptMessageError(f"decoded record is not a valid event: {error.message}") from exc
