"""The ``credits`` group on the fake broker, over SQLite and PostgreSQL: deductions happen once
(invariant 4), follow-ups are the same event on every delivery (invariant 5), a balance never
goes negative, grants are idempotent; and ``eventbus credits balance``/``grant`` input checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from consumers import ConsumerGroup, Database, HandlerContext, ProcessedEventStore, follow_up_id
from consumers._cache import MemoryCache
from consumers._resources import GroupSettings, Resources
from consumers.groups.credits import (
    MAX_BALANCE,
    MIGRATIONS,
    InsufficientCreditsError,
    build,
    get_balance,
    grant_credits,
    grant_event_id,
    ledger,
)
from consumers.testing import InMemoryBroker
from infra._cli_credits import credits_group as cli
from producers import EventPublisher
from schemas import AvroCodec, CreditsReason, Event, SessionCompleted, SystemErrorEvent, UserCreditsUpdated
from schemas.errors import EventValidationError
from tests.events_factory import example_event
from tests.harness import migrated_database, new_broker, run_until_drained, until

CODEC = AvroCodec()


# -- harness ------------------------------------------------------------------------------------


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, MIGRATIONS) as value:
        yield value


def credits_group(database: Database) -> ConsumerGroup:
    return build(Resources(database=database, cache=MemoryCache(), settings=GroupSettings()))


def decoded(broker: InMemoryBroker, topic: str) -> list[Event]:
    return [CODEC.decode(record.value) for record in broker.records(topic)]


def updates(broker: InMemoryBroker, user_id: str) -> list[UserCreditsUpdated]:
    return [e for e in decoded(broker, "user") if isinstance(e, UserCreditsUpdated) and e.user_id == user_id]


def completed(user_id: str, cost: int) -> SessionCompleted:
    event = example_event("session:completed", user_id=user_id, cost_credits=cost, session_id=f"s-{uuid4().hex[:8]}")
    assert isinstance(event, SessionCompleted)
    return event


def new_user() -> str:
    return f"user-{uuid4().hex[:12]}"


# -- the group ----------------------------------------------------------------------------------


async def test_completed_session_delivered_twice_is_deducted_once_and_updates_are_the_same_event(
    database: Database, broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    """Invariants 4 and 5: a duplicate delivery deducts nothing more, yet republishes the same
    ``user:credits_updated`` (same event id, same balance read back from the ledger)."""
    user = new_user()
    assert await grant_credits(database, publisher, user, 10) == 10
    session = completed(user, 3)
    await publisher.publish_many([session, session])

    await run_until_drained(credits_group(database), broker, publisher, store=ProcessedEventStore(database))

    assert await get_balance(database, user) == 7
    entries = await ledger(database, user)
    assert [(e.delta, e.balance_after, e.reason) for e in entries] == [
        (10, 10, CreditsReason.GRANT),
        (-3, 7, CreditsReason.SESSION_COMPLETED),
    ]
    assert entries[1].entry_id == str(session.event_id)
    assert entries[1].session_id == session.session_id
    deducted = [u for u in updates(broker, user) if u.reason is CreditsReason.SESSION_COMPLETED]
    assert len(deducted) == 2
    expected_id = follow_up_id("credits", session.event_id, "user:credits_updated", 0)
    for update in deducted:
        assert update.event_id == expected_id
        assert (update.delta, update.balance, update.session_id) == (-3, 7, session.session_id)
        assert update.metadata.causation_id == session.event_id
        assert update.metadata.correlation_id == str(session.event_id)


async def test_insufficient_credits_are_dead_lettered_with_the_reason_and_the_balance_is_unchanged(
    database: Database, broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    """A completion the balance cannot cover goes to the system topic (FatalHandlerError, one
    attempt) naming user, balance and cost; nothing is deducted or published. Replayed after a
    grant, the same event is deducted (the failed attempt recorded nothing)."""
    user = new_user()
    await grant_credits(database, publisher, user, 2)
    session = completed(user, 5)
    await publisher.publish(session)
    group = credits_group(database)

    await run_until_drained(group, broker, publisher, store=ProcessedEventStore(database))

    (letter,) = decoded(broker, "system")
    assert isinstance(letter, SystemErrorEvent)
    assert (letter.consumer_group, letter.error_type, letter.attempts) == ("credits", "InsufficientCreditsError", 1)
    assert letter.original_event_id == session.event_id
    assert user in letter.error_message
    assert "balance of 2" in letter.error_message
    assert "costs 5" in letter.error_message
    assert await get_balance(database, user) == 2
    assert [e.reason for e in await ledger(database, user)] == [CreditsReason.GRANT]
    assert [u.reason for u in updates(broker, user)] == [CreditsReason.GRANT]
    assert not await ProcessedEventStore(database).seen("credits", session.event_id)

    await grant_credits(database, publisher, user, 10)
    await publisher.publish(session)  # the replay of the dead letter
    await run_until_drained(group, broker, publisher, store=ProcessedEventStore(database))
    assert await get_balance(database, user) == 7
    assert [u.balance for u in updates(broker, user)] == [2, 12, 7]


def handler_context(event: Event, publisher: EventPublisher, database: Database, offset: int) -> HandlerContext:
    return HandlerContext(
        group="credits",
        event=event,
        topic="session",
        partition=0,
        offset=offset,
        key=None,
        headers=[],
        attempt=1,
        publisher=publisher,
        store=ProcessedEventStore(database),
    )


async def waiting_for_balance_locks(database: Database) -> int:
    """How many backends wait for a lock while running the credits group's ``SELECT ... FOR UPDATE``."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE 'SELECT balance FROM credits_balances%FOR UPDATE'"
    )
    async with database.begin() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def test_concurrent_completions_for_one_user_never_overdraw(
    database: Database, broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    """Two completions of 7 against a balance of 10, in two transactions at once: one is deducted,
    the other refused; the balance is 3, never negative. On PostgreSQL a third transaction holds
    the balance row until both handlers are waiting for it, so they really overlap (the row
    lock, not luck, decides); SQLite serializes the writers."""
    user = new_user()
    await grant_credits(database, publisher, user, 10)
    handle = credits_group(database).handler_for("session:completed")
    assert handle is not None
    events = [completed(user, 7), completed(user, 7)]

    def start() -> list[asyncio.Task[None]]:
        return [
            asyncio.ensure_future(handle(event, handler_context(event, publisher, database, index)))
            for index, event in enumerate(events)
        ]

    if database.dialect == "postgresql":
        async with database.begin() as holder:
            await holder.execute(text("SELECT 1 FROM credits_balances WHERE user_id = :u FOR UPDATE"), {"u": user})
            tasks = start()

            async def both_waiting() -> bool:
                return await waiting_for_balance_locks(database) == 2

            await until(both_waiting, "both handlers waiting for the balance row")
    else:
        tasks = start()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    refused = [r for r in results if isinstance(r, InsufficientCreditsError)]
    assert len(refused) == 1, results
    assert results.count(None) == 1, results
    assert (refused[0].balance, refused[0].cost) == (3, 7)
    assert await get_balance(database, user) == 3
    assert [(e.delta, e.balance_after) for e in await ledger(database, user)] == [(10, 10), (-7, 3)]


async def test_grants_are_idempotent_by_grant_id(
    database: Database, broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    """The same grant id grants once and republishes the same event; a new id grants again."""
    user = new_user()
    grant_id = uuid4()

    first = await grant_credits(database, publisher, user, 5, grant_id=grant_id)
    again = await grant_credits(database, publisher, user, 5, grant_id=grant_id)
    other = await grant_credits(database, publisher, user, 5)

    assert (first, again, other) == (5, 5, 10)
    assert await get_balance(database, user) == 10
    entries = await ledger(database, user)
    assert len(entries) == 2
    assert (entries[0].entry_id, entries[0].delta, entries[0].balance_after) == (str(grant_id), 5, 5)
    published = updates(broker, user)
    assert [u.event_id for u in published[:2]] == [grant_event_id(grant_id)] * 2
    assert [(u.delta, u.balance, u.reason) for u in published] == [(5, 5, CreditsReason.GRANT)] * 2 + [
        (5, 10, CreditsReason.GRANT)
    ]
    assert published[2].event_id != grant_event_id(grant_id)


async def test_invalid_grants_are_refused_and_change_nothing(
    database: Database, broker: InMemoryBroker, publisher: EventPublisher
) -> None:
    """Non-positive amounts, a balance over the Avro int range and a reused grant id with other
    content raise EventValidationError before anything is written or published."""
    user = new_user()
    grant_id = uuid4()
    await grant_credits(database, publisher, user, 5, grant_id=grant_id)

    with pytest.raises(EventValidationError, match="positive"):
        await grant_credits(database, publisher, user, 0)
    with pytest.raises(EventValidationError, match="maximum balance"):
        await grant_credits(database, publisher, user, MAX_BALANCE)
    with pytest.raises(EventValidationError, match="already exists"):
        await grant_credits(database, publisher, user, 6, grant_id=grant_id)
    with pytest.raises(EventValidationError, match="already exists"):
        await grant_credits(database, publisher, new_user(), 5, grant_id=grant_id)

    assert await get_balance(database, user) == 5
    assert len(updates(broker, user)) == 1


async def test_unknown_user_has_a_zero_balance_and_an_empty_ledger(database: Database) -> None:
    user = new_user()
    assert await get_balance(database, user) == 0
    assert await ledger(database, user) == []


# -- eventbus credits (no broker needed) -----------------------------------------------------------


def test_cli_balance_prints_the_balance_and_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.sqlite"
    user = new_user()

    async def seed() -> None:
        async with (
            migrated_database(url, MIGRATIONS) as database,
            EventPublisher(transport=new_broker().producer()) as publisher,
        ):
            await grant_credits(database, publisher, user, 12)

    asyncio.run(seed())
    env = {"EVENTBUS_DATABASE_URL": url}
    plain = CliRunner().invoke(cli, ["balance", user], env=env)
    as_json = CliRunner().invoke(cli, ["balance", user, "--json", "--ledger"], env=env)
    unknown = CliRunner().invoke(cli, ["balance", "nobody", "--json"], env=env)

    assert plain.exit_code == 0, plain.output
    assert plain.stdout.strip() == "12"
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert (body["user_id"], body["balance"]) == (user, 12)
    assert [(e["delta"], e["reason"]) for e in body["ledger"]] == [(12, "grant")]
    assert json.loads(unknown.stdout) == {"user_id": "nobody", "balance": 0}


@pytest.mark.parametrize("amount", ["0", "abc", "-5", "2147483648"])
def test_cli_grant_refuses_an_amount_that_is_not_a_positive_int_with_exit_2(tmp_path: Path, amount: str) -> None:
    env = {"EVENTBUS_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite", "EVENTBUS_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = CliRunner().invoke(cli, ["grant", "user-1", "--", amount], env=env)
    assert result.exit_code == 2, result.output
    assert "AMOUNT" in result.stderr
    assert not (tmp_path / "cli.sqlite").exists()


def test_cli_database_errors_are_a_clean_message_with_exit_1(tmp_path: Path) -> None:
    # A file that is not a database. (Not a missing directory: aiosqlite 0.22.1 then leaves its
    # worker thread answering a closed event loop, which pytest reports as a thread exception.)
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database file" * 100)
    env = {"EVENTBUS_DATABASE_URL": f"sqlite:///{tmp_path}/garbage.sqlite"}
    result = CliRunner().invoke(cli, ["balance", "user-1"], env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: database error")
    assert "Traceback" not in result.output


def test_cli_grant_with_an_unreachable_broker_fails_cleanly_before_changing_the_balance(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.sqlite"
    env = {"EVENTBUS_DATABASE_URL": url, "EVENTBUS_BOOTSTRAP_SERVERS": "127.0.0.1:1", "EVENTBUS_CONNECT_TIMEOUT_S": "1"}
    result = CliRunner().invoke(cli, ["grant", "user-1", "5", "--grant-id", str(uuid4())], env=env)
    balance = CliRunner().invoke(cli, ["balance", "user-1"], env=env)

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ")
    assert "--grant-id" in result.stderr
    assert "Traceback" not in result.output
    assert balance.stdout.strip() == "0"
