"""One valid example event per catalog type, for tests: ``example_event("session:created", cost_credits=5)``."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from schemas import CATALOG, Event

__all__ = ["KEY_FIELDS", "example_event"]

_AT = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)
_LATER = datetime(2024, 5, 17, 10, 30, 0, 654321, tzinfo=UTC)

_SESSION = {"session_id": "session-1", "coach_id": "coach-1", "user_id": "user-1"}
_PAYMENT = {"payment_id": "payment-1", "session_id": "session-1", "user_id": "user-1", "amount": Decimal("49.90")}

_EXAMPLES: dict[str, dict[str, Any]] = {
    "session:created": {
        **_SESSION,
        "scheduled_at": _AT,
        "session_type": "video",
        "cost_credits": 3,
        "duration_minutes": 45,
        "coach_name": "Ada",
        "client_name": "Grace",
    },
    "session:updated": {**_SESSION, "changed_fields": ["scheduled_at"], "scheduled_at": _LATER},
    "session:cancelled": {**_SESSION, "scheduled_at": _AT, "cancelled_by": "user", "reason": "ill"},
    "session:completed": {**_SESSION, "cost_credits": 3, "completed_at": _LATER, "duration_minutes": 50},
    "session:creation_failed": {
        "session_id": "session-1",
        "user_id": "user-1",
        "coach_id": "coach-1",
        "error": "coach is busy",
    },
    "coach:status_changed": {"coach_id": "coach-1", "old_status": "offline", "new_status": "online"},
    "coach:rating_updated": {
        "coach_id": "coach-1",
        "new_rating": 4.7,
        "review_count": 12,
        "previous_rating": 4.5,
        "review_id": "review-1",
    },
    "coach:profile_updated": {"coach_id": "coach-1", "changed_fields": ["bio"], "display_name": "Ada L."},
    "payment:process_required": {**_PAYMENT, "currency": "EUR"},
    "payment:processed": {**_PAYMENT, "transaction_id": "tx-1"},
    "payment:failed": {**_PAYMENT, "error": "card declined", "error_code": "declined"},
    "notification:requested": {
        "notification_id": "notification-1",
        "user_id": "user-1",
        "notification_type": "custom",
        "data": {"session_id": "session-1"},
        "custom_template": {
            "title": "Hello",
            "body": "Your session starts soon",
            "actions": [{"action": "open", "title": "Open"}],
        },
    },
    "notification:sent": {
        "notification_id": "notification-1",
        "user_id": "user-1",
        "notification_type": "session_confirmed",
        "channel": "push",
        "title": "Session confirmed",
        "source_event_id": UUID("0b6f4f57-2c4b-4b57-9b1f-3c0c8a3c2d11"),
    },
    "user:credits_updated": {
        "user_id": "user-1",
        "delta": -3,
        "balance": 7,
        "reason": "session_completed",
        "session_id": "session-1",
    },
    "cache:coach_data_refreshed": {"coach_id": "coach-1", "invalidated_keys": ["coach:coach-1:profile"]},
    "system:error": {
        "consumer_group": "billing-workers",
        "original_topic": "session",
        "original_partition": 2,
        "original_offset": 41,
        "original_key": b"session-1",
        "original_headers": [{"key": "event-type", "value": b"session:completed"}, {"key": "empty"}],
        "original_value": b"\xc3\x01not-really-avro",
        "original_event_type": "session:completed",
        "original_event_id": UUID("6c1f2a55-7d0e-4a3b-8f5e-2b9c1d0e4f77"),
        "error_type": "ValueError",
        "error_message": "boom",
        "error_traceback": "Traceback ...",
        "attempts": 3,
        "first_failure_at": _AT,
        "last_failure_at": _LATER,
    },
}

KEY_FIELDS: dict[str, str] = {spec.event_type: spec.key_field for spec in CATALOG}
"""The field whose value is the record key, per event type."""

assert set(_EXAMPLES) == set(CATALOG.event_types), "one example per catalog type"


def example_event(event_type: str, **overrides: Any) -> Event:
    """A valid event of ``event_type``; ``overrides`` replace example fields (``metadata`` too).

    Example: ``example_event("payment:processed", payment_id="p-9")``
    """
    return CATALOG.parse(event_type, {**_EXAMPLES[event_type], **overrides})
