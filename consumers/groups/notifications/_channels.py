"""Where notifications go: the in-app inbox (always) and email over SMTP (when configured)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol, runtime_checkable
from uuid import UUID

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncConnection

from consumers import GroupSettings
from schemas.errors import RetriableHandlerError

from ._inbox import Notification, insert_notification

__all__ = [
    "EMAIL_CHANNEL",
    "IN_APP_CHANNEL",
    "SMTP_TIMEOUT_S",
    "DeliveryError",
    "EmailChannel",
    "InboxChannel",
    "NotificationChannel",
]

IN_APP_CHANNEL = "in_app"
EMAIL_CHANNEL = "email"
SMTP_TIMEOUT_S = 10.0
"""Connect and per-command timeout of SMTP calls."""


class DeliveryError(RetriableHandlerError):
    """A channel could not deliver: retriable when trying later may work (server down, busy, timed out).

    A permanent refusal (an SMTP 5xx reply, refused credentials, a server without a required
    extension) is not retriable: its event is dead-lettered at once, with the server's answer.
    Example: ``DeliveryError("email", notification_id, "connection refused")``
    """

    def __init__(self, channel: str, notification_id: UUID, detail: str, *, retriable: bool = True) -> None:
        self.channel = channel
        self.notification_id = notification_id
        super().__init__(f"{channel} delivery of notification {notification_id} failed: {detail}", retriable=retriable)


def _smtp_transient(exc: BaseException) -> bool:
    """Whether an SMTP failure may pass: connection trouble and 4xx replies yes; 5xx, bad credentials no."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(_smtp_transient(refusal) for refusal in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError | aiosmtplib.SMTPNotSupported):
        return False
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return not 500 <= exc.code < 600  # 5xx: permanent failure
    return True  # connect errors, disconnects, timeouts, other OS errors


@runtime_checkable
class NotificationChannel(Protocol):
    """One way of reaching a user. Example: ``await channel.deliver(notification)``"""

    @property
    def name(self) -> str:
        """The channel name carried by ``notification:sent`` (``in_app``, ``email``)."""
        ...

    async def deliver(self, notification: Notification) -> None:
        """Deliver one notification; raise ``DeliveryError`` when it did not go out."""
        ...


class InboxChannel:
    """The in-app inbox: a row in ``notifications_inbox``, written in the caller's transaction.

    Example: ``await InboxChannel(tx.connection).deliver(notification)``
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    @property
    def name(self) -> str:
        """``in_app``."""
        return IN_APP_CHANNEL

    async def deliver(self, notification: Notification) -> None:
        """Insert the row (nothing happens when its id is stored already)."""
        await insert_notification(self._connection, notification)


class EmailChannel:
    """Email over SMTP (aiosmtplib) to ``<user id>@<settings.email_domain>``.

    Example: ``await EmailChannel(GroupSettings(smtp_host="127.0.0.1", smtp_port=1025)).deliver(n)``
    """

    def __init__(self, settings: GroupSettings, *, timeout_s: float = SMTP_TIMEOUT_S) -> None:
        if not settings.smtp_host:
            msg = "EmailChannel needs settings.smtp_host"
            raise ValueError(msg)
        self._settings = settings
        self._host = settings.smtp_host
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"EmailChannel({self._host}:{self._settings.smtp_port})"

    @property
    def name(self) -> str:
        """``email``."""
        return EMAIL_CHANNEL

    def address(self, user_id: str) -> str:
        """The recipient address of ``user_id``."""
        return f"{user_id}@{self._settings.email_domain}"

    def message(self, notification: Notification) -> EmailMessage:
        """The email: subject = title, plain-text body, a Message-ID derived from the notification id."""
        message = EmailMessage()
        message["From"] = self._settings.smtp_sender
        message["To"] = self.address(notification.user_id)
        message["Subject"] = notification.title
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<{notification.notification_id}@{self._settings.email_domain}>"
        message["X-Notification-Type"] = notification.notification_type.value
        lines = [notification.body]
        if notification.actions:
            lines += ["", *(f"- {action.title}" for action in notification.actions)]
        message.set_content("\n".join(lines) + "\n")
        return message

    async def deliver(self, notification: Notification) -> None:
        """Send the email; ``DeliveryError`` on an SMTP or connection failure (retriable unless permanent)."""
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            await aiosmtplib.send(
                self.message(notification),
                hostname=self._host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=password if settings.smtp_username else None,
                start_tls=settings.smtp_starttls,
                timeout=self._timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise DeliveryError(
                self.name, notification.notification_id, detail, retriable=_smtp_transient(exc)
            ) from exc
