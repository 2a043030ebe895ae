"""Settings from ``EVENTBUS_*`` environment variables, turned into the typed configs.

Every default and every constraint lives once, in the typed config it belongs to
(``KafkaConnection``, ``PublisherConfig``, ``ConsumerConfig``, ``RuntimeConfig``,
``GroupSettings``, ``HttpGatewayConfig``). ``Settings`` only says which variable sets which config field
(``SETTING_FIELDS``; a test keeps it complete), holds what was given, and applies the
profile's defaults (``PROFILE_DEFAULTS``: only those that must differ between Apache
Kafka and the embedded broker). A setting left unset is None here and takes the
profile's or the config's default when the config is built.

The config classes are imported where they are built: loading the settings must not
import the Kafka client or the database layer (``eventbus schemas list`` needs neither).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigurationError

if TYPE_CHECKING:
    from consumers import ConsumerConfig, GroupSettings, RelayConfig, RuntimeConfig
    from producers import KafkaConnection, PublisherConfig
    from schemas import AvroCodec

    from ._gateway_config import HttpGatewayConfig

__all__ = [
    "PROFILE_DEFAULTS",
    "SETTING_FIELDS",
    "UNSET_CONFIG_FIELDS",
    "Profile",
    "Section",
    "Settings",
    "load_settings",
]

_Config = TypeVar("_Config", bound=BaseModel)

Profile = Literal["kafka", "embedded"]
Section = Literal["connection", "publisher", "consumer", "runtime", "groups", "http", "outbox"]

_ENV_PREFIX = "EVENTBUS_"

SETTING_FIELDS: Mapping[str, tuple[Section, str]] = {
    # KafkaConnection
    **{
        name: ("connection", name)
        for name in (
            "bootstrap_servers",
            "topic_prefix",
            "client_id",
            "security_protocol",
            "sasl_mechanism",
            "sasl_username",
            "sasl_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_key_password",
            "connect_timeout_s",
            "request_timeout_s",
            "schema_registry_url",
            "schema_registry_username",
            "schema_registry_password",
        )
    },
    # PublisherConfig
    "service_name": ("publisher", "service"),
    "producer_acks": ("publisher", "acks"),
    "producer_idempotence": ("publisher", "enable_idempotence"),
    "producer_compression": ("publisher", "compression"),
    "producer_linger_ms": ("publisher", "linger_ms"),
    "producer_max_batch_bytes": ("publisher", "max_batch_bytes"),
    "producer_max_buffered_records": ("publisher", "max_buffered_records"),
    "producer_transactional_id": ("publisher", "transactional_id"),
    "max_message_bytes": ("publisher", "max_message_bytes"),
    "delivery_timeout_s": ("publisher", "delivery_timeout_s"),
    "wire_format": ("publisher", "wire_format"),
    # ConsumerConfig
    **{
        f"consumer_{name}": ("consumer", name)
        for name in (
            "auto_offset_reset",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "rebalance_timeout_ms",
            "max_partition_fetch_bytes",
            "fetch_max_bytes",
            "fetch_max_wait_ms",
            "isolation_level",
        )
    },
    # RuntimeConfig
    **{
        name: ("runtime", name)
        for name in (
            "concurrency",
            "max_attempts",
            "backoff_initial_s",
            "backoff_max_s",
            "backoff_multiplier",
            "backoff_jitter",
            "fetch_max_records",
            "fetch_timeout_s",
            "max_buffered_per_partition",
            "max_buffered_total",
            "commit_interval_s",
            "commit_when_idle",
            "commit_timeout_s",
            "revoke_timeout_s",
            "shutdown_timeout_s",
            "dead_letter_retry_s",
            "retry_tiers_s",
            "retry_keep_key_order",
            "retry_topic_partitions",
            "retry_topic_replication",
        )
    },
    # GroupSettings
    **{
        name: ("groups", name)
        for name in (
            "smtp_host",
            "smtp_port",
            "smtp_username",
            "smtp_password",
            "smtp_starttls",
            "smtp_sender",
            "email_domain",
            "gateway_latency_s",
            "gateway_failure_rate",
            "gateway_seed",
            "payment_workers",
        )
    },
    # HttpGatewayConfig
    **{
        f"http_{name}": ("http", name)
        for name in (
            "jwt_secret",
            "jwt_public_key_file",
            "jwt_algorithms",
            "jwt_audience",
            "jwt_issuer",
            "dev_tokens",
            "queue_size",
            "heartbeat_s",
        )
    },
    # RelayConfig
    **{
        f"outbox_{name}": ("outbox", name)
        for name in (
            "slots",
            "batch_size",
            "poll_interval_s",
            "lease_s",
            "exactly_once",
            "transactional_id_prefix",
        )
    },
}
"""Setting name (``EVENTBUS_`` + its upper case) -> (config, field) it sets."""

UNSET_CONFIG_FIELDS: Mapping[Section, frozenset[str]] = {"publisher": frozenset({"service_version"})}
"""Config fields no setting sets (the package's own version)."""

PROFILE_DEFAULTS: Mapping[Profile, Mapping[str, object]] = {
    "kafka": {
        "replication_factor": 3,
        "consumer_session_timeout_ms": 45_000,
        "consumer_heartbeat_interval_ms": 3_000,
    },
    "embedded": {
        # Tansu refuses InitProducerId, and reassigns a departed member's partitions only after the session timeout
        "producer_idempotence": False,
        "replication_factor": 1,
        "consumer_session_timeout_ms": 6_000,
        "consumer_heartbeat_interval_ms": 500,
    },
}
"""The defaults that differ by broker kind; every other default is the config's own."""


class Settings(BaseSettings):
    """Everything configurable, read from the environment (prefix ``EVENTBUS_``).

    ``profile`` picks the defaults of the broker kind: ``kafka`` (Apache Kafka: idempotent
    producer, replication 3, 45 s sessions) or ``embedded`` (the Tansu broker of development
    and tests: no idempotence, replication 1, short group timeouts). Any setting given
    explicitly wins over its profile default. Secrets are ``SecretStr``: they never show in
    ``repr`` or ``eventbus settings``.

    Example: ``Settings(bootstrap_servers="127.0.0.1:9092", profile="embedded").connection()``
    """

    model_config = SettingsConfigDict(env_prefix=_ENV_PREFIX, frozen=True, extra="ignore")

    profile: Profile = "kafka"
    database_url: str = Field(default="sqlite:///eventbus.sqlite", repr=False)
    """PostgreSQL (``postgresql://...``) or SQLite (``sqlite:///file``): dedup store and the groups' tables."""
    redis_url: str | None = Field(default=None, repr=False)
    """Redis for the cache group (``redis://host:6379/0``); unset: an in-process cache (embedded default)."""
    replication_factor: int | None = Field(default=None, ge=1)
    """Replication factor of the topics eventbus creates; None: the profile's."""

    # Below: each sets a field of a typed config (SETTING_FIELDS); None takes its default (profile, then config).
    bootstrap_servers: str | None = None
    # Checked here too (the config checks it again): commands that never connect still name topics with it.
    topic_prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]*$")
    client_id: str | None = None
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    connect_timeout_s: float | None = None
    request_timeout_s: float | None = None
    """Also bounds each Schema Registry request."""
    schema_registry_url: str | None = Field(default=None, repr=False)
    """Confluent Schema Registry, e.g. ``https://registry:8081`` (comma-separated for several; ``mock://name``
    for an in-process one in tests). With it, every consumer and reader also decodes Confluent-framed records;
    ``wire_format=confluent`` needs it. Shown with any password in it masked."""
    schema_registry_username: str | None = None
    """Basic auth user of the Schema Registry (with ``schema_registry_password``)."""
    schema_registry_password: SecretStr | None = None

    service_name: str | None = None
    producer_acks: Literal["all", "1", "0"] | None = None
    producer_idempotence: bool | None = None
    producer_compression: str | None = None
    producer_linger_ms: int | None = None
    producer_max_batch_bytes: int | None = None
    producer_max_buffered_records: int | None = None
    producer_transactional_id: str | None = None
    """Makes publishers transactional (Apache Kafka only); one id per producing process."""
    max_message_bytes: int | None = None
    delivery_timeout_s: float | None = None
    wire_format: Literal["single-object", "confluent"] | None = None
    """How publishers frame event values: ``single-object`` (default; Avro single-object encoding, no registry)
    or ``confluent`` (magic byte 0 + the schema's Schema Registry id, registered on first use under the subject
    ``{topic}-{record full name}``; what Kafka UI, Redpanda Console, kcat, Connect, ksqlDB and Flink decode).
    Consumers read both formats whatever this says, so a topic can migrate record by record."""

    consumer_auto_offset_reset: str | None = None
    consumer_session_timeout_ms: int | None = None
    consumer_heartbeat_interval_ms: int | None = None
    """Unless set, the heartbeat follows the session timeout: at most a tenth of it."""
    consumer_max_poll_interval_ms: int | None = None
    consumer_rebalance_timeout_ms: int | None = None
    consumer_max_partition_fetch_bytes: int | None = None
    consumer_fetch_max_bytes: int | None = None
    consumer_fetch_max_wait_ms: int | None = None
    consumer_isolation_level: str | None = None

    concurrency: int | None = None
    max_attempts: int | None = None
    backoff_initial_s: float | None = None
    backoff_max_s: float | None = None
    backoff_multiplier: float | None = None
    backoff_jitter: float | None = None
    fetch_max_records: int | None = None
    fetch_timeout_s: float | None = None
    max_buffered_per_partition: int | None = None
    max_buffered_total: int | None = None
    commit_interval_s: float | None = None
    commit_when_idle: bool | None = None
    commit_timeout_s: float | None = None
    """Unset: the request timeout."""
    revoke_timeout_s: float | None = None
    shutdown_timeout_s: float | None = None
    dead_letter_retry_s: float | None = None
    retry_tiers_s: tuple[float, ...] | None = None
    """Delays of the non-blocking retry tiers, e.g. ``[5, 60, 600]`` (JSON); unset or empty: none."""
    retry_keep_key_order: bool | None = None
    retry_topic_partitions: int | None = None
    retry_topic_replication: int | None = None
    """Unset: the replication factor."""

    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool | None = None
    smtp_sender: str | None = None
    email_domain: str | None = None
    gateway_latency_s: float | None = None
    gateway_failure_rate: float | None = None
    gateway_seed: int | None = None
    payment_workers: int | None = None

    http_jwt_secret: SecretStr | None = None
    http_jwt_public_key_file: Path | None = None
    http_jwt_algorithms: tuple[str, ...] | None = None
    """Algorithms gateway tokens may use, e.g. ``["RS256"]`` (JSON); unset: derived from the secret and key."""
    http_jwt_audience: str | None = None
    http_jwt_issuer: str | None = None
    http_dev_tokens: bool | None = None
    http_queue_size: int | None = None
    http_heartbeat_s: float | None = None

    outbox_slots: int | None = None
    """Units of work the outbox relays share; every relay of a database must use the same number."""
    outbox_batch_size: int | None = None
    outbox_poll_interval_s: float | None = None
    outbox_lease_s: float | None = None
    outbox_exactly_once: bool | None = None
    """Unset: exactly once (Kafka transactions) when the producer is idempotent, i.e. on Apache Kafka."""
    outbox_transactional_id_prefix: str | None = None

    # -- effective values --------------------------------------------------------------------------

    def _given(self, name: str) -> object:
        """The value set for ``name``, else the profile's default, else None (the config's default)."""
        value = getattr(self, name)
        if value is None:
            value = PROFILE_DEFAULTS[self.profile].get(name)
        return value

    @property
    def idempotence(self) -> bool:
        """Whether the producer is idempotent, after the profile default."""
        return bool(self.publisher_config().enable_idempotence)

    @property
    def replication(self) -> int:
        """Replication factor of created topics, after the profile default."""
        value = self._given("replication_factor")
        assert isinstance(value, int)  # noqa: S101 - every profile sets it
        return value

    def _group_timeouts_ms(self) -> dict[str, int]:
        """Session timeout and heartbeat interval: the heartbeat, unless set, is at most a tenth of the session."""
        session = self._given("consumer_session_timeout_ms")
        assert isinstance(session, int)  # noqa: S101 - every profile sets it
        heartbeat = self.consumer_heartbeat_interval_ms
        if heartbeat is None:
            profile_heartbeat = PROFILE_DEFAULTS[self.profile].get("consumer_heartbeat_interval_ms", session)
            assert isinstance(profile_heartbeat, int)  # noqa: S101 - a number of milliseconds
            heartbeat = min(profile_heartbeat, session // 10)
        return {"session_timeout_ms": session, "heartbeat_interval_ms": heartbeat}

    def _fields(self, section: Section) -> dict[str, Any]:
        """The config fields of ``section`` that are set (explicitly or by the profile)."""
        fields: dict[str, Any] = {}
        for name, (where, field) in SETTING_FIELDS.items():
            if where == section and (value := self._given(name)) is not None:
                fields[field] = value
        return fields

    def connection(self) -> KafkaConnection:
        """The connection config for producers, consumers and admin."""
        from producers import KafkaConnection  # noqa: PLC0415 - see the module docstring

        return _build(KafkaConnection, "connection", **self._fields("connection"))

    def publisher_config(self, service: str | None = None) -> PublisherConfig:
        """The publisher config; ``service`` overrides ``service_name``."""
        from producers import PublisherConfig  # noqa: PLC0415 - see the module docstring

        fields = self._fields("publisher")
        if "acks" in fields and fields["acks"] != "all":
            fields["acks"] = int(fields["acks"])
        if service is not None:
            fields["service"] = service
        return _build(PublisherConfig, "publisher", **fields)

    def codec(self, service: str | None = None) -> AvroCodec:
        """The codec of these settings: writes ``wire_format``, reads both formats (Confluent with the registry).

        Example: ``Settings(wire_format="confluent", schema_registry_url="mock://t").codec()``
        """
        from producers import codec_for  # noqa: PLC0415 - see the module docstring

        return codec_for(self.connection(), self.publisher_config(service))

    def consumer_config(self) -> ConsumerConfig:
        """Group membership settings, after the profile defaults."""
        from consumers import ConsumerConfig  # noqa: PLC0415 - see the module docstring

        return _build(ConsumerConfig, "consumer", **{**self._fields("consumer"), **self._group_timeouts_ms()})

    def runtime_config(self, **overrides: Any) -> RuntimeConfig:
        """Dispatch, retry and shutdown settings; ``overrides`` (e.g. from the command line) win unless None."""
        from consumers import RuntimeConfig  # noqa: PLC0415 - see the module docstring

        fields = self._fields("runtime")
        if "commit_timeout_s" not in fields and self.request_timeout_s is not None:
            fields["commit_timeout_s"] = self.request_timeout_s
        fields.setdefault("retry_topic_replication", self.replication)
        fields.update({name: value for name, value in overrides.items() if value is not None})
        return _build(RuntimeConfig, "runtime", **fields)

    def group_settings(self) -> GroupSettings:
        """Settings of the marketplace's groups (SMTP, payment gateway, email domain)."""
        from consumers import GroupSettings  # noqa: PLC0415 - see the module docstring

        return _build(GroupSettings, "groups", **self._fields("groups"))

    def http_config(self) -> HttpGatewayConfig:
        """Token checks and stream pacing of ``eventbus gateway``."""
        from ._gateway_config import HttpGatewayConfig  # noqa: PLC0415 - see the module docstring

        return _build(HttpGatewayConfig, "http", **self._fields("http"))

    def relay_config(self) -> RelayConfig:
        """How ``eventbus relay`` shares, paces and delivers the outbox."""
        from consumers import RelayConfig  # noqa: PLC0415 - see the module docstring

        return _build(RelayConfig, "outbox", **self._fields("outbox"))

    # -- showing them ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Every setting with its effective value, secrets masked (for ``eventbus settings``)."""
        configs: dict[Section, BaseModel] = {
            "connection": self.connection(),
            "publisher": self.publisher_config(),
            "consumer": self.consumer_config(),
            "runtime": self.runtime_config(),
            "groups": self.group_settings(),
            "http": self.http_config(),
            "outbox": self.relay_config(),
        }
        values: dict[str, Any] = {
            "profile": self.profile,
            "database_url": _mask_url(self.database_url),
            "redis_url": _mask_url(self.redis_url) if self.redis_url else None,
            "replication_factor": self.replication,
        }
        for name, (section, field) in SETTING_FIELDS.items():
            values[name] = _shown(getattr(configs[section], field))
        if values["schema_registry_url"]:
            values["schema_registry_url"] = ",".join(map(_mask_url, values["schema_registry_url"].split(",")))
        return values

    def sources(self) -> dict[str, str]:
        """Where each effective value comes from: ``environment``, ``given``, ``profile <name>`` or ``default``.

        Example: ``Settings(profile="embedded").sources()["producer_idempotence"] == "profile embedded"``
        """
        sources: dict[str, str] = {}
        for name in ("profile", "database_url", "redis_url", "replication_factor", *SETTING_FIELDS):
            if name in self.model_fields_set:
                sources[name] = "environment" if f"{_ENV_PREFIX}{name.upper()}" in os.environ else "given"
            elif name in PROFILE_DEFAULTS[self.profile]:
                sources[name] = f"profile {self.profile}"
            else:
                sources[name] = "default"
        if "consumer_heartbeat_interval_ms" not in self.model_fields_set:
            sources["consumer_heartbeat_interval_ms"] = (
                f"profile {self.profile}, at most a tenth of the session timeout"
            )
        if "commit_timeout_s" not in self.model_fields_set and self.request_timeout_s is not None:
            sources["commit_timeout_s"] = "derived from request_timeout_s"
        if "retry_topic_replication" not in self.model_fields_set:
            sources["retry_topic_replication"] = "derived from replication_factor"
        return sources


def _shown(value: object) -> object:
    """A config value as ``eventbus settings`` shows it: secrets masked, paths and tuples plain."""
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _mask_url(url: str) -> str:
    """The URL with any password replaced by asterisks."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:**********@{host}"


def _problems(exc: ValidationError, variable_of: Mapping[str, str], known: Iterable[str]) -> str:
    """Each problem as ``EVENTBUS_NAME: message``.

    A model-level check (several fields together) has no field of its own: it is
    named by the settings its message mentions, so no problem ever starts with
    an empty name.
    """
    fields = list(known)

    def variable(field: str) -> str:
        return f"{_ENV_PREFIX}{variable_of.get(field, field).upper()}"

    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            where = variable(".".join(map(str, error["loc"])))
        else:
            mentioned = [field for field in fields if re.search(rf"\b{re.escape(field)}\b", message)]
            where = ", ".join(map(variable, mentioned)) or "these settings together"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def _build(kind: type[_Config], section: Section, **fields: Any) -> _Config:
    try:
        return kind(**fields)
    except ValidationError as exc:
        variable_of = {field: name for name, (where, field) in SETTING_FIELDS.items() if where == section}
        msg = f"invalid settings: {_problems(exc, variable_of, kind.model_fields)}"
        raise ConfigurationError(msg) from exc


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` on top; ``ConfigurationError`` when invalid.

    Example: ``load_settings(profile="embedded").connection()``
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        msg = f"invalid settings: {_problems(exc, {}, Settings.model_fields)}"
        raise ConfigurationError(msg) from exc
