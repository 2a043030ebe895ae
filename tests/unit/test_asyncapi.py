"""The AsyncAPI document follows the catalog, the topic specs and the groups; any drift fails here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from consumers import ConsumerGroup, Database, GroupSettings, MemoryCache, Resources
from infra._asyncapi import (
    AVRO_SCHEMA_FORMAT,
    asyncapi_avro_schema,
    asyncapi_document,
    asyncapi_json,
    asyncapi_yaml,
    message_id,
)
from infra._cli import main
from infra._composition import MARKETPLACE_GROUP_NAMES, marketplace_groups
from infra._topics import REPLAY_LOG_TOPIC, TOPIC_SPECS
from schemas import CATALOG, fingerprint

PREFIX = "test."
_NAMED = {"record", "enum", "error", "fixed"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document(topic_prefix=PREFIX, replication=2)


@pytest.fixture(scope="module")
def groups() -> list[ConsumerGroup]:
    # The groups only register handlers here; an unopened in-memory database satisfies Resources.
    resources = Resources(database=Database("sqlite://"), cache=MemoryCache(), settings=GroupSettings())
    return list(marketplace_groups(resources))


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The object a local ``$ref`` (``#/a/b``) points at; KeyError when it points nowhere."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` in ``node``, depth first."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def message_names(document: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    """The event types an operation's message references point at (through the channel)."""
    return [resolve(document, resolve(document, ref["$ref"])["$ref"])["name"] for ref in operation["messages"]]


