"""The simulated marketplace the demo drives through the producer SDK, and what it expects to see."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from sqlalchemy import text

from consumers import Database, Migration
from consumers.groups.credits import grant_credits
from producers import EventPublisher, Outbox, correlation_scope
from schemas import (
    CoachProfileUpdated,
    CoachRatingUpdated,
    CoachStatus,
    CoachStatusChanged,
    Event,
    PaymentProcessRequired,
    SessionCancelled,
    SessionCompleted,
    SessionCreated,
    SessionCreationFailed,
)

__all__ = ["DEMO_BOOKINGS_MIGRATION", "BookingRefusedError", "Expectations", "Marketplace"]

DEMO_BOOKINGS_MIGRATION = Migration(
    90,
    "demo bookings",
    [
        "CREATE TABLE IF NOT EXISTS demo_bookings (session_id VARCHAR(200) PRIMARY KEY,"
        " user_id VARCHAR(200) NOT NULL, coach_id VARCHAR(200) NOT NULL, scheduled_at TIMESTAMP NOT NULL)"
    ],
)
"""The booking service's own table: a booking row and its events commit together (the outbox)."""


class BookingRefusedError(Exception):
    """The coach has no slot at that time: the booking transaction rolls back."""


_SESSION_TYPES = ("Mentoría Individual", "Revisión de CV", "Sesión de Grupo", "Coaching Ejecutivo")
_NAMES = ("Ana", "Bruno", "Carla", "Diego", "Elena", "Fabio", "Gala", "Hugo", "Irene", "Jorge", "Lucía", "Mateo")


@dataclass
class Expectations:
    """What the driver published, for the self-checks."""

    published: Counter[str] = field(default_factory=Counter)
    granted: Counter[str] = field(default_factory=Counter)
    bookings: dict[UUID, tuple[str, str]] = field(default_factory=dict)
    """session:created event id → (user id, coach id)."""
    completions: dict[UUID, tuple[str, int]] = field(default_factory=dict)
    """session:completed event id → (user id, cost)."""
    users: list[str] = field(default_factory=list)


