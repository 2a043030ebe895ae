"""What the built-in groups use besides Kafka: the database, the cache and their settings."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ._cache import Cache
from ._database import Database

__all__ = ["GroupSettings", "Resources"]


class GroupSettings(BaseModel):
    """Settings of the built-in groups (from ``EVENTBUS_*`` via ``infra.Settings``).

    Example: ``GroupSettings(smtp_host="127.0.0.1", smtp_port=1025)``
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    smtp_host: str | None = None
    """Email is sent only when an SMTP host is configured; the in-app inbox always gets the notification."""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_sender: str = "notifications@coaching.example"
    email_domain: str = "users.coaching.example"
    """Recipient address is ``<user id>@<email_domain>`` until a user directory exists."""
    gateway_latency_s: float = Field(default=0.05, ge=0)
    gateway_failure_rate: float = Field(default=0.05, ge=0, le=1)
    gateway_seed: int | None = None
    payment_workers: int = Field(default=4, ge=1)


@dataclass
class Resources:
    """Shared by the groups of one process. Example: ``Resources(database=db, cache=MemoryCache())``"""

    database: Database
    cache: Cache
    settings: GroupSettings
