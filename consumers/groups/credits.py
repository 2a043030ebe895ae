"""The ``credits`` group: user credit balances, deducted once per completed session.

Tables (migration versions 10-19):

- ``credits_balances(user_id PK, balance >= 0, updated_at)``: the current balance of each user;
- ``credits_ledger(entry_id PK, user_id, delta, balance_after, reason, session_id, created_at)``:
  one row per balance change, keyed by the id of what caused it (the ``session:completed``
  event id, or the grant id), so each cause changes the balance at most once.

On ``session:completed`` the group deducts ``cost_credits`` from the user in one transaction
with the processed-events record (invariant 4): the balance row is locked (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite serializes writers), an insufficient balance raises
``InsufficientCreditsError`` (dead-lettered: replay it after a grant), and the balance never
goes negative (also a ``CHECK`` constraint). Then, also on a redelivery, it publishes
``user:credits_updated`` with the balance read from the ledger row of that event, so the
follow-up is the same event every time (invariant 5).

Example::

    group = build(resources)            # eventbus run credits
    await grant_credits(database, publisher, "user-1", 50)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumers import ConsumerGroup, Database, HandlerContext, Migration, Patience, Resources, RetryPolicy, follow_up_id
from producers import EventPublisher
from schemas import CreditsReason, SessionCompleted, UserCreditsUpdated
from schemas.errors import EventValidationError, FatalHandlerError

__all__ = [
    "GROUP_NAME",
    "MAX_BALANCE",
    "MIGRATIONS",
    "InsufficientCreditsError",
    "LedgerEntry",
    "build",
    "get_balance",
    "grant_credits",
    "grant_event_id",
    "ledger",
]

GROUP_NAME = "credits"

MAX_BALANCE = 2**31 - 1
"""The largest balance an event can carry (an Avro ``int``)."""

MIGRATIONS: list[Migration] = [
    Migration(
        10,
        "credits balances and ledger",
        [
            "CREATE TABLE IF NOT EXISTS credits_balances ("
            " user_id VARCHAR(200) PRIMARY KEY,"
            " balance INTEGER NOT NULL CHECK (balance >= 0),"
            " updated_at TIMESTAMP NOT NULL)",
            "CREATE TABLE IF NOT EXISTS credits_ledger ("
            " entry_id VARCHAR(36) PRIMARY KEY,"
            " user_id VARCHAR(200) NOT NULL,"
            " delta INTEGER NOT NULL,"
            " balance_after INTEGER NOT NULL CHECK (balance_after >= 0),"
            " reason VARCHAR(40) NOT NULL,"
            " session_id VARCHAR(200) NULL,"
            " created_at TIMESTAMP NOT NULL)",
            "CREATE INDEX IF NOT EXISTS credits_ledger_user ON credits_ledger (user_id, created_at)",
        ],
    )
]
"""The group's tables (versions 10-19 are reserved for it)."""

_ENSURE_ROW = text(
    "INSERT INTO credits_balances (user_id, balance, updated_at) VALUES (:user_id, 0, :now)"
    " ON CONFLICT (user_id) DO NOTHING"
).bindparams(bindparam("now", type_=DateTime()))
_READ_BALANCE = text("SELECT balance FROM credits_balances WHERE user_id = :user_id")
_LOCK_BALANCE = text("SELECT balance FROM credits_balances WHERE user_id = :user_id FOR UPDATE")
_UPDATE_BALANCE = text(
    "UPDATE credits_balances SET balance = :balance, updated_at = :now WHERE user_id = :user_id"
).bindparams(bindparam("now", type_=DateTime()))
_INSERT_ENTRY = text(
    "INSERT INTO credits_ledger (entry_id, user_id, delta, balance_after, reason, session_id, created_at)"
    " VALUES (:entry_id, :user_id, :delta, :balance_after, :reason, :session_id, :now)"
).bindparams(bindparam("now", type_=DateTime()))
_ENTRY_COLUMNS = "entry_id, user_id, delta, balance_after, reason, session_id, created_at"
_READ_ENTRY = text(f"SELECT {_ENTRY_COLUMNS} FROM credits_ledger WHERE entry_id = :entry_id").columns(  # noqa: S608
    created_at=DateTime()
)
_READ_LEDGER = text(
    f"SELECT {_ENTRY_COLUMNS} FROM credits_ledger WHERE user_id = :user_id ORDER BY created_at, entry_id"  # noqa: S608
).columns(created_at=DateTime())


