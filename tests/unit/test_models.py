"""Model behaviour: metadata filling, validation errors, timestamps, money, priority, the catalog's lookups."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from schemas import (
    CATALOG,
    EventMetadata,
    EventValidationError,
    PaymentPriority,
    PaymentProcessed,
    PaymentProcessRequired,
    RecordHeader,
    SessionCreated,
    UnknownEventTypeError,
    UnknownTopicError,
)

PARIS_SUMMER = timezone(timedelta(hours=2))
SESSION: dict[str, Any] = {
    "session_id": "s1",
    "coach_id": "c1",
    "user_id": "u1",
    "scheduled_at": datetime(2030, 5, 1, 9, 30, tzinfo=UTC),
    "session_type": "Mentoría Individual",
    "cost_credits": 3,
}
PAYMENT: dict[str, Any] = {"payment_id": "p1", "session_id": "s1", "user_id": "u1"}


# -- metadata ------------------------------------------------------------------------


def test_metadata_is_filled_when_omitted() -> None:
    before = datetime.now(UTC)
    event = SessionCreated(**SESSION)
    other = SessionCreated(**SESSION)
    assert isinstance(event.metadata.event_id, UUID)
    assert event.metadata.event_id != other.metadata.event_id
    assert event.event_id == event.metadata.event_id
    assert event.metadata.event_type == "session:created"
    assert event.metadata.occurred_at.tzinfo is not None
    assert event.metadata.occurred_at.utcoffset() == timedelta(0)
    assert before <= event.metadata.occurred_at <= datetime.now(UTC)
    assert (event.metadata.service, event.metadata.version, event.metadata.correlation_id) == ("unknown", "0", None)


def test_partial_metadata_dict_is_completed_keeping_what_was_given() -> None:
    event = SessionCreated(**SESSION, metadata={"correlation_id": "req-42", "service": "booking"})
    assert event.metadata.correlation_id == "req-42"
    assert event.metadata.service == "booking"
    assert event.metadata.event_type == "session:created"
    assert isinstance(event.metadata.event_id, UUID)


def test_complete_metadata_is_kept_as_given() -> None:
    meta = EventMetadata.new("session:created", service="booking")
    assert SessionCreated(**SESSION, metadata=meta).metadata == meta
    as_dict = meta.model_dump()
    assert SessionCreated(**SESSION, metadata=as_dict).metadata == meta


@pytest.mark.parametrize(
    "metadata",
    [{"event_type": "session:updated"}, EventMetadata.new("session:updated")],
    ids=["partial-dict", "instance"],
)
def test_metadata_with_another_event_type_is_refused(metadata: Any) -> None:
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("session:created", {**SESSION, "metadata": metadata})
    assert info.value.fields == ["metadata"]
    assert "session:updated" in str(info.value)


def test_with_metadata_returns_a_validated_copy() -> None:
    event = SessionCreated(**SESSION)
    copy = event.with_metadata(correlation_id="req-42", occurred_at=datetime(2030, 1, 1, 12, tzinfo=PARIS_SUMMER))
    assert copy is not event
    assert copy.metadata.correlation_id == "req-42"
    assert copy.metadata.occurred_at == datetime(2030, 1, 1, 10, tzinfo=UTC)
    assert copy.metadata.occurred_at.tzinfo is UTC
    assert copy.metadata.event_id == event.metadata.event_id
    assert event.metadata.correlation_id is None
    assert copy.model_dump(exclude={"metadata"}) == event.model_dump(exclude={"metadata"})
    with pytest.raises(EventValidationError, match=r"metadata\.event_id"):
        event.with_metadata(event_id="not-a-uuid")
    with pytest.raises(EventValidationError, match="timezone"):
        event.with_metadata(occurred_at=datetime(2030, 1, 1))  # noqa: DTZ001 - naive on purpose


def test_with_metadata_refuses_another_event_type() -> None:
    event = SessionCreated(**SESSION)
    with pytest.raises(EventValidationError) as info:
        event.with_metadata(event_type="session:updated")
    assert info.value.fields == ["metadata.event_type"]


def test_models_are_frozen() -> None:
    event = SessionCreated(**SESSION)
    with pytest.raises(ValidationError, match="frozen"):
        event.session_id = "s2"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.metadata.service = "other"  # type: ignore[misc]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("session:created", {**SESSION, "colour": "blue"})
    assert info.value.fields == ["colour"]


# -- validation errors ---------------------------------------------------------------


def test_parse_names_the_invalid_field() -> None:
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("session:created", {**SESSION, "cost_credits": "lots"})
    error = info.value
    assert error.event_type == "session:created"
    assert error.fields == ["cost_credits"]
    assert "cost_credits" in str(error)
    assert str(error).startswith("invalid session:created event: cost_credits:")


def test_parse_lists_every_invalid_field_as_a_dotted_path() -> None:
    data = {
        "notification_id": "",
        "user_id": "u1",
        "notification_type": "carrier-pigeon",
        "custom_template": {"title": "t", "body": "b", "actions": [{"action": "view"}]},
    }
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("notification:requested", data)
    assert sorted(info.value.fields) == ["custom_template.actions.0.title", "notification_id", "notification_type"]
    assert "(and 2 more)" in str(info.value)


def test_parse_refuses_an_int_outside_the_avro_int_range() -> None:
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("session:created", {**SESSION, "cost_credits": 2**31})
    assert info.value.fields == ["cost_credits"]


@pytest.mark.parametrize(
    ("event_type", "field"),
    [
        ("session:created", "cost_credits"),
        ("session:completed", "cost_credits"),
        ("coach:rating_updated", "review_count"),
        ("user:credits_updated", "balance"),
        ("system:error", "attempts"),
    ],
)
def test_parse_refuses_a_negative_count(event_type: str, field: str) -> None:
    model = CATALOG.spec(event_type).model
    assert model.model_fields[field].is_required()
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse(event_type, {field: -1})
    assert field in info.value.fields


# -- timestamps ----------------------------------------------------------------------


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("session:created", {**SESSION, "scheduled_at": datetime(2030, 5, 1, 9, 30)})  # noqa: DTZ001
    assert info.value.fields == ["scheduled_at"]
    with pytest.raises(EventValidationError):
        CATALOG.parse("session:created", {**SESSION, "scheduled_at": "2030-05-01T09:30:00"})


def test_aware_datetimes_are_converted_to_utc() -> None:
    event = SessionCreated(**{**SESSION, "scheduled_at": datetime(2030, 5, 1, 11, 30, tzinfo=PARIS_SUMMER)})
    assert event.scheduled_at == datetime(2030, 5, 1, 9, 30, tzinfo=UTC)
    assert event.scheduled_at.utcoffset() == timedelta(0)
    parsed = CATALOG.parse("session:created", {**SESSION, "scheduled_at": "2030-05-01T11:30:00.000001+02:00"})
    assert isinstance(parsed, SessionCreated)
    assert parsed.scheduled_at == datetime(2030, 5, 1, 9, 30, 0, 1, tzinfo=UTC)


def test_a_timestamp_that_overflows_in_utc_is_a_validation_error() -> None:
    with pytest.raises(EventValidationError):
        CATALOG.parse("session:created", {**SESSION, "scheduled_at": "0001-01-01T00:00:00+05:00"})


# -- money and priority ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "cents"),
    [(5, "5.00"), ("0.1", "0.10"), (0.1, "0.10"), (Decimal("12.5"), "12.50"), ("9999999999.99", "9999999999.99")],
)
def test_money_is_quantized_to_cents(amount: Any, cents: str) -> None:
    event = PaymentProcessed(**PAYMENT, amount=amount, transaction_id="t1")
    assert str(event.amount) == cents
    assert event.amount.as_tuple().exponent == -2


@pytest.mark.parametrize(
    "amount",
    [0.123, "0.001", Decimal("1.005"), "12345678901", "123456789012.5", 0, "-5", "NaN", "Infinity", "five"],
)
def test_money_refuses_amounts_that_are_not_positive_cents_of_twelve_digits(amount: Any) -> None:
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("payment:processed", {**PAYMENT, "amount": amount, "transaction_id": "t1"})
    assert info.value.fields == ["amount"]


@pytest.mark.parametrize(("amount", "priority"), [(1000, "normal"), ("1000.00", "normal"), ("1000.01", "high")])
def test_payment_priority_is_derived_from_the_amount(amount: Any, priority: str) -> None:
    event = PaymentProcessRequired(**PAYMENT, amount=amount)
    assert event.priority is PaymentPriority(priority)
    explicit = PaymentProcessRequired(**PAYMENT, amount=amount, priority=priority)
    assert explicit.priority is event.priority


@pytest.mark.parametrize(("amount", "priority"), [("1000.00", "high"), ("1000.01", "normal")])
def test_an_inconsistent_explicit_priority_is_refused(amount: str, priority: str) -> None:
    with pytest.raises(EventValidationError, match="priority") as info:
        CATALOG.parse("payment:process_required", {**PAYMENT, "amount": amount, "priority": priority})
    assert info.value.fields == ["priority"]


def test_a_nan_amount_for_a_required_payment_is_a_validation_error() -> None:
    with pytest.raises(EventValidationError):
        CATALOG.parse("payment:process_required", {**PAYMENT, "amount": "NaN"})


def test_payment_currency_must_be_three_capitals() -> None:
    assert PaymentProcessed(**PAYMENT, amount=1, transaction_id="t1").currency == "EUR"
    with pytest.raises(EventValidationError) as info:
        CATALOG.parse("payment:processed", {**PAYMENT, "amount": 1, "transaction_id": "t1", "currency": "eur"})
    assert info.value.fields == ["currency"]


# -- catalog lookups -----------------------------------------------------------------


def test_unknown_event_type_lists_the_known_types() -> None:
    with pytest.raises(UnknownEventTypeError) as info:
        CATALOG.spec("nope")
    assert info.value.event_type == "nope"
    assert "session:created" in str(info.value)
    assert "system:error" in str(info.value)
    with pytest.raises(UnknownEventTypeError):
        CATALOG.parse("nope", {})


def test_unknown_topic_is_refused() -> None:
    with pytest.raises(UnknownTopicError) as info:
        CATALOG.check_topic("sesion")
    assert info.value.topic == "sesion"
    assert "session" in str(info.value)
    assert CATALOG.check_topic("session") == "session"


def test_matching_session_star_returns_the_five_session_types() -> None:
    found = {spec.event_type for spec in CATALOG.matching("session:*")}
    assert found == {
        "session:created",
        "session:updated",
        "session:cancelled",
        "session:completed",
        "session:creation_failed",
    }
    assert CATALOG.matching("nothing:*") == []


def test_spec_for_an_event_is_the_spec_of_its_type() -> None:
    event = SessionCreated(**SESSION)
    spec = CATALOG.spec_for(event)
    assert spec is CATALOG.spec("session:created")
    assert spec.key_of(event) == "s1"
    assert "session:created" in CATALOG


# -- JSON ------------------------------------------------------------------------------


def test_system_error_json_round_trip_keeps_bytes_as_base64() -> None:
    model = CATALOG.spec("system:error").model
    now = datetime(2030, 1, 1, tzinfo=UTC)
    event = model.model_validate(
        {
            "consumer_group": "billing",
            "original_topic": "payment",
            "original_partition": 3,
            "original_offset": 2**40,
            "original_key": b"\xff\x00key",
            "original_headers": [RecordHeader(key="trace", value=b"\x00\xfe\xff"), RecordHeader(key="empty")],
            "original_value": b"\xc3\x01\x00\xff",
            "error_type": "ValueError",
            "error_message": "boom",
            "attempts": 3,
            "first_failure_at": now,
            "last_failure_at": now + timedelta(seconds=5),
        }
    )
    text = event.model_dump_json()
    as_json = json.loads(text)
    assert base64.urlsafe_b64decode(as_json["original_value"]) == b"\xc3\x01\x00\xff"
    assert base64.urlsafe_b64decode(as_json["original_key"]) == b"\xff\x00key"
    back = model.model_validate_json(text)
    assert back == event
    assert back.model_dump()["original_value"] == b"\xc3\x01\x00\xff"
    assert back.model_dump()["original_headers"][0]["value"] == b"\x00\xfe\xff"
