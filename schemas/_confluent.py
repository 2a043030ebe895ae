"""The Confluent Schema Registry wire format: framing and subject names, pure (no registry client here).

A record in this format is the magic byte ``0``, the writer schema's 4-byte big-endian id in a
Schema Registry, then the Avro body (the same body as the single-object encoding). The ids come
from a ``SchemaIdResolver``: ``producers.registry_schema_ids`` backs one with the confluent-kafka
registry client; ``MemorySchemaIds`` is an in-process one for tests and tools.

Subjects follow Confluent's TopicRecordNameStrategy: ``{topic}-{record full name}``, the topic
with the deployment's prefix. Example: ``subject_name("session", spec.schema) ==
"session-coaching.eventbus.SessionCreated"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from ._schema_files import Schema
from .errors import CorruptMessageError, UnknownSchemaIdError

__all__ = [
    "CONFLUENT_HEADER_SIZE",
    "CONFLUENT_MAGIC",
    "WIRE_FORMATS",
    "MemorySchemaIds",
    "SchemaIdResolver",
    "WireFormat",
    "confluent_header",
    "read_schema_id",
    "record_fullname",
    "schema_text",
    "subject_name",
]

WireFormat = Literal["single-object", "confluent"]
"""How events are framed on the wire: Avro single-object encoding, or the Confluent Schema Registry format."""
WIRE_FORMATS: tuple[WireFormat, ...] = ("single-object", "confluent")

CONFLUENT_MAGIC = b"\x00"
"""The first byte of a Confluent-framed record."""
CONFLUENT_HEADER_SIZE = 5
"""The magic byte and the 4-byte schema id."""
_MAX_ID = 2**31 - 1


@runtime_checkable
class SchemaIdResolver(Protocol):
    """Schema ids of a Schema Registry: the codec's only view of one (implementations cache).

    ``id_for`` registers (or looks up) ``schema`` under ``subject`` and returns its id; ``schema_for``
    returns the writer schema (its JSON object) of an id. Both raise ``SchemaRegistryError``
    (``retriable``) when the registry cannot answer; ``schema_for`` raises ``UnknownSchemaIdError``
    for an id the registry does not have.
    """

    def id_for(self, subject: str, schema: Schema) -> int:
        """The id of ``schema`` under ``subject`` (registered on first use)."""
        ...

    def schema_for(self, schema_id: int) -> Schema:
        """The writer schema with this id."""
        ...


def confluent_header(schema_id: int) -> bytes:
    """The 5 bytes before the body. Example: ``confluent_header(1) == b"\\x00\\x00\\x00\\x00\\x01"``."""
    if not 0 <= schema_id <= _MAX_ID:
        msg = f"schema id {schema_id} does not fit the 4-byte id of the Confluent wire format"
        raise ValueError(msg)
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")


def read_schema_id(data: bytes) -> int:
    """The schema id of a Confluent-framed record; ``CorruptMessageError`` if it is not one.

    Example: ``read_schema_id(b"\\x00\\x00\\x00\\x00\\x07" + body) == 7``
    """
    if len(data) < CONFLUENT_HEADER_SIZE:
        msg = f"record of {len(data)} bytes is shorter than the {CONFLUENT_HEADER_SIZE}-byte Confluent header"
        raise CorruptMessageError(msg)
    if data[:1] != CONFLUENT_MAGIC:
        msg = f"record does not start with the Confluent magic byte 00 (got {bytes(data[:1]).hex()})"
        raise CorruptMessageError(msg)
    return int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")


def record_fullname(schema: Mapping[str, Any]) -> str:
    """The full name of a record schema (namespace and name). Example: ``"coaching.eventbus.SessionCreated"``."""
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def subject_name(topic: str, schema: Mapping[str, Any]) -> str:
    """The TopicRecordNameStrategy subject: ``{topic}-{record full name}`` (``topic`` with any prefix)."""
    return f"{topic}-{record_fullname(schema)}"


def schema_text(schema: Schema) -> str:
    """The schema as registered: its JSON, logical types, docs and ``eventbus.*`` properties kept."""
    return json.dumps(schema, separators=(",", ":"))


class MemorySchemaIds:
    """An in-process registry: ids from 1, one per distinct schema text (as Schema Registry gives them).

    For tests and tools without a registry; a real deployment uses ``producers.registry_schema_ids``.
    Example: ``AvroCodec(wire_format="confluent", schema_ids=MemorySchemaIds())``
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, Schema] = {}
        self.subjects: dict[str, list[int]] = {}
        """The ids registered under each subject, in order."""

    def id_for(self, subject: str, schema: Schema) -> int:
        """Register ``schema`` under ``subject`` (once) and return its id."""
        text = schema_text(schema)
        schema_id = self._ids.get(text)
        if schema_id is None:
            schema_id = self._ids[text] = len(self._ids) + 1
            self._schemas[schema_id] = json.loads(text)
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def schema_for(self, schema_id: int) -> Schema:
        """The schema with this id; ``UnknownSchemaIdError`` if none."""
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchemaIdError(schema_id) from None
