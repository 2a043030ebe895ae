"""Typed, keyword-only configuration for connecting to Kafka and publishing."""

from __future__ import annotations

import ssl
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from schemas import WireFormat
from schemas.errors import ConfigurationError

__all__ = ["KafkaConnection", "PublisherConfig"]


def _package_version() -> str:
    try:
        return version("eventbus")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConnection(_Config):
    """Where the brokers are and how to authenticate; shared by producers, consumers and admin.

    Secrets are ``SecretStr`` and never appear in ``repr`` or logs.
    Example: ``KafkaConnection(bootstrap_servers="kafka-1:9092,kafka-2:9092")``
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "eventbus"
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    """Put before every entity topic name, so several deployments can share a cluster."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    request_timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """How long to keep trying to reach a broker before ``BrokerUnavailableError``."""
    schema_registry_url: str | None = Field(default=None, pattern=r"^(https?|mock)://\S+$", repr=False)
    """Confluent Schema Registry (``https://registry:8081``; several comma-separated; ``mock://name``: in-process,
    for tests). Needed to publish with ``wire_format="confluent"`` and to read Confluent-framed records."""
    schema_registry_username: str | None = None
    """Basic auth user of the registry (with ``schema_registry_password``); or put both in the URL."""
    schema_registry_password: SecretStr | None = None

    @model_validator(mode="after")
    def _check_security(self) -> KafkaConnection:
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl and (self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None):
            msg = f"{self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password"
            raise ValueError(msg)
        if not uses_sasl and self.sasl_mechanism is not None:
            msg = f"sasl_mechanism is set but security_protocol is {self.security_protocol}"
            raise ValueError(msg)
        if (self.schema_registry_username is None) != (self.schema_registry_password is None):
            msg = "schema_registry_username and schema_registry_password go together"
            raise ValueError(msg)
        if self.schema_registry_username is not None and self.schema_registry_url is None:
            msg = "schema_registry_username is set but schema_registry_url is not"
            raise ValueError(msg)
        return self

    def topic(self, entity: str) -> str:
        """The full name of an entity topic. Example: ``conn.topic("session")``"""
        return f"{self.topic_prefix}{entity}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL, from the configured files (None for the other protocols).

        It verifies the broker's certificate and host name, against ``ssl_cafile`` or else the system's CAs.
        A file that cannot be read or used is one ``ConfigurationError`` naming the file and its setting.
        Example: ``KafkaConnection(security_protocol="SSL", ssl_cafile=Path("ca.pem")).ssl_context()``
        """
        if not self.security_protocol.endswith("SSL"):
            return None
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            msg = "EVENTBUS_SSL_KEYFILE / ssl_keyfile is set but EVENTBUS_SSL_CERTFILE / ssl_certfile is not"
            raise ConfigurationError(msg)
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            _check_readable(name, getattr(self, name))
        try:
            context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(_file_problem("ssl_cafile", self.ssl_cafile, exc)) from exc
        if self.ssl_certfile is not None:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=password)
            except (OSError, ssl.SSLError) as exc:
                key = f" with the key {self.ssl_keyfile}" if self.ssl_keyfile else ""
                msg = (
                    f"EVENTBUS_SSL_CERTFILE / ssl_certfile: cannot load the client certificate "
                    f"{self.ssl_certfile}{key}: {_reason(exc)}"
                )
                raise ConfigurationError(msg) from exc
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (producer, consumer or admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return options


def _reason(exc: BaseException) -> str:
    """What went wrong with a file, without Python's ``[Errno 2]`` prefix."""
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM file ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


_FILE_ROLES = {"ssl_cafile": "the CA file", "ssl_certfile": "the client certificate", "ssl_keyfile": "the client key"}


def _file_problem(name: str, path: Path | None, exc: BaseException) -> str:
    """``EVENTBUS_SSL_CAFILE / ssl_cafile: cannot read the CA file /x/ca.pem: No such file or directory``."""
    verb = "use" if isinstance(exc, ssl.SSLError) else "read"
    return f"EVENTBUS_{name.upper()} / {name}: cannot {verb} {_FILE_ROLES[name]} {path}: {_reason(exc)}"


def _check_readable(name: str, path: Path | None) -> None:
    """Raise ``ConfigurationError`` naming the file and its setting when ``path`` cannot be read."""
    if path is None:
        return
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigurationError(_file_problem(name, path, exc)) from exc


class PublisherConfig(_Config):
    """How events are published.

    ``enable_idempotence`` is on by default, as Apache Kafka should run; the
    embedded broker refuses it, so its profile turns it off explicitly. A
    publisher never drops the setting on its own: a broker that refuses it
    gives ``IdempotenceUnsupportedError``.

    Example: ``PublisherConfig(service="booking", compression="zstd")``
    """

    service: str = "eventbus"
    service_version: str = Field(default_factory=_package_version)
    acks: Literal["all", 1, 0] = "all"
    enable_idempotence: bool = True
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    max_message_bytes: int = Field(default=1_048_576, gt=0)
    """Largest encoded record accepted; enforced in the client because some brokers do not."""
    linger_ms: int = Field(default=5, ge=0)
    max_batch_bytes: int = Field(default=262_144, gt=0)
    delivery_timeout_s: float = Field(default=30.0, gt=0)
    """How long a record may wait for the broker's acknowledgement, from the moment its batch opened: past it,
    ``publish`` raises ``PublishTimeoutError`` and a ``send()`` is reported by ``flush()`` (as Java's
    ``delivery.timeout.ms``; the record may still have been written)."""
    max_buffered_records: int = Field(default=20_000, gt=0)
    """Bound on records sent with ``send()`` and not yet acknowledged."""
    transactional_id: str | None = Field(default=None, min_length=1)
    """Makes the publisher transactional: it then sends only inside ``async with publisher.transaction()``.

    One id per producing process (a restarted process with the same id fences its predecessor's
    open transaction). Needs idempotence, so Apache Kafka: the embedded broker refuses both."""
    wire_format: WireFormat = "single-object"
    """How event values are framed: ``single-object`` (Avro single-object encoding, no registry) or
    ``confluent`` (magic byte 0 + Schema Registry id, what Kafka UI, Connect, ksqlDB and Flink decode;
    needs ``KafkaConnection.schema_registry_url``). Consumers read both whatever this says."""

    @model_validator(mode="after")
    def _check_idempotence(self) -> PublisherConfig:
        if self.enable_idempotence and self.acks != "all":
            msg = "enable_idempotence needs acks='all'"
            raise ValueError(msg)
        if self.transactional_id is not None and not self.enable_idempotence:
            msg = "transactional_id needs enable_idempotence=True (transactions are built on the idempotent producer)"
            raise ValueError(msg)
        return self
