"""``eventbus schemas``: the event catalog (list, show, example), and the helpers every CLI module shares."""

from __future__ import annotations

import base64
import json
import types
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin
from uuid import NAMESPACE_URL, UUID, uuid5

import click
from pydantic import AwareDatetime, BaseModel, FutureDatetime, NaiveDatetime, PastDatetime
from pydantic.fields import FieldInfo
from rich.table import Table

from schemas import CATALOG, EventSpec
from schemas.errors import EventValidationError

from ._cli_common import cli_errors, console, echo_json, spec_or_exit
from ._settings import load_settings

__all__ = ["example_payload", "schemas"]

# -- example payloads ---------------------------------------------------------------------------

_ID_NUMBER = 1042
_BASE_TIME = "2025-06-02T14:00:00Z"
_TIMES = {"completed_at": "2025-06-02T15:00:00Z", "last_failure_at": "2025-06-02T14:00:30Z"}
_STRINGS = {
    "session_type": "video-call",
    "cancelled_by": "user",
    "reason": "schedule conflict",
    "error": "card declined by the issuer",
    "error_code": "card_declined",
    "channel": "push",
    "title": "Session confirmed",
    "body": "Your session with Alex Morgan starts at 14:00 UTC.",
    "icon": "https://cdn.example.com/icons/session.png",
    "action": "open_session",
    "consumer_group": "notifications",
    "original_topic": "session",
    "original_event_type": "session:created",
    "error_type": "CorruptMessageError",
    "error_message": "cannot read session:created body",
    "error_traceback": "Traceback (most recent call last):\n  ...\nCorruptMessageError: cannot read body",
    "key": "event-type",
    "invalidated_key": "coach:coach-1042:profile",
    "client_name": "Jordan Lee",
}
_NUMBERS: dict[str, int | float] = {
    "minutes": 60,
    "credits": 10,
    "balance": 120,
    "delta": 10,
    "count": 12,
    "attempts": 3,
    "partition": 2,
    "offset": 1042,
    "rating": 4.5,
}
_BYTES = {"original_key": b"session-1042", "value": b"session:created"}
_DATETIME_TYPES: tuple[Any, ...] = (AwareDatetime, NaiveDatetime, PastDatetime, FutureDatetime)


def _clamp(value: float, constraints: list[Any]) -> float:
    """``value`` moved inside the ``ge``/``gt``/``le``/``lt`` bounds among ``constraints``."""
    for item in constraints:
        bounds: dict[str, Any] = {attr: getattr(item, attr, None) for attr in ("ge", "gt", "le", "lt")}
        if bounds["ge"] is not None and value < bounds["ge"]:
            value = float(bounds["ge"])
        if bounds["gt"] is not None and value <= bounds["gt"]:
            value = float(bounds["gt"]) + 1
        if bounds["le"] is not None and value > bounds["le"]:
            value = float(bounds["le"])
        if bounds["lt"] is not None and value >= bounds["lt"]:
            value = float(bounds["lt"]) - 1
    return value


def _number(name: str, constraints: list[Any]) -> float:
    base = next((value for word, value in _NUMBERS.items() if word in name), 1)
    if name.startswith(("old_", "previous_")):
        base = base * 0.9 if isinstance(base, float) else base
    return _clamp(float(base), constraints)


def _string(name: str) -> str:
    if name in _STRINGS:
        return _STRINGS[name]
    if name.endswith("_id"):
        return f"{name.removesuffix('_id').removeprefix('original_')}-{_ID_NUMBER}"
    if name.endswith("name"):
        return "Alex Morgan"
    return f"example-{name.replace('_', '-')}"


def _enum(name: str, kind: type[Enum]) -> Any:
    members = list(kind)
    chosen = members[1] if name.startswith("new_") and len(members) > 1 else members[0]
    return chosen.value