class InsufficientCreditsError(FatalHandlerError):
    """The user's balance does not cover the session's cost; the completion is dead-lettered.

    Example: ``InsufficientCreditsError("user-1", balance=2, cost=5)``
    """

    def __init__(self, user_id: str, *, balance: int, cost: int) -> None:
        self.user_id = user_id
        self.balance = balance
        self.cost = cost
        super().__init__(
            f"insufficient credits: user {user_id!r} has a balance of {balance} credits, the session costs {cost}"
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One balance change. ``entry_id`` is the event id (deductions) or grant id (grants) that caused it."""

    entry_id: str
    user_id: str
    delta: int
    balance_after: int
    reason: CreditsReason
    session_id: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "entry_id": self.entry_id,
            "user_id": self.user_id,
            "delta": self.delta,
            "balance_after": self.balance_after,
            "reason": self.reason.value,
            "session_id": self.session_id,
            "created_at": self.created_at.isoformat(),
        }


def _entry(row: Any) -> LedgerEntry:
    created: datetime = row.created_at
    return LedgerEntry(
        entry_id=row.entry_id,
        user_id=row.user_id,
        delta=int(row.delta),
        balance_after=int(row.balance_after),
        reason=CreditsReason(row.reason),
        session_id=row.session_id,
        created_at=created.replace(tzinfo=UTC) if created.tzinfo is None else created,
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def _lock_balance(conn: AsyncConnection, user_id: str) -> int:
    """The user's balance, its row locked until the transaction ends (created at 0 if missing)."""
    await conn.execute(_ENSURE_ROW, {"user_id": user_id, "now": _now()})
    lock = _LOCK_BALANCE if conn.dialect.name == "postgresql" else _READ_BALANCE
    return int((await conn.execute(lock, {"user_id": user_id})).scalar_one())


async def _read_entry(conn: AsyncConnection, entry_id: str) -> LedgerEntry | None:
    row = (await conn.execute(_READ_ENTRY, {"entry_id": entry_id})).first()
    return None if row is None else _entry(row)


async def _apply(
    conn: AsyncConnection,
    *,
    entry_id: str,
    user_id: str,
    delta: int,
    balance: int,
    reason: CreditsReason,
    session_id: str | None,
) -> LedgerEntry:
    """Write the ledger row and the new balance (``balance`` + ``delta``, checked by the caller)."""
    now = _now()
    after = balance + delta
    await conn.execute(
        _INSERT_ENTRY,
        {
            "entry_id": entry_id,
            "user_id": user_id,
            "delta": delta,
            "balance_after": after,
            "reason": reason.value,
            "session_id": session_id,
            "now": now,
        },
    )
    await conn.execute(_UPDATE_BALANCE, {"balance": after, "now": now, "user_id": user_id})
    return LedgerEntry(entry_id, user_id, delta, after, reason, session_id, now.replace(tzinfo=UTC))


def _updated(entry: LedgerEntry) -> UserCreditsUpdated:
    return UserCreditsUpdated(
        user_id=entry.user_id,
        delta=entry.delta,
        balance=entry.balance_after,
        reason=entry.reason,
        session_id=entry.session_id,
    )


def build(resources: Resources, *, retry: RetryPolicy | None = None) -> ConsumerGroup:
    """The ``credits`` group. Example: ``registry.add(build(resources))``

    Its writes go through ``ctx.effects()``, i.e. the runtime's processed-events store: apply
    ``MIGRATIONS`` to that database (``resources.database`` is expected to be the same one).
    A transient database failure (lock conflict, deadlock, restart) is retried in the handler
    within ``retry`` (default: ``RetryPolicy()``, 60 s); the deduction stays once per event.
    """
    group = ConsumerGroup(GROUP_NAME)
    del resources
    storage = Patience("database", retry or RetryPolicy(), context={"group": GROUP_NAME})

    async def deduct_once(event: SessionCompleted, ctx: HandlerContext) -> LedgerEntry | None:
        entry_id = str(event.event_id)
        async with ctx.effects() as tx:
            conn = tx.connection
            assert conn is not None  # noqa: S101 - set by __aenter__
            if not tx.first_time:
                return await _read_entry(conn, entry_id)
            balance = await _lock_balance(conn, event.user_id)
            if balance < event.cost_credits:
                raise InsufficientCreditsError(event.user_id, balance=balance, cost=event.cost_credits)
            return await _apply(
                conn,
                entry_id=entry_id,
                user_id=event.user_id,
                delta=-event.cost_credits,
                balance=balance,
                reason=CreditsReason.SESSION_COMPLETED,
                session_id=event.session_id,
            )

    @group.handler(SessionCompleted)
    async def deduct(event: SessionCompleted, ctx: HandlerContext) -> None:
        entry = await storage.call(lambda: deduct_once(event, ctx), what=f"session:completed {event.event_id}")
        if entry is None:
            msg = f"session:completed {event.event_id} is marked processed by {GROUP_NAME} but has no ledger row"
            raise FatalHandlerError(msg)
        await ctx.publish(_updated(entry))

    return group


def grant_event_id(grant_id: UUID) -> UUID:
    """The event id of the ``user:credits_updated`` a grant publishes (the same on every re-run).

    Example: ``grant_event_id(UUID(int=1))``
    """
    return follow_up_id(GROUP_NAME, grant_id, UserCreditsUpdated.event_type, 0)


async def grant_credits(
    database: Database,
    publisher: EventPublisher,
    user_id: str,
    amount: int,
    *,
    grant_id: UUID | None = None,
) -> int:
    """Add ``amount`` (> 0) credits to ``user_id``, publish ``user:credits_updated``; the balance after the grant.

    The ledger row is keyed by ``grant_id`` (a new one when None): running the same grant
    again changes nothing, publishes the same event again (same event id, see
    ``grant_event_id``) and returns the balance that grant left. Re-run with the same id when
    the publish failed. ``EventValidationError`` for a non-positive amount, a balance that
    would exceed ``MAX_BALANCE``, or a grant id already used for another user or amount.

    Example: ``balance = await grant_credits(database, publisher, "user-1", 50)``
    """
    if amount <= 0:
        raise EventValidationError(
            UserCreditsUpdated.event_type, [("delta", f"a grant must be positive, not {amount}")]
        )
    grant_id = grant_id or uuid4()
    async with database.begin() as conn:
        balance = await _lock_balance(conn, user_id)
        entry = await _read_entry(conn, str(grant_id))
        if entry is None:
            if balance + amount > MAX_BALANCE:
                problem = f"{balance} + {amount} exceeds the maximum balance {MAX_BALANCE}"
                raise EventValidationError(UserCreditsUpdated.event_type, [("balance", problem)])
            entry = await _apply(
                conn,
                entry_id=str(grant_id),
                user_id=user_id,
                delta=amount,
                balance=balance,
                reason=CreditsReason.GRANT,
                session_id=None,
            )
        elif (entry.user_id, entry.delta, entry.reason) != (user_id, amount, CreditsReason.GRANT):
            what = f"{entry.reason.value} of {entry.delta} for user {entry.user_id!r}"
            problem = f"ledger entry {grant_id} already exists and differs ({what})"
            raise EventValidationError(UserCreditsUpdated.event_type, [("grant_id", problem)])
    await publisher.publish(_updated(entry).with_metadata(event_id=grant_event_id(grant_id)))
    return entry.balance_after


async def get_balance(database: Database, user_id: str) -> int:
    """The user's balance (0 for a user without one). Example: ``await get_balance(database, "user-1")``"""
    async with database.begin() as conn:
        value = (await conn.execute(_READ_BALANCE, {"user_id": user_id})).scalar_one_or_none()
    return 0 if value is None else int(value)


async def ledger(database: Database, user_id: str) -> list[LedgerEntry]:
    """The user's balance changes, oldest first. Example: ``[e.delta for e in await ledger(db, "user-1")]``"""
    async with database.begin() as conn:
        rows = (await conn.execute(_READ_LEDGER, {"user_id": user_id})).all()
    return [_entry(row) for row in rows]
