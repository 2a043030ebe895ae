"""Every pydantic model of the catalog matches its self-contained Avro schema exactly.

The ``.avsc`` files are the source of truth. The test derives, from each model's
annotations, the Avro type the model implies, and compares it with the schema
(named-type references resolved, docs dropped): same fields in the same order,
same types, same optionality, same defaults.
"""

from __future__ import annotations

import re
import types
import typing
from datetime import datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any
from uuid import UUID

import annotated_types
import pytest
from pydantic import AwareDatetime, BaseModel

from schemas import CATALOG, EventMetadata, EventSpec
from schemas._schema_files import load_named_types
from tests.harness import unwrap_annotated

AVRO_INT = (-(2**31), 2**31 - 1)
AVRO_LONG = (-(2**63), 2**63 - 1)
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
EVENT_TYPE = re.compile(r"^[a-z][a-z_]*:[a-z][a-z_]*$")
REQUIRED_TYPES = {
    "session:created",
    "session:updated",
    "session:cancelled",
    "session:completed",
    "session:creation_failed",
    "coach:status_changed",
    "coach:rating_updated",
    "coach:profile_updated",
    "payment:process_required",
    "payment:processed",
    "payment:failed",
    "notification:sent",
    "user:credits_updated",
    "cache:coach_data_refreshed",
    "system:error",
}

SPECS = list(CATALOG)
IDS = [spec.event_type for spec in SPECS]


# -- the Avro type a model implies ---------------------------------------------


def _int_type(metadata: list[Any]) -> str:
    low = max((typing.cast(int, m.ge) for m in metadata if isinstance(m, annotated_types.Ge)), default=None)
    high = min((typing.cast(int, m.le) for m in metadata if isinstance(m, annotated_types.Le)), default=None)
    if low is None or high is None:
        pytest.fail(f"an int field without Avro bounds ({metadata}): annotate it AvroInt or AvroLong")
    if AVRO_INT[0] <= low and high <= AVRO_INT[1]:
        return "int"
    if AVRO_LONG[0] <= low and high <= AVRO_LONG[1]:
        return "long"
    pytest.fail(f"int bounds {low}..{high} fit no Avro integer type")


def _decimal_type(metadata: list[Any]) -> dict[str, Any]:
    digits = [getattr(m, "max_digits", None) for m in metadata]
    places = [getattr(m, "decimal_places", None) for m in metadata]
    assert 12 in digits, "a Decimal field must be Money (max_digits=12)"
    assert 2 in places, "a Decimal field must be Money (decimal_places=2)"
    return {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}


def _json_default(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_json_default(item) for item in value]
    return value


