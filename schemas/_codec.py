"""Avro single-object encoding of events: bytes in, bytes out, no I/O."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from pydantic import ValidationError

from ._base import Event
from ._catalog import CATALOG, Catalog, EventSpec, validation_error
from ._compiled import CompiledSchema, UnsupportedSchemaError, compile_schema
from ._schema_files import HEADER_SIZE, MAGIC, Schema, fingerprint, parse
from .errors import CorruptMessageError, EncodeError, UnknownSchemaError

__all__ = ["AvroCodec", "compiled_codec", "read_fingerprint"]

# What fastavro raises on bytes it cannot read (it has no error class of its own).
_READ_ERRORS = (EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError, UnicodeDecodeError, StopIteration)
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


def compiled_codec(spec: EventSpec) -> CompiledSchema | None:
    """The compiled encoder and decoder of a spec's writer schema, or None if it uses an unsupported construct.

    Example: ``compiled_codec(CATALOG.spec("session:created")).encode(event, None)``
    """
    return _compile(json.dumps(spec.schema, sort_keys=True), MAGIC + spec.fingerprint, spec.event_type)


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
    """Encodes events to Avro single-object bytes and decodes them back.

    The decoder finds the writer schema by fingerprint and resolves it against
    this catalog's (reader) schema, so older or newer writers that evolved
    compatibly are read. ``register()`` adds writer schemas other than the
    catalog's own.

    With ``compiled`` (the default), the catalog's own schemas are written and
    read by functions generated for each schema (``schemas._compiled``), byte for
    byte what fastavro writes; registered writer schemas, and any schema the
    compiler does not support, go through fastavro. ``compiled=False`` uses
    fastavro for everything (the reference, for tests and benchmarks).

    Example: ``AvroCodec().decode(AvroCodec().encode(event)) == event``
    """

    def __init__(
        self, catalog: Catalog = CATALOG, *, writer_schemas: Iterable[Schema] = (), compiled: bool = True
    ) -> None:
        self.catalog = catalog
        self._writers: dict[bytes, _Writer] = {}
        self._encoders: dict[str, tuple[EventSpec, _Encoder]] = {}
        for spec in catalog:
            fast = compiled_codec(spec) if compiled else None
            self._writers[spec.fingerprint] = _Writer(
                spec.parsed, spec, same_as_reader=True, decode=fast.decode if fast else None
            )
            if fast is not None:
                self._encoders[spec.event_type] = (spec, fast.encode)
        for schema in writer_schemas:
            self.register(schema)

    @property
    def compiled_types(self) -> tuple[str, ...]:
        """The event types this codec encodes and decodes with compiled functions (the rest use fastavro).

        Example: ``"session:created" in AvroCodec().compiled_types``
        """
        return tuple(self._encoders)

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
        if spec.flat:  # field values straight from the model: no model_dump on the hot path
            record = dict(event.__dict__)
            record["metadata"] = {**event.metadata.__dict__, **metadata} if metadata else event.metadata.__dict__
        else:
            record = event.model_dump()
            if metadata:
                record["metadata"].update(metadata)
        buffer = io.BytesIO()
        buffer.write(MAGIC)
        buffer.write(spec.fingerprint)
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
        fp = read_fingerprint(data)
        writer = self._writers.get(fp)
        if writer is None:
            raise UnknownSchemaError(fp)
        if writer.decode is not None:
            fields, end = writer.decode(data if type(data) is bytes else bytes(data), HEADER_SIZE)
            if end != len(data):
                msg = f"{len(data) - end} unread bytes after the {writer.spec.event_type} body"
                raise CorruptMessageError(msg)
            return writer.spec, fields
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
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
