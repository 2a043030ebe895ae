"""TLS and SASL/SCRAM-SHA-512 against real Apache Kafka listeners (``infra._kafka_cluster``: one JVM on 127.0.0.1).

The test makes its own certificates (a CA and a broker certificate for IP 127.0.0.1 and DNS localhost, with the
``openssl`` command line) and one single-node cluster with SSL, SASL_PLAINTEXT and SASL_SSL listeners besides
PLAINTEXT, the SCRAM user created when the storage is formatted. eventbus connects with the documented
settings (the fields the ``EVENTBUS_*`` variables set) and the failures are the typed one-line errors:

- a wrong password: ``AuthenticationFailedError`` within the connect timeout, the password nowhere to be seen;
- a CA file that cannot be read: ``ConfigurationError`` naming the file and its setting, one line from the CLI;
- TLS against the PLAINTEXT listener (and plaintext against the SSL one): the listener mismatch, said at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumers import ConsumerGroup, HandlerContext, KafkaConsumerTransport, TopicPartition, run_groups
from infra._kafka_cluster import KafkaCluster, KafkaListener, KafkaTls
from infra._settings import Settings
from infra._topics import apply_topics
from producers import EventPublisher
from schemas import SessionCreated
from schemas.errors import AuthenticationFailedError, BrokerUnavailableError, ConfigurationError
from tests.events_factory import example_event

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
USER = "alice"
PASSWORD = "Scram-" + uuid.uuid4().hex  # unique, so finding it anywhere means it leaked
WRONG_PASSWORD = "Wrong-" + uuid.uuid4().hex
CONNECT_TIMEOUT_S = 10.0
MARGIN_S = 3.0
_CLI = [sys.executable, "-c", "from infra._cli import main; main()"]
SESSION_JSON = json.dumps(
    {
        "session_id": "session-1042",
        "coach_id": "coach-7",
        "user_id": "user-3",
        "scheduled_at": "2025-06-02T14:00:00Z",
        "session_type": "video-call",
        "cost_credits": 10,
    }
)


@dataclass(frozen=True)
class Pki:
    """The files ``openssl`` made: the CA certificate clients trust, and the broker's certificate and key."""

    ca: Path
    broker_cert: Path
    broker_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"openssl {args[0]} failed: {done.stderr}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed CA and a broker certificate it signed, for IP 127.0.0.1 and DNS localhost (2 days)."""
    home = tmp_path_factory.mktemp("pki")
    rsa = ["-newkey", "rsa:2048", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl(
        "req",
        "-x509",
        *rsa,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=eventbus test CA",
        *ca_ext,
        cwd=home,
    )
    _openssl("req", *rsa, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost", cwd=home)
    (home / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n",
        encoding="ascii",
    )
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "broker.pem", "-days", "2", "-extfile", "broker.ext",
        cwd=home,
    )  # fmt: skip
    return Pki(ca=home / "ca.pem", broker_cert=home / "broker.pem", broker_key=home / "broker.key")


@pytest.fixture(scope="module")
def cluster(pki: Pki) -> Iterator[KafkaCluster]:
    """One node: PLAINTEXT plus the SSL, SASL (SASL_PLAINTEXT) and SASLSSL (SASL_SSL) listeners, one SCRAM user."""
    listeners = [
        KafkaListener("SSL", "SSL"),
        KafkaListener("SASL", "SASL_PLAINTEXT"),
        KafkaListener("SASLSSL", "SASL_SSL"),
    ]
    with KafkaCluster(
        nodes=1,
        listeners=listeners,
        tls=KafkaTls(certfile=pki.broker_cert, keyfile=pki.broker_key),
        scram_users={USER: PASSWORD},
    ) as value:
        yield value


LISTENER_OF = {"SSL": "SSL", "SASL_PLAINTEXT": "SASL", "SASL_SSL": "SASLSSL"}


def secure_settings(cluster: KafkaCluster, pki: Pki, protocol: str, **overrides: Any) -> Settings:
    """Settings for the listener of ``protocol``, as the documented EVENTBUS_* variables would give them."""
    fields: dict[str, Any] = {
        "bootstrap_servers": cluster.listener_bootstrap(LISTENER_OF[protocol]) if protocol in LISTENER_OF else "",
        "profile": "kafka",
        "topic_prefix": f"s{uuid.uuid4().hex[:10]}.",
        "replication_factor": 1,
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "security_protocol": protocol,
    }
    if protocol.endswith("SSL"):
        fields["ssl_cafile"] = pki.ca
    if protocol.startswith("SASL"):
        fields |= {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": USER, "sasl_password": PASSWORD}
    fields.update(overrides)
    return Settings(**fields)


def env_of(settings: Settings) -> dict[str, str]:
    """The EVENTBUS_* variables that give ``settings`` (what a deployment sets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    for name, value in settings.model_dump(exclude_defaults=True).items():
        secret = getattr(value, "get_secret_value", None)
        env[f"EVENTBUS_{name.upper()}"] = str(secret() if secret is not None else value)
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


# -- publishing and consuming through each secured listener ---------------------------------------------


@pytest.mark.parametrize("protocol", ["SSL", "SASL_PLAINTEXT", "SASL_SSL"])
async def test_an_event_is_published_and_consumed_by_a_group_through_the_secured_listener(
    cluster: KafkaCluster, pki: Pki, protocol: str
) -> None:
    settings = secure_settings(cluster, pki, protocol)
    connection = settings.connection()
    await apply_topics(connection, replication_factor=1)
    event = example_event("session:created", session_id=f"secure-{protocol}")
    group = ConsumerGroup(f"secure-{uuid.uuid4().hex[:8]}")
    received: list[SessionCreated] = []
    arrived = asyncio.Event()

    @group.handler(SessionCreated)
    async def handle(event: SessionCreated, ctx: HandlerContext) -> None:
        received.append(event)
        arrived.set()

    async with EventPublisher(connection=connection, config=settings.publisher_config("secure")) as publisher:
        result = await publisher.publish(event)
    assert result.topic == connection.topic("session")

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_groups(
            [group],
            connection=connection,
            publisher_config=settings.publisher_config("secure-group"),
            consumer_config=settings.consumer_config(),
            runtime_config=settings.runtime_config(commit_interval_s=0.2),
            stop=stop,
        )
    )
    try:
        waiting = asyncio.create_task(arrived.wait())
        await asyncio.wait([waiting, task], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    assert [str(e.event_id) for e in received] == [str(event.event_id)]


# -- a wrong password ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
async def test_a_wrong_password_is_a_typed_authentication_error_within_the_connect_timeout_and_never_shown(
    cluster: KafkaCluster, pki: Pki, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = secure_settings(cluster, pki, protocol, sasl_password=WRONG_PASSWORD)
    connection = settings.connection()
    errors: list[AuthenticationFailedError] = []

    started = time.monotonic()
    with pytest.raises(AuthenticationFailedError) as publishing:
        async with EventPublisher(connection=connection, config=settings.publisher_config("secure")):
            pass
    errors.append(publishing.value)
    consumer = KafkaConsumerTransport(connection, settings.consumer_config(), group_id="never-joins")
    with pytest.raises(AuthenticationFailedError) as consuming:
        await consumer.start([connection.topic("session")], _nothing, _nothing)
    errors.append(consuming.value)
    elapsed = time.monotonic() - started

    assert elapsed < 2 * CONNECT_TIMEOUT_S + MARGIN_S  # two starts, each within its connect timeout
    for error in errors:
        assert error.retriable is False
        assert "SCRAM-SHA-512" in error.message
        assert repr(USER) in error.message
        assert connection.bootstrap_servers in error.message
        assert WRONG_PASSWORD not in str(error)
        assert error.__cause__ is not None
    assert WRONG_PASSWORD not in caplog.text
    assert WRONG_PASSWORD not in repr(settings)
    assert WRONG_PASSWORD not in str(settings)
    assert WRONG_PASSWORD not in repr(connection)
    assert WRONG_PASSWORD not in json.dumps(settings.describe())


async def _nothing(partitions: set[TopicPartition]) -> None:
    return None


def test_a_wrong_password_fails_the_cli_in_one_line_and_no_output_shows_a_password(
    cluster: KafkaCluster, pki: Pki
) -> None:
    env = env_of(secure_settings(cluster, pki, "SASL_SSL", sasl_password=WRONG_PASSWORD))

    started = time.monotonic()
    published = run_cli(env, "publish", "session:created", "--data", SESSION_JSON)
    elapsed = time.monotonic() - started
    shown = run_cli(env, "settings")
    shown_json = run_cli(env, "settings", "--json")

    assert published.returncode != 0
    assert elapsed < CONNECT_TIMEOUT_S + 15  # the interpreter's start-up included
    assert published.stderr.startswith("error: authentication failed: "), published.stderr
    assert len(published.stderr.strip().splitlines()) == 1, published.stderr
    assert "Traceback" not in published.stderr
    assert shown.returncode == 0, shown.stderr
    assert "EVENTBUS_SASL_PASSWORD" in shown.stdout
    assert shown_json.returncode == 0, shown_json.stderr
    assert set(json.loads(shown_json.stdout)["sasl_password"]) == {"*"}  # masked
    for result in (published, shown, shown_json):
        assert WRONG_PASSWORD not in result.stdout + result.stderr


# -- files that cannot be read ---------------------------------------------------------------------------


async def test_a_missing_ca_file_is_one_configuration_error_naming_the_file(
    cluster: KafkaCluster, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    settings = secure_settings(cluster, pki, "SSL", ssl_cafile=missing)

    with pytest.raises(ConfigurationError) as raised:
        settings.connection().ssl_context()
    with pytest.raises(ConfigurationError) as starting:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("secure")):
            pass

    for error in (raised.value, starting.value):
        assert str(missing) in error.message
        assert "EVENTBUS_SSL_CAFILE" in error.message
        assert "No such file or directory" in error.message


def test_the_cli_says_in_one_line_which_ca_file_it_cannot_read(cluster: KafkaCluster, pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    not_pem = tmp_path / "not-a-certificate.pem"
    not_pem.write_text("hello\n", encoding="ascii")

    for path in (missing, not_pem, tmp_path):
        env = env_of(secure_settings(cluster, pki, "SSL", ssl_cafile=path))
        result = run_cli(env, "publish", "session:created", "--data", SESSION_JSON)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: EVENTBUS_SSL_CAFILE / ssl_cafile: cannot ")
        assert str(path) in lines[0]


# -- a listener that does not speak the configured protocol ----------------------------------------------


async def test_a_tls_client_against_the_plaintext_listener_is_told_so_within_the_connect_timeout(
    cluster: KafkaCluster, pki: Pki
) -> None:
    settings = secure_settings(cluster, pki, "SSL", bootstrap_servers=cluster.bootstrap_servers)

    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as raised:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("secure")):
            pass
    elapsed = time.monotonic() - started

    assert elapsed < CONNECT_TIMEOUT_S + MARGIN_S
    message = raised.value.message
    assert f"the TLS handshake with {cluster.bootstrap_servers} failed" in message
    assert "PLAINTEXT listener" in message
    assert "security_protocol=SSL" in message
    assert raised.value.retriable is False


def test_the_cli_names_the_listener_mismatch_in_one_line(cluster: KafkaCluster, pki: Pki) -> None:
    env = env_of(secure_settings(cluster, pki, "SSL", bootstrap_servers=cluster.bootstrap_servers))

    result = run_cli(env, "publish", "session:created", "--data", SESSION_JSON)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: the TLS handshake with {cluster.bootstrap_servers} failed: is it a PLAINTEXT listener? "
        "(security_protocol=SSL)"
    ]


async def test_a_plaintext_client_against_the_tls_listener_is_told_so(cluster: KafkaCluster, pki: Pki) -> None:
    settings = secure_settings(cluster, pki, "PLAINTEXT", bootstrap_servers=cluster.listener_bootstrap("SSL"))

    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as raised:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("secure")):
            pass

    assert time.monotonic() - started < CONNECT_TIMEOUT_S + MARGIN_S
    assert "answered with TLS: is it an SSL listener?" in raised.value.message


async def test_a_tls_client_without_the_ca_is_told_the_certificate_is_not_trusted(
    cluster: KafkaCluster, pki: Pki
) -> None:
    settings = secure_settings(cluster, pki, "SSL", ssl_cafile=None)

    with pytest.raises(ConfigurationError) as raised:
        async with EventPublisher(connection=settings.connection(), config=settings.publisher_config("secure")):
            pass

    assert "is not trusted" in raised.value.message
    assert "EVENTBUS_SSL_CAFILE" in raised.value.message
