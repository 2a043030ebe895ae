"""The ``notifications`` group on the in-memory fake broker, over SQLite and PostgreSQL.

Bookings notify the client and the coach; templates are files that declare their
variables; a missing variable dead-letters the event with nothing stored; the
inbox keeps one row per notification on redelivery (invariant 4) while
``notification:sent`` is published again with the same event ids (invariant 5);
email goes over a real local SMTP server once per notification.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner

from consumers import ConsumerGroup, Database, ProcessedEventStore, RetryPolicy, RuntimeConfig
from consumers._cache import MemoryCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.notifications import (
    MIGRATIONS,
    TEMPLATES_DIR,
    InboxChannel,
    InboxItem,
    Notification,
    TemplateDefinitionError,
    TemplateVariableError,
    build,
    format_session_date,
    list_notifications,
    load_template,
    load_templates,
    mark_read,
    notification_id,
)
from consumers.testing import InMemoryBroker
from infra._cli_notifications import notifications_group
from producers import EventPublisher
from schemas import (
    AvroCodec,
    Event,
    NotificationAction,
    NotificationRequested,
    NotificationSent,
    NotificationType,
    PaymentFailed,
    PaymentProcessed,
    SessionCancelled,
    SessionCreated,
    SystemErrorEvent,
    UserCreditsUpdated,
)
from tests import harness
from tests.harness import migrated_database, running_group

DOMAIN = "users.test.example"
CODEC = AvroCodec()
WHEN = datetime(2025, 6, 2, 16, 0, tzinfo=timezone(timedelta(hours=2)))  # 14:00 UTC


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, MIGRATIONS) as db:
        yield db


@asynccontextmanager
async def running(broker: InMemoryBroker, group: ConsumerGroup, database: Database) -> AsyncIterator[EventPublisher]:
    """Run ``group`` on the fake until the block ends; yields a publisher on the same broker."""
    config = RuntimeConfig(backoff_initial_s=0.01)
    async with running_group(group, broker, config, store=ProcessedEventStore(database)) as run:
        yield run.publisher


def group_for(database: Database, *, retry: RetryPolicy | None = None, **settings: Any) -> ConsumerGroup:
    resources = Resources(database=database, cache=MemoryCache(), settings=GroupSettings(**settings))
    return build(resources, retry=retry)


# The groups here settle within 10 s; poll every 10 ms.
until = partial(harness.until, timeout_s=10.0, interval_s=0.01)


def sent_for(broker: InMemoryBroker, source: Event) -> list[NotificationSent]:
    """The ``notification:sent`` follow-ups of ``source`` (partition by partition: not in publication order)."""
    decoded = [CODEC.decode(record.value) for record in broker.records("notification")]
    return [e for e in decoded if isinstance(e, NotificationSent) and e.metadata.causation_id == source.event_id]


def assert_republished_identically(sent: list[NotificationSent], *, distinct: int) -> None:
    """Each follow-up event id appears twice (first delivery, redelivery) with the same content and causation."""
    by_id: dict[UUID, list[NotificationSent]] = {}
    for item in sent:
        by_id.setdefault(item.event_id, []).append(item)
    assert len(by_id) == distinct
    for copies in by_id.values():
        assert len(copies) == 2
        first, again = (c.model_dump(exclude={"metadata": {"occurred_at"}}) for c in copies)
        assert first == again


def dead_letters_for(broker: InMemoryBroker, source: Event) -> list[SystemErrorEvent]:
    decoded = [CODEC.decode(record.value) for record in broker.records("system")]
    return [e for e in decoded if isinstance(e, SystemErrorEvent) and e.original_event_id == source.event_id]


def uid() -> str:
    return uuid4().hex[:10]


def booking(**overrides: Any) -> SessionCreated:
    key = uid()
    fields: dict[str, Any] = {
        "session_id": f"session-{key}",
        "coach_id": f"coach-{key}",
        "user_id": f"user-{key}",
        "scheduled_at": WHEN,
        "session_type": "Mentoría Individual",
        "cost_credits": 3,
        "coach_name": "Ada Lovelace",
        "client_name": "Grace Hopper",
    }
    return SessionCreated(**{**fields, **overrides})


async def inbox(database: Database, user_id: str) -> list[InboxItem]:
    return await list_notifications(database, user_id)


@dataclass
class Collector:
    """An aiosmtpd handler keeping every accepted message."""

    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp_server() -> Iterator[tuple[Collector, int]]:
    """A real SMTP server on 127.0.0.1 (aiosmtpd, its own thread); the collector and its port."""
    collector = Collector()
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield collector, port
    finally:
        controller.stop()


# -- bookings -----------------------------------------------------------------------------------


async def test_booking_notifies_client_session_confirmed_and_coach_new_session_request(
    database: Database, broker: InMemoryBroker
) -> None:
    event = booking()
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 2)

    [client] = await inbox(database, event.user_id)
    assert client.notification_type is NotificationType.SESSION_CONFIRMED
    assert client.title == "Sesión confirmada"
    assert client.body == (
        "Tu sesión de Mentoría Individual con Ada Lovelace está confirmada para el 2025-06-02 14:00 UTC."
    )
    assert client.icon == "calendar"
    assert client.actions == (NotificationAction(action="view", title="Ver sesión"),)
    assert client.read is False
    assert client.source_event_id == event.event_id
    assert client.notification_id == notification_id(event.event_id, event.user_id, NotificationType.SESSION_CONFIRMED)

    [coach] = await inbox(database, event.coach_id)
    assert coach.notification_type is NotificationType.NEW_SESSION_REQUEST
    assert coach.title == "Nueva solicitud de sesión"
    assert coach.body == "Grace Hopper ha reservado una sesión de Mentoría Individual para el 2025-06-02 14:00 UTC."

    sent = sorted(sent_for(broker, event), key=lambda s: s.user_id != event.user_id)
    assert [(s.user_id, s.notification_type, s.channel, s.title) for s in sent] == [
        (event.user_id, NotificationType.SESSION_CONFIRMED, "in_app", "Sesión confirmada"),
        (event.coach_id, NotificationType.NEW_SESSION_REQUEST, "in_app", "Nueva solicitud de sesión"),
    ]
    assert [s.notification_id for s in sent] == [str(client.notification_id), str(coach.notification_id)]
    assert all(s.source_event_id == event.event_id for s in sent)
    assert all(s.metadata.correlation_id == str(event.event_id) for s in sent)


async def test_booking_without_names_falls_back_to_the_ids(database: Database, broker: InMemoryBroker) -> None:
    event = booking(coach_name=None, client_name=None)
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 2)
    [client] = await inbox(database, event.user_id)
    [coach] = await inbox(database, event.coach_id)
    assert f"con {event.coach_id} está confirmada" in client.body
    assert coach.body.startswith(f"{event.user_id} ha reservado")


async def test_redelivered_booking_keeps_two_inbox_rows_and_republishes_the_same_follow_up_ids(
    database: Database, broker: InMemoryBroker
) -> None:
    """Invariants 4 (effects once) and 5 (deterministic follow-ups)."""
    event = booking()
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 2)
        await publisher.publish(event)  # the same event id again: a redelivery
        await until(lambda: len(sent_for(broker, event)) == 4)

    assert len(await inbox(database, event.user_id)) == 1
    assert len(await inbox(database, event.coach_id)) == 1
    assert_republished_identically(sent_for(broker, event), distinct=2)


# -- the other events ---------------------------------------------------------------------------


async def test_cancellation_payments_and_credits_notify_with_their_templates(
    database: Database, broker: InMemoryBroker
) -> None:
    key = uid()
    user, coach = f"user-{key}", f"coach-{key}"
    payment = {"payment_id": f"pay-{key}", "session_id": f"s-{key}", "user_id": user, "amount": Decimal("49.90")}
    events: list[Event] = [
        SessionCancelled(
            session_id=f"s-{key}", coach_id=coach, user_id=user, scheduled_at=WHEN, cancelled_by="coach", reason="ill"
        ),
        PaymentProcessed(**payment, transaction_id="tx-9"),
        PaymentFailed(**payment, error="tarjeta rechazada"),
        UserCreditsUpdated(user_id=user, delta=-3, balance=7, reason="session_completed"),
    ]
    async with running(broker, group_for(database), database) as publisher:
        for event in events:
            await publisher.publish(event)
        await until(lambda: sum(len(sent_for(broker, e)) for e in events) == 5)

    by_type = {item.notification_type: item for item in await inbox(database, user)}
    assert by_type[NotificationType.SESSION_CANCELLED].body == (
        "La sesión del 2025-06-02 14:00 UTC ha sido cancelada por el coach. Motivo: ill."
    )
    assert by_type[NotificationType.PAYMENT_PROCESSED].body == (
        "Hemos recibido tu pago de 49.90 EUR (transacción tx-9)."
    )
    assert by_type[NotificationType.PAYMENT_FAILED].body == (
        "No hemos podido procesar tu pago de 49.90 EUR: tarjeta rechazada."
    )
    assert by_type[NotificationType.CREDITS_UPDATED].body == "Te quedan 7 créditos. Cambio: -3."
    [coach_item] = await inbox(database, coach)
    assert coach_item.notification_type is NotificationType.SESSION_CANCELLED


async def test_a_coach_cancelling_a_session_booked_with_themself_gets_one_notification(
    database: Database, broker: InMemoryBroker
) -> None:
    person = f"coach-{uid()}"
    event = SessionCancelled(
        session_id=f"s-{uid()}", coach_id=person, user_id=person, scheduled_at=WHEN, cancelled_by="x"
    )
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 1)
    [item] = await inbox(database, person)
    assert item.body == "La sesión del 2025-06-02 14:00 UTC ha sido cancelada por x."


async def test_requested_custom_template_is_stored_as_given(database: Database, broker: InMemoryBroker) -> None:
    user = f"user-{uid()}"
    event = NotificationRequested(
        notification_id=f"req-{uid()}",
        user_id=user,
        notification_type=NotificationType.CUSTOM,
        data={"message": "Hola"},
        custom_template={
            "title": "Mensaje Personalizado",
            "body": "Hola {{ no es jinja }}",
            "icon": "info",
            "actions": [{"action": "view", "title": "Ver Detalles"}],
        },
    )
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 1)
    [item] = await inbox(database, user)
    assert (item.notification_type, item.title, item.body, item.icon) == (
        NotificationType.CUSTOM,
        "Mensaje Personalizado",
        "Hola {{ no es jinja }}",
        "info",
    )
    assert item.actions == (NotificationAction(action="view", title="Ver Detalles"),)
    [sent] = sent_for(broker, event)
    assert (sent.channel, sent.title, sent.notification_type) == ("in_app", "Mensaje Personalizado", "custom")


async def test_requested_notification_renders_its_type_template_with_camel_case_data(
    database: Database, broker: InMemoryBroker
) -> None:
    user = f"user-{uid()}"
    event = NotificationRequested(
        notification_id=f"req-{uid()}",
        user_id=user,
        notification_type=NotificationType.SESSION_CONFIRMED,
        data={"coachName": "Nombre del Coach", "sessionDate": "mañana", "sessionType": "Mentoría Individual"},
    )
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 1)
    [item] = await inbox(database, user)
    assert item.body == "Tu sesión de Mentoría Individual con Nombre del Coach está confirmada para el mañana."


async def test_missing_template_variable_dead_letters_naming_it_and_stores_nothing(
    database: Database, broker: InMemoryBroker
) -> None:
    user = f"user-{uid()}"
    event = NotificationRequested(
        notification_id=f"req-{uid()}",
        user_id=user,
        notification_type=NotificationType.PAYMENT_FAILED,
        data={"amount": "10.00", "currency": "EUR"},  # no "error"
    )
    async with running(broker, group_for(database), database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(dead_letters_for(broker, event)) == 1)
    [letter] = dead_letters_for(broker, event)
    assert letter.error_type == "TemplateVariableError"
    assert letter.error_message == "notification template payment_failed: missing variables error"
    assert letter.attempts == 1  # fatal: not retried
    assert letter.consumer_group == "notifications"
    assert await inbox(database, user) == []
    assert sent_for(broker, event) == []
    assert not await ProcessedEventStore(database).seen("notifications", event.event_id)


# -- templates ----------------------------------------------------------------------------------


def test_every_notification_type_has_a_template_file_declaring_its_variables() -> None:
    templates = load_templates()
    assert set(templates) == set(NotificationType)
    assert templates[NotificationType.SESSION_CONFIRMED].variables == {"coach_name", "session_date", "session_type"}
    assert templates[NotificationType.NEW_SESSION_REQUEST].variables == {"client_name", "session_date", "session_type"}
    assert templates[NotificationType.CREDITS_UPDATED].variables == {"credits_remaining"}
    for path in TEMPLATES_DIR.glob("*.json"):
        assert set(json.loads(path.read_text(encoding="utf-8"))["variables"]) == set(load_template(path).variables)


def test_render_without_a_declared_variable_raises_naming_template_and_variables() -> None:
    template = load_templates()[NotificationType.SESSION_CONFIRMED]
    with pytest.raises(TemplateVariableError) as caught:
        template.render({"session_date": "hoy"})
    assert caught.value.template == "session_confirmed"
    assert caught.value.missing == ["coach_name", "session_type"]
    assert caught.value.retriable is False


def test_render_is_plain_text_without_escaping() -> None:
    template = load_templates()[NotificationType.SESSION_CONFIRMED]
    content = template.render({"coach_name": "O'Brien <b>", "session_date": "hoy", "session_type": "x & y"})
    assert content.body == "Tu sesión de x & y con O'Brien <b> está confirmada para el hoy."


def write_template(directory: Path, name: str, **spec: Any) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_template_using_an_undeclared_variable_fails_at_load_time(tmp_path: Path) -> None:
    write_template(tmp_path, "custom", variables=["title"], title="{{ title }}", body="{{ body }} {{ extra }}")
    with pytest.raises(TemplateDefinitionError, match="body uses undeclared variables body, extra"):
        load_templates(tmp_path, require_all=False)
    write_template(
        tmp_path, "custom", variables=["t"], title="{{ t }}", body="b", actions=[{"action": "a", "title": "{{ x }}"}]
    )
    with pytest.raises(TemplateDefinitionError, match=r"actions\[0\].title uses undeclared variables x"):
        load_templates(tmp_path, require_all=False)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"variables": ["a"], "title": "{{ a }", "body": ""}, "title: unexpected"),
        ({"variables": ["a"], "title": "t", "body": "b", "colour": "red"}, "unknown keys colour"),
        ({"variables": "a", "title": "t", "body": "b"}, "variables must be a list"),
        ({"variables": ["a"], "defaults": {"a": ""}, "title": "t", "body": "b"}, "both required and defaulted"),
        ({"variables": [], "title": "t"}, "body must be a string"),
        ({"variables": [], "title": "t", "body": "b", "actions": [{"action": "a"}]}, "actions"),
        ({"variables": [], "title": "t", "body": "b", "actions": {}}, "actions must be a list"),
        ({"variables": [], "title": "t", "body": "b", "icon": 3}, "icon must be a string or null"),
        ({"variables": [], "title": "t", "body": "b", "defaults": {"a": 1}}, "defaults must map"),
    ],
)
def test_broken_template_files_fail_at_load_time(tmp_path: Path, spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(TemplateDefinitionError, match=problem):
        load_template(write_template(tmp_path, "custom", **spec))


def test_unreadable_template_file_fails_at_load_time(tmp_path: Path) -> None:
    path = tmp_path / "custom.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(TemplateDefinitionError, match="cannot read"):
        load_template(path)
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(TemplateDefinitionError, match="one JSON object"):
        load_template(path)


def test_template_directory_must_cover_every_type_and_name_known_types(tmp_path: Path) -> None:
    write_template(tmp_path, "custom", variables=[], title="t", body="b")
    with pytest.raises(TemplateDefinitionError, match="no template file"):
        load_templates(tmp_path)
    write_template(tmp_path, "birthday", variables=[], title="t", body="b")
    with pytest.raises(TemplateDefinitionError, match="names no notification type"):
        load_templates(tmp_path, require_all=False)


async def test_a_broken_template_stops_the_group_at_build_time(tmp_path: Path) -> None:
    for kind in NotificationType:
        write_template(tmp_path, kind.value, variables=[], title="t", body="{{ oops }}")
    db = Database(f"sqlite:///{tmp_path}/t.sqlite")
    try:
        with pytest.raises(TemplateDefinitionError, match="oops"):
            build(Resources(database=db, cache=MemoryCache(), settings=GroupSettings()), templates_dir=tmp_path)
    finally:
        await db.close()


async def test_group_is_named_notifications_and_handles_its_event_types(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/t.sqlite")
    try:
        group = group_for(db)
    finally:
        await db.close()
    assert group.name == "notifications"
    assert set(group.event_types) == {
        "session:created",
        "session:cancelled",
        "payment:processed",
        "payment:failed",
        "user:credits_updated",
        "notification:requested",
    }
    assert "notification:sent" not in group.event_types  # its own follow-ups never loop back


def test_a_type_without_template_is_a_definition_error(tmp_path: Path) -> None:
    write_template(tmp_path, "custom", variables=[], title="t", body="b")
    templates = load_templates(tmp_path, require_all=False)
    with pytest.raises(TemplateDefinitionError, match="no notification template for type 'payment_failed'"):
        templates[NotificationType.PAYMENT_FAILED]


def test_session_dates_are_formatted_in_utc() -> None:
    assert format_session_date(WHEN) == "2025-06-02 14:00 UTC"
    assert format_session_date(datetime(2025, 1, 5, 8, 3, tzinfo=UTC)) == "2025-01-05 08:03 UTC"


# -- inbox --------------------------------------------------------------------------------------


def stored(user: str, title: str) -> Notification:
    return Notification(
        notification_id=uuid4(),
        user_id=user,
        notification_type=NotificationType.CUSTOM,
        title=title,
        body=f"{title} body",
        icon=None,
        actions=(),
        source_event_id=uuid4(),
    )


async def test_list_notifications_filters_unread_and_limits_and_mark_read_reports_unknown_ids(
    database: Database,
) -> None:
    user = f"user-{uid()}"
    first, second = stored(user, "uno"), stored(user, "dos")
    async with database.begin() as conn:
        await InboxChannel(conn).deliver(first)
        await InboxChannel(conn).deliver(second)
        await InboxChannel(conn).deliver(second)  # same id: nothing happens
    assert {item.title for item in await list_notifications(database, user)} == {"uno", "dos"}
    assert len(await list_notifications(database, user, limit=1)) == 1
    assert await mark_read(database, first.notification_id) is True
    assert await mark_read(database, uuid4()) is False
    [unread] = await list_notifications(database, user, unread_only=True)
    assert unread.title == "dos"
    read = {item.title: item.read for item in await list_notifications(database, user)}
    assert read == {"uno": True, "dos": False}


# -- email ----------------------------------------------------------------------------------------


async def test_email_goes_out_once_per_notification_and_not_again_on_redelivery(
    database: Database, broker: InMemoryBroker, smtp_server: tuple[Collector, int]
) -> None:
    collector, port = smtp_server
    group = group_for(database, smtp_host="127.0.0.1", smtp_port=port, email_domain=DOMAIN, smtp_sender="n@test")
    event = booking()
    async with running(broker, group, database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(sent_for(broker, event)) == 4)
        await publisher.publish(event)  # redelivery
        await until(lambda: len(sent_for(broker, event)) == 8)

    assert sorted(r for rs in collector.recipients for r in rs) == sorted(
        [f"{event.user_id}@{DOMAIN}", f"{event.coach_id}@{DOMAIN}"]
    )
    by_to = {message["To"]: message for message in collector.messages}
    client_mail = by_to[f"{event.user_id}@{DOMAIN}"]
    assert client_mail["Subject"] == "Sesión confirmada"
    assert client_mail["From"] == "n@test"
    assert "Ada Lovelace" in client_mail.get_content()
    client_id = notification_id(event.event_id, event.user_id, NotificationType.SESSION_CONFIRMED)
    assert client_mail["Message-ID"] == f"<{client_id}@{DOMAIN}>"

    sent = sent_for(broker, event)
    assert sorted((s.user_id, s.channel) for s in sent) == sorted(
        [(user, channel) for user in (event.user_id, event.coach_id) for channel in ("in_app", "email")] * 2
    )
    assert_republished_identically(sent, distinct=4)
    assert all(item.emailed_at is not None for item in await inbox(database, event.user_id))


async def test_smtp_down_is_retried_then_dead_lettered_and_the_email_is_sent_on_replay(
    database: Database, broker: InMemoryBroker, smtp_server: tuple[Collector, int]
) -> None:
    collector, port = smtp_server
    event = booking()
    patience = RetryPolicy(initial_s=0.01, max_s=0.05, bound_s=0.3)  # waits for SMTP this long, then gives up
    down = group_for(database, retry=patience, smtp_host="127.0.0.1", smtp_port=free_port(), email_domain=DOMAIN)
    async with running(broker, down, database) as publisher:
        await publisher.publish(event)
        await until(lambda: len(dead_letters_for(broker, event)) == 1)
    [letter] = dead_letters_for(broker, event)
    assert letter.error_type == "RetryBoundExceededError"
    assert letter.attempts == 3  # retried (RuntimeConfig.max_attempts), then dead-lettered
    assert "smtp kept failing" in letter.error_message
    assert "email delivery of notification" in letter.error_message
    assert sent_for(broker, event) == []  # nothing announced as sent
    [client] = await inbox(database, event.user_id)  # the in-app notification is stored once...
    assert client.emailed_at is None  # ...and its email is still owed

    up = group_for(database, smtp_host="127.0.0.1", smtp_port=port, email_domain=DOMAIN)
    async with running(broker, up, database) as publisher:
        await publisher.publish(event)  # the replay of the dead letter
        await until(lambda: len(sent_for(broker, event)) == 4)
    assert len(collector.messages) == 2
    assert len(await inbox(database, event.user_id)) == 1
    assert all(item.emailed_at is not None for item in await inbox(database, event.coach_id))


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_lists_a_users_notifications_as_json_and_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.sqlite"
    user = f"user-{uid()}"
    first, second = stored(user, "Sesión confirmada"), stored(user, "Pago procesado")

    async def seed() -> None:
        async with migrated_database(url, MIGRATIONS) as db:
            async with db.begin() as conn:
                await InboxChannel(conn).deliver(first)
                await InboxChannel(conn).deliver(second)
            await mark_read(db, first.notification_id)

    asyncio.run(seed())
    runner = CliRunner()
    env = {"EVENTBUS_DATABASE_URL": url}

    result = runner.invoke(notifications_group, ["list", user, "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["title"] for row in rows} == {"Sesión confirmada", "Pago procesado"}
    assert {row["notification_id"] for row in rows} == {str(first.notification_id), str(second.notification_id)}

    result = runner.invoke(notifications_group, ["list", user, "--json", "--unread"], env=env)
    assert [row["title"] for row in json.loads(result.stdout)] == ["Pago procesado"]

    result = runner.invoke(notifications_group, ["list", user], env=env)
    assert result.exit_code == 0
    assert "Pago procesado" in result.stdout
    assert "2 notifications" in result.stdout

    result = runner.invoke(notifications_group, ["list", "nobody", "--json"], env=env)
    assert json.loads(result.stdout) == []

    result = runner.invoke(notifications_group, ["mark-read", str(second.notification_id)], env=env)
    assert result.exit_code == 0
    result = runner.invoke(notifications_group, ["mark-read", str(uuid4())], env=env)
    assert result.exit_code == 1
    assert "error: no notification" in result.stderr


def test_cli_reports_a_bad_database_url_cleanly() -> None:
    result = CliRunner().invoke(notifications_group, ["list", "u"], env={"EVENTBUS_DATABASE_URL": "mysql://x/y"})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unsupported database URL")
    assert "Traceback" not in result.output
