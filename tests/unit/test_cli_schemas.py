"""``eventbus schemas list/show/example`` (no broker needed)."""

from __future__ import annotations

import json

import fastavro
import pytest
from click.testing import CliRunner, Result

from infra._cli import main
from schemas import CATALOG, AvroCodec, fingerprint

_ENV = {"EVENTBUS_TOPIC_PREFIX": "pfx.", "EVENTBUS_PROFILE": "embedded"}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=_ENV)


def test_list_json_has_one_row_per_catalog_entry() -> None:
    result = run("schemas", "list", "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["event_type"] for row in rows] == list(CATALOG.event_types)
    for row, spec in zip(rows, CATALOG, strict=True):
        assert row == {
            "event_type": spec.event_type,
            "topic": f"pfx.{spec.topic}",
            "key_field": spec.key_field,
            "fingerprint": spec.fingerprint.hex(),
        }


def test_list_table_names_every_type_and_prefixed_topic() -> None:
    result = run("schemas", "list")

    assert result.exit_code == 0, result.output
    for spec in CATALOG:
        assert spec.event_type in result.stdout
        assert spec.fingerprint.hex() in result.stdout
    assert "pfx.notification" in result.stdout


@pytest.mark.parametrize("event_type", CATALOG.event_types)
def test_show_prints_the_self_contained_fingerprinted_schema(event_type: str) -> None:
    spec = CATALOG.spec(event_type)

    result = run("schemas", "show", event_type)

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown == spec.schema
    fastavro.parse_schema(json.loads(result.stdout), named_schemas={})  # no named type defined elsewhere
    assert fingerprint(shown) == spec.fingerprint


@pytest.mark.parametrize("event_type", CATALOG.event_types)
def test_example_is_a_valid_payload_without_metadata(event_type: str) -> None:
    result = run("schemas", "example", event_type)

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert isinstance(payload, dict)
    assert "metadata" not in payload
    event = CATALOG.parse(event_type, payload)
    assert event.event_type == event_type
    assert AvroCodec().decode(AvroCodec().encode(event)) == event


def test_example_uses_realistic_values() -> None:
    payment = json.loads(run("schemas", "example", "payment:process_required").stdout)
    session = json.loads(run("schemas", "example", "session:created").stdout)
    dead_letter = json.loads(run("schemas", "example", "system:error").stdout)

    assert payment["amount"] == "49.90"
    assert payment["priority"] == "normal"
    assert session["session_id"] == "session-1042"
    assert session["scheduled_at"].endswith("Z")
    event = CATALOG.parse("system:error", dead_letter)
    assert event.original_key == b"session-1042"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["show", "example"])
def test_unknown_type_exits_2_listing_known_types(command: str) -> None:
    result = run("schemas", command, "session:nope")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown event type 'session:nope'" in result.stderr
    assert "session:created" in result.stderr
    assert "Traceback" not in result.output
