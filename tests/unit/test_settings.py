"""Settings from the environment: profiles, explicit overrides, secrets kept out of sight, clear errors."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from consumers import ConsumerConfig, GroupSettings, RuntimeConfig
from infra._gateway_config import HttpGatewayConfig
from infra._settings import PROFILE_DEFAULTS, SETTING_FIELDS, UNSET_CONFIG_FIELDS, Settings, load_settings
from producers import KafkaConnection, PublisherConfig
from schemas.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415 - only to list what to clear

    for name in list(os.environ):
        if name.startswith("EVENTBUS_"):
            monkeypatch.delenv(name)


def test_settings_are_read_from_eventbus_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("EVENTBUS_TOPIC_PREFIX", "staging.")
    monkeypatch.setenv("EVENTBUS_RETRY_TIERS_S", "[5, 60]")
    settings = load_settings()
    connection = settings.connection()
    assert connection.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert connection.topic("session") == "staging.session"
    assert settings.runtime_config().retry_tiers_s == (5.0, 60.0)


@pytest.mark.parametrize(
    ("profile", "idempotence", "replication", "session_ms", "heartbeat_ms"),
    [("kafka", True, 3, 45_000, 3_000), ("embedded", False, 1, 6_000, 500)],
)
def test_profiles_pick_defaults_for_the_broker_kind(
    profile: str, idempotence: bool, replication: int, session_ms: int, heartbeat_ms: int
) -> None:
    settings = Settings(profile=profile)
    assert settings.publisher_config().enable_idempotence is idempotence
    assert settings.replication == replication
    consumer = settings.consumer_config()
    assert (consumer.session_timeout_ms, consumer.heartbeat_interval_ms) == (session_ms, heartbeat_ms)


def test_explicit_settings_win_over_the_profile() -> None:
    settings = Settings(profile="kafka", producer_idempotence=False, replication_factor=2, producer_acks="1")
    assert settings.publisher_config().enable_idempotence is False
    assert settings.publisher_config().acks == 1
    assert settings.replication == 2


def test_a_short_session_timeout_alone_brings_the_heartbeat_down_with_it() -> None:
    consumer = Settings(profile="kafka", consumer_session_timeout_ms=6_000).consumer_config()
    assert consumer.heartbeat_interval_ms == 600


def test_secrets_never_show_in_repr_or_describe() -> None:
    settings = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="hunter2",  # noqa: S106 - the secret under test
        database_url="postgresql://app:pg-secret@db/eventbus",
        redis_url="redis://:redis-secret@cache:6379/0",
        smtp_password="smtp-secret",  # noqa: S106
    )
    shown = repr(settings) + repr(settings.connection()) + repr(settings.group_settings()) + str(settings.describe())
    for secret in ("hunter2", "pg-secret", "redis-secret", "smtp-secret"):
        assert secret not in shown
    assert settings.connection().client_options()["sasl_plain_password"] == "hunter2"  # noqa: S105
    assert settings.describe()["database_url"] == "postgresql://app:**********@db/eventbus"


def test_invalid_settings_are_a_configuration_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_PROFILE", "production")
    with pytest.raises(ConfigurationError, match="EVENTBUS_PROFILE"):
        load_settings()


def test_sasl_without_credentials_is_refused_when_the_connection_is_built() -> None:
    with pytest.raises(ConfigurationError, match="sasl_username"):
        Settings(security_protocol="SASL_PLAINTEXT").connection()


def test_a_client_certificate_that_cannot_be_loaded_is_a_configuration_error(tmp_path: object) -> None:
    settings = Settings(security_protocol="SSL", ssl_certfile=f"{tmp_path}/missing.pem")
    with pytest.raises(ConfigurationError, match="client certificate"):
        settings.connection().client_options()


def test_plaintext_connection_has_no_tls_context() -> None:
    assert "ssl_context" not in Settings().connection().client_options()
    assert "ssl_context" in Settings(security_protocol="SSL").connection().client_options()


def test_runtime_overrides_from_the_command_line_win_but_none_keeps_the_setting() -> None:
    settings = Settings(concurrency=4)
    assert settings.runtime_config(concurrency=None).concurrency == 4
    assert settings.runtime_config(concurrency=9).concurrency == 9


def test_a_check_of_several_settings_together_names_them_instead_of_an_empty_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(security_protocol="SASL_PLAINTEXT").connection()
    message = info.value.message
    assert message.startswith("invalid settings: EVENTBUS_SASL_MECHANISM, EVENTBUS_SASL_USERNAME")
    assert ": :" not in message
    assert "Value error" not in message


def test_publisher_problems_name_the_settings_not_the_config_fields() -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_PRODUCER_ACKS, EVENTBUS_PRODUCER_IDEMPOTENCE: "):
        Settings(producer_acks="1", producer_idempotence=True).publisher_config()


def test_an_invalid_topic_prefix_is_refused_when_the_settings_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_TOPIC_PREFIX", "has space.")
    with pytest.raises(ConfigurationError, match="EVENTBUS_TOPIC_PREFIX"):
        load_settings()


# -- every field and its default once ------------------------------------------------------------


def _config_classes() -> dict[str, type[BaseModel]]:
    return {
        "connection": KafkaConnection,
        "publisher": PublisherConfig,
        "consumer": ConsumerConfig,
        "runtime": RuntimeConfig,
        "groups": GroupSettings,
        "http": HttpGatewayConfig,
    }


def test_every_field_of_every_config_has_exactly_one_setting() -> None:
    for section, kind in _config_classes().items():
        set_by = sorted(field for where, field in SETTING_FIELDS.values() if where == section)
        settable = sorted(set(kind.model_fields) - UNSET_CONFIG_FIELDS.get(section, frozenset()))  # type: ignore[call-overload]
        assert set_by == settable, f"{kind.__name__}: fields without a setting, or settings of no field"
    own = {"profile", "database_url", "redis_url", "replication_factor"}
    assert set(Settings.model_fields) == own | set(SETTING_FIELDS)


@pytest.mark.parametrize("profile", ["kafka", "embedded"])
def test_a_setting_left_unset_takes_the_config_default_or_the_profile_one(profile: str) -> None:
    settings = Settings(profile=profile)
    differing = PROFILE_DEFAULTS[profile]  # type: ignore[index]
    consumer = settings.consumer_config()
    assert consumer.max_poll_interval_ms == ConsumerConfig().max_poll_interval_ms
    assert consumer.session_timeout_ms == differing["consumer_session_timeout_ms"]
    assert settings.connection() == KafkaConnection()
    expected_publisher = PublisherConfig(enable_idempotence=differing.get("producer_idempotence", True))
    assert settings.publisher_config() == expected_publisher
    assert settings.group_settings() == GroupSettings()
    runtime = settings.runtime_config()
    assert runtime == RuntimeConfig(retry_topic_replication=differing["replication_factor"])


def test_the_topic_prefix_is_checked_alike_at_load_and_in_the_connection() -> None:
    def patterns(kind: type[BaseModel]) -> list[object]:
        return [getattr(item, "pattern", None) for item in kind.model_fields["topic_prefix"].metadata]

    assert patterns(Settings) == patterns(KafkaConnection) != [None]


def test_group_settings_such_as_the_email_domain_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_EMAIL_DOMAIN", "mail.example")
    monkeypatch.setenv("EVENTBUS_GATEWAY_SEED", "42")
    monkeypatch.setenv("EVENTBUS_CONSUMER_ISOLATION_LEVEL", "read_uncommitted")
    settings = load_settings()
    assert (settings.group_settings().email_domain, settings.group_settings().gateway_seed) == ("mail.example", 42)
    assert settings.consumer_config().isolation_level == "read_uncommitted"


def test_settings_say_where_each_value_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_CONCURRENCY", "7")
    sources = load_settings(profile="embedded", max_attempts=5).sources()
    assert sources["concurrency"] == "environment"
    assert sources["max_attempts"] == "given"
    assert sources["producer_idempotence"] == "profile embedded"
    assert sources["backoff_initial_s"] == "default"
    described = load_settings(profile="embedded").describe()
    assert set(sources) == set(described)
    assert described["producer_idempotence"] is False
