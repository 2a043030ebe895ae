"""The ``eventbus`` command line."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="eventbus")
def main() -> None:
    """Kafka-backed events for the coaching marketplace.

    Settings come from EVENTBUS_* environment variables (see `eventbus settings`).
    """


def _register() -> None:
    # Imported here so each command module can import `main`-free helpers only.
    from ._cli_analytics import analytics  # noqa: PLC0415
    from ._cli_broker import broker  # noqa: PLC0415
    from ._cli_credits import credits_group  # noqa: PLC0415
    from ._cli_events import history, publish, show_settings, tail  # noqa: PLC0415
    from ._cli_notifications import notifications_group  # noqa: PLC0415
    from ._cli_ops import dlq, stats  # noqa: PLC0415
    from ._cli_run import run  # noqa: PLC0415
    from ._cli_schemas import schemas  # noqa: PLC0415
    from ._cli_topics import topics  # noqa: PLC0415
    from ._demo import demo  # noqa: PLC0415

    commands = (broker, topics, schemas, publish, tail, history, show_settings, run, dlq, stats)
    groups = (credits_group, notifications_group, analytics, demo)
    for command in (*commands, *groups):
        main.add_command(command)


_register()
