"""Schema ids from a Confluent Schema Registry (confluent-kafka's client), and the codec a deployment uses.

``codec_for(connection, config)`` is where the settings choose the wire format: every publisher,
consumer group and reader built from a ``KafkaConnection`` gets its codec from it. With
``schema_registry_url`` set, the codec reads Confluent-framed records (whatever the wire format);
with ``wire_format="confluent"`` it also writes them.

``RegistrySchemaIds`` is the ``SchemaIdResolver`` over ``confluent_kafka.schema_registry``:

- ``id_for`` registers the schema under its subject on first use (or only looks it up, with
  ``auto_register=False``) and keeps the id: one request per subject and schema per process;
- ``schema_for`` fetches the writer schema of an id once and keeps it forever (ids never change);
- failures are typed: ``SchemaRegistryError`` (retriable when the registry is down, slow or
  overloaded; not when it refuses for good), ``UnknownSchemaIdError`` for an id it does not have.
  Nothing failed is cached, so the next call asks again.

The client is synchronous: a first use blocks its caller (the event loop) for one request, bounded
by the connection's ``request_timeout_s`` and one retry. One client and one resolver per registry
and credentials are shared in a process (so ``mock://`` registries are shared per URL, as in tests).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from schemas import CATALOG, AvroCodec, Catalog, schema_text
from schemas.errors import ConfigurationError, SchemaRegistryError, UnknownSchemaIdError

from ._config import KafkaConnection, PublisherConfig

__all__ = ["RegistrySchemaIds", "codec_for", "registry_client", "registry_schema_ids"]

_RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SCHEMA_NOT_FOUND = 40403
_SUBJECT_NOT_FOUND = 40401
_VERSION_NOT_FOUND = 40402
_MAX_RETRIES = 1
_RETRY_WAIT_MS = 200

_lock = threading.Lock()
_clients: dict[tuple[str, str | None, str | None, float], Any] = {}
_resolvers: dict[tuple[int, bool], RegistrySchemaIds] = {}


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network errors of the registry client (httpx2 or httpx, whichever it uses), and OSError."""
    try:
        from confluent_kafka.schema_registry.common._httpx_compat import httpx  # noqa: PLC0415
    except ImportError:  # an older client: httpx itself
        import httpx  # type: ignore[no-redef]  # noqa: PLC0415

    return (httpx.TransportError, OSError)


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "error_message", None) or str(exc) or type(exc).__name__
    return str(message)


