"""The AsyncAPI 3.0 document of the bus, generated from the catalog, the topic specs and the marketplace's groups.

One channel per entity topic (Kafka bindings: partitions, replicas, retention, cleanup), one message
per event type (its self-contained Avro writer schema, the record key, the headers), one ``send``
operation per channel for the producers and one ``receive`` operation per group and channel it reads
(its Kafka group id in the bindings). Nothing is written by hand, so the document cannot drift from
the code: ``eventbus asyncapi`` prints it, and the gateway can serve ``asyncapi_document()``.

Example: ``asyncapi_document(topic_prefix="prod.")["channels"]["session"]["address"] == "prod.session"``
"""

from __future__ import annotations

import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import yaml

from consumers import REPLAY_HEADER, ConsumerGroup, Database, GroupSettings, MemoryCache, Resources, group_id
from producers import KafkaConnection
from schemas import CATALOG, EventSpec

from ._composition import marketplace_groups
from ._topics import TOPIC_SPECS, TopicSpec

__all__ = [
    "ASYNCAPI_VERSION",
    "AVRO_SCHEMA_FORMAT",
    "asyncapi_avro_schema",
    "asyncapi_document",
    "asyncapi_json",
    "asyncapi_yaml",
    "message_id",
]

ASYNCAPI_VERSION = "3.0.0"
AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro;version=1.9.0"
"""The ``schemaFormat`` of every message payload: the Avro writer schema, as JSON."""

_CONTENT_TYPE = "application/octet-stream"
_KAFKA_BINDING = "0.5.0"
_DEAD_LETTER_TYPE = "system:error"
_PLACEHOLDER_HOST = "kafka.example.com:9092"
_NAMED_TYPES = frozenset({"record", "enum", "error", "fixed"})

_WIRE_FORMAT = (
    "Avro single-object encoding: the two bytes `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the "
    "writer schema's Parsing Canonical Form, then the Avro binary body."
)


def message_id(event_type: str) -> str:
    """The id of an event type's message in the document (``:`` is not allowed in component names).

    Example: ``message_id("session:created") == "session.created"``
    """
    return event_type.replace(":", ".")


