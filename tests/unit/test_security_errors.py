"""TLS and SASL failures as one typed line, without a broker: files that cannot be read, aiokafka's errors
converted, and listeners that do not speak the configured protocol (small local socket servers)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

import schemas
from infra._kafka_cluster import KafkaCluster, KafkaListener
from producers import KafkaConnection, connect_with_retry, convert_kafka_error
from producers._connect import _verdict
from schemas.errors import AuthenticationFailedError, BrokerUnavailableError, ConfigurationError

SECRET = "Not-To-Be-Seen-4711"  # noqa: S105 - the secret under test


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (``openssl``)."""
    home = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem"),
            *("-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        cwd=home,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return home / "cert.pem", home / "key.pem"


def tls(**fields: object) -> KafkaConnection:
    return KafkaConnection(security_protocol="SSL", **fields)


# -- the error type ------------------------------------------------------------------------------------


def test_authentication_failed_is_a_configuration_error_that_is_never_retried() -> None:
    error = AuthenticationFailedError("refused")
    assert isinstance(error, ConfigurationError)
    assert error.retriable is False
    assert schemas.AuthenticationFailedError is AuthenticationFailedError
    assert "AuthenticationFailedError" in (schemas.errors.__doc__ or "")


# -- files -------------------------------------------------------------------------------------------------


def test_a_missing_ca_file_is_named_with_its_setting(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigurationError) as raised:
        tls(ssl_cafile=missing).ssl_context()
    assert (
        raised.value.message
        == f"EVENTBUS_SSL_CAFILE / ssl_cafile: cannot read the CA file {missing}: No such file or directory"
    )
    assert isinstance(raised.value.__cause__, FileNotFoundError)


def test_a_ca_path_that_is_a_directory_or_not_pem_is_named(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n", encoding="ascii")
    with pytest.raises(ConfigurationError, match=rf"ssl_cafile: cannot read the CA file {tmp_path}: Is a directory"):
        tls(ssl_cafile=tmp_path).ssl_context()
    with pytest.raises(
        ConfigurationError, match=rf"ssl_cafile: cannot use the CA file {not_pem}: not a usable PEM file"
    ):
        tls(ssl_cafile=not_pem).ssl_context()


def test_client_certificate_and_key_files_are_named(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with pytest.raises(
        ConfigurationError, match=rf"EVENTBUS_SSL_KEYFILE / ssl_keyfile: cannot read the client key {tmp_path}/k"
    ):
        tls(ssl_certfile=cert, ssl_keyfile=tmp_path / "k.pem").ssl_context()
    with pytest.raises(ConfigurationError, match=r"EVENTBUS_SSL_CERTFILE / ssl_certfile: cannot read"):
        tls(ssl_certfile=tmp_path / "c.pem", ssl_keyfile=key).ssl_context()
    with pytest.raises(ConfigurationError, match=r"ssl_keyfile is set but EVENTBUS_SSL_CERTFILE / ssl_certfile is not"):
        tls(ssl_keyfile=key).ssl_context()
    with pytest.raises(ConfigurationError, match=rf"cannot load the client certificate {cert} with the key {cert}"):
        tls(ssl_certfile=cert, ssl_keyfile=cert).ssl_context()
    assert tls(ssl_certfile=cert, ssl_keyfile=key).ssl_context() is not None


def test_the_context_verifies_the_broker_and_its_host_name(certificate: tuple[Path, Path]) -> None:
    context = tls(ssl_cafile=certificate[0]).ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert KafkaConnection().ssl_context() is None


def test_the_password_is_in_no_repr() -> None:
    connection = KafkaConnection(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice", sasl_password=SECRET
    )
    assert SECRET not in repr(connection)
    assert SECRET not in str(connection)
    assert connection.client_options()["sasl_plain_password"] == SECRET


def test_a_scram_user_the_storage_tool_cannot_parse_is_refused_without_showing_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        KafkaCluster(listeners=[KafkaListener("SASL", "SASL_PLAINTEXT")], scram_users={"alice": "a,b" + SECRET})
    assert "alice" in raised.value.message
    assert SECRET not in raised.value.message


# -- aiokafka's errors ---------------------------------------------------------------------------------------


def test_refused_credentials_convert_to_authentication_failed() -> None:
    for exc in (SaslAuthenticationFailed("invalid credentials"), UnsupportedSaslMechanismError("no")):
        error = convert_kafka_error(exc, "starting the producer")
        assert isinstance(error, AuthenticationFailedError)
        assert error.retriable is False
    untrusted = convert_kafka_error(ssl.SSLCertVerificationError(1, "verify failed"), "connecting")
    assert type(untrusted) is ConfigurationError
    assert "EVENTBUS_SSL_CAFILE" in untrusted.message


def test_each_connection_failure_gets_its_verdict() -> None:
    scram = KafkaConnection(
        bootstrap_servers="127.0.0.1:9094",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password=SECRET,
    )
    refused = _verdict(scram, "127.0.0.1:9094", SaslAuthenticationFailed("invalid credentials"))
    assert isinstance(refused, AuthenticationFailedError)
    assert "SCRAM-SHA-512 user 'alice'" in refused.message
    assert "127.0.0.1:9094" in refused.message
    assert SECRET not in refused.message

    plaintext = KafkaConnection(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="a",
        sasl_password="b",  # noqa: S106
    )
    no_sasl = _verdict(plaintext, "h:1", IllegalSaslStateError("state"))
    assert isinstance(no_sasl, BrokerUnavailableError)
    assert "is it a PLAINTEXT or SSL listener?" in no_sasl.message

    reset = _verdict(tls(), "h:1", ConnectionResetError())
    assert isinstance(reset, BrokerUnavailableError)
    assert reset.message == "the TLS handshake with h:1 failed: is it a PLAINTEXT listener? (security_protocol=SSL)"

    closed = KafkaConnectionError("Connection at h:1 closed")
    closed.__cause__ = asyncio.IncompleteReadError(b"\x02\x02\x46", 0x15030300)  # a TLS alert read as a size
    answered = _verdict(KafkaConnection(), "h:1", closed)
    assert answered is not None
    assert answered.message == "h:1 answered with TLS: is it an SSL listener? (security_protocol=PLAINTEXT)"

    assert _verdict(tls(), "h:1", ConnectionRefusedError(111, "refused")) is None
    assert _verdict(KafkaConnection(), "h:1", KafkaConnectionError("Connection at h:1 closed")) is None


# -- listeners that do not speak the configured protocol (local sockets, no Kafka) ----------------------------


@asynccontextmanager
async def serving(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def start_admin(connection: KafkaConnection) -> None:
    admin = AIOKafkaAdminClient(**connection.client_options())
    try:
        await connect_with_retry(admin.start, connection, "admin")
    finally:
        await admin.close()


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What a Kafka PLAINTEXT listener does with a TLS ClientHello: it reads a huge size and hangs up."""
    await reader.read(4)
    writer.transport.abort()


async def test_a_tls_client_against_a_listener_without_tls_is_told_at_once(certificate: tuple[Path, Path]) -> None:
    async with serving(_close_at_once) as address:
        connection = tls(bootstrap_servers=address, ssl_cafile=certificate[0], connect_timeout_s=8)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as raised:
            await start_admin(connection)
    assert time.monotonic() - started < 4
    assert raised.value.message == (
        f"the TLS handshake with {address} failed: is it a PLAINTEXT listener? (security_protocol=SSL)"
    )
    assert raised.value.retriable is False


async def test_a_plaintext_client_against_a_tls_listener_is_told_at_once() -> None:
    async def alert(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """What Kafka's TLS listener answers to bytes that are not TLS: a fatal alert record, then it hangs up."""
        await reader.read(64)
        writer.write(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0A]))  # alert, TLS 1.2, fatal unexpected_message
        await writer.drain()
        writer.close()

    async with serving(alert) as address:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as raised:
            await start_admin(KafkaConnection(bootstrap_servers=address, connect_timeout_s=8))
    assert time.monotonic() - started < 4
    assert raised.value.message == f"{address} answered with TLS: is it an SSL listener? (security_protocol=PLAINTEXT)"


async def test_no_broker_names_the_last_cause_when_the_time_is_up() -> None:
    async with serving(_close_at_once) as address:
        pass  # closed again: nothing listens on the port now
    with pytest.raises(BrokerUnavailableError) as raised:
        await start_admin(KafkaConnection(bootstrap_servers=address, connect_timeout_s=1))
    assert (
        f"no broker answered at {address} within 1 s (admin): {address}: ConnectionRefusedError" in raised.value.message
    )
    assert raised.value.retriable is True
