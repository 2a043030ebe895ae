"""Hypothesis strategies derived from the event models: valid instances of every catalog model.

Not collected by pytest (no ``test_`` prefix); the codec test modules share them.
"""

from __future__ import annotations

import re
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

import annotated_types
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel

from schemas import HIGH_PRIORITY_AMOUNT, Event, EventMetadata, PaymentPriority, PaymentProcessRequired
from tests.harness import unwrap_annotated

__all__ = ["AWARE", "MONEY", "model_strategy", "strategy_for"]

_OFFSETS = st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
AWARE = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by contract
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC) | _OFFSETS,
)
MONEY = st.sampled_from([Decimal("0.01"), Decimal("1000.00"), Decimal("1000.01"), Decimal("9999999999.99")]) | (
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999999.99"), places=2)
)


def _bound(metadata: list[Any], kind: type, attr: str, pick: Any) -> Any:
    values = [getattr(m, attr) for m in metadata if isinstance(m, kind)]
    return pick(values) if values else None


def strategy_for(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """Values valid for one annotated field; the tightest bound of each kind wins."""
    annotation, metadata = unwrap_annotated(annotation, metadata)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (branch,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return st.none() | strategy_for(branch, metadata)
    if origin is list:
        return st.lists(strategy_for(typing.get_args(annotation)[0], []), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_strategy(annotation)
    if annotation is AwareDatetime:
        return AWARE
    if annotation is Decimal:
        return MONEY
    if annotation is UUID:
        return st.uuids()
    if annotation is bytes:
        return st.binary(max_size=16)
    if annotation is int:
        low = _bound(metadata, annotated_types.Ge, "ge", max)
        return st.integers(min_value=low, max_value=_bound(metadata, annotated_types.Le, "le", min))
    if annotation is float:
        low, high = _bound(metadata, annotated_types.Ge, "ge", max), _bound(metadata, annotated_types.Le, "le", min)
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    assert annotation is str, annotation
    pattern = next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)
    if pattern:
        return st.from_regex(re.compile(pattern), fullmatch=True)
    low = _bound(metadata, annotated_types.MinLen, "min_length", max) or 0
    return st.text(min_size=low, max_size=min(_bound(metadata, annotated_types.MaxLen, "max_length", min) or 20, 20))


def model_strategy(model: type[BaseModel], **fixed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid instances of a model, every field given (``fixed`` overrides some fields' strategies)."""
    fields = {name: strategy_for(info.annotation, list(info.metadata)) for name, info in model.model_fields.items()}
    fields.update(fixed)
    if issubclass(model, Event):
        fields["metadata"] = model_strategy(EventMetadata, event_type=st.just(model.event_type))
    if model is PaymentProcessRequired:
        fields.pop("priority")
        return st.fixed_dictionaries(fields).map(
            lambda kw: model(
                **kw, priority=PaymentPriority.HIGH if kw["amount"] > HIGH_PRIORITY_AMOUNT else PaymentPriority.NORMAL
            )
        )
    return st.fixed_dictionaries(fields).map(lambda kw: model(**kw))
