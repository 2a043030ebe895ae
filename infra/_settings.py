"""Settings from ``EVENTBUS_*`` environment variables, turned into the typed configs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigurationError

if TYPE_CHECKING:
    from consumers import ConsumerConfig, GroupSettings, RuntimeConfig
    from producers import KafkaConnection, PublisherConfig

# The config classes are imported where they are built: loading the settings must not import the
# Kafka client or the database layer (`eventbus schemas list` needs neither).

__all__ = ["Profile", "Settings", "load_settings"]

_Config = TypeVar("_Config", bound=BaseModel)

Profile = Literal["kafka", "embedded"]


class Settings(BaseSettings):
    """Everything configurable, read from the environment (prefix ``EVENTBUS_``).

    ``profile`` picks defaults for the broker kind: ``kafka`` (Apache Kafka:
    idempotent producer, replication 3) or ``embedded`` (the Tansu broker of
    development and tests: no idempotence, replication 1, short group timeouts).
    Any setting given explicitly wins over its profile default. Secrets are
    ``SecretStr``: they never show in ``repr`` or ``eventbus settings``.

    Example: ``Settings(bootstrap_servers="127.0.0.1:9092", profile="embedded").connection()``
    """

    model_config = SettingsConfigDict(env_prefix="EVENTBUS_", frozen=True, extra="ignore")

    profile: Profile = "kafka"
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    client_id: str = "eventbus"
    service_name: str = "eventbus"

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None

    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)

    producer_acks: Literal["all", "1", "0"] = "all"
    producer_idempotence: bool | None = None
    """None: on for the kafka profile, off for embedded."""
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    producer_transactional_id: str | None = None
    """Makes publishers transactional (Apache Kafka only); one id per producing process."""
    producer_linger_ms: int = Field(default=5, ge=0)
    max_message_bytes: int = Field(default=1_048_576, gt=0)
    delivery_timeout_s: float = Field(default=30.0, gt=0)

    replication_factor: int | None = Field(default=None, ge=1)
    """None: 3 for the kafka profile, 1 for embedded."""

    database_url: str = Field(default="sqlite:///eventbus.sqlite", repr=False)
    """PostgreSQL (``postgresql://...``) or SQLite (``sqlite:///file``): dedup store and the groups' tables."""

    redis_url: str | None = Field(default=None, repr=False)
    """Redis for the cache group (``redis://host:6379/0``); unset: an in-process cache (embedded default)."""
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_sender: str = "notifications@coaching.example"
    gateway_latency_s: float = Field(default=0.05, ge=0)
    gateway_failure_rate: float = Field(default=0.05, ge=0, le=1)
    payment_workers: int = Field(default=4, ge=1)

    consumer_session_timeout_ms: int | None = Field(default=None, ge=1000)
    """None: 45 000 for the kafka profile, 6 000 for embedded (it reassigns only after this timeout)."""
    consumer_heartbeat_interval_ms: int | None = Field(default=None, ge=100)
    """None: 3 000 for the kafka profile, 500 for embedded."""
    consumer_auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    consumer_fetch_max_wait_ms: int = Field(default=10, ge=0)
    """How long a fetch may wait at the broker for data: the floor of publish-to-handler latency."""
    concurrency: int = Field(default=4, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    backoff_initial_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=10.0, ge=0)
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    retry_tiers_s: tuple[float, ...] = ()
    """Delays of the non-blocking retry tiers, e.g. ``[5, 60, 600]`` (JSON); empty: none."""
    retry_keep_key_order: bool = False

    @property
    def idempotence(self) -> bool:
        """Whether the producer is idempotent, after the profile default."""
        if self.producer_idempotence is not None:
            return self.producer_idempotence
        return self.profile == "kafka"

    @property
    def replication(self) -> int:
        """Replication factor of created topics, after the profile default."""
        if self.replication_factor is not None:
            return self.replication_factor
        return 3 if self.profile == "kafka" else 1

    def _same_named(self, kind: type[BaseModel]) -> dict[str, Any]:
        """This object's values for the fields ``kind`` shares with it by name."""
        return {name: getattr(self, name) for name in kind.model_fields if name in type(self).model_fields}

    def connection(self) -> KafkaConnection:
        """The connection config for producers, consumers and admin (every field has its setting's name)."""
        from producers import KafkaConnection  # noqa: PLC0415 - see the note at the imports

        return _build(KafkaConnection, **self._same_named(KafkaConnection))

    def publisher_config(self, service: str | None = None) -> PublisherConfig:
        """The publisher config; ``service`` overrides ``service_name``."""
        from producers import PublisherConfig  # noqa: PLC0415 - see the note at the imports

        acks: Any = "all" if self.producer_acks == "all" else int(self.producer_acks)
        return _build(
            PublisherConfig,
            _PUBLISHER_SETTINGS,
            service=service or self.service_name,
            acks=acks,
            enable_idempotence=self.idempotence,
            compression=self.producer_compression,
            linger_ms=self.producer_linger_ms,
            max_message_bytes=self.max_message_bytes,
            delivery_timeout_s=self.delivery_timeout_s,
            transactional_id=self.producer_transactional_id,
        )

    def _group_timeouts_ms(self) -> tuple[int, int]:
        """Session timeout and heartbeat interval, after the profile defaults."""
        embedded = self.profile == "embedded"
        session = self.consumer_session_timeout_ms or (6_000 if embedded else 45_000)
        # Unless set, the heartbeat follows the session timeout (at most a tenth of it).
        heartbeat = self.consumer_heartbeat_interval_ms or min(500 if embedded else 3_000, session // 10)
        return session, heartbeat

    def consumer_config(self) -> ConsumerConfig:
        """Group membership settings, after the profile defaults."""
        from consumers import ConsumerConfig  # noqa: PLC0415 - see the note at the imports

        session, heartbeat = self._group_timeouts_ms()
        return _build(
            ConsumerConfig,
            auto_offset_reset=self.consumer_auto_offset_reset,
            session_timeout_ms=session,
            heartbeat_interval_ms=heartbeat,
            fetch_max_wait_ms=self.consumer_fetch_max_wait_ms,
        )

    def runtime_config(self, **overrides: Any) -> RuntimeConfig:
        """Dispatch, retry and shutdown settings; ``overrides`` (e.g. from the command line) win."""
        from consumers import RuntimeConfig  # noqa: PLC0415 - see the note at the imports

        fields: dict[str, Any] = {
            "concurrency": self.concurrency,
            "max_attempts": self.max_attempts,
            "backoff_initial_s": self.backoff_initial_s,
            "backoff_max_s": self.backoff_max_s,
            "shutdown_timeout_s": self.shutdown_timeout_s,
            "commit_timeout_s": self.request_timeout_s,
            "retry_tiers_s": self.retry_tiers_s,
            "retry_keep_key_order": self.retry_keep_key_order,
            "retry_topic_replication": self.replication,
        }
        fields.update({name: value for name, value in overrides.items() if value is not None})
        return _build(RuntimeConfig, **fields)

    def group_settings(self) -> GroupSettings:
        """Settings of the built-in groups (SMTP, payment gateway), by the same names."""
        from consumers import GroupSettings  # noqa: PLC0415 - see the note at the imports

        return _build(GroupSettings, **self._same_named(GroupSettings))

    def describe(self) -> dict[str, Any]:
        """Every setting with its effective value, secrets masked (for ``eventbus settings``)."""
        values = self.model_dump()
        for name, value in values.items():
            if isinstance(value, SecretStr):
                values[name] = "**********"
            elif isinstance(value, Path):
                values[name] = str(value)
        values["producer_idempotence"] = self.idempotence
        values["replication_factor"] = self.replication
        values["database_url"] = _mask_url(self.database_url)
        values["redis_url"] = _mask_url(self.redis_url) if self.redis_url else None
        values["consumer_session_timeout_ms"], values["consumer_heartbeat_interval_ms"] = self._group_timeouts_ms()
        return values


def _mask_url(url: str) -> str:
    """The URL with any password replaced by asterisks."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:**********@{host}"


_PUBLISHER_SETTINGS = {
    "acks": "producer_acks",
    "enable_idempotence": "producer_idempotence",
    "compression": "producer_compression",
    "linger_ms": "producer_linger_ms",
    "transactional_id": "producer_transactional_id",
}
"""PublisherConfig fields whose setting has another name."""


def _problems(exc: ValidationError, fields: Iterable[str], setting_of: Mapping[str, str] | None = None) -> str:
    """Each problem as ``EVENTBUS_NAME: message``.

    A model-level check (several fields together) has no field of its own: it is
    named by the settings its message mentions, so no problem ever starts with
    an empty name.
    """
    setting_of = setting_of or {}
    known = list(fields)

    def variable(field: str) -> str:
        return f"EVENTBUS_{setting_of.get(field, field).upper()}"

    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            where = variable(".".join(map(str, error["loc"])))
        else:
            mentioned = [field for field in known if re.search(rf"\b{re.escape(field)}\b", message)]
            where = ", ".join(map(variable, mentioned)) or "these settings together"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def _build(kind: type[_Config], setting_of: Mapping[str, str] | None = None, **fields: Any) -> _Config:
    try:
        return kind(**fields)
    except ValidationError as exc:
        msg = f"invalid settings: {_problems(exc, fields, setting_of)}"
        raise ConfigurationError(msg) from exc


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` on top; ``ConfigurationError`` when invalid.

    Example: ``load_settings(profile="embedded").connection()``
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        msg = f"invalid settings: {_problems(exc, Settings.model_fields)}"
        raise ConfigurationError(msg) from exc
