"""The README's SDK snippet ("## Publishing") runs as written against the embedded broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra._embedded import EmbeddedBroker
from infra._reader import read_all
from infra._settings import Settings
from infra._topics import apply_topics
from producers import EventPublisher, KafkaConnection, PublisherConfig
from schemas.errors import IdempotenceUnsupportedError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_ADDRESS = "127.0.0.1:9092"


def publishing_snippet() -> str:
    """The first Python block after the README's "## Publishing" heading."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Publishing\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_snippet_is_complete_and_points_at_the_embedded_brokers_default_address() -> None:
    snippet = publishing_snippet()
    compile(snippet, "README.md", "exec")
    assert f'bootstrap_servers="{_ADDRESS}"' in snippet  # `eventbus broker` listens there
    assert "..." not in snippet


def test_the_snippet_publishes_against_the_embedded_broker(embedded_broker: EmbeddedBroker) -> None:
    # The snippet uses the unprefixed topics, as a first run by hand would; other tests use prefixes.
    settings = Settings(bootstrap_servers=embedded_broker.bootstrap_servers, profile="embedded")
    asyncio.run(apply_topics(settings.connection(), replication_factor=1))
    before = asyncio.run(_count_sessions(settings))
    script = publishing_snippet().replace(_ADDRESS, embedded_broker.bootstrap_servers)

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    topic, partition, offset = done.stdout.split()
    assert topic == "session"
    assert int(partition) >= 0
    assert int(offset) >= 0
    assert asyncio.run(_count_sessions(settings)) == before + 2  # publish() and send()


async def _count_sessions(settings: Settings) -> int:
    return sum([1 async for _ in read_all(settings.connection(), ["session"])])


async def test_an_idempotent_config_built_in_code_is_told_which_field_to_change(
    embedded_broker: EmbeddedBroker,
) -> None:
    connection = KafkaConnection(bootstrap_servers=embedded_broker.bootstrap_servers)
    publisher = EventPublisher(connection=connection, config=PublisherConfig(service="booking"))

    with pytest.raises(IdempotenceUnsupportedError) as info:
        async with publisher:
            pass

    assert "PublisherConfig(enable_idempotence=False)" in info.value.message
    assert "EVENTBUS_PRODUCER_IDEMPOTENCE=false" in info.value.message