def asyncapi_avro_schema(schema: Any) -> Any:
    """``schema`` with each dotted name split into ``name`` and ``namespace``: the same Avro schema.

    AsyncAPI's Avro schema allows only simple names (``[A-Za-z_][A-Za-z0-9_]*``) in ``name``; a
    full name in ``name`` means exactly that name and namespace, so the Parsing Canonical Form
    and the fingerprint are unchanged. References to named types keep their full names.
    Example: ``asyncapi_avro_schema({"type": "fixed", "name": "a.B", "size": 2})["namespace"] == "a"``
    """
    if isinstance(schema, list):
        return [asyncapi_avro_schema(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "name" and schema.get("type") in _NAMED_TYPES and "." in value:
            namespace, _, out["name"] = value.rpartition(".")
            out["namespace"] = namespace
        elif key == "namespace" and "." in schema.get("name", ""):
            continue  # ignored by Avro next to a full name; replaced by the name's own namespace
        elif key == "fields" and schema.get("type") == "record":
            out[key] = [{**field, "type": asyncapi_avro_schema(field["type"])} for field in value]
        elif _holds_schema(schema, key):
            out[key] = asyncapi_avro_schema(value)
        else:
            out[key] = value
    return out


def _holds_schema(schema: dict[str, Any], key: str) -> bool:
    """Whether ``schema[key]`` is itself a schema: array items, map values, or a wrapped type (``{"type": {...}}``)."""
    if key in {"items", "values"}:
        return schema.get("type") in {"array", "map"}
    return key == "type" and isinstance(schema[key], (dict, list))


def asyncapi_document(*, topic_prefix: str = "", replication: int = 3) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the catalog's topics and events, as plain JSON data (a new copy each call).

    ``topic_prefix`` goes before every topic name and group id (as ``EVENTBUS_TOPIC_PREFIX`` does);
    ``replication`` is the replication factor the topics are created with.
    Example: ``asyncapi_document(replication=1)["channels"]["payment"]["bindings"]["kafka"]["replicas"] == 1``
    """
    connection = KafkaConnection(topic_prefix=topic_prefix)  # validates the prefix like the settings do
    specs = {spec.name: spec for spec in TOPIC_SPECS}
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": _info(),
        "defaultContentType": _CONTENT_TYPE,
        "servers": {"kafka": _server()},
        "channels": {topic: _channel(specs[topic], connection, replication) for topic in CATALOG.topics},
        "operations": {**_send_operations(), **_receive_operations(connection)},
        "components": {
            "messages": {message_id(spec.event_type): _message(spec) for spec in CATALOG},
            "securitySchemes": _security_schemes(),
        },
    }
    # A deep copy through JSON: plain data only, no object shared between two places (nor with the catalog).
    copied: dict[str, Any] = json.loads(json.dumps(document))
    return copied


def asyncapi_json(*, topic_prefix: str = "", replication: int = 3) -> str:
    """The document as indented JSON text. Example: ``json.loads(asyncapi_json())["asyncapi"] == "3.0.0"``"""
    document = asyncapi_document(topic_prefix=topic_prefix, replication=replication)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def asyncapi_yaml(*, topic_prefix: str = "", replication: int = 3) -> str:
    """The document as YAML text. Example: ``yaml.safe_load(asyncapi_yaml())["asyncapi"] == "3.0.0"``"""
    document = asyncapi_document(topic_prefix=topic_prefix, replication=replication)
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line text as literal blocks (``|``), which read like the Markdown they are."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


# -- parts ---------------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        return version("eventbus")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
        return "0.0.0"


def _info() -> dict[str, Any]:
    return {
        "title": "eventbus",
        "version": _package_version(),
        "description": (
            "Kafka-backed events of the coaching marketplace, generated from the event catalog "
            "(`eventbus asyncapi`).\n\n"
            f"Every record value is {_WIRE_FORMAT} Each message's payload is its self-contained Avro writer "
            "schema (named types inlined): exactly the schema whose fingerprint is on the wire. The record key "
            "is the event's entity id, so one entity's events stay in order on one partition.\n\n"
            f"Records a consumer group cannot handle become `{_DEAD_LETTER_TYPE}` events on the `system` "
            "channel (the dead-letter channel). Operational topics (the retry tiers `retry.<group>.<n>` and the "
            "replay log of `eventbus dlq replay`) carry no catalog events and are not listed."
        ),
        "license": {"name": "MIT"},
    }


def _server() -> dict[str, Any]:
    return {
        "host": _PLACEHOLDER_HOST,
        "protocol": "kafka",
        "title": "Kafka cluster",
        "description": (
            f"`{_PLACEHOLDER_HOST}` is a placeholder: clients connect to `EVENTBUS_BOOTSTRAP_SERVERS`. "
            "`EVENTBUS_SECURITY_PROTOCOL` chooses the security: `PLAINTEXT` (development), `SSL` (TLS, with a "
            "client certificate from `EVENTBUS_SSL_CERTFILE`/`EVENTBUS_SSL_KEYFILE` for mutual TLS; the CA from "
            "`EVENTBUS_SSL_CAFILE`), `SASL_PLAINTEXT` or `SASL_SSL` (SASL `PLAIN`, `SCRAM-SHA-256` or "
            "`SCRAM-SHA-512` from `EVENTBUS_SASL_MECHANISM`, with `EVENTBUS_SASL_USERNAME`/"
            "`EVENTBUS_SASL_PASSWORD`)."
        ),
        "security": [{"$ref": f"#/components/securitySchemes/{name}"} for name in _security_schemes()],
    }


def _security_schemes() -> dict[str, Any]:
    sasl = "over `SASL_SSL` (or `SASL_PLAINTEXT`), with `EVENTBUS_SASL_USERNAME` and `EVENTBUS_SASL_PASSWORD`"
    return {
        "saslPlain": {"type": "plain", "description": f"`EVENTBUS_SASL_MECHANISM=PLAIN` {sasl}."},
        "saslScramSha256": {"type": "scramSha256", "description": f"`EVENTBUS_SASL_MECHANISM=SCRAM-SHA-256` {sasl}."},
        "saslScramSha512": {"type": "scramSha512", "description": f"`EVENTBUS_SASL_MECHANISM=SCRAM-SHA-512` {sasl}."},
        "mutualTls": {
            "type": "X509",
            "description": "`EVENTBUS_SECURITY_PROTOCOL=SSL` with `EVENTBUS_SSL_CERTFILE` and `EVENTBUS_SSL_KEYFILE`.",
        },
    }


def _channel(spec: TopicSpec, connection: KafkaConnection, replication: int) -> dict[str, Any]:
    topic = connection.topic(spec.name)
    types = [event.event_type for event in CATALOG if event.topic == spec.name]
    description = f"The `{topic}` topic: {spec.doc}."
    if _DEAD_LETTER_TYPE in types:
        description = (
            f"The dead-letter channel: `{_DEAD_LETTER_TYPE}` events, one per record a consumer group could not "
            "handle (after its retries), keyed by the group's name. Each keeps the failed record's topic, "
            "partition, offset, key, value and headers byte for byte, with the error; `eventbus dlq list` shows "
            "them and `eventbus dlq replay` publishes the originals again."
        )
    return {
        "address": topic,
        "title": spec.name,
        "summary": spec.doc[:1].upper() + spec.doc[1:] + ".",
        "description": description,
        "messages": {message_id(t): {"$ref": f"#/components/messages/{message_id(t)}"} for t in types},
        "bindings": {
            "kafka": {
                "topic": topic,
                "partitions": spec.partitions,
                "replicas": replication,
                "topicConfiguration": {
                    "retention.ms": spec.retention_ms,
                    "cleanup.policy": spec.cleanup_policy.split(","),
                },
                "bindingVersion": _KAFKA_BINDING,
            }
        },
    }


def _message_refs(topic: str, event_types: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{topic}/messages/{message_id(t)}"} for t in event_types]


def _send_operations() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for topic in CATALOG.topics:
        types = [spec.event_type for spec in CATALOG if spec.topic == topic]
        who = (
            "Every consumer group publishes its dead letters here."
            if _DEAD_LETTER_TYPE in types
            else "Producers: services using `EventPublisher`, `eventbus publish`, the gateway and the groups' "
            "follow-up events. The record key is the event's entity id."
        )
        operations[f"send.{topic}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic}"},
            "title": f"Publish to {topic}",
            "summary": f"Publish {', '.join(types)}.",
            "description": who,
            "messages": _message_refs(topic, types),
        }
    return operations


@cache
def _marketplace_groups() -> tuple[ConsumerGroup, ...]:
    """The marketplace's groups, built on inert resources (an unopened in-memory database, a memory cache)."""
    resources = Resources(database=Database("sqlite://"), cache=MemoryCache(), settings=GroupSettings())
    return tuple(marketplace_groups(resources))


def _receive_operations(connection: KafkaConnection) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for group in _marketplace_groups():
        kafka_group = group_id(connection, group)
        for topic in group.topics:
            types = tuple(t for t in group.event_types if CATALOG.spec(t).topic == topic)
            operations[f"{group.name}.receive.{topic}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{topic}"},
                "title": f"{group.name} reads {topic}",
                "summary": f"The `{group.name}` group handles {', '.join(types)}.",
                "description": (
                    f"Consumer group `{kafka_group}` (`eventbus run {group.name}`). Other event types on the "
                    "topic are skipped; a record it cannot handle goes to the dead-letter channel `system`."
                ),
                "messages": _message_refs(topic, types),
                "bindings": {
                    "kafka": {"groupId": {"type": "string", "enum": [kafka_group]}, "bindingVersion": _KAFKA_BINDING}
                },
            }
    return operations


def _doc_lines(spec: EventSpec) -> list[str]:
    doc = (spec.model.__doc__ or spec.event_type).strip()
    return [line.strip() for line in doc.splitlines()]


def _message(spec: EventSpec) -> dict[str, Any]:
    lines = _doc_lines(spec)
    body = " ".join(line for line in lines[1:] if line).strip()
    description = f"{lines[0]} {body}".strip()
    description += f"\n\nTopic `{spec.topic}`, key `{spec.key_field}`. Value: {_WIRE_FORMAT}"
    return {
        "name": spec.event_type,
        "title": spec.model.__name__,
        "summary": lines[0],
        "description": description,
        "contentType": _CONTENT_TYPE,
        "headers": _headers(spec),
        "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": asyncapi_avro_schema(spec.schema)},
        "correlationId": {
            "description": "Shared by every event of one business flow (also `metadata.correlation_id`).",
            "location": "$message.header#/correlation-id",
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": f"The event's `{spec.key_field}` (UTF-8): the record key.",
                },
                "bindingVersion": _KAFKA_BINDING,
            }
        },
        "x-eventbus-fingerprint": spec.fingerprint.hex(),
    }


def _headers(spec: EventSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Kafka record headers; every value is UTF-8 text.",
        "properties": {
            "event-type": {"type": "string", "const": spec.event_type, "description": "The event type."},
            "event-id": {"type": "string", "format": "uuid", "description": "`metadata.event_id`."},
            "correlation-id": {"type": "string", "description": "`metadata.correlation_id`, when set."},
            "causation-id": {"type": "string", "format": "uuid", "description": "`metadata.causation_id`, when set."},
            REPLAY_HEADER: {
                "type": "string",
                "description": "On a record replayed from a dead letter: `<system topic>/<partition>/<offset>`.",
            },
        },
        "required": ["event-type", "event-id"],
    }
