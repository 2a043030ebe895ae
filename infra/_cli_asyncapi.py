"""``eventbus asyncapi``: the AsyncAPI 3.0 document of the bus, generated from the catalog and the groups."""

from __future__ import annotations

from pathlib import Path

import click

from ._asyncapi import asyncapi_json, asyncapi_yaml
from ._cli_common import cli_errors
from ._settings import load_settings

__all__ = ["asyncapi"]


@click.command("asyncapi")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Document format.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the document to FILE instead of stdout.",
)
def asyncapi(output_format: str, out: Path | None) -> None:
    """The AsyncAPI 3.0 document of the topics, events and consumer groups, generated from the catalog.

    One channel per topic (partitions, replicas, retention, cleanup), one message per event type
    (its Avro writer schema, key and headers), send operations for producers and receive operations
    per group. Topic names and group ids carry EVENTBUS_TOPIC_PREFIX; replicas are
    EVENTBUS_REPLICATION_FACTOR (after the profile default).
    """
    with cli_errors():
        settings = load_settings()
        prefix = settings.connection().topic_prefix
        render = asyncapi_json if output_format == "json" else asyncapi_yaml
        text = render(topic_prefix=prefix, replication=settings.replication)
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}", err=True)
