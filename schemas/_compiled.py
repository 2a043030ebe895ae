"""A schema compiler: specialised Python encode and decode functions for one Avro record schema.

``compile_schema`` generates the source of two functions for a self-contained writer schema and
``exec``-s it once, with every name it uses passed in explicitly (no builtins). The encoder reads
the values straight from the pydantic event (attributes, nested models, dict items, iteration) and
writes exactly the bytes fastavro writes; the decoder returns the plain dict ``model_validate``
takes. Constructs the compiler does not know raise ``UnsupportedSchemaError`` at compile time, so
a schema never gets a wrong codec (``AvroCodec`` then uses fastavro for it).
"""

from __future__ import annotations

import keyword
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _wire
from .errors import CorruptMessageError

__all__ = ["CompiledSchema", "UnsupportedSchemaError", "compile_schema"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRIMITIVES = frozenset({"string", "bytes", "int", "long", "double", "boolean"})
_LOGICAL = {("string", "uuid"): "uuid", ("long", "timestamp-micros"): "timestamp"}
_ENCODE_ERRORS = (AttributeError, TypeError, KeyError, ValueError, OverflowError, IndexError, struct.error)
_DECODE_ERRORS = (IndexError, struct.error, ValueError, OverflowError, TypeError, KeyError, CorruptMessageError)


class UnsupportedSchemaError(ValueError):
    """The schema uses a construct the compiler does not handle; the message names it and where."""


def _refuse(where: str, problem: str) -> UnsupportedSchemaError:
    return UnsupportedSchemaError(f"{where}: {problem}" if where else problem)


# -- the schema as a tree of nodes -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prim:
    kind: str  # string uuid bytes int long double boolean timestamp


@dataclass(frozen=True, slots=True)
class _Decimal:
    precision: int
    scale: int


@dataclass(frozen=True, slots=True)
class _Enum:
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Array:
    items: _Node


@dataclass(frozen=True, slots=True)
class _Map:
    values: _Node


@dataclass(frozen=True, slots=True)
class _Optional:
    """A two-branch union with ``null``."""

    value: _Node
    null_index: int


@dataclass(frozen=True, slots=True)
class _Record:
    name: str
    fields: tuple[tuple[str, _Node], ...]


_Node = _Prim | _Decimal | _Enum | _Array | _Map | _Optional | _Record


def _min_size(node: _Node) -> int:
    """The fewest bytes a value of ``node`` takes (0 only for records without fields)."""
    if isinstance(node, _Record):
        return sum(_min_size(t) for _, t in node.fields)
    return 8 if node == _Prim("double") else 1


class _Parser:
    """Resolves named types and refuses what the compiler cannot encode exactly."""

    def __init__(self) -> None:
        self.named: dict[str, _Node] = {}
        self.open: set[str] = set()

    def node(self, schema: Any, ns: str, where: str) -> _Node:
        if isinstance(schema, str):
            return self._reference(schema, ns, where)
        if isinstance(schema, list):
            return self._union(schema, ns, where)
        if not isinstance(schema, dict):
            raise _refuse(where, f"{schema!r} is not a schema")
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if kind == "record":
            return self._record(schema, ns, where)
        if kind == "enum":
            return self._enum(schema, ns, where)
        if logical is not None:
            return self._logical(schema, kind, logical, where)
        if kind == "array":
            return self._container(_Array, schema.get("items"), ns, f"{where}[]")
        if kind == "map":
            return self._container(_Map, schema.get("values"), ns, f"{where}{{}}")
        if isinstance(kind, (str, list, dict)):
            return self.node(kind, ns, where)
        raise _refuse(where, f"unsupported type {kind!r}")

    def _reference(self, name: str, ns: str, where: str) -> _Node:
        if name in _PRIMITIVES:
            return _Prim(name)
        if name in ("null", "float", "fixed"):
            raise _refuse(where, f"type {name!r} is not supported here")
        full = name if "." in name or not ns else f"{ns}.{name}"
        for candidate in (full, name):
            if candidate in self.open:
                raise _refuse(where, f"recursive type {candidate} is not supported")
            if candidate in self.named:
                return self.named[candidate]
        raise _refuse(where, f"unknown type {name!r}")

    def _logical(self, schema: dict[str, Any], kind: Any, logical: Any, where: str) -> _Node:
        if not isinstance(kind, str) or not isinstance(logical, str):
            raise _refuse(where, f"logical type {logical!r} on {kind!r} is not supported")
        if (kind, logical) in _LOGICAL:
            return _Prim(_LOGICAL[kind, logical])
        if (kind, logical) == ("bytes", "decimal"):
            precision, scale = schema.get("precision"), schema.get("scale", 0)
            if type(precision) is int and type(scale) is int and 0 <= scale <= precision:
                return _Decimal(precision, scale)
            raise _refuse(where, f"decimal with precision {precision!r} and scale {scale!r}")
        raise _refuse(where, f"logical type {logical!r} on {kind!r} is not supported")

    def _union(self, branches: list[Any], ns: str, where: str) -> _Node:
        nulls = [i for i, branch in enumerate(branches) if branch in ("null", {"type": "null"})]
        if len(branches) != 2 or len(nulls) != 1:
            raise _refuse(where, "only unions of null and one other type are supported")
        value = self.node(branches[1 - nulls[0]], ns, where)
        if isinstance(value, _Optional):
            raise _refuse(where, "a union inside a union")
        return _Optional(value, nulls[0])

    def _container(self, kind: type[_Array | _Map], inner: Any, ns: str, where: str) -> _Node:
        node = self.node(inner, ns, where)
        if _min_size(node) == 0:  # the item count check of the decoder relies on at least a byte per item
            raise _refuse(where, "items that take no bytes (records without fields)")
        return kind(node)

    def _fullname(self, schema: dict[str, Any], ns: str, where: str) -> str:
        name = schema.get("name")
        if not isinstance(name, str) or not all(_NAME.match(part) for part in name.split(".")):
            raise _refuse(where, f"invalid name {name!r}")
        namespace = schema.get("namespace", ns)
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def _enum(self, schema: dict[str, Any], ns: str, where: str) -> _Node:
        full = self._fullname(schema, ns, where)
        symbols = schema.get("symbols")
        if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
            raise _refuse(where, f"enum {full} without a list of symbols")
        if len(set(symbols)) != len(symbols):
            raise _refuse(where, f"enum {full} repeats a symbol")
        self.named[full] = node = _Enum(tuple(symbols))
        return node

    def _record(self, schema: dict[str, Any], ns: str, where: str) -> _Node:
        full = self._fullname(schema, ns, where)
        own_ns = full.rpartition(".")[0]
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise _refuse(where, f"record {full} without a list of fields")
        self.open.add(full)
        parsed = []
        for spec in fields:
            name = spec.get("name") if isinstance(spec, dict) else None
            if not isinstance(name, str) or not _NAME.match(name):
                raise _refuse(where, f"record {full} has a field named {name!r}")
            path = f"{where}.{name}" if where else name
            parsed.append((name, self.node(spec.get("type"), own_ns, path)))
        self.open.discard(full)
        if len({name for name, _ in parsed}) != len(parsed):
            raise _refuse(where, f"record {full} repeats a field name")
        self.named[full] = node = _Record(full, tuple(parsed))
        return node


# -- code generation ------------------------------------------------------------------------------


_RUNTIME: dict[str, Any] = {
    "__builtins__": {},
    "len": len,
    "str": str,
    "bytes": bytes,
    "memoryview": memoryview,
    "getattr": getattr,
    "range": range,
    "ENCODE_ERRORS": _ENCODE_ERRORS,
    "DECODE_ERRORS": _DECODE_ERRORS,
    **{name: getattr(_wire, name) for name in _wire.__all__},
}


def _length(name: str) -> str:
    return f"LENGTH[{name}] if {name} < 1024 else enc_length({name})"


class _Source:
    """Lines of Python (each with the field path it works on), fresh local names, constants."""

    def __init__(self, tag: str) -> None:
        self.lines: list[str] = []
        self.paths: list[str] = []
        self.names: dict[str, Any] = {}
        self.count = 0
        self.tag = tag
        self.where = ""

    def var(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: Any) -> str:
        name = self.var(self.tag)
        self.names[name] = value
        return name

    def add(self, depth: int, *lines: str) -> None:
        self.lines.extend("    " * depth + line for line in lines)
        self.paths.extend([self.where] * len(lines))

    def function(self, name: str, label: str) -> Any:
        """The function ``name`` defined by these lines, run once in a namespace of exactly what it uses."""
        namespace = {**_RUNTIME, **self.names, "LABEL": label, "PATHS": tuple(self.paths)}
        code = compile("\n".join(self.lines) + "\n", f"<avro {name} of {label}>", "exec")
        exec(code, namespace)  # noqa: S102 - our own generated source
        return namespace[name]


_Part = tuple[str, str]  # an expression giving bytes, and the field path it encodes


class _Encoder(_Source):
    """Statements that leave a value's bytes in parts: expressions joined at the end."""

    def __init__(self, constants: Mapping[str, str], overridable: str | None) -> None:
        super().__init__("E")
        self.constants = constants
        self.overridable = overridable

    def value(self, node: _Node, v: str, path: str, d: int) -> list[_Part]:
        self.where = path
        if isinstance(node, _Record):
            return self.record(node, v, path, d)
        if isinstance(node, _Optional):
            return self.optional(node, v, path, d)
        if isinstance(node, (_Array, _Map)):
            return self.container(node, v, path, d)
        if isinstance(node, _Enum):
            index = {symbol: _wire.SMALL[i] if i < 64 else _wire.enc_long(i) for i, symbol in enumerate(node.symbols)}
            return [(f"{self.const(index)}[{v}]", path)]
        if isinstance(node, _Decimal):
            return [(f"enc_decimal({v}, {node.precision}, {node.scale})", path)]
        return self.primitive(node.kind, v, path, d)

    def primitive(self, kind: str, v: str, path: str, d: int) -> list[_Part]:
        if kind in ("string", "uuid"):
            s, k = self.var("s"), self.var("k")
            if path in self.constants:  # a value known in advance (the event type): pre-encoded
                text = self.constants[path].encode()
                self.add(d, f"if {v} == {self.constants[path]!r}:", f"    {s} = {_wire.enc_length(len(text)) + text!r}")
                t = self.var("t")
                self.add(d, "else:", f"    {t} = {v}.encode()", f"    {k} = len({t})")
                self.add(d + 1, f"{s} = ({_length(k)}) + {t}")
                return [(s, path)]
            encoded = f"{v}.encode()"
            if kind == "uuid":  # a UUID, or its text (the publisher converts the event id once)
                encoded = f"{v}.encode() if {v}.__class__ is str else uuid_text({v})"
            self.add(d, f"{s} = {encoded}", f"{k} = len({s})")
            return [(_length(k), path), (s, path)]
        if kind == "bytes":
            k = self.var("k")
            self.add(d, f"if {v}.__class__ is not bytes:", f"    {v} = bytes(memoryview({v}))", f"{k} = len({v})")
            return [(_length(k), path), (v, path)]
        if kind in ("int", "long"):
            return [(f"SMALL[{v}] if -64 <= {v} < 64 else enc_{kind}({v})", path)]
        if kind == "timestamp":
            return [(f"enc_timestamp({v})", path)]
        if kind == "double":
            return [(f"pack_double({v})", path)]
        return [(f"b'\\x01' if {v} is True else b'\\x00' if {v} is False else fail_bool({v})", path)]

    def record(self, node: _Record, v: str, path: str, d: int) -> list[_Part]:
        parts: list[_Part] = []
        for name, child in node.fields:
            field_path = f"{path}.{name}" if path else name
            self.where = field_path
            value = self.var("v")
            access = f"getattr({v}, {name!r})" if keyword.iskeyword(name) else f"{v}.{name}"
            if not path and name == self.overridable and isinstance(child, _Record):
                fields = self.var("m")  # overrides replace fields on the wire: read them from a merged dict
                self.add(d, f"{fields} = {access}.__dict__", "if o:", f"    {fields} = {{**{fields}, **o}}")
                for inner, grandchild in child.fields:
                    inner_value = self.var("v")
                    self.where = f"{field_path}.{inner}"
                    self.add(d, f"{inner_value} = {fields}[{inner!r}]")
                    parts += self.value(grandchild, inner_value, self.where, d)
                continue
            self.add(d, f"{value} = {access}")
            parts += self.value(child, value, field_path, d)
        return parts

    def optional(self, node: _Optional, v: str, path: str, d: int) -> list[_Part]:
        x = self.var("x")
        null, value = (b"\x00", b"\x02") if node.null_index == 0 else (b"\x02", b"\x00")
        self.add(d, f"if {v} is None:", f"    {x} = {null!r}", "else:")
        parts = self.value(node.value, v, path, d + 1)
        self.where = path
        self.add(d + 1, f"{x} = b''.join(({value!r},")
        self.join(parts, d + 3)
        self.add(d + 1, "))")
        return [(x, path)]

    def container(self, node: _Array | _Map, v: str, path: str, d: int) -> list[_Part]:
        x, k, out, item = self.var("x"), self.var("k"), self.var("a"), self.var("i")
        self.add(d, f"{k} = len({v})", f"if {k}:", f"    {out} = [{_length(k)}]")
        if isinstance(node, _Array):
            self.add(d + 1, f"for {item} in {v}:")
            parts = self.value(node.items, item, f"{path}[]", d + 2)
        else:
            key = self.var("key")
            self.add(d + 1, f"for {key}, {item} in {v}.items():")
            parts = self.primitive("string", key, f"{path}{{}}", d + 2)
            parts += self.value(node.values, item, f"{path}{{}}", d + 2)
        self.where = path
        self.add(d + 2, f"{out} += (")
        self.join(parts, d + 4)
        self.add(d + 2, ")")
        self.add(d + 1, f"{out}.append(b'\\x00')", f"{x} = b''.join({out})")
        self.add(d, "else:", f"    {x} = b'\\x00'")
        return [(x, path)]

    def join(self, parts: list[_Part], d: int) -> None:
        """One part per line, so that a failure's traceback line names its field."""
        for expression, path in parts:
            self.where = path
            self.add(d, f"{expression},")


class _Decoder(_Source):
    """Statements that read a value at ``p`` in ``b`` (``n`` bytes) and leave it in a local."""

    def value(self, node: _Node, path: str, d: int) -> str:
        self.where = path
        if isinstance(node, _Record):
            values = [(name, self.value(child, f"{path}.{name}" if path else name, d)) for name, child in node.fields]
            return "{" + ", ".join(f"{name!r}: {value}" for name, value in values) + "}"
        if isinstance(node, _Optional):
            return self.optional(node, path, d)
        if isinstance(node, (_Array, _Map)):
            return self.container(node, path, d)
        v = self.var("v")
        if isinstance(node, _Enum):
            table: list[str | None] = [None] * 256
            for i, symbol in enumerate(node.symbols[:64]):
                table[i << 1] = symbol
            self.add(d, "x = b[p]", "p += 1", f"{v} = {self.const(tuple(table))}[x]", f"if {v} is None:")
            self.add(d + 1, f"{v}, p = dec_enum(b, p - 1, {self.const(node.symbols)})")
            return v
        if isinstance(node, _Decimal):
            self.blob(v, "", path, d)
            self.add(d, f"{v} = dec_decimal({v}, {node.precision}, {node.scale})")
            return v
        kind = node.kind
        if kind in ("string", "uuid"):  # a uuid stays text: pydantic parses it faster than UUID() does
            self.blob(v, ".decode()", path, d)
        elif kind == "bytes":
            self.blob(v, "", path, d)
        elif kind in ("int", "long"):
            self.varint(v, f"dec_{kind}(b, p)", d)
        elif kind == "timestamp":
            self.add(d, f"{v}, p = dec_timestamp(b, p)")
        elif kind == "double":
            self.add(d, f"{v} = unpack_double(b, p)[0]", "p += 8")
        else:
            self.add(d, "x = b[p]", "p += 1", "if x > 1:", "    raise bad_bool(x)", f"{v} = x == 1")
        return v

    def varint(self, v: str, slow: str, d: int) -> None:
        self.add(d, "x = b[p]", "if x < 0x80:", "    p += 1", f"    {v} = (x >> 1) ^ -(x & 1)", "else:")
        self.add(d + 1, f"{v}, p = {slow}")

    def blob(self, v: str, conversion: str, path: str, d: int) -> None:
        """Reads a length, then ``v = b[p:q]`` + conversion; p moves to q."""
        # A slice past the end is silently short, and p then lies past n: the final check catches it.
        self.add(d, "x = b[p]", "if not x & 0x81:", "    p += 1", "    q = p + (x >> 1)", "else:")
        self.add(d + 1, "k, p = dec_length(b, p)", "q = p + k")
        self.add(d, f"{v} = b[p:q]{conversion}", "p = q")

    def optional(self, node: _Optional, path: str, d: int) -> str:
        v = self.var("v")
        null, value = (0, 2) if node.null_index == 0 else (2, 0)
        self.add(d, "x = b[p]", "p += 1", f"if x == {null}:", f"    {v} = None", f"elif x == {value}:")
        inner = self.value(node.value, path, d + 1)
        self.where = path
        self.add(d + 1, f"{v} = {inner}")
        self.add(d, "else:", "    raise bad_union(b, p - 1)")
        return v

    def container(self, node: _Array | _Map, path: str, d: int) -> str:
        v, c = self.var("v"), self.var("c")
        self.add(d, f"{v} = {{}}" if isinstance(node, _Map) else f"{v} = []")
        self.varint(c, "dec_long(b, p)", d)
        self.add(d, f"while {c}:", f"    if {c} < 0:", f"        {c} = -{c}", "        k, p = dec_long(b, p)")
        self.add(d + 1, f"if {c} > n - p:", f"    raise bad_count({c}, p, n)", f"for _ in range({c}):")
        if isinstance(node, _Array):
            item = self.value(node.items, f"{path}[]", d + 2)
            self.where = path
            self.add(d + 2, f"{v}.append({item})")
        else:
            key = self.value(_Prim("string"), f"{path}{{}}", d + 2)
            item = self.value(node.values, f"{path}{{}}", d + 2)
            self.where = path
            self.add(d + 2, f"{v}[{key}] = {item}")
        self.varint(c, "dec_long(b, p)", d + 1)
        return v


@dataclass(frozen=True, slots=True)
class CompiledSchema:
    """The generated functions of one schema.

    ``encode(event, overrides)`` returns the complete single-object bytes (prefix and body);
    ``decode(data, position)`` returns the record as a plain dict and the position after it.
    Example: ``compiled.decode(data, 10)[0]["metadata"]["event_type"]``
    """

    name: str
    encode: Callable[[Any, Mapping[str, Any] | None], bytes]
    decode: Callable[[bytes, int], tuple[dict[str, Any], int]]
    source: str = field(repr=False)


def compile_schema(
    schema: Mapping[str, Any],
    *,
    prefix: bytes = b"",
    label: str = "",
    overridable: str | None = "metadata",
    constants: Mapping[str, str] | None = None,
) -> CompiledSchema:
    """Compile a self-contained record schema (plain or fastavro-parsed) to encode and decode functions.

    ``prefix`` goes before every encoded body (the single-object header); ``overridable`` names the
    record field whose values the encoder's ``overrides`` mapping replaces; ``constants`` maps a
    field path (``"metadata.event_type"``) to its usual value, pre-encoded. ``UnsupportedSchemaError``
    for a construct the compiler does not handle.
    Example: ``compile_schema(spec.schema, prefix=MAGIC + spec.fingerprint).encode(event, None)``
    """
    root = _Parser().node(dict(schema), "", "")
    if not isinstance(root, _Record):
        raise UnsupportedSchemaError("the schema is not a record")
    label = label or root.name

    enc = _Encoder(constants or {}, overridable)
    enc.add(0, "def encode(e, o=None):", "    try:")
    parts = enc.record(root, "e", "", 2)
    enc.where = ""
    enc.add(2, f"return b''.join(({prefix!r},")
    enc.join(parts, 4)
    enc.where = ""
    enc.add(2, "))")
    enc.add(1, "except ENCODE_ERRORS as exc:", "    raise encode_failed(LABEL, exc, PATHS) from exc")

    dec = _Decoder("D")
    dec.add(0, "def decode(b, p):", "    n = len(b)", "    try:")
    record = dec.value(root, "", 2)
    dec.where = ""
    dec.add(2, "if p > n:", "    raise truncated(f'{p - n} more bytes needed')", f"return {record}, p")
    dec.add(1, "except DECODE_ERRORS as exc:", "    raise decode_failed(LABEL, exc, PATHS) from exc")

    source = "\n".join([*enc.lines, "", *dec.lines, ""])
    return CompiledSchema(root.name, enc.function("encode", label), dec.function("decode", label), source)
