"""The notification service: which notifications an event gives, rendering, delivery, ``notification:sent``.

Once per event (``ctx.effects()``): render every notification and write it to the
inbox in the same transaction as the processed-events row; a missing template
variable rolls all of it back (the event is dead-lettered, nothing is stored).

Email, when an SMTP host is configured, goes out after that transaction, for
each stored notification whose ``emailed_at`` is still NULL, and ``emailed_at``
is set right after the server accepted it. So a redelivered event sends no
second email, and an email that failed (SMTP down: retried, then dead-lettered)
is sent when the event is delivered again (replayed). The caveat is
at-least-once: a process that dies between the server's acceptance and the
``emailed_at`` update sends that email again on redelivery (same Message-ID).

``notification:sent`` is published for every notification and channel on every
delivery, duplicates included, from what the inbox holds (same event ids).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from uuid import UUID

from consumers import Database, HandlerContext, Patience, RetryPolicy
from schemas import (
    CustomTemplate,
    NotificationRequested,
    NotificationSent,
    NotificationType,
    PaymentFailed,
    PaymentProcessed,
    SessionCancelled,
    SessionCreated,
    UserCreditsUpdated,
)

from ._channels import IN_APP_CHANNEL, InboxChannel, NotificationChannel
from ._inbox import InboxItem, Notification, fetch_by_source, mark_emailed, notification_id
from ._templates import TemplateSet, format_session_date, load_templates, snake_case_keys

__all__ = [
    "NotificationService",
    "PlannedNotification",
    "plan_credits_updated",
    "plan_notification_requested",
    "plan_payment_failed",
    "plan_payment_processed",
    "plan_session_cancelled",
    "plan_session_created",
]

log = logging.getLogger("eventbus.notifications")


@dataclass(frozen=True, slots=True)
class PlannedNotification:
    """A notification an event calls for: a recipient, a type, and the template values (or ready content)."""

    recipient: str
    notification_type: NotificationType
    values: dict[str, str] = field(default_factory=dict)
    custom: CustomTemplate | None = None
    """Ready-made content, shown as given (not rendered)."""


class NotificationService:
    """Renders, stores and delivers the notifications of one event.

    Example: ``await service.notify(ctx, plan_session_created(event))``
    """

    def __init__(
        self,
        database: Database,
        *,
        templates: TemplateSet | None = None,
        email: NotificationChannel | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.database = database
        self.templates = templates if templates is not None else load_templates()
        self.email = email
        policy = retry or RetryPolicy()
        context = {"group": "notifications"}
        self._storage = Patience("database", policy, context=context)
        self._smtp = Patience("smtp", policy, context=context)

    @property
    def channels(self) -> tuple[str, ...]:
        """The channel names every notification goes through, in ``notification:sent`` order."""
        return (IN_APP_CHANNEL, self.email.name) if self.email is not None else (IN_APP_CHANNEL,)

    def render(self, source_event_id: UUID, planned: PlannedNotification) -> Notification:
        """The content of ``planned``; ``TemplateVariableError`` when its template lacks a variable."""
        if planned.custom is not None:
            title, body = planned.custom.title, planned.custom.body
            icon, actions = planned.custom.icon, tuple(planned.custom.actions)
        else:
            content = self.templates[planned.notification_type].render(planned.values)
            title, body, icon, actions = content.title, content.body, content.icon, content.actions
        return Notification(
            notification_id=notification_id(source_event_id, planned.recipient, planned.notification_type),
            user_id=planned.recipient,
            notification_type=planned.notification_type,
            title=title,
            body=body,
            icon=icon,
            actions=actions,
            source_event_id=source_event_id,
        )

    async def notify(self, ctx: HandlerContext, plan: Sequence[PlannedNotification]) -> list[UUID]:
        """Store (once), email (once) and announce (always) the planned notifications; their ids."""
        source = ctx.event.event_id
        ids: list[UUID] = []
        unique: list[PlannedNotification] = []
        for planned in plan:
            nid = notification_id(source, planned.recipient, planned.notification_type)
            if nid not in ids:  # e.g. a coach cancelling a session booked with themself
                ids.append(nid)
                unique.append(planned)

        async def store_once() -> dict[UUID, InboxItem]:
            async with ctx.effects() as tx:
                if tx.connection is None:  # pragma: no cover - Effects sets it on entry
                    msg = "effects transaction without a connection"
                    raise RuntimeError(msg)
                if tx.first_time:
                    inbox = InboxChannel(tx.connection)
                    for planned in unique:
                        await inbox.deliver(self.render(source, planned))
                return await fetch_by_source(tx.connection, source)

        what = f"{ctx.event.event_type} {source}"
        stored = await self._storage.call(store_once, what=what)
        items = [stored[nid] for nid in ids if nid in stored]
        if len(items) < len(ids):
            log.warning(
                "notifications of an already processed event are not in the inbox; announcing the rest",
                extra={"event_id": str(source), "missing": [str(n) for n in ids if n not in stored]},
            )
        if self.email is not None:
            for item in items:
                if item.emailed_at is None:
                    # sent, then marked: a failed mark is retried alone, never by sending the email again
                    await self._smtp.call(partial(self.email.deliver, item.notification()), what=what)
                    await self._storage.call(partial(mark_emailed, self.database, item.notification_id), what=what)
        for item in items:
            for channel in self.channels:
                await ctx.publish(
                    NotificationSent(
                        notification_id=str(item.notification_id),
                        user_id=item.user_id,
                        notification_type=item.notification_type,
                        channel=channel,
                        title=item.title,
                        source_event_id=item.source_event_id,
                    )
                )
        return [item.notification_id for item in items]


# -- which notifications each event calls for ---------------------------------------------------


def plan_session_created(event: SessionCreated) -> list[PlannedNotification]:
    """``session_confirmed`` to the client and ``new_session_request`` to the coach (as the original did).

    Names fall back to the ids when the event has none. Example: ``plan_session_created(event)[0].recipient``
    """
    date, kind = format_session_date(event.scheduled_at), event.session_type
    return [
        PlannedNotification(
            event.user_id,
            NotificationType.SESSION_CONFIRMED,
            {"coach_name": event.coach_name or event.coach_id, "session_date": date, "session_type": kind},
        ),
        PlannedNotification(
            event.coach_id,
            NotificationType.NEW_SESSION_REQUEST,
            {"client_name": event.client_name or event.user_id, "session_date": date, "session_type": kind},
        ),
    ]


def plan_session_cancelled(event: SessionCancelled) -> list[PlannedNotification]:
    """``session_cancelled`` to the client and to the coach. Example: ``len(plan_session_cancelled(e)) == 2``"""
    values = {
        "session_date": format_session_date(event.scheduled_at),
        "cancelled_by": event.cancelled_by,
        "reason": event.reason or "",
    }
    return [
        PlannedNotification(event.user_id, NotificationType.SESSION_CANCELLED, values),
        PlannedNotification(event.coach_id, NotificationType.SESSION_CANCELLED, values),
    ]


def plan_payment_processed(event: PaymentProcessed) -> list[PlannedNotification]:
    """``payment_processed`` to the payer. Example: ``plan_payment_processed(e)[0].values["amount"] == "49.90"``"""
    values = {"amount": f"{event.amount:.2f}", "currency": event.currency, "transaction_id": event.transaction_id}
    return [PlannedNotification(event.user_id, NotificationType.PAYMENT_PROCESSED, values)]


def plan_payment_failed(event: PaymentFailed) -> list[PlannedNotification]:
    """``payment_failed`` to the payer. Example: ``plan_payment_failed(e)[0].values["error"]``"""
    values = {"amount": f"{event.amount:.2f}", "currency": event.currency, "error": event.error}
    return [PlannedNotification(event.user_id, NotificationType.PAYMENT_FAILED, values)]


def plan_credits_updated(event: UserCreditsUpdated) -> list[PlannedNotification]:
    """``credits_updated`` to the user, ``credits_remaining`` = the new balance.

    Example: ``plan_credits_updated(e)[0].values["credits_remaining"] == "7"``
    """
    values = {"credits_remaining": str(event.balance), "delta": f"{event.delta:+d}"}
    return [PlannedNotification(event.user_id, NotificationType.CREDITS_UPDATED, values)]


def plan_notification_requested(event: NotificationRequested) -> list[PlannedNotification]:
    """The requested notification: the ``custom_template`` as given, otherwise the type's template with ``data``.

    ``data`` keys in camelCase (``coachName``) are also offered in snake_case (``coach_name``).
    Example: ``plan_notification_requested(e)[0].custom.title``
    """
    return [
        PlannedNotification(
            event.user_id, event.notification_type, snake_case_keys(event.data), custom=event.custom_template
        )
    ]
