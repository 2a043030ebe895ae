"""The drift check of ``topics apply`` (no broker): partitions, replication factor and the spec's configs."""

from __future__ import annotations

from infra._topics import INTERNAL_TOPICS, REPLAY_LOG_TOPIC, TOPIC_SPECS, TopicInfo, topic_drift
from schemas import CATALOG

_SESSION = next(spec for spec in TOPIC_SPECS if spec.name == "session")


def _info(
    *, partitions: int = _SESSION.partitions, replication_factor: int = 1, configs: dict[str, str] | None = None
) -> TopicInfo:
    described = {**_SESSION.configs(), "segment.bytes": "1073741824"} if configs is None else configs
    return TopicInfo("t.session", partitions, replication_factor, described)


def test_a_topic_as_specified_has_no_drift_whatever_other_configs_it_has() -> None:
    assert topic_drift(_SESSION, _info(), name="t.session", replication_factor=1) == []


def test_partitions_replication_and_configs_are_each_reported() -> None:
    info = _info(partitions=2, replication_factor=3, configs={"retention.ms": "1000", "cleanup.policy": "delete"})

    drift = topic_drift(_SESSION, info, name="t.session", replication_factor=1)

    assert drift == [
        f"t.session: 2 partitions, spec says {_SESSION.partitions}",
        "t.session: replication factor 3, settings say 1",
        f"t.session: retention.ms=1000, spec says {_SESSION.retention_ms}",
    ]


def test_a_config_the_broker_did_not_describe_is_not_drift() -> None:
    assert topic_drift(_SESSION, _info(configs={}), name="t.session", replication_factor=1) == []


def test_the_spec_has_every_catalog_topic_and_the_compacted_replay_log() -> None:
    assert {spec.name for spec in TOPIC_SPECS} == {*CATALOG.topics, *INTERNAL_TOPICS}
    replay_log = next(spec for spec in TOPIC_SPECS if spec.name == REPLAY_LOG_TOPIC)
    system = next(spec for spec in TOPIC_SPECS if spec.name == "system")
    assert replay_log.configs()["cleanup.policy"] == "compact,delete"
    assert replay_log.retention_ms >= system.retention_ms  # a mark never expires before its dead letter