class Marketplace:
    """Users, coaches and sessions, driven at a steady pace. Example: ``await Marketplace(...).run(20)``"""

    def __init__(
        self, publisher: EventPublisher, database: Database, *, run_id: str, seed: int = 7, outbox: Outbox | None = None
    ) -> None:
        self.publisher = publisher
        self.outbox = outbox
        """Bookings go through it (row and events in one transaction) when given; the relay sends them."""
        self.database = database
        self.run_id = run_id
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        self.expected = Expectations()
        self.users = [f"{run_id}-user-{n:02d}" for n in range(12)]
        self.coaches = [f"{run_id}-coach-{n}" for n in range(4)]
        self.coach_status = dict.fromkeys(self.coaches, CoachStatus.ONLINE)
        self.ratings = dict.fromkeys(self.coaches, (4.5, 10))
        self.open_sessions: list[SessionCreated] = []
        self._session_seq = 0

    async def _publish(self, event: Event) -> None:
        await self.publisher.publish(event)
        self.expected.published[event.event_type] += 1

    async def grant_initial_credits(self) -> None:
        """Every user gets credits; the last two get few, so some completions are refused (dead letters)."""
        for index, user in enumerate(self.users):
            amount = 8 if index >= len(self.users) - 2 else self.rng.randint(60, 120)
            await grant_credits(self.database, self.publisher, user, amount)
            self.expected.published["user:credits_updated"] += 1
            self.expected.granted[user] += amount
        self.expected.users = list(self.users)

    async def book(self) -> None:
        """A client books a session (one in ten attempts fails): the booking service's use case.

        With an outbox, the booking row, ``session:created`` and ``payment:process_required`` commit in
        one transaction; a refused booking rolls back (nothing sent) and ``session:creation_failed``
        is written on its own.
        """
        self._session_seq += 1
        session_id = f"{self.run_id}-session-{self._session_seq:04d}"
        user, coach = self.rng.choice(self.users), self.rng.choice(self.coaches)
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=self.rng.randint(1, 14), hours=1)
        kind = self.rng.choice(_SESSION_TYPES)
        refused = self.rng.random() < 0.1
        created = SessionCreated(
            session_id=session_id,
            coach_id=coach,
            user_id=user,
            scheduled_at=start,
            session_type=kind,
            cost_credits=self.rng.choice((5, 8, 10, 12)),
            coach_name=self._name(coach),
            client_name=self._name(user),
        )
        with correlation_scope(f"booking-{session_id}"):
            amount = Decimal(self.rng.choice(("45.00", "90.00", "180.00", "1250.00", "2400.00")))
            payment = PaymentProcessRequired(
                payment_id=f"{session_id}-payment", session_id=session_id, user_id=user, amount=amount
            )
            try:
                await self._store_booking(created, payment, refused=refused)
            except BookingRefusedError as exc:
                await self._send(
                    SessionCreationFailed(
                        session_id=session_id,
                        user_id=user,
                        coach_id=coach,
                        scheduled_at=start,
                        session_type=kind,
                        error=str(exc),
                    )
                )
                return
            self.expected.bookings[created.event_id] = (user, coach)
        self.open_sessions.append(created)

    async def _store_booking(self, created: SessionCreated, payment: PaymentProcessRequired, *, refused: bool) -> None:
        if self.outbox is None:
            if refused:
                raise BookingRefusedError("el coach no tiene disponibilidad en ese horario")
            await self._publish(created)
            await self._publish(payment)
            return
        async with self.database.begin() as conn:
            await conn.execute(
                text("INSERT INTO demo_bookings (session_id, user_id, coach_id, scheduled_at) VALUES (:s, :u, :c, :t)"),
                {
                    "s": created.session_id,
                    "u": created.user_id,
                    "c": created.coach_id,
                    "t": created.scheduled_at.replace(tzinfo=None),
                },
            )
            await self.outbox.add_many(conn, [created, payment])
            if refused:  # found out after writing: the rollback takes the row and both events back
                raise BookingRefusedError("el coach no tiene disponibilidad en ese horario")
        self.expected.published.update([created.event_type, payment.event_type])

    async def _send(self, event: Event) -> None:
        """Through the outbox when there is one, else published directly."""
        if self.outbox is None:
            await self._publish(event)
            return
        async with self.database.begin() as conn:
            await self.outbox.add(conn, event)
        self.expected.published[event.event_type] += 1

    async def finish_one(self) -> None:
        """An open session ends: completed (four in five) or cancelled."""
        if not self.open_sessions:
            return
        session = self.open_sessions.pop(self.rng.randrange(len(self.open_sessions)))
        with correlation_scope(f"booking-{session.session_id}"):
            if self.rng.random() < 0.8:
                completed = SessionCompleted(
                    session_id=session.session_id,
                    coach_id=session.coach_id,
                    user_id=session.user_id,
                    cost_credits=session.cost_credits,
                    completed_at=datetime.now(UTC),
                    duration_minutes=60,
                )
                await self._publish(completed)
                self.expected.completions[completed.event_id] = (session.user_id, session.cost_credits)
                await self._review(session.coach_id)
            else:
                await self._publish(
                    SessionCancelled(
                        session_id=session.session_id,
                        coach_id=session.coach_id,
                        user_id=session.user_id,
                        scheduled_at=session.scheduled_at,
                        cancelled_by=self.rng.choice(("user", "coach")),
                        reason="cambio de planes",
                    )
                )

    async def _review(self, coach: str) -> None:
        previous, count = self.ratings[coach]
        stars = self.rng.choice((3, 4, 5, 5))
        rating = round((previous * count + stars) / (count + 1), 2)
        self.ratings[coach] = (rating, count + 1)
        await self._publish(
            CoachRatingUpdated(coach_id=coach, new_rating=rating, review_count=count + 1, previous_rating=previous)
        )

    async def coach_activity(self) -> None:
        """A coach changes status or profile."""
        coach = self.rng.choice(self.coaches)
        if self.rng.random() < 0.5:
            old = self.coach_status[coach]
            new = self.rng.choice([s for s in (CoachStatus.ONLINE, CoachStatus.BUSY, CoachStatus.AWAY) if s != old])
            self.coach_status[coach] = new
            await self._publish(CoachStatusChanged(coach_id=coach, old_status=old, new_status=new))
        else:
            await self._publish(
                CoachProfileUpdated(
                    coach_id=coach, changed_fields=["bio", "hourly_rate"], display_name=self._name(coach)
                )
            )

    def _name(self, entity_id: str) -> str:
        return _NAMES[sum(map(ord, entity_id)) % len(_NAMES)]

    async def run(self, duration_s: float, *, rate_per_s: float = 8.0) -> None:
        """Drive bookings, completions and coach activity for ``duration_s`` seconds, then finish every session."""
        await self.grant_initial_credits()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            roll = self.rng.random()
            if roll < 0.45 or not self.open_sessions:
                await self.book()
            elif roll < 0.85:
                await self.finish_one()
            else:
                await self.coach_activity()
            await asyncio.sleep(1.0 / rate_per_s)
        while self.open_sessions:
            await self.finish_one()