def record_of(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro record a pydantic model implies (names unqualified, no docs)."""
    fields = []
    for name, info in model.model_fields.items():
        field: dict[str, Any] = {"name": name, "type": avro_type_of(info.annotation, list(info.metadata))}
        if not info.is_required() and info.default_factory is None:
            field["default"] = _json_default(info.default)
        fields.append(field)
    return {"type": "record", "name": model.__name__, "fields": fields}


def avro_type_of(annotation: Any, metadata: list[Any]) -> Any:
    """The Avro type of one annotation."""
    annotation, metadata = unwrap_annotated(annotation, metadata)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        branches = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        assert len(branches) == 1, f"only `X | None` unions map to Avro: {annotation}"
        return ["null", avro_type_of(branches[0], metadata)]
    if origin is list:
        (item,) = typing.get_args(annotation)
        return {"type": "array", "items": avro_type_of(item, [])}
    if origin is dict:
        key, value = typing.get_args(annotation)
        assert key is str, "Avro map keys are strings"
        return {"type": "map", "values": avro_type_of(value, [])}
    assert isinstance(annotation, type), f"unsupported annotation {annotation!r}"
    if issubclass(annotation, StrEnum):
        return {"type": "enum", "name": annotation.__name__, "symbols": [member.value for member in annotation]}
    if issubclass(annotation, BaseModel):
        return record_of(annotation)
    if annotation is AwareDatetime:
        return {"type": "long", "logicalType": "timestamp-micros"}
    assert annotation is not datetime, "a datetime field must be a Timestamp (timezone-aware)"
    simple: dict[type, Any] = {
        str: "string",
        float: "double",
        bool: "boolean",
        bytes: "bytes",
        UUID: {"type": "string", "logicalType": "uuid"},
    }
    if annotation in simple:
        return simple[annotation]
    if annotation is int:
        return _int_type(metadata)
    if annotation is Decimal:
        return _decimal_type(metadata)
    pytest.fail(f"no Avro mapping for {annotation!r}")


# -- the schema, references resolved -------------------------------------------


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def normalized(schema: Any, named: dict[str, Any], namespace: str = "") -> Any:
    """The schema with references replaced by their definitions, docs and namespaces dropped."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return schema
        full = schema if "." in schema else f"{namespace}.{schema}".lstrip(".")
        assert full in named, f"reference to {schema} before its definition: not self-contained"
        return named[full]
    if isinstance(schema, list):
        return [normalized(branch, named, namespace) for branch in schema]
    kind = schema["type"]
    if kind in ("record", "enum"):
        full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', namespace)}.{schema['name']}"
        own_ns = full.rpartition(".")[0]
        if kind == "enum":
            named[full] = {"type": "enum", "name": _short(full), "symbols": schema["symbols"]}
            return named[full]
        fields = []
        for field in schema["fields"]:
            out = {"name": field["name"], "type": normalized(field["type"], named, own_ns)}
            if "default" in field:
                out["default"] = field["default"]
            fields.append(out)
        named[full] = {"type": "record", "name": _short(full), "fields": fields}
        return named[full]
    if kind == "array":
        return {"type": "array", "items": normalized(schema["items"], named, namespace)}
    if kind == "map":
        return {"type": "map", "values": normalized(schema["values"], named, namespace)}
    if not isinstance(kind, str) or kind not in PRIMITIVES:
        return normalized(kind, named, namespace)
    extra = {key: value for key, value in schema.items() if key in ("logicalType", "precision", "scale")}
    return {"type": kind, **extra} if extra else kind


def _field(spec: EventSpec, name: str) -> dict[str, Any]:
    return next(field for field in spec.schema["fields"] if field["name"] == name)


# -- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_model_matches_its_avro_schema_field_by_field(spec: EventSpec) -> None:
    expected = record_of(spec.model)
    actual = normalized(spec.schema, {})
    assert [f["name"] for f in actual["fields"]] == [f["name"] for f in expected["fields"]]
    for got, want in zip(actual["fields"], expected["fields"], strict=True):
        if got["name"] == "metadata":
            continue  # the documented exception, asserted on its own below
        assert got == want, f"{spec.event_type}.{got['name']}"
    assert [f for f in actual["fields"] if f["name"] == "metadata"] == [
        {"name": "metadata", "type": record_of(EventMetadata)}
    ]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_optional_fields_are_null_unions_with_null_default_and_required_fields_have_no_default(spec: EventSpec) -> None:
    for name, info in spec.model.model_fields.items():
        field = _field(spec, name)
        nullable = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
        assert (isinstance(field["type"], list) and "null" in field["type"]) == nullable, name
        if nullable:
            assert field["type"][0] == "null", name
            assert field.get("default", "missing") is None, name
        if name != "metadata":
            assert ("default" in field) == (not info.is_required()), name


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_metadata_is_the_one_field_with_a_python_factory_and_no_avro_default(spec: EventSpec) -> None:
    info = spec.model.model_fields["metadata"]
    assert info.default_factory is not None
    assert "default" not in _field(spec, "metadata")
    others = [name for name, field in spec.model.model_fields.items() if field.default_factory and name != "metadata"]
    assert others == []


def test_metadata_has_the_same_shape_on_every_event_as_the_shared_type() -> None:
    shared = normalized(load_named_types()["coaching.eventbus.EventMetadata"], {})
    assert shared == record_of(EventMetadata)
    for spec in SPECS:
        assert spec.schema["fields"][0]["name"] == "metadata", spec.event_type
        assert normalized(_field(spec, "metadata")["type"], {}) == shared, spec.event_type


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_event_type_is_entity_colon_action_and_topic_is_the_entity(spec: EventSpec) -> None:
    assert EVENT_TYPE.match(spec.event_type)
    assert spec.model.event_type == spec.event_type == spec.schema["eventbus.event_type"]
    assert spec.topic == spec.event_type.partition(":")[0] == spec.schema["eventbus.topic"]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_all_field_names_are_snake_case(spec: EventSpec) -> None:
    def names(schema: Any) -> list[str]:
        if isinstance(schema, list):
            return [name for branch in schema for name in names(branch)]
        if not isinstance(schema, dict):
            return []
        found = [f["name"] for f in schema.get("fields", [])]
        nested = [schema.get("items"), schema.get("values"), *(f["type"] for f in schema.get("fields", []))]
        return found + [name for child in nested for name in names(child)]

    bad = [name for name in names(spec.schema) if not SNAKE_CASE.match(name)]
    assert bad == []


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_record_has_a_doc(spec: EventSpec) -> None:
    assert isinstance(spec.schema.get("doc"), str)
    assert spec.schema["doc"].strip()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_key_field_is_a_required_string(spec: EventSpec) -> None:
    assert spec.key_field == spec.schema["eventbus.key"]
    field = _field(spec, spec.key_field)
    assert field["type"] == "string"
    assert "default" not in field
    info = spec.model.model_fields[spec.key_field]
    assert info.is_required()
    assert info.annotation is str


def test_catalog_holds_the_required_event_types() -> None:
    missing = REQUIRED_TYPES - set(CATALOG.event_types)
    assert missing == set()
    assert len(set(CATALOG.event_types)) == len(CATALOG)


def test_every_avro_event_file_has_a_catalog_entry_and_vice_versa() -> None:
    from schemas._schema_files import load_event_schemas  # noqa: PLC0415 - only this test reads the files

    in_files = sorted(schema["eventbus.event_type"] for schema in load_event_schemas())
    assert in_files == sorted(CATALOG.event_types)


def test_derivation_helper_rejects_what_avro_cannot_hold() -> None:
    # The helper must be strict, or the comparison above would prove nothing.
    with pytest.raises(pytest.fail.Exception):
        avro_type_of(int, [])
    with pytest.raises(AssertionError):
        avro_type_of(datetime, [])
    with pytest.raises(AssertionError):
        avro_type_of(Decimal, [])
    assert avro_type_of(int | None, [annotated_types.Ge(0), annotated_types.Le(5)]) == ["null", "int"]
