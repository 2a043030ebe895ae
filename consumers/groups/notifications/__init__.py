"""The ``notifications`` group: templated notifications to the in-app inbox and by email.

Handles ``session:created`` (``session_confirmed`` to the client, ``new_session_request``
to the coach), ``session:cancelled`` (``session_cancelled`` to both), ``payment:processed``
/ ``payment:failed``, ``user:credits_updated`` and ``notification:requested`` (a
``custom_template`` as given, or the type's template rendered with ``data``).

Each notification is stored once in ``notifications_inbox`` (id = UUIDv5 of source
event, recipient and type), emailed once when an SMTP host is configured, and
announced by ``notification:sent`` per channel on every delivery. Templates are the
JSON files of ``templates/`` (format in ``templates/README.md``).

Example::

    from consumers.groups import notifications
    await database.migrate([PROCESSED_EVENTS_MIGRATION, *notifications.MIGRATIONS])
    group = notifications.build(resources)
    unread = await notifications.list_notifications(database, "user-1", unread_only=True)
"""

from ._channels import (
    EMAIL_CHANNEL,
    IN_APP_CHANNEL,
    SMTP_TIMEOUT_S,
    DeliveryError,
    EmailChannel,
    InboxChannel,
    NotificationChannel,
)
from ._group import GROUP_NAME, build, build_service
from ._inbox import (
    MIGRATIONS,
    NOTIFICATION_NAMESPACE,
    InboxItem,
    Notification,
    list_notifications,
    mark_read,
    notification_id,
)
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
from ._templates import (
    TEMPLATES_DIR,
    NotificationTemplate,
    RenderedContent,
    TemplateDefinitionError,
    TemplateSet,
    TemplateVariableError,
    format_session_date,
    load_template,
    load_templates,
    snake_case_keys,
)

__all__ = [
    "EMAIL_CHANNEL",
    "GROUP_NAME",
    "IN_APP_CHANNEL",
    "MIGRATIONS",
    "NOTIFICATION_NAMESPACE",
    "SMTP_TIMEOUT_S",
    "TEMPLATES_DIR",
    "DeliveryError",
    "EmailChannel",
    "InboxChannel",
    "InboxItem",
    "Notification",
    "NotificationChannel",
    "NotificationService",
    "NotificationTemplate",
    "PlannedNotification",
    "RenderedContent",
    "TemplateDefinitionError",
    "TemplateSet",
    "TemplateVariableError",
    "build",
    "build_service",
    "format_session_date",
    "list_notifications",
    "load_template",
    "load_templates",
    "mark_read",
    "notification_id",
    "plan_credits_updated",
    "plan_notification_requested",
    "plan_payment_failed",
    "plan_payment_processed",
    "plan_session_cancelled",
    "plan_session_created",
    "snake_case_keys",
]
