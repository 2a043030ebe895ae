"""Avro schema files: loading the ``.avsc`` files, inlining named types, canonical form and fingerprints.

Pure (no I/O but file reads). Events are encoded and decoded by ``_codec.py`` (``AvroCodec``: single-object
framing, writer schemas by fingerprint), with the per-schema functions of ``_compiled.py`` and their
primitives in ``_wire.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

__all__ = [
    "AVRO_DIR",
    "HEADER_SIZE",
    "MAGIC",
    "canonical_form",
    "fingerprint",
    "inline_named_types",
    "load_event_schemas",
    "load_named_types",
    "parse",
]

AVRO_DIR = Path(__file__).parent / "avro"
MAGIC = b"\xc3\x01"
"""Avro single-object encoding marker."""
HEADER_SIZE = len(MAGIC) + 8

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "enum", "fixed", "error"})

Schema = dict[str, Any]


def _fullname(schema: Mapping[str, Any], namespace: str | None) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _read(path: Path) -> Schema:
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        msg = f"{path}: an Avro schema file must hold a JSON object"
        raise TypeError(msg)
    return loaded


def load_named_types(directory: Path = AVRO_DIR / "types") -> dict[str, Schema]:
    """The shared named types, by full name."""
    types: dict[str, Schema] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = _read(path)
        types[_fullname(schema, None)] = schema
    return types


def load_event_schemas(directory: Path = AVRO_DIR / "events") -> list[Schema]:
    """The event schemas as written in their files (named types by reference)."""
    return [_read(path) for path in sorted(directory.glob("*.avsc"))]


def inline_named_types(schema: Schema, named: Mapping[str, Schema]) -> Schema:
    """A self-contained copy of ``schema``: each named type is defined where first used.

    Later uses stay references by full name, as Avro requires.
    """
    defined: set[str] = set()

    def walk(node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = node if "." in node else (f"{namespace}.{node}" if namespace else node)
            if full in defined:
                return full
            if full not in named:
                msg = f"unknown named type {node!r}"
                raise KeyError(msg)
            return walk(named[full], namespace)
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if kind in _NAMED:
            full = _fullname(node, namespace)
            defined.add(full)
            own_ns = full.rpartition(".")[0] or None
            out = {**node, "name": full}
            out.pop("namespace", None)
            if kind in ("record", "error"):
                out["fields"] = [{**f, "type": walk(f["type"], own_ns)} for f in node["fields"]]
            return out
        if kind == "array":
            return {**node, "items": walk(node["items"], namespace)}
        if kind == "map":
            return {**node, "values": walk(node["values"], namespace)}
        if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _PRIMITIVES):
            return {**node, "type": walk(kind, namespace)}
        return node

    result = walk(schema, None)
    assert isinstance(result, dict)  # noqa: S101 - a record in, a record out
    return result


def parse(schema: Schema) -> Any:
    """fastavro's parsed form of a self-contained schema."""
    return parse_schema(schema)


def canonical_form(schema: Schema) -> str:
    """The Parsing Canonical Form of a self-contained schema."""
    return str(to_parsing_canonical_form(parse(schema)))


def fingerprint(schema: Schema) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of the schema's canonical form, in wire order."""
    return bytes.fromhex(_fastavro_fingerprint(canonical_form(schema), "CRC-64-AVRO"))
