"""The ``notifications`` consumer group: its handlers over the notification service."""

from __future__ import annotations

from pathlib import Path

from consumers import ConsumerGroup, HandlerContext, Resources, RetryPolicy
from schemas import (
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
    plan_credits_updated,
    plan_notification_requested,
    plan_payment_failed,
    plan_payment_processed,
    plan_session_cancelled,
    plan_session_created,
)
from ._templates import TEMPLATES_DIR, load_templates

__all__ = ["GROUP_NAME", "build", "build_service"]

GROUP_NAME = "notifications"


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

    @group.handler(SessionCreated)
    async def session_created(event: SessionCreated, ctx: HandlerContext) -> None:
        await service.notify(ctx, plan_session_created(event))

    @group.handler(SessionCancelled)
    async def session_cancelled(event: SessionCancelled, ctx: HandlerContext) -> None:
        await service.notify(ctx, plan_session_cancelled(event))

    @group.handler(PaymentProcessed)
    async def payment_processed(event: PaymentProcessed, ctx: HandlerContext) -> None:
        await service.notify(ctx, plan_payment_processed(event))

    @group.handler(PaymentFailed)
    async def payment_failed(event: PaymentFailed, ctx: HandlerContext) -> None:
        await service.notify(ctx, plan_payment_failed(event))

    @group.handler(UserCreditsUpdated)
    async def credits_updated(event: UserCreditsUpdated, ctx: HandlerContext) -> None:
        await service.notify(ctx, plan_credits_updated(event))

    @group.handler(NotificationRequested)
    async def notification_requested(event: NotificationRequested, ctx: HandlerContext) -> None:
        await service.notify(ctx, plan_notification_requested(event))

    return group