def _model(model: type[BaseModel]) -> dict[str, Any]:
    """Example data for every field of ``model`` except ``metadata``, which the event fills itself."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name == "metadata":
            continue
        if name.endswith("_fields"):  # names of other fields of the same model: pick an optional one
            others = [other for other, i in model.model_fields.items() if not i.is_required()]
            out[name] = [other for other in others if other not in ("metadata", name)][:1]
        else:
            out[name] = _example(name, info.annotation, list(info.metadata), info)
    return out


def _example(name: str, annotation: Any, constraints: list[Any], info: FieldInfo | None = None) -> Any:
    """Example JSON data for one field, from its type (realistic values picked by field name)."""
    default = info.get_default(call_default_factory=True) if info is not None and not info.is_required() else None
    if isinstance(default, (str, int, float)) and not isinstance(default, bool):
        return default.value if isinstance(default, Enum) else default
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        for item in extra:
            constraints += item.metadata if isinstance(item, FieldInfo) else [item]
        return _example(name, base, constraints)
    if origin in (Union, types.UnionType):
        branches = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _example(name, branches[0], constraints)
    if origin is list:
        return [_example(name.removesuffix("s"), get_args(annotation)[0], [])]
    if origin is dict:
        return {"session_id": _example("session_id", get_args(annotation)[1], [])}
    if annotation in _DATETIME_TYPES or (isinstance(annotation, type) and issubclass(annotation, datetime)):
        return _TIMES.get(name, _BASE_TIME)
    if not isinstance(annotation, type):
        raise TypeError(f"no example for field {name!r} of type {annotation!r}")
    return _scalar(name, annotation, constraints)


def _scalar(name: str, kind: type, constraints: list[Any]) -> Any:
    if issubclass(kind, BaseModel):
        return _model(kind)
    if issubclass(kind, Enum):
        return _enum(name, kind)
    if issubclass(kind, bool):
        return True
    if issubclass(kind, int):
        return int(_number(name, constraints))
    if issubclass(kind, float):
        return round(_number(name, constraints), 2)
    if issubclass(kind, Decimal):
        return str(Decimal(str(_clamp(49.90, constraints))).quantize(Decimal("0.01")))
    if issubclass(kind, UUID):
        return str(uuid5(NAMESPACE_URL, f"https://example.com/eventbus/{name}"))
    if issubclass(kind, bytes):
        raw = _BYTES.get(name, b"\xc3\x01" + bytes(8) + b"\x18session-1042")
        return base64.b64encode(raw).decode("ascii")
    if issubclass(kind, str):
        return _string(name)
    raise TypeError(f"no example for field {name!r} of type {kind!r}")


def example_payload(spec: EventSpec) -> dict[str, Any]:
    """A valid JSON payload for ``spec`` without metadata, derived from its model's fields.

    Optional fields whose generated value the model refuses are left out.
    Example: ``CATALOG.parse(spec.event_type, example_payload(spec))``
    """
    payload = _model(spec.model)
    for _ in range(len(payload) + 1):
        try:
            CATALOG.parse(spec.event_type, payload)
        except EventValidationError as exc:
            fields = spec.model.model_fields
            refused = {path.split(".")[0] for path in exc.fields} & payload.keys()
            optional = {name for name in refused if not fields[name].is_required()}
            if not optional:
                raise
            payload = {key: value for key, value in payload.items() if key not in optional}
        else:
            return payload
    raise AssertionError("unreachable")  # pragma: no cover


# -- commands ---------------------------------------------------------------------------------


@click.group()
def schemas() -> None:
    """The event catalog: types, topics, keys and Avro writer schemas."""


@schemas.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_schemas(as_json: bool) -> None:
    """One row per event type: topic (with the configured prefix), key field and schema fingerprint."""
    with cli_errors():
        # The prefix alone: building the Kafka connection would import the Kafka client for nothing.
        prefix = load_settings().topic_prefix
    rows = [
        {
            "event_type": spec.event_type,
            "topic": f"{prefix}{spec.topic}",
            "key_field": spec.key_field,
            "fingerprint": spec.fingerprint.hex(),
        }
        for spec in CATALOG
    ]
    if as_json:
        echo_json(rows)
        return
    table = Table("event type", "topic", "key field", "fingerprint", title=f"{len(rows)} event types")
    for row in rows:
        table.add_row(row["event_type"], row["topic"], row["key_field"], row["fingerprint"])
    console().print(table)


@schemas.command("show")
@click.argument("event_type")
def show_schema(event_type: str) -> None:
    """Print the self-contained Avro writer schema of EVENT_TYPE (exactly the fingerprinted one)."""
    spec = spec_or_exit(event_type)
    click.echo(json.dumps(spec.schema, indent=2))


@schemas.command("example")
@click.argument("event_type")
def example_schema(event_type: str) -> None:
    """Print a valid JSON payload for EVENT_TYPE (metadata omitted), ready for `eventbus publish`."""
    spec = spec_or_exit(event_type)
    echo_json(example_payload(spec), indent=2)
