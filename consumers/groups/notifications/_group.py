"""The ``notifications`` consumer group: its handlers over the notification service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from consumers import ConsumerGroup, HandlerContext, Resources, RetryPolicy
from schemas import (
    Event,
    NotificationRequested,
    PaymentFailed,
    PaymentProcessed,
    SessionCancelled,
    SessionCreated,
    UserCreditsUpdated,
)

from ._channels import EmailChannel
from ._service import (
    NotificationService,
    PlannedNotification,
    plan_credits_updated,
    plan_notification_requested,
    plan_payment_failed,
    plan_payment_processed,
    plan_session_cancelled,
    plan_session_created,
)
from ._templates import TEMPLATES_DIR, load_templates

__all__ = ["GROUP_NAME", "PLANS", "build", "build_service"]

GROUP_NAME = "notifications"

PLANS: Mapping[type[Event], Callable[[Any], list[PlannedNotification]]] = {
    SessionCreated: plan_session_created,
    SessionCancelled: plan_session_cancelled,
    PaymentProcessed: plan_payment_processed,
    PaymentFailed: plan_payment_failed,
    UserCreditsUpdated: plan_credits_updated,
    NotificationRequested: plan_notification_requested,
}
"""The events the group handles, each with the function that plans its notifications (who gets which template)."""


def build_service(
    resources: Resources, *, templates_dir: Path = TEMPLATES_DIR, retry: RetryPolicy | None = None
) -> NotificationService:
    """The service: templates loaded (and checked) now, email when ``settings.smtp_host`` is set.

    Example: ``service = build_service(resources)``
    """
    settings = resources.settings
    email = EmailChannel(settings) if settings.smtp_host else None
    templates = load_templates(templates_dir)
    return NotificationService(resources.database, templates=templates, email=email, retry=retry)


def build(
    resources: Resources, *, templates_dir: Path = TEMPLATES_DIR, retry: RetryPolicy | None = None
) -> ConsumerGroup:
    """The ``notifications`` group. Example: ``registry.add(build(resources))``

    A template file that is broken raises ``TemplateDefinitionError`` here, at start-up. The
    database and SMTP are retried within ``retry`` (default: 60 s) when they fail transiently.
    """
    service = build_service(resources, templates_dir=templates_dir, retry=retry)
    group = ConsumerGroup(GROUP_NAME)

    @group.handler(*PLANS)
    async def notify(event: Event, ctx: HandlerContext) -> None:
        await service.notify(ctx, PLANS[type(event)](event))

    return group
