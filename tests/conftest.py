"""Shared fixtures: the brokers the suites run against.

Integration tests take ``kafka_target``, parametrized over the embedded Tansu
broker and Apache Kafka in a container (testcontainers on podman's Docker API,
or a Docker engine). Where no engine answers, the Apache Kafka variant skips
with a hint locally and fails in CI (``CI=true``); a skipped Apache Kafka
variant also fails the CI run as a whole. Each test gets its own topic prefix,
so tests never see each other's records.

Unit tests of the consumer groups take ``broker`` (the in-memory fake with every
entity topic), ``publisher`` (started on it) and ``database_url`` (parametrized
over SQLite in ``tmp_path`` and the shared PostgreSQL database).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumers.testing import InMemoryBroker
from infra._embedded import EmbeddedBroker
from infra._settings import Profile, Settings
from infra._topics import apply_topics
from producers import EventPublisher
from tests.containers import ENGINE_HINT, engine_answers, start_kafka
from tests.harness import POSTGRES_URL, new_broker
from tests.private_postgres import private_postgres  # noqa: F401 - a fixture for every module


@dataclass(frozen=True)
class KafkaTarget:
    """A running Kafka-protocol broker and the profile that fits it."""

    name: str
    bootstrap_servers: str
    profile: Profile


IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
"""CI must run every Apache Kafka variant: there, a missing engine fails instead of skipping."""


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
    """Apache Kafka (KRaft, the pinned version) in a container via testcontainers; its bootstrap servers."""
    if not engine_answers():
        if IN_CI:
            pytest.fail(f"CI runs every Apache Kafka variant, but {ENGINE_HINT}")
        pytest.skip(ENGINE_HINT)
    with start_kafka() as bootstrap:
        yield bootstrap


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


# -- in CI, a skipped Apache Kafka variant fails the run ----------------------------------------------

_SKIPPED_KAFKA: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test that needed Apache Kafka."""
    if report.skipped and ("[kafka" in report.nodeid or "kafka" in report.keywords):
        _SKIPPED_KAFKA.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, turn a green run with skipped Apache Kafka variants red, naming them."""
    if IN_CI and _SKIPPED_KAFKA and exitstatus == 0:
        shown = ", ".join(_SKIPPED_KAFKA[:5])
        more = f" and {len(_SKIPPED_KAFKA) - 5} more" if len(_SKIPPED_KAFKA) > 5 else ""
        print(f"\nCI: {len(_SKIPPED_KAFKA)} Apache Kafka variant(s) skipped: {shown}{more}")  # noqa: T201
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
