"""Shared fixtures: the brokers the suites run against.

Integration tests take ``kafka_target``, parametrized over the embedded Tansu
broker (always) and Apache Kafka in Docker (testcontainers; skipped with a
reason where no Docker engine runs). Each test gets its own topic prefix, so
tests never see each other's records.

Unit tests of the consumer groups take ``broker`` (the in-memory fake with every
entity topic), ``publisher`` (started on it) and ``database_url`` (parametrized
over SQLite in ``tmp_path`` and the shared PostgreSQL database).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra._embedded import EmbeddedBroker
from infra._settings import Profile, Settings
from infra._topics import apply_topics
from producers import EventPublisher, InMemoryBroker
from tests.harness import POSTGRES_URL, new_broker


@dataclass(frozen=True)
class KafkaTarget:
    """A running Kafka-protocol broker and the profile that fits it."""

    name: str
    bootstrap_servers: str
    profile: Profile


def docker_available() -> bool:
    """Whether a Docker engine answers (not just a docker client on PATH)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the whole test session."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_container() -> Iterator[str]:
    """Apache Kafka (KRaft) in Docker via testcontainers; its bootstrap servers."""
    if not docker_available():
        pytest.skip("no Docker engine here: the Apache Kafka (testcontainers) variant runs where Docker exists")
    from testcontainers.kafka import KafkaContainer  # noqa: PLC0415 - only where Docker runs

    with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as container:
        yield container.get_bootstrap_server()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def kafka_target(request: pytest.FixtureRequest) -> KafkaTarget:
    """Each integration test runs on the embedded broker and on Apache Kafka."""
    if request.param == "embedded":
        broker: EmbeddedBroker = request.getfixturevalue("embedded_broker")
        return KafkaTarget("embedded", broker.bootstrap_servers, "embedded")
    bootstrap: str = request.getfixturevalue("kafka_container")
    return KafkaTarget("kafka", bootstrap, "kafka")


def make_settings(target: KafkaTarget, **overrides: Any) -> Settings:
    """Settings for ``target`` with a topic prefix of this test's own."""
    fields: dict[str, Any] = {
        "bootstrap_servers": target.bootstrap_servers,
        "profile": target.profile,
        "topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
        "connect_timeout_s": 10.0,
        "replication_factor": 1,
    }
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture
async def settings(kafka_target: KafkaTarget) -> Settings:
    """Settings pointing at ``kafka_target`` with this test's topics applied."""
    value = make_settings(kafka_target)
    await apply_topics(value.connection(), replication_factor=value.replication)
    return value


@pytest.fixture
def broker() -> InMemoryBroker:
    """The in-memory fake broker with every entity topic (``TOPIC_SPECS``)."""
    return new_broker()


@pytest.fixture
async def publisher(broker: InMemoryBroker) -> AsyncIterator[EventPublisher]:
    """A started publisher on ``broker``."""
    async with EventPublisher(transport=broker.producer()) as value:
        yield value


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test runs on a new SQLite file in ``tmp_path`` and on the shared PostgreSQL database."""
    return f"sqlite:///{tmp_path}/t.sqlite" if request.param == "sqlite" else POSTGRES_URL
