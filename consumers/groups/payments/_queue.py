"""The durable priority work queue of payments (``payments_queue``): enqueue, claim, finish, reclaim.

A row is the work: the handler inserts it, workers claim the most urgent
pending row (priority rank, then arrival), charge, publish the result and
mark the row. SQL runs on PostgreSQL (``FOR UPDATE SKIP LOCKED``: workers of
several processes never claim the same row) and on SQLite (one writer at a
time: the guarded single-statement UPDATE is the claim).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from consumers import Database, Migration

__all__ = [
    "ENQUEUE_SQL",
    "MIGRATIONS",
    "PRIORITY_RANKS",
    "QueuedPayment",
    "claim",
    "enqueue_params",
    "finish",
    "queue_depth",
    "reclaim_expired",
    "release",
    "renew",
]

MIGRATIONS: list[Migration] = [
    Migration(
        40,
        "payments queue",
        [
            "CREATE TABLE IF NOT EXISTS payments_queue ("
            " payment_id VARCHAR(200) PRIMARY KEY,"
            " session_id VARCHAR(200) NOT NULL,"
            " user_id VARCHAR(200) NOT NULL,"
            " amount NUMERIC(12,2) NOT NULL,"
            " currency VARCHAR(3) NOT NULL,"
            " priority_rank INTEGER NOT NULL,"
            " status VARCHAR(16) NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0,"
            " transaction_id VARCHAR(200) NULL,"
            " error TEXT NULL,"
            " error_code VARCHAR(100) NULL,"
            " correlation_id TEXT NULL,"
            " source_event_id VARCHAR(36) NOT NULL,"
            " enqueued_at TIMESTAMP NOT NULL,"
            " updated_at TIMESTAMP NOT NULL)",
            "CREATE INDEX IF NOT EXISTS payments_queue_pending"
            " ON payments_queue (priority_rank, enqueued_at) WHERE status = 'pending'",
            "CREATE INDEX IF NOT EXISTS payments_queue_charging"
            " ON payments_queue (updated_at) WHERE status = 'charging'",
        ],
    )
]
"""Version 40: the queue table and its two partial indexes (pending by urgency, charging by lease age)."""

PRIORITY_RANKS = {"high": 0, "normal": 1}
"""``priority_rank`` of each ``PaymentPriority``: lower is claimed first."""

ENQUEUE_SQL = (
    "INSERT INTO payments_queue (payment_id, session_id, user_id, amount, currency, priority_rank, status,"
    " attempts, correlation_id, source_event_id, enqueued_at, updated_at)"
    " VALUES (:payment_id, :session_id, :user_id, :amount, :currency, :priority_rank, 'pending',"
    " 0, :correlation_id, :source_event_id, :now, :now)"
    " ON CONFLICT (payment_id) DO NOTHING"
)

_CLAIM = (
    "UPDATE payments_queue SET status = 'charging', attempts = attempts + 1, updated_at = :now"
    " WHERE status = 'pending' AND payment_id = ("
    "SELECT payment_id FROM payments_queue WHERE status = 'pending' ORDER BY priority_rank, enqueued_at LIMIT 1"
    "{lock}) RETURNING payment_id, session_id, user_id, amount, currency, priority_rank, attempts,"
    " correlation_id, source_event_id"
)
_CLAIM_SQL = {
    "postgresql": _CLAIM.format(lock=" FOR UPDATE SKIP LOCKED"),  # concurrent workers skip each other's row
    "sqlite": _CLAIM.format(lock=""),  # one writer at a time: the guarded UPDATE is atomic
}
_CENTS = Decimal("0.01")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class QueuedPayment:
    """A claimed row: what the worker charges and reports."""

    payment_id: str
    session_id: str
    user_id: str
    amount: Decimal
    currency: str
    priority_rank: int
    attempts: int
    correlation_id: str | None
    source_event_id: str

    @classmethod
    def from_row(cls, row: Any) -> QueuedPayment:
        """From a ``RETURNING`` row (SQLite gives the amount back as a number: it is re-quantized)."""
        return cls(
            payment_id=row.payment_id,
            session_id=row.session_id,
            user_id=row.user_id,
            amount=Decimal(str(row.amount)).quantize(_CENTS),
            currency=row.currency,
            priority_rank=int(row.priority_rank),
            attempts=int(row.attempts),
            correlation_id=row.correlation_id,
            source_event_id=row.source_event_id,
        )


def enqueue_params(database: Database, **fields: Any) -> dict[str, Any]:
    """Parameters of ``ENQUEUE_SQL``: the amount as the driver takes it, the time of now.

    Example: ``enqueue_params(db, payment_id="p1", ..., amount=Decimal("10.00"), priority_rank=1)``
    """
    amount: Decimal = fields["amount"]
    # sqlite3 cannot bind Decimal; the NUMERIC column takes the exact text
    return {**fields, "amount": amount if database.dialect == "postgresql" else str(amount), "now": _now()}


async def claim(database: Database) -> QueuedPayment | None:
    """Take the most urgent pending payment (status → charging), or None when there is none.

    Example: ``job = await claim(db)``
    """
    async with database.begin() as conn:
        row = (await conn.execute(text(_CLAIM_SQL[database.dialect]), {"now": _now()})).first()
    return None if row is None else QueuedPayment.from_row(row)


async def renew(database: Database, payment_id: str) -> bool:
    """Count one more gateway attempt and extend the lease; False when the row is no longer charging."""
    async with database.begin() as conn:
        result = await conn.execute(
            text(
                "UPDATE payments_queue SET attempts = attempts + 1, updated_at = :now"
                " WHERE payment_id = :id AND status = 'charging'"
            ),
            {"id": payment_id, "now": _now()},
        )
    return bool(result.rowcount)


async def finish(
    database: Database,
    payment_id: str,
    *,
    transaction_id: str | None = None,
    error: str | None = None,
    error_code: str | None = None,
) -> bool:
    """Mark a charging row processed (with ``transaction_id``) or failed (with ``error``).

    Example: ``await finish(db, "p1", transaction_id="txn_1")``
    """
    status = "processed" if error is None else "failed"
    async with database.begin() as conn:
        result = await conn.execute(
            text(
                "UPDATE payments_queue SET status = :status, transaction_id = :txn, error = :error,"
                " error_code = :code, updated_at = :now WHERE payment_id = :id AND status = 'charging'"
            ),
            {
                "status": status,
                "txn": transaction_id,
                "error": error,
                "code": error_code,
                "id": payment_id,
                "now": _now(),
            },
        )
    return bool(result.rowcount)


async def release(database: Database, payment_id: str) -> None:
    """Give a charging row back (status → pending); it keeps its place in the queue."""
    async with database.begin() as conn:
        await conn.execute(
            text(
                "UPDATE payments_queue SET status = 'pending', updated_at = :now"
                " WHERE payment_id = :id AND status = 'charging'"
            ),
            {"id": payment_id, "now": _now()},
        )


async def reclaim_expired(database: Database, lease_s: float) -> int:
    """Put rows charging for longer than ``lease_s`` (their worker died) back to pending; how many.

    Example: ``await reclaim_expired(db, 60.0)``
    """
    now = _now()
    async with database.begin() as conn:
        result = await conn.execute(
            text(
                "UPDATE payments_queue SET status = 'pending', updated_at = :now"
                " WHERE status = 'charging' AND updated_at < :cutoff"
            ),
            {"now": now, "cutoff": now - timedelta(seconds=lease_s)},
        )
    return int(result.rowcount)


async def queue_depth(database: Database, *, payment_prefix: str = "") -> dict[str, int]:
    """Rows by state: ``pending_high``, ``pending_normal``, ``charging``, ``processed``, ``failed``.

    Only payments whose id starts with ``payment_prefix`` when it is given.
    Example: ``(await queue_depth(db))["pending_high"]``
    """
    depth = dict.fromkeys(("pending_high", "pending_normal", "charging", "processed", "failed"), 0)
    like = payment_prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
    async with database.begin() as conn:
        rows = await conn.execute(
            text(
                "SELECT status, priority_rank, COUNT(*) AS n FROM payments_queue"
                " WHERE payment_id LIKE :like ESCAPE '!' GROUP BY status, priority_rank"
            ),
            {"like": like},
        )
        for status, rank, count in rows:
            key = (f"pending_{'high' if rank == 0 else 'normal'}") if status == "pending" else status
            depth[key] = depth.get(key, 0) + int(count)
    return depth
