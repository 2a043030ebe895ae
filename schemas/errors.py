"""Every error eventbus raises, under one root.

Library errors (aiokafka, fastavro, pydantic, database drivers) are converted
where they cross into eventbus, with the original kept as ``__cause__``; none
escapes the public API.

::

    EventBusError                      retriable=False unless stated
    ├── EventValidationError           an event does not match its model; nothing was sent
    ├── UnknownEventTypeError          the event type is not in the catalog
    ├── UnknownTopicError              the topic is not one of the catalog's topics
    ├── MessageTooLargeError           the encoded record exceeds the client-side limit
    ├── ConfigurationError             settings that cannot work
    │   ├── IdempotenceUnsupportedError    the broker refused InitProducerId
    │   └── AuthenticationFailedError      the broker refused the SASL credentials
    ├── HandlerError                   raised by handlers to say how a failure is to be treated
    │   ├── RetriableHandlerError          retriable=True: try again (then dead-letter)
    │   └── FatalHandlerError              straight to the dead-letter topic
    ├── StorageError                   the database or cache failed (retriable unless stated)
    ├── SerializationError
    │   ├── EncodeError                a valid model that Avro could not write
    │   ├── DecodeError                bytes that are not an event we can read
    │   │   ├── UnknownSchemaError         the writer fingerprint is not registered
    │   │   │   └── UnknownSchemaIdError       the Schema Registry id is unknown (or not a catalog event)
    │   │   └── CorruptMessageError        bad magic, truncated or malformed body
    │   └── SchemaRegistryError        retriable=True unless stated: the Schema Registry failed or refused
    └── BrokerError                    retriable=True
        ├── BrokerUnavailableError     no broker answered within the timeout
        ├── BrokerTimeoutError         a request got no answer within the timeout
        │   └── PublishTimeoutError        no acknowledgement of a record within the timeout
        ├── PublishFailedError         the broker refused the record
        └── CommitFailedError          offsets could not be committed (they will be redelivered)

Example::

    try:
        await publisher.publish(event)
    except EventBusError as exc:
        if exc.retriable: ...
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailedError",
    "BrokerError",
    "BrokerTimeoutError",
    "BrokerUnavailableError",
    "CommitFailedError",
    "ConfigurationError",
    "CorruptMessageError",
    "DecodeError",
    "EncodeError",
    "EventBusError",
    "EventValidationError",
    "FatalHandlerError",
    "HandlerError",
    "IdempotenceUnsupportedError",
    "MessageTooLargeError",
    "PublishFailedError",
    "PublishTimeoutError",
    "RetriableHandlerError",
    "SchemaRegistryError",
    "SerializationError",
    "StorageError",
    "UnknownEventTypeError",
    "UnknownSchemaError",
    "UnknownSchemaIdError",
    "UnknownTopicError",
]


class EventBusError(Exception):
    """Root of every eventbus error.

    ``retriable`` tells whether trying the same operation again may succeed.
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retriable is not None:
            self.retriable = retriable


class EventValidationError(EventBusError):
    """An event (or the data for one) does not match its model.

    ``errors`` lists each problem as ``(field path, message)``; the first one
    is named in the message. Example: ``EventValidationError.errors[0][0] == "cost_credits"``.
    """

    def __init__(self, event_type: str, errors: list[tuple[str, str]]) -> None:
        self.event_type = event_type
        self.errors = errors
        first = f"{errors[0][0]}: {errors[0][1]}" if errors else "invalid"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"invalid {event_type} event: {first}{more}")

    @property
    def fields(self) -> list[str]:
        """The dotted paths of the invalid fields."""
        return [path for path, _ in self.errors]


class UnknownEventTypeError(EventBusError):
    """The event type is not in the catalog (a typo, or a missing schema)."""

    def __init__(self, event_type: str, known: list[str] | None = None) -> None:
        self.event_type = event_type
        hint = f"; known types: {', '.join(known)}" if known else ""
        super().__init__(f"unknown event type {event_type!r}{hint}")


class UnknownTopicError(EventBusError):
    """The topic is not one of the catalog's topics."""

    def __init__(self, topic: str, known: list[str] | None = None, *, reason: str = "") -> None:
        self.topic = topic
        hint = f"; known topics: {', '.join(known)}" if known else ""
        super().__init__(reason or f"unknown topic {topic!r}{hint}")


