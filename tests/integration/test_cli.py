"""The ``eventbus`` commands against a real broker: topics, publish, tail, history.

The tests are sync functions: the commands call ``asyncio.run``, which cannot
run inside the session's event loop. Events are published and topics listed
with ``asyncio.run`` too, outside that loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner, Result

from infra._cli import main
from infra._embedded import EmbeddedBroker
from infra._reader import existing_topics
from infra._settings import Settings
from infra._topics import INTERNAL_TOPICS, apply_topics
from producers import EventPublisher, PublishResult
from schemas import CATALOG, Event
from schemas.errors import ConfigurationError
from tests.conftest import KafkaTarget, make_settings

pytestmark = pytest.mark.integration

_CLI = [sys.executable, "-c", "from infra._cli import main; main()"]

_SESSION = {
    "session_id": "session-1042",
    "coach_id": "coach-7",
    "user_id": "user-3",
    "scheduled_at": "2025-06-02T14:00:00Z",
    "session_type": "video-call",
    "cost_credits": 10,
}


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "EVENTBUS_BOOTSTRAP_SERVERS": settings.connection().bootstrap_servers,
        "EVENTBUS_PROFILE": settings.profile,
        "EVENTBUS_TOPIC_PREFIX": settings.connection().topic_prefix,
        "EVENTBUS_REPLICATION_FACTOR": str(settings.replication),
    }


def cli(settings: Settings, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env_of(settings), input=stdin)


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def session(**fields: Any) -> Event:
    return CATALOG.parse("session:created", {**_SESSION, **fields})


def publish_all(settings: Settings, events: Sequence[Event]) -> list[PublishResult]:
    """Publish one at a time, a few ms apart, so record timestamps are distinct and ordered."""

    async def go() -> list[PublishResult]:
        config = settings.publisher_config("test-cli")
        results = []
        async with EventPublisher(connection=settings.connection(), config=config) as publisher:
            for event in events:
                results.append(await publisher.publish(event))
                await asyncio.sleep(0.005)
        return results

    return asyncio.run(go())


def topic_names(settings: Settings) -> set[str]:
    return asyncio.run(existing_topics(settings.connection()))


def test_topics_apply_twice_creates_nothing_the_second_time(kafka_target: KafkaTarget) -> None:
    fresh = make_settings(kafka_target)
    expected = sorted(fresh.connection().topic(name) for name in (*CATALOG.topics, *INTERNAL_TOPICS))

    first = cli(fresh, "topics", "apply", "--json")
    second = cli(fresh, "topics", "apply")
    listed = cli(fresh, "topics", "list", "--json")

    assert first.exit_code == 0, first.output
    assert sorted(json.loads(first.stdout)["created"]) == expected
    assert second.exit_code == 0, second.output
    assert "created   " not in second.stdout
    assert f"0 created, {len(expected)} existing, 0 drifted" in second.stdout
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["name"] for row in rows] == expected
    assert {row["name"]: row["partitions"] for row in rows}[fresh.connection().topic("session")] == 6
    table = cli(fresh, "topics", "list")
    assert fresh.connection().topic("notification") in table.stdout


def test_publish_prints_where_the_event_was_stored(settings: Settings) -> None:
    published = cli(settings, "publish", "session:created", "--data", json.dumps(_SESSION))

    assert published.exit_code == 0, published.output
    (line,) = published.stdout.splitlines()
    where = json.loads(line)
    assert set(where) == {"topic", "partition", "offset", "event_id"}
    assert where["topic"] == settings.connection().topic("session")
    read = cli(settings, "tail", "session", "--from-beginning", "--max", "1", "--json", "--timeout", "10")
    assert read.exit_code == 0, read.output
    (record,) = json_lines(read)
    assert (record["topic"], record["partition"], record["offset"]) == (where["topic"], where["partition"], 0)
    assert where["offset"] == 0
    assert record["event_id"] == where["event_id"] == record["event"]["metadata"]["event_id"]
    assert record["event_type"] == "session:created"
    assert record["key"] == "session-1042"
    assert record["event"]["metadata"]["service"] == "eventbus-cli"


def test_publish_reads_data_from_stdin(settings: Settings) -> None:
    result = cli(settings, "publish", "session:created", "--data", "-", stdin=json.dumps(_SESSION))

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["topic"] == settings.connection().topic("session")


def test_publish_invalid_input_exits_2_and_sends_nothing(settings: Settings) -> None:
    invalid = cli(settings, "publish", "session:created", "--data", json.dumps({**_SESSION, "cost_credits": -1}))
    not_json = cli(settings, "publish", "session:created", "--data", "{oops")
    unknown = cli(settings, "publish", "session:nope", "--data", json.dumps(_SESSION))

    assert invalid.exit_code == 2
    assert invalid.stderr.startswith("error: invalid session:created event: cost_credits: ")
    assert invalid.stderr.count("cost_credits") == 1  # each problem is said once
    assert invalid.stdout == ""
    assert not_json.exit_code == 2
    assert "not valid JSON" in not_json.stderr
    assert unknown.exit_code == 2
    assert "unknown event type 'session:nope'" in unknown.stderr
    assert all("Traceback" not in r.output for r in (invalid, not_json, unknown))
    empty = cli(settings, "tail", "session", "--from-beginning", "--timeout", "2", "--json")
    assert empty.exit_code == 0, empty.output
    assert empty.stdout == ""


def test_tail_filters_by_type_glob(settings: Settings) -> None:
    status = CATALOG.parse(
        "coach:status_changed", {"coach_id": "coach-7", "old_status": "away", "new_status": "online"}
    )
    ids = {name: _SESSION[name] for name in ("session_id", "coach_id", "user_id", "scheduled_at")}
    cancelled = CATALOG.parse("session:cancelled", {**ids, "cancelled_by": "user"})
    sent = publish_all(settings, [status, session(), cancelled])

    result = cli(settings, "tail", "--type", "session:*", "--from-beginning", "--max", "2", "--json", "--timeout", "10")

    assert result.exit_code == 0, result.output
    records = json_lines(result)
    assert sorted(r["event_type"] for r in records) == ["session:cancelled", "session:created"]
    assert {r["event_id"] for r in records} == {str(sent[1].event_id), str(sent[2].event_id)}


def test_history_returns_the_newest_events_newest_last(settings: Settings) -> None:
    events = [
        session(session_id="session-1"),
        CATALOG.parse("coach:status_changed", {"coach_id": "coach-1", "old_status": "away", "new_status": "online"}),
        session(session_id="session-2"),
        CATALOG.parse("coach:status_changed", {"coach_id": "coach-2", "old_status": "online", "new_status": "busy"}),
        session(session_id="session-3"),
    ]
    ids = [str(result.event_id) for result in publish_all(settings, events)]

    newest = cli(settings, "history", "-n", "3", "--json")
    coach = cli(settings, "history", "-n", "10", "--type", "coach:*", "--json")
    table = cli(settings, "history", "-n", "2")

    assert newest.exit_code == 0, newest.output
    assert [r["event_id"] for r in json.loads(newest.stdout)] == ids[2:]
    assert coach.exit_code == 0, coach.output
    assert [r["event_id"] for r in json.loads(coach.stdout)] == [ids[1], ids[3]]
    assert table.exit_code == 0, table.output
    assert ids[4] in table.stdout
    assert ids[3] in table.stdout
    assert ids[2] not in table.stdout


def test_tail_shows_an_undecodable_record_and_goes_on(settings: Settings) -> None:
    topic = settings.connection().topic("session")

    async def garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.connection().bootstrap_servers)
        await producer.start()
        try:  # same key as the event below: the same partition, before it
            await producer.send_and_wait(topic, b"not an avro record", key=b"session-1042")
        finally:
            await producer.stop()

    asyncio.run(garbage())
    (good,) = publish_all(settings, [session()])

    result = cli(settings, "tail", "session", "--from-beginning", "--max", "1", "--json", "--timeout", "10")
    human = cli(settings, "tail", "session", "--from-beginning", "--max", "1", "--timeout", "10")

    assert result.exit_code == 0, result.output
    bad, ok = json_lines(result)
    assert "event" not in bad
    assert bad["error"].startswith("CorruptMessageError")
    assert (bad["offset"], bad["key"], bad["event_type"]) == (0, "session-1042", None)
    assert ok["event_id"] == str(good.event_id)
    assert ok["offset"] == 1
    assert human.exit_code == 0, human.output
    assert "undecodable" in human.stdout
    assert str(good.event_id) in human.stdout


def test_tail_of_an_unknown_topic_exits_2_and_creates_nothing(settings: Settings) -> None:
    result = cli(settings, "tail", "bogus", "--timeout", "1")

    assert result.exit_code == 2
    assert "unknown topic 'bogus'" in result.stderr
    assert "known topics: session, coach" in result.stderr
    assert settings.connection().topic("bogus") not in topic_names(settings)


def test_tail_of_a_catalog_topic_missing_on_the_broker_fails_without_creating_it(kafka_target: KafkaTarget) -> None:
    fresh = make_settings(kafka_target)  # no topics applied under this prefix

    result = cli(fresh, "tail", "session", "--timeout", "1")
    history = cli(fresh, "history", "-n", "1")

    assert result.exit_code == 1
    assert "does not exist on the broker" in result.stderr
    assert history.exit_code == 1
    assert not {name for name in topic_names(fresh) if name.startswith(fresh.connection().topic_prefix)}


def test_tail_starts_at_the_end(settings: Settings) -> None:
    (old,) = publish_all(settings, [session(session_id="session-old")])
    command = [sys.executable, "-c", "from infra._cli import main; main()", "tail", "session", "--max", "1"]
    with subprocess.Popen(
        [*command, "--json", "--timeout", "15"],
        env={**env_of(settings), "PATH": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        # The tail says nothing until an event arrives: publish until it has printed one.
        sent: list[str] = []
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            sent += [str(r.event_id) for r in publish_all(settings, [session(session_id=f"session-{len(sent)}")])]
            time.sleep(0.3)
        out, err = proc.communicate(timeout=10)

    assert proc.returncode == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["event_id"] in sent
    assert record["event_id"] != str(old.event_id)


def test_publish_of_an_event_over_the_size_limit_exits_2_and_sends_nothing(kafka_target: KafkaTarget) -> None:
    small = make_settings(kafka_target)
    assert cli(small, "topics", "apply").exit_code == 0
    env = {**env_of(small), "EVENTBUS_MAX_MESSAGE_BYTES": "64"}

    result = CliRunner().invoke(main, ["publish", "session:created", "--data", json.dumps(_SESSION)], env=env)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: session:created event is ")
    assert "over the limit of 64 bytes" in result.stderr
    empty = cli(small, "tail", "session", "--from-beginning", "--timeout", "2", "--json")
    assert empty.stdout == ""


def test_several_validation_problems_are_each_listed_once(settings: Settings) -> None:
    result = cli(settings, "publish", "session:created", "--data", json.dumps({"session_id": "s-1"}))

    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "error: invalid session:created event, 5 problems:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "coach_id",
        "user_id",
        "scheduled_at",
        "session_type",
        "cost_credits",
    ]


def test_topics_apply_refuses_a_replication_factor_over_the_broker_count_and_creates_nothing(
    kafka_target: KafkaTarget,
) -> None:
    fresh = make_settings(kafka_target, replication_factor=5)  # more than any test cluster has brokers

    result = cli(fresh, "topics", "apply")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: replication factor 5 is larger than the 1 broker(s)")
    assert "EVENTBUS_REPLICATION_FACTOR=1" in result.stderr
    assert "Traceback" not in result.output
    assert not {name for name in topic_names(fresh) if name.startswith(fresh.connection().topic_prefix)}
    with pytest.raises(ConfigurationError, match="larger than the 1 broker"):
        asyncio.run(apply_topics(fresh.connection(), replication_factor=5))


def _create(settings: Settings, entity: str, *, partitions: int, replication: int, configs: dict[str, str]) -> None:
    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.connection().bootstrap_servers)
        await admin.start()
        try:
            topic = NewTopic(settings.connection().topic(entity), partitions, replication, topic_configs=configs)
            await admin.create_topics([topic])
        finally:
            await admin.close()

    asyncio.run(go())


def test_topics_apply_reports_config_and_partition_drift_and_changes_nothing(kafka_target: KafkaTarget) -> None:
    fresh = make_settings(kafka_target)
    _create(fresh, "session", partitions=2, replication=1, configs={"retention.ms": "60000"})

    result = cli(fresh, "topics", "apply", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    name = fresh.connection().topic("session")
    assert report["drift"] == [
        f"{name}: 2 partitions, spec says 6",
        f"{name}: retention.ms=60000, spec says 604800000",
    ]
    assert name not in report["created"] + report["existing"]
    assert f"warning: drift: {name}: retention.ms=60000" in result.stderr
    rows = {row["name"]: row for row in json.loads(cli(fresh, "topics", "list", "--json").stdout)}
    assert (rows[name]["partitions"], rows[name]["configs"]["retention.ms"]) == (2, "60000")


def test_topics_apply_reports_a_replication_factor_that_differs(embedded_broker: EmbeddedBroker) -> None:
    # Only the embedded broker: it accepts more replicas than brokers (Apache Kafka refuses, see the test above).
    fresh = make_settings(KafkaTarget("embedded", embedded_broker.bootstrap_servers, "embedded"))  # replication 1
    _create(fresh, "coach", partitions=3, replication=3, configs={})  # what the kafka profile used to create here

    result = cli(fresh, "topics", "apply", "--json")

    assert result.exit_code == 0, result.output
    name = fresh.connection().topic("coach")
    assert json.loads(result.stdout)["drift"] == [f"{name}: replication factor 3, settings say 1"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.timeout(240)
@pytest.mark.parametrize("args", [["run", "credits"], ["relay"]], ids=["run", "relay"])
def test_a_long_running_command_serves_metrics_on_the_address_given_and_stops_cleanly_on_sigterm(
    settings: Settings, tmp_path: Path, args: list[str]
) -> None:
    """SIGTERM comes as soon as /metrics answers: possibly before the event loop's handlers (exit 0 all the same)."""
    port = _free_port("127.0.0.2")
    command = [*_CLI, *args, "--metrics-host", "127.0.0.2", "--metrics-port", str(port)]
    env = {**env_of(settings), "EVENTBUS_DATABASE_URL": f"sqlite:///{tmp_path}/run.sqlite", "PATH": ""}
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        body, deadline = "", time.monotonic() + 90  # a busy machine: starting and joining the group may be slow
        while not body and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)

    assert "# HELP" in body, err
    assert proc.returncode == 0, err
