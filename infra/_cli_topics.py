"""``eventbus topics``: create the entity topics and list what the broker has."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table

from ._cli_common import cli_errors, console, echo_json
from ._settings import load_settings
from ._topics import apply_topics, describe_topics

__all__ = ["topics"]

_SHOWN_CONFIGS = frozenset({"retention.ms", "cleanup.policy"})


@click.group()
def topics() -> None:
    """The entity topics (one per catalog entity, under EVENTBUS_TOPIC_PREFIX)."""


@topics.command("apply")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def apply_command(as_json: bool) -> None:
    """Create the missing entity topics; idempotent.

    Existing topics are never changed: partitions, a replication factor or
    configs (retention.ms, cleanup.policy) that differ from the spec are
    reported as drift (a warning on stderr), and the exit status stays 0. A
    replication factor larger than the number of brokers is refused (exit 1)
    before anything is created.
    """
    with cli_errors():
        settings = load_settings()
        report = asyncio.run(apply_topics(settings.connection(), replication_factor=settings.replication))
    if as_json:
        echo_json({"created": report.created, "existing": report.existing, "drift": report.drift})
    else:
        for name in report.created:
            click.echo(f"created   {name}")
        for name in report.existing:
            click.echo(f"existing  {name}")
        click.echo(f"{len(report.created)} created, {len(report.existing)} existing, {len(report.drift)} drifted")
    for line in report.drift:
        click.echo(f"warning: drift: {line}", err=True)


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.option("--all", "all_topics", is_flag=True, help="Every topic on the broker, not only the catalog's.")
def list_command(as_json: bool, all_topics: bool) -> None:
    """The topics on the broker: name, partitions, replication factor, configs of the spec's topics."""
    with cli_errors():
        settings = load_settings()
        infos = asyncio.run(describe_topics(settings.connection(), all_topics=all_topics))
    if as_json:
        echo_json([info.as_dict() for info in infos])
        return
    table = Table("name", "partitions", "replication", "configs", title=f"{len(infos)} topics")
    for info in infos:
        configs = " ".join(f"{key}={value}" for key, value in sorted(info.configs.items()) if key in _SHOWN_CONFIGS)
        table.add_row(info.name, str(info.partitions), str(info.replication_factor), configs)
    console().print(table)