def with_full_names(schema: Any, namespace: str = "") -> Any:
    """``schema`` with each named type's ``name`` made its full name and ``namespace`` dropped."""
    if isinstance(schema, list):
        return [with_full_names(branch, namespace) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if schema.get("type") in _NAMED:
        name = str(schema["name"])
        if "." not in name:
            namespace = str(schema.get("namespace", namespace))
            name = f"{namespace}.{name}" if namespace else name
        out["name"] = name
        out.pop("namespace", None)
        namespace = name.rpartition(".")[0]
    if "fields" in schema:
        out["fields"] = [{**field, "type": with_full_names(field["type"], namespace)} for field in schema["fields"]]
    for key in ("items", "values", "type"):
        if isinstance(schema.get(key), (dict, list)):
            out[key] = with_full_names(schema[key], namespace)
    return out


def test_every_catalog_event_type_has_one_message(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]

    assert [message["name"] for message in messages.values()] == list(CATALOG.event_types)
    for spec in CATALOG:
        message = messages[message_id(spec.event_type)]
        doc = (spec.model.__doc__ or "").strip()
        assert message["title"] == spec.model.__name__
        assert message["summary"] == doc.splitlines()[0]
        assert f"`{spec.key_field}`" in message["bindings"]["kafka"]["key"]["description"]
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert message["x-eventbus-fingerprint"] == spec.fingerprint.hex()


def test_each_message_payload_is_the_catalog_writer_schema(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    for spec in CATALOG:
        payload = messages[message_id(spec.event_type)]["payload"]
        assert payload["schemaFormat"] == AVRO_SCHEMA_FORMAT
        assert fingerprint(payload["schema"]) == spec.fingerprint, f"{spec.event_type}: another Avro schema"
        assert with_full_names(payload["schema"]) == spec.schema, f"{spec.event_type}: docs or attributes drifted"


def test_payload_names_are_split_only_where_asyncapi_needs_it() -> None:
    schema = {
        "type": "record",
        "name": "a.b.Outer",
        "fields": [
            {"name": "inner", "type": {"type": "enum", "name": "c.Kind", "symbols": ["X"]}},
            {"name": "many", "type": {"type": "array", "items": {"type": "fixed", "name": "Tag", "size": 2}}},
            {"name": "again", "type": ["null", "c.Kind"], "default": None},
        ],
    }

    split = asyncapi_avro_schema(schema)

    assert (split["name"], split["namespace"]) == ("Outer", "a.b")
    assert split["fields"][0]["type"] == {"type": "enum", "name": "Kind", "namespace": "c", "symbols": ["X"]}
    assert split["fields"][1]["type"]["items"] == {"type": "fixed", "name": "Tag", "size": 2}
    assert split["fields"][2]["type"] == ["null", "c.Kind"], "references keep their full names"
    assert fingerprint(split) == fingerprint(schema)
    assert with_full_names(split) == with_full_names(schema)


def test_every_message_documents_the_headers(document: dict[str, Any]) -> None:
    for spec in CATALOG:
        headers = document["components"]["messages"][message_id(spec.event_type)]["headers"]
        assert headers["required"] == ["event-type", "event-id"]
        assert {"event-type", "event-id", "correlation-id", "causation-id"} <= headers["properties"].keys()
        assert headers["properties"]["event-type"]["const"] == spec.event_type


def test_every_catalog_topic_has_a_channel_with_its_kafka_bindings(document: dict[str, Any]) -> None:
    specs = {spec.name: spec for spec in TOPIC_SPECS}

    assert list(document["channels"]) == list(CATALOG.topics)
    assert REPLAY_LOG_TOPIC not in document["channels"], "the replay log carries no catalog events"
    for topic, channel in document["channels"].items():
        binding = channel["bindings"]["kafka"]
        assert channel["address"] == binding["topic"] == f"{PREFIX}{topic}"
        assert binding["partitions"] == specs[topic].partitions
        assert binding["replicas"] == 2
        assert binding["topicConfiguration"] == {
            "retention.ms": specs[topic].retention_ms,
            "cleanup.policy": specs[topic].cleanup_policy.split(","),
        }
        in_channel = [resolve(document, ref["$ref"])["name"] for ref in channel["messages"].values()]
        assert in_channel == [spec.event_type for spec in CATALOG if spec.topic == topic]


def test_one_send_operation_per_channel_covers_all_its_messages(document: dict[str, Any]) -> None:
    sends = {key: op for key, op in document["operations"].items() if op["action"] == "send"}

    assert [resolve(document, op["channel"]["$ref"]) for op in sends.values()] == list(document["channels"].values())
    for operation in sends.values():
        channel = resolve(document, operation["channel"]["$ref"])
        assert len(operation["messages"]) == len(channel["messages"])
        assert all(ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/") for ref in operation["messages"])


def test_each_group_receives_exactly_its_event_types(document: dict[str, Any], groups: list[ConsumerGroup]) -> None:
    receives = [op for op in document["operations"].values() if op["action"] == "receive"]
    by_group: dict[str, list[dict[str, Any]]] = {}
    for operation in receives:
        (group_id,) = operation["bindings"]["kafka"]["groupId"]["enum"]
        by_group.setdefault(group_id, []).append(operation)

    assert sorted(by_group) == sorted(f"{PREFIX}{name}" for name in MARKETPLACE_GROUP_NAMES)
    for group in groups:
        operations = by_group[f"{PREFIX}{group.name}"]
        channels = [resolve(document, op["channel"]["$ref"])["title"] for op in operations]
        handled = [name for op in operations for name in message_names(document, op)]
        assert channels == list(group.topics), group.name
        assert sorted(handled) == sorted(group.event_types), group.name
        for operation in operations:
            assert all(ref["$ref"].startswith(operation["channel"]["$ref"] + "/") for ref in operation["messages"])


def test_the_dead_letter_channel_is_documented(document: dict[str, Any]) -> None:
    system = document["channels"]["system"]

    assert "dead-letter channel" in system["description"]
    assert "`system:error`" in system["description"]
    assert [resolve(document, ref["$ref"])["name"] for ref in system["messages"].values()] == ["system:error"]
    assert "dead-letter channel" in document["info"]["description"]


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    found = list(refs(document))

    assert len(found) > len(CATALOG) * 2
    for ref in found:
        resolve(document, ref)


def test_yaml_and_json_are_the_same_document(document: dict[str, Any]) -> None:
    from_yaml = yaml.safe_load(asyncapi_yaml(topic_prefix=PREFIX, replication=2))
    from_json = json.loads(asyncapi_json(topic_prefix=PREFIX, replication=2))

    assert from_yaml == from_json == document
    assert document["asyncapi"] == "3.0.0"


def test_an_invalid_topic_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="topic_prefix"):
        asyncapi_document(topic_prefix="no spaces")


def test_the_cli_writes_the_document_with_out(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    env = {"EVENTBUS_TOPIC_PREFIX": "cli.", "EVENTBUS_REPLICATION_FACTOR": "1"}

    result = CliRunner().invoke(main, ["asyncapi", "--format", "json", "--out", str(out)], env=env)

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(out.read_text(encoding="utf-8")) == asyncapi_document(topic_prefix="cli.", replication=1)


def test_the_cli_prints_yaml_by_default() -> None:
    result = CliRunner().invoke(main, ["asyncapi"], env={"EVENTBUS_TOPIC_PREFIX": "", "EVENTBUS_PROFILE": "kafka"})

    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    assert document["channels"]["session"]["address"] == "session"
    assert document["channels"]["session"]["bindings"]["kafka"]["replicas"] == 3
