"""The event catalog: every event type with its model, topic, key field and writer schema."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from . import _events
from ._base import Event
from ._schema_files import Schema, fingerprint, inline_named_types, load_event_schemas, load_named_types, parse
from .errors import EventValidationError, UnknownEventTypeError, UnknownTopicError

__all__ = ["CATALOG", "Catalog", "EventSpec", "validation_error"]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type of the catalog.

    ``schema`` is the self-contained writer schema (named types inlined): exactly
    the schema whose ``fingerprint`` goes on the wire.
    Example: ``CATALOG.spec("session:created").topic == "session"``
    """

    event_type: str
    model: type[Event]
    topic: str
    key_field: str
    schema: Schema = field(repr=False)
    fingerprint: bytes
    parsed: Any = field(repr=False, compare=False)
    flat: bool = field(default=False, repr=False, compare=False)
    """No nested models besides metadata: the Avro record can be built from ``__dict__`` directly."""

    @classmethod
    def build(cls, model: type[Event], schema: Schema, named: Mapping[str, Schema] | None = None) -> EventSpec:
        """Bind a model to its Avro schema (as written in its file)."""
        full = inline_named_types(schema, load_named_types() if named is None else named)
        event_type = str(full.get("eventbus.event_type", model.event_type))
        if event_type != model.event_type:
            msg = f"schema {full['name']} is for {event_type}, model {model.__name__} for {model.event_type}"
            raise ValueError(msg)
        return cls(
            event_type=event_type,
            model=model,
            topic=str(full["eventbus.topic"]),
            key_field=str(full["eventbus.key"]),
            schema=full,
            fingerprint=fingerprint(full),
            parsed=parse(full),
            flat=_is_flat(model),
        )

    def key_of(self, event: Event) -> str:
        """The record key of ``event``: its entity id."""
        return str(getattr(event, self.key_field))


def _mentions_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_mentions_model(arg) for arg in get_args(annotation))


def _is_flat(model: type[Event]) -> bool:
    return not any(_mentions_model(info.annotation) for name, info in model.model_fields.items() if name != "metadata")


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(event)"


def validation_error(event_type: str, exc: ValidationError) -> EventValidationError:
    """Our typed error for a pydantic one, naming each invalid field."""
    return EventValidationError(event_type, [(_path(err["loc"]), err["msg"]) for err in exc.errors()])


class Catalog:
    """Event types by name and by model; the only place that knows topics and keys.

    Example: ``CATALOG.parse("session:created", {...})``
    """

    def __init__(self, specs: Iterable[EventSpec]) -> None:
        self._by_type: dict[str, EventSpec] = {}
        self._by_model: dict[type[Event], EventSpec] = {}
        for spec in specs:
            if spec.event_type in self._by_type:
                msg = f"event type {spec.event_type} defined twice"
                raise ValueError(msg)
            self._by_type[spec.event_type] = spec
            self._by_model[spec.model] = spec
        self._topics = tuple(dict.fromkeys(spec.topic for spec in self._by_type.values()))

    def __iter__(self) -> Iterator[EventSpec]:
        return iter(self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._by_type

    @property
    def event_types(self) -> tuple[str, ...]:
        """All event types, in catalog order."""
        return tuple(self._by_type)

    @property
    def topics(self) -> tuple[str, ...]:
        """The entity topics (without any prefix), in catalog order."""
        return self._topics

    def spec(self, event_type: str) -> EventSpec:
        """The spec of an event type; ``UnknownEventTypeError`` for a type not in the catalog."""
        try:
            return self._by_type[event_type]
        except KeyError:
            raise UnknownEventTypeError(event_type, sorted(self._by_type)) from None

    def spec_for(self, event: Event) -> EventSpec:
        """The spec of an event instance; refuses models that are not in the catalog."""
        spec = self._by_model.get(type(event))
        if spec is None:
            raise UnknownEventTypeError(getattr(event, "event_type", type(event).__name__), sorted(self._by_type))
        return spec

    def check_topic(self, topic: str) -> str:
        """``topic`` if it is an entity topic; ``UnknownTopicError`` otherwise."""
        if topic not in self._topics:
            raise UnknownTopicError(topic, list(self._topics))
        return topic

    def matching(self, pattern: str) -> list[EventSpec]:
        """Specs whose type matches a glob such as ``session:*``."""
        return [spec for spec in self if fnmatch.fnmatchcase(spec.event_type, pattern)]

    def parse(self, event_type: str, data: Mapping[str, Any]) -> Event:
        """Validate plain data (for example decoded JSON) into the event's model.

        ``EventValidationError`` names the invalid fields.
        """
        spec = self.spec(event_type)
        try:
            return spec.model.model_validate(dict(data))
        except ValidationError as exc:
            raise validation_error(event_type, exc) from exc


_TOPIC_ORDER = ("session", "coach", "payment", "notification", "user", "cache", "system")


def _default_catalog() -> Catalog:
    models = {model.event_type: model for model in _event_models()}
    named = load_named_types()
    specs = []
    for schema in load_event_schemas():
        event_type = str(schema["eventbus.event_type"])
        specs.append(EventSpec.build(models.pop(event_type), schema, named))
    if models:
        msg = f"models without a schema: {sorted(models)}"
        raise RuntimeError(msg)
    specs.sort(key=lambda spec: _TOPIC_ORDER.index(spec.topic))
    return Catalog(specs)


def _event_models() -> list[type[Event]]:
    found = (getattr(_events, name) for name in _events.__all__)
    return [obj for obj in found if isinstance(obj, type) and issubclass(obj, Event)]


CATALOG = _default_catalog()
"""The catalog of this package's event types."""
