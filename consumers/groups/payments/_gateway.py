"""The payment gateway interface and the simulated gateway of the demo and the tests."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

from schemas.errors import EventBusError

__all__ = [
    "ChargeResult",
    "GatewayUnavailableError",
    "PaymentDeclinedError",
    "PaymentGateway",
    "SimulatedGateway",
]


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """A successful charge. Example: ``ChargeResult("txn_1f2e", Decimal("49.90"), "EUR").transaction_id``"""

    transaction_id: str
    amount: Decimal
    currency: str


class PaymentDeclinedError(EventBusError):
    """The gateway refused the charge: a business outcome (``payment:failed``), never retried.

    Example: ``raise PaymentDeclinedError("insufficient funds", code="insufficient_funds")``
    """

    retriable = False

    def __init__(self, message: str, *, code: str = "declined") -> None:
        super().__init__(message, retriable=False)
        self.code = code


class GatewayUnavailableError(EventBusError):
    """The gateway could not be reached or answered an error: retried with backoff, up to a bound.

    Example: ``raise GatewayUnavailableError("gateway timed out")``
    """

    retriable = True

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


@runtime_checkable
class PaymentGateway(Protocol):
    """Charges payments; the same ``idempotency_key`` always gives the same outcome (one charge at most).

    Example: ``result = await gateway.charge("pay-1", Decimal("10.00"), "EUR", idempotency_key="pay-1")``
    """

    async def charge(
        self, payment_id: str, amount: Decimal, currency: str, *, idempotency_key: str
    ) -> ChargeResult:  # pragma: no cover - protocol
        """Charge ``amount``; raise ``PaymentDeclinedError`` (final) or ``GatewayUnavailableError`` (retriable)."""
        ...


_DECLINES = (
    ("card_declined", "the card was declined"),
    ("insufficient_funds", "insufficient funds"),
    ("expired_card", "the card has expired"),
)
_REMEMBERED = 100_000
"""Outcomes kept for idempotent replays (oldest forgotten first), so a long demo run stays bounded."""


class SimulatedGateway:
    """An in-process gateway: ``latency_s`` per call, declines a ``failure_rate`` share of payments.

    Idempotent: a key seen before gets the same result (same transaction id, or the same decline)
    without charging again (remembered by this process only; a real gateway keeps its keys).
    With a ``seed`` the outcome of each key is deterministic (a hash of seed and key, whatever
    the order of calls); ``unavailable_rate`` makes calls fail transiently.

    Example: ``SimulatedGateway(latency_s=0.02, failure_rate=0.1, seed=7)``
    """

    def __init__(
        self,
        latency_s: float = 0.05,
        failure_rate: float = 0.05,
        seed: int | None = None,
        *,
        unavailable_rate: float = 0.0,
    ) -> None:
        for name, rate in (("failure_rate", failure_rate), ("unavailable_rate", unavailable_rate)):
            if not 0.0 <= rate <= 1.0:
                msg = f"{name} must be between 0 and 1, not {rate}"
                raise ValueError(msg)
        if latency_s < 0:
            msg = f"latency_s must not be negative, not {latency_s}"
            raise ValueError(msg)
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.unavailable_rate = unavailable_rate
        self.seed = seed
        self._random = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        self._outcomes: OrderedDict[str, ChargeResult | PaymentDeclinedError] = OrderedDict()
        self.calls = 0
        """Calls of ``charge`` (replays included)."""
        self.charges = 0
        """Distinct idempotency keys charged or declined (what a real gateway would bill)."""

    def _draw(self, key: str, salt: str) -> float:
        if self.seed is None:
            return self._random.random()
        digest = hashlib.sha256(f"{self.seed}/{salt}/{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    async def charge(self, payment_id: str, amount: Decimal, currency: str, *, idempotency_key: str) -> ChargeResult:
        """Charge after ``latency_s``; replays return the first outcome. Example: see the class."""
        self.calls += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        known = self._outcomes.get(idempotency_key)
        if known is None:
            if self.unavailable_rate and self._random.random() < self.unavailable_rate:
                raise GatewayUnavailableError("simulated gateway unavailable (try again)")
            known = self._decide(payment_id, amount, currency, idempotency_key)
            self._outcomes[idempotency_key] = known
            self.charges += 1
            if len(self._outcomes) > _REMEMBERED:
                self._outcomes.popitem(last=False)
        if isinstance(known, PaymentDeclinedError):
            raise PaymentDeclinedError(known.message, code=known.code)
        return known

    def _decide(self, payment_id: str, amount: Decimal, currency: str, key: str) -> ChargeResult | PaymentDeclinedError:
        if amount <= 0:
            return PaymentDeclinedError(f"invalid amount {amount}", code="invalid_amount")
        if self.failure_rate and self._draw(key, "decline") < self.failure_rate:
            code, message = _DECLINES[int(self._draw(key, "reason") * len(_DECLINES))]
            return PaymentDeclinedError(f"payment {payment_id} declined: {message}", code=code)
        if self.seed is None:
            transaction = uuid.uuid4().hex[:20]
        else:
            transaction = hashlib.sha256(f"{self.seed}/txn/{key}".encode()).hexdigest()[:20]
        return ChargeResult(f"txn_{transaction}", amount, currency)