class MessageTooLargeError(EventBusError):
    """The encoded record is larger than the configured maximum message size (or than the broker's).

    ``size`` and ``limit`` are None when the broker refused the record and did not say them.
    Example: ``MessageTooLargeError(2_000_000, 1_048_576, "session:created")``
    """

    def __init__(self, size: int | None, limit: int | None, event_type: str = "", *, reason: str | None = None) -> None:
        self.size = size
        self.limit = limit
        what = f"{event_type} event" if event_type else "record"
        super().__init__(reason or f"{what} is {size} bytes, over the limit of {limit} bytes")


class ConfigurationError(EventBusError):
    """Settings that cannot work together or with this broker."""


class IdempotenceUnsupportedError(ConfigurationError):
    """The broker refused InitProducerId, so an idempotent producer cannot start."""


class AuthenticationFailedError(ConfigurationError):
    """The broker refused the SASL credentials (wrong user or password, or a mechanism it does not enable).

    Never retriable, and never carries the password. Example: ``except AuthenticationFailedError: rotate()``
    """


class HandlerError(EventBusError):
    """Raised by a handler to say how its failure is to be treated."""


class RetriableHandlerError(HandlerError):
    """A transient failure: the runtime retries with backoff, then dead-letters.

    Example: ``raise RetriableHandlerError("gateway busy")``
    """

    retriable = True


class FatalHandlerError(HandlerError):
    """A failure that retrying cannot fix (a business rule): straight to the dead-letter topic."""


class StorageError(EventBusError):
    """The database or the cache failed; retriable unless the error says otherwise."""

    retriable = True


class SerializationError(EventBusError):
    """Converting between an event and bytes failed."""


class EncodeError(SerializationError):
    """A model that passed validation could not be written as Avro."""


class DecodeError(SerializationError):
    """Bytes that are not an event this process can read."""


class UnknownSchemaError(DecodeError):
    """The writer schema's fingerprint is not registered."""

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint
        super().__init__(f"unknown writer schema fingerprint {fingerprint.hex()}")


class UnknownSchemaIdError(UnknownSchemaError):
    """A Confluent-framed record whose schema id the Schema Registry does not have, or cannot be read as an event.

    Never retriable (the registry answered); ``schema_id`` is the id read from the record.
    Example: ``UnknownSchemaIdError(42, "no schema registry is configured")``
    """

    def __init__(self, schema_id: int, reason: str = "") -> None:
        self.schema_id = schema_id
        self.fingerprint = b""
        DecodeError.__init__(self, f"unknown writer schema id {schema_id}" + (f": {reason}" if reason else ""))


class SchemaRegistryError(SerializationError):
    """The Schema Registry could not be reached or refused a request (Confluent wire format).

    Retriable by default (the registry is down, slow or overloaded): nothing was decoded or sent,
    so trying again later is safe. Not retriable when the registry refused for good: bad
    credentials, an incompatible schema, a schema not registered while auto-registration is off.
    ``status`` is the HTTP status when the registry answered. Example: ``except SchemaRegistryError as e: e.retriable``
    """

    retriable = True

    def __init__(self, message: str, *, retriable: bool | None = None, status: int | None = None) -> None:
        super().__init__(message, retriable=retriable)
        self.status = status


class CorruptMessageError(DecodeError):
    """Bad magic bytes, a truncated record or a body that is not valid Avro."""


class BrokerError(EventBusError):
    """The broker could not be reached or refused the request."""

    retriable = True


class BrokerUnavailableError(BrokerError):
    """No broker answered within the configured timeout."""


class BrokerTimeoutError(BrokerError):
    """A request (metadata, fetch, admin) got no answer within the timeout."""


class PublishTimeoutError(BrokerTimeoutError):
    """The broker did not acknowledge the record within the timeout."""


class PublishFailedError(BrokerError):
    """The broker refused the record; ``retriable`` says whether to try again.

    After ``flush()``, ``failures`` lists ``(event_id, error)`` of the events
    given to ``send()`` that were not delivered (the first 1000).
    """

    def __init__(
        self, message: str, *, retriable: bool | None = None, failures: list[tuple[object, EventBusError]] | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.failures = failures or []


class CommitFailedError(BrokerError):
    """Offsets could not be committed; the records will be delivered again."""
