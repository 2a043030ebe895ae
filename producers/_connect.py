"""Reaching the brokers: connecting with retry and a diagnosis, and turning aiokafka's errors into ours.

Every Kafka client of eventbus (producer, consumers, admin) connects through ``connect_with_retry`` and
converts aiokafka's errors with ``convert_kafka_error`` at the boundary.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import AuthenticationFailedError as KafkaAuthenticationFailedError
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from schemas.errors import (
    AuthenticationFailedError,
    BrokerError,
    BrokerTimeoutError,
    BrokerUnavailableError,
    ConfigurationError,
    EventBusError,
    MessageTooLargeError,
    PublishFailedError,
    PublishTimeoutError,
)

from ._config import KafkaConnection

__all__ = ["connect_with_retry", "convert_kafka_error"]


def convert_kafka_error(exc: BaseException, action: str, *, publishing: bool = False) -> EventBusError:
    """Our error for an aiokafka one (keep it as ``__cause__`` with ``raise ... from exc``).

    Timeouts become ``PublishTimeoutError`` when ``publishing``, else ``BrokerTimeoutError``; refused SASL
    credentials ``AuthenticationFailedError``. Example: ``raise convert_kafka_error(exc, "listing topics") from exc``
    """
    if isinstance(exc, EventBusError):
        return exc
    detail = f"{action}: {type(exc).__name__}: {exc}"
    if isinstance(exc, (KafkaTimeoutError, RequestTimedOutError, TimeoutError)):
        return PublishTimeoutError(detail) if publishing else BrokerTimeoutError(detail)
    if isinstance(exc, (SaslAuthenticationFailed, KafkaAuthenticationFailedError, UnsupportedSaslMechanismError)):
        return AuthenticationFailedError(detail)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConfigurationError(f"{detail} (check EVENTBUS_SSL_CAFILE / ssl_cafile)")
    if isinstance(exc, (KafkaConnectionError, NodeNotReadyError)):
        return BrokerUnavailableError(detail)
    if isinstance(exc, MessageSizeTooLargeError):
        return MessageTooLargeError(None, None, reason=f"the broker refused the record as too large ({detail})")
    if isinstance(exc, KafkaError):
        return PublishFailedError(detail, retriable=bool(getattr(exc, "retriable", False)))
    return BrokerError(detail, retriable=False)


async def connect_with_retry(start: Any, connection: KafkaConnection, what: str) -> None:
    """Await ``start()`` until it succeeds, retrying connection errors up to ``connect_timeout_s``.

    aiokafka only says it could not bootstrap; after each failure one connection of our own (TLS and SASL
    as configured) finds out why. Refused credentials raise ``AuthenticationFailedError`` and an untrusted
    certificate ``ConfigurationError`` at once; a listener that does not speak the configured protocol
    (TLS against PLAINTEXT, say) ``BrokerUnavailableError`` saying so, once seen twice in a row; anything
    else is retried, and the last cause is named when the time is up.
    Example: ``await connect_with_retry(producer.start, connection, "producer")``
    """
    deadline = time.monotonic() + connection.connect_timeout_s
    delay = 0.1
    cause = ""
    suspected = ""  # a listener mismatch seen once: it ends the retries when the next attempt shows it again
    while True:
        try:
            await asyncio.wait_for(start(), timeout=max(0.1, deadline - time.monotonic()))
        except (TimeoutError, KafkaConnectionError, NodeNotReadyError) as exc:
            if isinstance(exc, KafkaConnectionError) and time.monotonic() < deadline:
                verdict, probed, cause = await _diagnose(connection, deadline)
                if verdict is not None and probed is not None:
                    if not isinstance(verdict, BrokerUnavailableError) or verdict.message == suspected:
                        raise verdict from probed
                    suspected = verdict.message
                else:
                    suspected = ""
            if time.monotonic() + delay >= deadline:
                if suspected:
                    raise BrokerUnavailableError(suspected, retriable=False) from exc
                msg = (
                    f"no broker answered at {connection.bootstrap_servers} within "
                    f"{connection.connect_timeout_s:g} s ({what}): {cause or _describe(exc)}"
                )
                raise BrokerUnavailableError(msg) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            return


def _describe(exc: BaseException) -> str:
    """``TypeName: message``, or only the type name when the message is empty (a reset connection has none)."""
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


async def _diagnose(
    connection: KafkaConnection, deadline: float
) -> tuple[EventBusError | None, BaseException | None, str]:
    """Connect to each bootstrap server as the client would: the first verdict, its exception and the last cause.

    A verdict is an error retrying cannot fix; the cause (``127.0.0.1:9092: ConnectionRefusedError: ...``)
    describes the last failure, for the message when the connect timeout runs out.
    """
    options = connection.client_options()
    cause = ""
    for host, port, _family in collect_hosts(connection.bootstrap_servers, randomize=False):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        address = f"{host}:{port}"
        timeout = min(remaining, connection.request_timeout_s)
        try:
            probe = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id=connection.client_id,
                    request_timeout_ms=max(1, int(timeout * 1000)),
                    ssl_context=options.get("ssl_context"),
                    security_protocol=connection.security_protocol,
                    sasl_mechanism=connection.sasl_mechanism,
                    sasl_plain_username=connection.sasl_username,
                    sasl_plain_password=options.get("sasl_plain_password"),
                ),
                timeout=timeout,
            )
        except (OSError, EOFError, KafkaError, TimeoutError) as exc:
            verdict = _verdict(connection, address, exc)
            if verdict is not None:
                return verdict, exc, verdict.message
            cause = f"{address}: {_describe(exc)}"
        else:
            probe.close()
    return None, None, cause


def _verdict(connection: KafkaConnection, address: str, exc: BaseException) -> EventBusError | None:
    """Our error for a connection failure that trying again cannot fix; None for one that may pass."""
    protocol = connection.security_protocol
    if isinstance(exc, (SaslAuthenticationFailed, KafkaAuthenticationFailedError)):
        msg = (
            f"authentication failed: {address} refused {connection.sasl_mechanism} user {connection.sasl_username!r} "
            f"(bootstrap servers {connection.bootstrap_servers}); check EVENTBUS_SASL_USERNAME and "
            f"EVENTBUS_SASL_PASSWORD: {exc}"
        )
        return AuthenticationFailedError(msg)
    if isinstance(exc, UnsupportedSaslMechanismError):
        msg = (
            f"authentication failed: the listener at {address} does not enable SASL mechanism "
            f"{connection.sasl_mechanism} (user {connection.sasl_username!r}, bootstrap servers "
            f"{connection.bootstrap_servers}); check EVENTBUS_SASL_MECHANISM"
        )
        return AuthenticationFailedError(msg)
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = connection.ssl_cafile or "the system's CA certificates"
        msg = (
            f"the TLS certificate of {address} is not trusted: {exc.verify_message} "
            f"(EVENTBUS_SSL_CAFILE / ssl_cafile: {trusted})"
        )
        return ConfigurationError(msg)
    if isinstance(exc, IllegalSaslStateError):
        msg = (
            f"the SASL handshake with {address} failed: is it a PLAINTEXT or SSL listener? "
            f"(security_protocol={protocol})"
        )
        return BrokerUnavailableError(msg, retriable=False)
    if protocol.endswith("SSL") and _not_tls(exc):
        msg = f"the TLS handshake with {address} failed: is it a PLAINTEXT listener? (security_protocol={protocol})"
        return BrokerUnavailableError(msg, retriable=False)
    if isinstance(exc, ssl.SSLError):
        msg = f"the TLS handshake with {address} failed: {exc.reason or exc} (security_protocol={protocol})"
        return BrokerUnavailableError(msg, retriable=False)
    if not protocol.endswith("SSL") and _answered_with_tls(exc):
        msg = f"{address} answered with TLS: is it an SSL listener? (security_protocol={protocol})"
        return BrokerUnavailableError(msg, retriable=False)
    return None


_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"})
"""OpenSSL's reasons when the peer's bytes are not TLS at all."""


def _not_tls(exc: BaseException) -> bool:
    """Whether a TLS handshake failed the way a listener without TLS makes it fail (reset, EOF, not TLS records)."""
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return exc.reason in _NOT_TLS_REASONS
    return isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, EOFError))


_TLS_RECORD_START = (0x15, 0x16)
"""First bytes of a TLS record (alert, handshake): what a TLS listener sends where a Kafka size is expected."""


def _answered_with_tls(exc: BaseException) -> bool:
    """Whether a plaintext connection read a TLS record where the size of a Kafka response belongs."""
    cause = exc.__cause__
    if not isinstance(cause, asyncio.IncompleteReadError) or cause.expected is None:
        return False
    size = cause.expected
    return size >> 24 in _TLS_RECORD_START and (size >> 16) & 0xFF == 0x03