class RegistrySchemaIds:
    """A ``SchemaIdResolver`` on a confluent-kafka ``SchemaRegistryClient`` (or its ``mock://`` client).

    Example: ``AvroCodec(wire_format="confluent", schema_ids=RegistrySchemaIds(registry_client(connection)))``
    """

    def __init__(self, client: Any, *, auto_register: bool = True) -> None:
        from confluent_kafka.schema_registry import Schema as RegistrySchema  # noqa: PLC0415 - optional package
        from confluent_kafka.schema_registry.error import (  # noqa: PLC0415 - optional package
            SchemaRegistryError as ClientError,
        )

        self.client = client
        self.auto_register = auto_register
        self._schema_type = RegistrySchema
        self._client_error: type[Exception] = ClientError
        self._transport = _transport_errors()
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}

    def id_for(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of ``schema`` under ``subject``: registered (or looked up) on first use, then kept."""
        text = schema_text(schema)
        found = self._ids.get((subject, text))
        if found is not None:
            return found
        registry_schema = self._schema_type(text, "AVRO")
        try:
            if self.auto_register:
                schema_id = int(self.client.register_schema(subject, registry_schema))
            else:
                schema_id = int(self.client.lookup_schema(subject, registry_schema).schema_id)
        except self._client_error as exc:
            raise self._refused(exc, f"registering the schema of subject {subject!r}") from exc
        except self._transport as exc:
            raise self._unreachable(exc, f"registering the schema of subject {subject!r}") from exc
        self._ids[subject, text] = schema_id
        return schema_id

    def schema_for(self, schema_id: int) -> dict[str, Any]:
        """The writer schema of ``schema_id``: fetched once, kept forever."""
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        try:
            registered = self.client.get_schema(schema_id)
        except self._client_error as exc:
            if getattr(exc, "http_status_code", None) == 404:
                raise UnknownSchemaIdError(
                    schema_id, f"the Schema Registry does not have it ({_describe(exc)})"
                ) from exc
            raise self._refused(exc, f"fetching schema id {schema_id}") from exc
        except self._transport as exc:
            raise self._unreachable(exc, f"fetching schema id {schema_id}") from exc
        kind = getattr(registered, "schema_type", None) or "AVRO"
        if kind != "AVRO":
            raise UnknownSchemaIdError(schema_id, f"it is a {kind} schema, not Avro")
        if getattr(registered, "references", None):
            raise UnknownSchemaIdError(schema_id, "schemas with references are not supported")
        try:
            schema = json.loads(registered.schema_str)
        except (TypeError, ValueError) as exc:
            raise UnknownSchemaIdError(schema_id, f"its schema is not JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise UnknownSchemaIdError(schema_id, "its schema is not an Avro record")
        self._schemas[schema_id] = schema
        return schema

    @staticmethod
    def _refused(exc: Exception, doing: str) -> SchemaRegistryError:
        status = getattr(exc, "http_status_code", None)
        code = getattr(exc, "error_code", None)
        retriable = status in _RETRIABLE_STATUS or status is None or (isinstance(status, int) and status >= 500)
        hint = ""
        if code in (_SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND, _SCHEMA_NOT_FOUND):
            hint = "; the schema is not registered and auto-registration is off"
        elif status == 409:
            hint = "; the registry's compatibility rules refuse this schema version"
        elif status in (401, 403):
            hint = "; check EVENTBUS_SCHEMA_REGISTRY_USERNAME / _PASSWORD"
        message = f"Schema Registry refused {doing}: {_describe(exc)} (HTTP {status}, code {code}){hint}"
        return SchemaRegistryError(message, retriable=retriable, status=status)

    @staticmethod
    def _unreachable(exc: BaseException, doing: str) -> SchemaRegistryError:
        return SchemaRegistryError(f"Schema Registry unreachable while {doing}: {_describe(exc)}", retriable=True)


def registry_client(connection: KafkaConnection) -> Any:
    """The process's confluent-kafka registry client for ``connection`` (``mock://``: the in-memory one).

    ``ConfigurationError`` when no registry is configured or confluent-kafka's registry client
    (``pip install 'confluent-kafka[schemaregistry]'``) is missing.
    """
    url = connection.schema_registry_url
    if url is None:
        msg = "no Schema Registry configured: set EVENTBUS_SCHEMA_REGISTRY_URL"
        raise ConfigurationError(msg)
    password = connection.schema_registry_password.get_secret_value() if connection.schema_registry_password else None
    key = (url, connection.schema_registry_username, password, connection.request_timeout_s)
    with _lock:
        client = _clients.get(key)
        if client is None:
            try:
                from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415 - optional
            except ImportError as exc:
                msg = (
                    "the Confluent wire format needs confluent-kafka's Schema Registry client: "
                    f"pip install 'confluent-kafka[schemaregistry]' ({exc})"
                )
                raise ConfigurationError(msg) from exc
            conf: dict[str, Any] = {
                "url": url,
                "timeout": connection.request_timeout_s,
                "max.retries": _MAX_RETRIES,
                "retries.wait.ms": _RETRY_WAIT_MS,
                "retries.max.wait.ms": _RETRY_WAIT_MS * 5,
            }
            if connection.schema_registry_username is not None:
                conf["basic.auth.user.info"] = f"{connection.schema_registry_username}:{password}"
            try:
                client = SchemaRegistryClient.new_client(conf)
            except (TypeError, ValueError) as exc:
                msg = f"EVENTBUS_SCHEMA_REGISTRY_URL: cannot use the Schema Registry settings: {exc}"
                raise ConfigurationError(msg) from exc
            _clients[key] = client
        return client


def registry_schema_ids(connection: KafkaConnection, *, auto_register: bool = True) -> RegistrySchemaIds:
    """The process's shared resolver for ``connection``'s registry (its caches serve every codec)."""
    client = registry_client(connection)
    with _lock:
        resolver = _resolvers.get((id(client), auto_register))
        if resolver is None:
            resolver = _resolvers[id(client), auto_register] = RegistrySchemaIds(client, auto_register=auto_register)
        return resolver


def codec_for(
    connection: KafkaConnection, config: PublisherConfig | None = None, catalog: Catalog = CATALOG
) -> AvroCodec:
    """The codec of a deployment: ``config.wire_format`` to write, both formats to read.

    Without ``schema_registry_url``, a plain single-object codec (Confluent-framed records are then
    ``UnknownSchemaIdError``); ``wire_format="confluent"`` without it is a ``ConfigurationError``.
    Example: ``codec_for(settings.connection(), settings.publisher_config())``
    """
    wire_format = config.wire_format if config is not None else "single-object"
    if connection.schema_registry_url is None:
        if wire_format == "confluent":
            msg = "EVENTBUS_WIRE_FORMAT=confluent needs EVENTBUS_SCHEMA_REGISTRY_URL (the Schema Registry)"
            raise ConfigurationError(msg)
        return AvroCodec(catalog)
    return AvroCodec(
        catalog,
        wire_format=wire_format,
        schema_ids=registry_schema_ids(connection),
        topic_prefix=connection.topic_prefix,
    )
