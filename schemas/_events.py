"""One pydantic model per event type; each matches its ``.avsc`` file exactly.

The field docs live in the Avro schemas (``schemas/avro/events``), which are the
source of truth; ``tests/unit/test_catalog_matches_avro.py`` proves the match.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ._base import (
    AvroInt,
    AvroLong,
    CoachStatus,
    Count,
    CreditsReason,
    EntityId,
    Event,
    Money,
    NotificationType,
    PaymentPriority,
    Timestamp,
)

__all__ = [
    "HIGH_PRIORITY_AMOUNT",
    "CacheCoachDataRefreshed",
    "CoachProfileUpdated",
    "CoachRatingUpdated",
    "CoachStatusChanged",
    "CustomTemplate",
    "NotificationAction",
    "NotificationRequested",
    "NotificationSent",
    "PaymentFailed",
    "PaymentProcessRequired",
    "PaymentProcessed",
    "RecordHeader",
    "SessionCancelled",
    "SessionCompleted",
    "SessionCreated",
    "SessionCreationFailed",
    "SessionUpdated",
    "SystemErrorEvent",
    "UserCreditsUpdated",
]

HIGH_PRIORITY_AMOUNT = Decimal(1000)
"""Payments over this amount are ``high`` priority."""


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")


# -- session ------------------------------------------------------------------


class SessionCreated(Event, event_type="session:created"):
    """A client booked a session with a coach."""

    session_id: EntityId
    coach_id: EntityId
    user_id: EntityId
    scheduled_at: Timestamp
    session_type: str
    cost_credits: Count
    duration_minutes: AvroInt = 60
    coach_name: str | None = None
    client_name: str | None = None


class SessionUpdated(Event, event_type="session:updated"):
    """A booked session was changed."""

    session_id: EntityId
    coach_id: EntityId
    user_id: EntityId
    changed_fields: list[str] = []
    scheduled_at: Timestamp | None = None
    session_type: str | None = None


class SessionCancelled(Event, event_type="session:cancelled"):
    """A booked session was cancelled."""

    session_id: EntityId
    coach_id: EntityId
    user_id: EntityId
    scheduled_at: Timestamp
    cancelled_by: str
    reason: str | None = None


class SessionCompleted(Event, event_type="session:completed"):
    """A session took place; its cost is due in credits."""

    session_id: EntityId
    coach_id: EntityId
    user_id: EntityId
    cost_credits: Count
    completed_at: Timestamp
    duration_minutes: AvroInt | None = None


class SessionCreationFailed(Event, event_type="session:creation_failed"):
    """Booking a session failed."""

    session_id: EntityId
    user_id: EntityId
    coach_id: str | None = None
    scheduled_at: Timestamp | None = None
    session_type: str | None = None
    error: str


# -- coach --------------------------------------------------------------------


class CoachStatusChanged(Event, event_type="coach:status_changed"):
    """A coach's availability changed."""

    coach_id: EntityId
    old_status: CoachStatus
    new_status: CoachStatus


class CoachRatingUpdated(Event, event_type="coach:rating_updated"):
    """A review changed a coach's average rating."""

    coach_id: EntityId
    new_rating: float = Field(ge=0, le=5)
    review_count: Count
    previous_rating: float | None = Field(default=None, ge=0, le=5)
    review_id: str | None = None


class CoachProfileUpdated(Event, event_type="coach:profile_updated"):
    """A coach's public profile changed."""

    coach_id: EntityId
    changed_fields: list[str] = []
    display_name: str | None = None


# -- payment ------------------------------------------------------------------


class PaymentProcessRequired(Event, event_type="payment:process_required"):
    """A payment must be charged. ``priority`` is derived from the amount when omitted."""

    payment_id: EntityId
    session_id: EntityId
    user_id: EntityId
    amount: Money = Field(gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    priority: PaymentPriority = PaymentPriority.NORMAL

    @model_validator(mode="before")
    @classmethod
    def _derive_priority(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("priority") is None and "amount" in data:
            try:
                amount = Decimal(str(data["amount"]))
                high = amount.is_finite() and amount > HIGH_PRIORITY_AMOUNT
            except ArithmeticError:
                return data  # the amount's own validation names the problem
            return {**data, "priority": PaymentPriority.HIGH if high else PaymentPriority.NORMAL}
        return data

    @field_validator("priority")
    @classmethod
    def _check_priority(cls, priority: PaymentPriority, info: ValidationInfo) -> PaymentPriority:
        amount = info.data.get("amount")
        if amount is None:
            return priority  # the amount is invalid and reported on its own
        expected = PaymentPriority.HIGH if amount > HIGH_PRIORITY_AMOUNT else PaymentPriority.NORMAL
        if priority is not expected:
            msg = f"priority must be {expected.value} for an amount of {amount}"
            raise ValueError(msg)
        return priority


class PaymentProcessed(Event, event_type="payment:processed"):
    """A payment was charged."""

    payment_id: EntityId
    session_id: EntityId
    user_id: EntityId
    amount: Money = Field(gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    transaction_id: str


class PaymentFailed(Event, event_type="payment:failed"):
    """Charging a payment failed."""

    payment_id: EntityId
    session_id: EntityId
    user_id: EntityId
    amount: Money = Field(gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    error: str
    error_code: str | None = None


# -- notification -------------------------------------------------------------


class NotificationAction(_Part):
    """A button on a notification (Avro ``NotificationAction``)."""

    action: str
    title: str


class CustomTemplate(_Part):
    """Ready-made content for a ``custom`` notification (Avro ``CustomTemplate``)."""

    title: str
    body: str
    icon: str | None = None
    actions: list[NotificationAction] = []


class NotificationRequested(Event, event_type="notification:requested"):
    """A service asks for a notification to be sent."""

    notification_id: EntityId
    user_id: EntityId
    notification_type: NotificationType
    data: dict[str, str] = {}
    custom_template: CustomTemplate | None = None


class NotificationSent(Event, event_type="notification:sent"):
    """A notification was delivered."""

    notification_id: EntityId
    user_id: EntityId
    notification_type: NotificationType
    channel: str
    title: str
    source_event_id: UUID | None = None


# -- user, cache --------------------------------------------------------------


class UserCreditsUpdated(Event, event_type="user:credits_updated"):
    """A user's credit balance changed."""

    user_id: EntityId
    delta: AvroInt
    balance: Count
    reason: CreditsReason
    session_id: str | None = None


class CacheCoachDataRefreshed(Event, event_type="cache:coach_data_refreshed"):
    """Cached data of a coach was invalidated."""

    coach_id: EntityId
    invalidated_keys: list[str] = []


# -- system -------------------------------------------------------------------


class RecordHeader(_Part):
    """One Kafka record header, byte for byte (Avro ``RecordHeader``)."""

    key: str
    value: bytes | None = None


class SystemErrorEvent(Event, event_type="system:error"):
    """A dead letter: a record a consumer group could not handle, kept byte for byte."""

    consumer_group: EntityId
    original_topic: str
    original_partition: AvroInt
    original_offset: AvroLong
    original_key: bytes | None = None
    original_headers: list[RecordHeader] = []
    original_value: bytes
    original_event_type: str | None = None
    original_event_id: UUID | None = None
    error_type: str
    error_message: str
    error_traceback: str | None = None
    attempts: Count
    first_failure_at: Timestamp
    last_failure_at: Timestamp
