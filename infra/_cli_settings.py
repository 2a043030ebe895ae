"""``eventbus settings``: the effective settings, secrets masked."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ._cli_common import cli_errors, console, echo_json
from ._settings import load_settings

__all__ = ["show_settings"]


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def show_settings(as_json: bool) -> None:
    """The effective settings (EVENTBUS_* environment and profile defaults), secrets masked.

    The table says where each value comes from (environment, profile, default); --json prints the values.
    """
    with cli_errors():
        settings = load_settings()
        values, sources = settings.describe(), settings.sources()
    if as_json:
        echo_json(values)
        return
    table = Table("setting", "value", "from", title="EVENTBUS_* settings")
    for name, value in values.items():
        table.add_row(f"EVENTBUS_{name.upper()}", escape("" if value is None else str(value)), sources.get(name, ""))
    console().print(table)
