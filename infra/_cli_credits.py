"""``eventbus credits``: grant credits to a user and read balances (the ``credits`` group's tables)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from uuid import UUID, uuid4

import click

from consumers import PROCESSED_EVENTS_MIGRATION, Database, migrated_database
from consumers.groups.credits import MAX_BALANCE, MIGRATIONS, get_balance, grant_credits, ledger
from producers import EventPublisher
from schemas.errors import EventBusError, EventValidationError

from ._cli_common import cli_errors, echo_json, fail, reading_database_url
from ._settings import Settings, load_settings

__all__ = ["credits_group"]


def _database(settings: Settings, *, reading: bool = False) -> AbstractAsyncContextManager[Database]:
    url = reading_database_url(settings.database_url) if reading else settings.database_url
    return migrated_database(url, [PROCESSED_EVENTS_MIGRATION, *MIGRATIONS])


async def _grant(settings: Settings, user_id: str, amount: int, grant_id: UUID) -> int:
    config = settings.publisher_config("eventbus-cli")
    connection = settings.connection()
    publisher = EventPublisher(connection=connection, config=config)
    limit = connection.connect_timeout_s + config.delivery_timeout_s + 2 * connection.request_timeout_s
    # The publisher connects first: an unreachable broker fails before the balance changes.
    async with _database(settings) as database, asyncio.timeout(limit), publisher:
        return await grant_credits(database, publisher, user_id, amount, grant_id=grant_id)


async def _balance(settings: Settings, user_id: str, with_ledger: bool) -> tuple[int, list[dict[str, object]]]:
    async with _database(settings, reading=True) as database:
        balance = await get_balance(database, user_id)
        entries = [entry.as_dict() for entry in await ledger(database, user_id)] if with_ledger else []
    return balance, entries


@click.group("credits")
def credits_group() -> None:
    """User credit balances (EVENTBUS_DATABASE_URL; the `credits` group deducts completed sessions)."""


@credits_group.command("grant")
@click.argument("user_id")
@click.argument("amount", type=click.IntRange(1, MAX_BALANCE))
@click.option(
    "--grant-id",
    type=click.UUID,
    help="Idempotency key: running a grant again with the same id changes nothing (default: a new id).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def grant_command(user_id: str, amount: int, grant_id: UUID | None, as_json: bool) -> None:
    """Add AMOUNT (a positive integer) credits to USER_ID, publish user:credits_updated, print the new balance.

    Example: eventbus credits grant user-42 50
    """
    grant_id = grant_id or uuid4()
    with cli_errors():
        settings = load_settings()
        try:
            balance = asyncio.run(_grant(settings, user_id, amount, grant_id))
        except EventValidationError:
            raise
        except EventBusError as exc:
            fail(f"{exc.message} (to retry safely, run again with --grant-id {grant_id}: it is applied at most once)")
        except TimeoutError:
            fail(f"granting did not finish in time (to retry safely, run again with --grant-id {grant_id})")
    if as_json:
        echo_json({"user_id": user_id, "amount": amount, "balance": balance, "grant_id": str(grant_id)})
    else:
        click.echo(balance)


@credits_group.command("balance")
@click.argument("user_id")
@click.option("--ledger", "with_ledger", is_flag=True, help="Also list the balance changes (with --json).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def balance_command(user_id: str, with_ledger: bool, as_json: bool) -> None:
    """Print USER_ID's balance (0 for an unknown user).

    Example: eventbus credits balance user-42 --json
    """
    with cli_errors():
        settings = load_settings()
        balance, entries = asyncio.run(_balance(settings, user_id, with_ledger))
    if as_json:
        echo_json({"user_id": user_id, "balance": balance, **({"ledger": entries} if with_ledger else {})})
        return
    click.echo(balance)
    for entry in entries:
        session = f" session={entry['session_id']}" if entry["session_id"] else ""
        click.echo(f"{entry['created_at']} {entry['delta']:+d} -> {entry['balance_after']} {entry['reason']}{session}")
