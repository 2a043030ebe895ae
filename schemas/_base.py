"""The event base class, its metadata and the field types shared by the catalog."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import EventValidationError

__all__ = [
    "AvroInt",
    "AvroLong",
    "CoachStatus",
    "Count",
    "CreditsReason",
    "EntityId",
    "Event",
    "EventMetadata",
    "Money",
    "NotificationType",
    "PaymentPriority",
    "Timestamp",
]

_CENT = Decimal("0.01")


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value  # what astimezone(UTC) returns for it, without the call (decoded timestamps are UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        msg = "timestamp is out of range once converted to UTC"
        raise ValueError(msg) from None


def _to_cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT)


AvroInt = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
"""An Avro ``int``: 32-bit signed."""

Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
"""A non-negative Avro ``int`` (a count, a balance, a cost in credits)."""

AvroLong = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""An Avro ``long``: 64-bit signed."""

Timestamp = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware instant, normalised to UTC (Avro ``timestamp-micros``)."""

Money = Annotated[Decimal, Field(max_digits=12, decimal_places=2, allow_inf_nan=False), AfterValidator(_to_cents)]
"""An amount of money (Avro ``decimal(12, 2)``), never a float."""

EntityId = Annotated[str, Field(min_length=1, max_length=200)]
"""The id of an entity (session, coach, payment, user): non-empty."""


class CoachStatus(StrEnum):
    """Availability of a coach."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    BUSY = "busy"
    AWAY = "away"
    OFFLINE = "offline"


class PaymentPriority(StrEnum):
    """``high`` when the amount is over 1000, otherwise ``normal``."""

    NORMAL = "normal"
    HIGH = "high"


class NotificationType(StrEnum):
    """Notification templates known to the notification service."""

    CUSTOM = "custom"
    SESSION_CONFIRMED = "session_confirmed"
    NEW_SESSION_REQUEST = "new_session_request"
    SESSION_CANCELLED = "session_cancelled"
    PAYMENT_PROCESSED = "payment_processed"
    PAYMENT_FAILED = "payment_failed"
    CREDITS_UPDATED = "credits_updated"


class CreditsReason(StrEnum):
    """Why a user's credit balance changed."""

    ADJUSTMENT = "adjustment"
    GRANT = "grant"
    SESSION_COMPLETED = "session_completed"
    REFUND = "refund"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")


class EventMetadata(_Frozen):
    """Metadata carried by every event (Avro ``coaching.eventbus.EventMetadata``).

    Example: ``EventMetadata.new("session:created").event_id``
    """

    event_id: UUID
    event_type: str
    occurred_at: Timestamp
    correlation_id: str | None = None
    causation_id: UUID | None = None
    service: str = "unknown"
    version: str = "0"

    @classmethod
    def new(cls, event_type: str, **fields: Any) -> EventMetadata:
        """Fresh metadata: a new event id and the current time, other fields as given."""
        return cls(event_id=uuid4(), event_type=event_type, occurred_at=datetime.now(UTC), **fields)


class Event(_Frozen):
    """Base of every event in the catalog.

    Subclasses name their type: ``class SessionCreated(Event, event_type="session:created")``.
    ``metadata`` may be omitted, or given in part: a new event id, the current
    time and the class's event type fill what is missing.

    Example: ``SessionCreated(session_id="s1", ...).metadata.event_id``
    """

    event_type: ClassVar[str] = ""

    metadata: EventMetadata = Field(default_factory=lambda: EventMetadata.new(""))

    def __init_subclass__(cls, *, event_type: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if event_type:
            cls.event_type = event_type

    @model_validator(mode="before")
    @classmethod
    def _fill_metadata(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        meta = data.get("metadata")
        if meta is None:
            return {**data, "metadata": EventMetadata.new(cls.event_type)}
        # Three lookups: half the time of building a set (and of any set comparison) on every validation.
        if isinstance(meta, dict) and ("event_id" not in meta or "event_type" not in meta or "occurred_at" not in meta):
            filled = {"event_id": uuid4(), "event_type": cls.event_type, "occurred_at": datetime.now(UTC)}
            return {**data, "metadata": {**filled, **meta}}
        return data

    @field_validator("metadata")
    @classmethod
    def _check_event_type(cls, value: EventMetadata) -> EventMetadata:
        if value.event_type != cls.event_type:
            msg = f"event_type {value.event_type!r} does not match {cls.event_type!r}"
            raise ValueError(msg)
        return value

    @property
    def event_id(self) -> UUID:
        """Shortcut for ``metadata.event_id``."""
        return self.metadata.event_id

    def with_metadata(self, **fields: Any) -> Self:
        """A copy with some metadata fields replaced (validated).

        Example: ``event.with_metadata(correlation_id="req-42")``
        """
        current = self.metadata.model_dump(include=self.metadata.model_fields_set)
        try:
            meta = EventMetadata.model_validate({**current, **fields})  # unset fields stay unset, for the publisher
        except ValidationError as exc:
            errors = [(".".join(("metadata", *map(str, e["loc"]))), e["msg"]) for e in exc.errors()]
            raise EventValidationError(self.event_type, errors) from exc
        if meta.event_type != self.event_type:
            problem = f"event_type {meta.event_type!r} does not match {self.event_type!r}"
            raise EventValidationError(self.event_type, [("metadata.event_type", problem)])
        return self.model_copy(update={"metadata": meta})
