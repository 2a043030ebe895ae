"""``eventbus demo``: the whole system on one machine, driven, watched live, and checked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
import uuid
import webbrowser
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy import bindparam, text

from consumers import (
    ConsumerGroup,
    Database,
    OutboxRelay,
    ProcessedEventStore,
    Resources,
    open_cache,
    outbox_status,
    run_groups,
)
from consumers.groups import analytics
from consumers.groups.payments import queue_depth
from producers import EventPublisher, Outbox
from schemas.errors import EventBusError

from ._cli_common import cli_errors, console
from ._cli_gateway import listen_socket, serve_gateway
from ._composition import marketplace_groups, marketplace_migrations
from ._demo_market import DEMO_BOOKINGS_MIGRATION, Expectations, Marketplace
from ._dlq import list_dead_letters
from ._embedded import EmbeddedBroker
from ._reader import count_event_types, partition_ends
from ._settings import Settings, load_settings
from ._stats import collect_stats
from ._telemetry import configure_telemetry
from ._topics import apply_topics
from .bus import EventBus

__all__ = ["Check", "DemoGateway", "demo", "run_demo"]


@dataclass
class Check:
    """One self-check of the demo's summary."""

    name: str
    passed: bool
    detail: str


@dataclass
class _Snapshot:
    lag: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    payments: dict[str, int] = field(default_factory=dict)
    outbox: int = 0

    @property
    def drained(self) -> bool:
        busy = self.payments.get("pending_high", 0) + self.payments.get("pending_normal", 0)
        return not any(self.lag.values()) and busy + self.payments.get("charging", 0) + self.outbox == 0


@dataclass(frozen=True)
class DemoGateway:
    """Where ``eventbus demo --gateway`` serves the screens, and whether it opens a browser on them."""

    host: str = "127.0.0.1"
    port: int = 8080
    open_browser: bool = True

    @property
    def url(self) -> str:
        """The screens' address."""
        return f"http://{self.host}:{self.port}/ui/"


def _demo_settings(run_id: str, workdir: Path, *, dev_tokens: bool = False) -> tuple[Settings, EmbeddedBroker | None]:
    overrides: dict[str, object] = {"topic_prefix": f"{os.environ.get('EVENTBUS_TOPIC_PREFIX', '')}demo-{run_id}."}
    if dev_tokens:  # the screens' login stand-in, for this process only
        overrides["http_dev_tokens"] = True
    if "EVENTBUS_DATABASE_URL" not in os.environ:
        overrides["database_url"] = f"sqlite:///{workdir / 'demo.sqlite'}"
    broker = None
    if "EVENTBUS_BOOTSTRAP_SERVERS" not in os.environ:
        broker = EmbeddedBroker()
        broker.start()
        overrides.update(bootstrap_servers=broker.bootstrap_servers, profile="embedded")
    overrides.setdefault("gateway_failure_rate", float(os.environ.get("EVENTBUS_GATEWAY_FAILURE_RATE", "0.1")))
    overrides.setdefault("gateway_latency_s", float(os.environ.get("EVENTBUS_GATEWAY_LATENCY_S", "0.02")))
    return load_settings(**overrides), broker


async def _snapshot(settings: Settings, groups: list[ConsumerGroup], database: Database, run_id: str) -> _Snapshot:
    connection = settings.connection()
    stats = await collect_stats(connection, groups, count_types=False)
    system = await partition_ends(connection, ["system"])
    return _Snapshot(
        lag={g.group: g.lag for g in stats.groups},
        dead_letters=sum(high - low for low, high in system.values()),
        payments=await queue_depth(database, payment_prefix=f"{run_id}-"),
        outbox=(await outbox_status(database, scope=connection.topic_prefix)).backlog,
    )


def _view(expected: Expectations, snap: _Snapshot, phase: str) -> Group:
    published = Table("event type", "published", title=f"eventbus demo: {phase}")
    for event_type, count in sorted(expected.published.items()):
        published.add_row(event_type, str(count))
    groups = Table("group", "lag")
    for name, lag in snap.lag.items():
        groups.add_row(name, str(lag))
    other = Table("outbox", "dead letters", "payments pending (high/normal)", "charging", "processed", "failed")
    p = snap.payments
    other.add_row(
        str(snap.outbox),
        str(snap.dead_letters),
        f"{p.get('pending_high', 0)}/{p.get('pending_normal', 0)}",
        str(p.get("charging", 0)),
        str(p.get("processed", 0)),
        str(p.get("failed", 0)),
    )
    return Group(published, groups, other)


async def _checks(
    settings: Settings, database: Database, expected: Expectations, analytics_before: dict[str, int]
) -> list[Check]:
    """The summary's checks, over this run's users, sessions, payments and topics only.

    The database may hold earlier runs' rows (``EVENTBUS_DATABASE_URL`` pointing at a used
    database): rows are selected by this run's users, and the analytics counts, which are
    not per user, are compared as the growth since the groups started.
    """
    connection = settings.connection()
    letters = await list_dead_letters(connection)
    refused = {d.letter.original_event_id for d in letters if d.letter.error_type == "InsufficientCreditsError"}
    unexpected = [d for d in letters if d.letter.error_type != "InsufficientCreditsError"]
    async with database.begin() as conn:
        applied = {
            row[0]
            for row in await conn.execute(
                text(
                    "SELECT entry_id FROM credits_ledger WHERE reason = 'session_completed' AND user_id IN :users"
                ).bindparams(bindparam("users", expanding=True)),
                {"users": expected.users},
            )
        }
        rows = (await conn.execute(text("SELECT user_id, balance FROM credits_balances"))).all()
        balances: dict[str, int] = {str(user): int(balance) for user, balance in rows}
        inbox = Counter(
            (row[0], row[1], row[2])
            for row in await conn.execute(text("SELECT source_event_id, user_id, type FROM notifications_inbox"))
        )
    completions = {str(event_id): value for event_id, value in expected.completions.items()}
    refused_ids = {str(event_id) for event_id in refused}
    checks = [
        Check(
            "every completion deducted once or refused",
            set(completions) == applied | refused_ids and not applied & refused_ids,
            f"{len(applied)} deducted, {len(refused_ids)} refused (insufficient credits), {len(completions)} completed",
        )
    ]
    wrong = []
    for user in expected.users:
        spent = sum(cost for event_id, (owner, cost) in completions.items() if owner == user and event_id in applied)
        want = expected.granted[user] - spent
        if balances.get(user, 0) != want:
            wrong.append(f"{user}: {balances.get(user, 0)} != {want}")
    checks.append(
        Check(
            "credit balances = grants - completed sessions",
            not wrong,
            "; ".join(wrong[:3]) or f"{len(expected.users)} users",
        )
    )
    missing = [
        str(event_id)
        for event_id, (user, coach) in expected.bookings.items()
        if inbox[(str(event_id), user, "session_confirmed")] != 1
        or inbox[(str(event_id), coach, "new_session_request")] != 1
    ]
    checks.append(
        Check(
            "one pair of notifications per booking",
            not missing,
            f"{len(expected.bookings)} bookings, {len(missing)} wrong",
        )
    )
    on_topics = await count_event_types(connection)
    after = (await analytics.summary(database)).by_type
    counted = {t: n - analytics_before.get(t, 0) for t, n in after.items()}
    diff = {t: (counted.get(t, 0), n) for t, n in on_topics.items() if counted.get(t, 0) != n}
    checks.append(
        Check(
            "analytics counts = events on the topics",
            not diff,
            f"differ (counted, on topics): {str(diff)[:200]}" if diff else f"{sum(on_topics.values())} events",
        )
    )
    results = on_topics["payment:processed"] + on_topics["payment:failed"]
    requested = expected.published["payment:process_required"]
    checks.append(Check("one result per payment", results == requested, f"{results} results for {requested} requests"))
    detail = "; ".join(f"{d.letter.consumer_group}: {d.letter.error_type}" for d in unexpected[:3]) or "none"
    checks.append(Check("no unexpected dead letters", not unexpected, detail))
    return checks


async def run_demo(
    duration_s: float,
    *,
    live: bool = True,
    gateway: DemoGateway | None = None,
    on_summary: Callable[[list[Check]], None] | None = None,
) -> list[Check]:
    """Start (or use) a broker, run the five groups, drive the marketplace, drain, and check.

    Bookings go through the transactional outbox and a relay. With ``gateway``, the screens are served
    (development logins) while it runs, and after the summary (``on_summary``) until SIGINT/SIGTERM.
    Example: ``checks = await run_demo(20)``
    """
    run_id = uuid.uuid4().hex[:6]
    async with AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventbus-demo-")))
        settings, broker = _demo_settings(run_id, workdir, dev_tokens=gateway is not None)
        if broker is not None:
            stack.callback(broker.stop)
        sock = listen_socket(gateway.host, gateway.port) if gateway is not None else None
        if sock is not None:
            stack.callback(sock.close)
        connection = settings.connection()
        await apply_topics(connection, replication_factor=settings.replication)
        database = Database(settings.database_url)
        stack.push_async_callback(database.close)
        await database.migrate([*marketplace_migrations(), DEMO_BOOKINGS_MIGRATION])
        analytics_before = (await analytics.summary(database)).by_type
        cache = open_cache(settings.redis_url)
        stack.push_async_callback(cache.close)
        resources = Resources(database=database, cache=cache, settings=settings.group_settings())
        groups = list(marketplace_groups(resources))
        stop, started = asyncio.Event(), asyncio.Event()
        runner = asyncio.create_task(
            run_groups(
                groups,
                connection=connection,
                publisher_config=settings.publisher_config("eventbus-demo-groups"),
                consumer_config=settings.consumer_config(),
                runtime_config=settings.runtime_config(),
                stop=stop,
                store=ProcessedEventStore(database),
                started=started,
            )
        )
        relay = OutboxRelay(
            database,
            connection=connection,
            publisher_config=settings.publisher_config("eventbus-demo-relay"),
            # at least once (consumers dedup by event id): the demo must not wait on a cluster's first
            # transaction coordinator set-up; exactly once is proven in tests/integration/test_outbox.py
            config=settings.relay_config().model_copy(update={"poll_interval_s": 0.1, "exactly_once": False}),
        )
        relay_task = asyncio.create_task(relay.run(stop))
        try:
            await asyncio.wait_for(started.wait(), timeout=60)
            publisher = await stack.enter_async_context(
                EventPublisher(connection=connection, config=settings.publisher_config("eventbus-demo"))
            )
            outbox = Outbox(connection=connection, config=settings.publisher_config("eventbus-demo-bookings"))
            market = Marketplace(publisher, database, run_id=run_id, outbox=outbox)
            screens = None
            if gateway is not None and sock is not None:
                screens = await _open_screens(stack, settings, groups, sock, gateway, market, database)
            await _drive(market, duration_s, lambda: _snapshot(settings, groups, database, run_id), live=live)
            checks = await _checks(settings, database, market.expected, analytics_before)
            left = await outbox_status(database, scope=connection.topic_prefix)
            checks.append(
                Check(
                    "every booking's events left the outbox",
                    left.backlog == 0 and left.parked == 0,
                    f"{relay.stats.sent} relayed, {left.backlog} waiting, {left.parked} parked",
                )
            )
            if on_summary is not None:
                on_summary(checks)
            if screens is not None and gateway is not None:
                console().print(f"The screens stay at {gateway.url} until Ctrl-C.")
                await screens
            return checks
        finally:
            stop.set()
            await runner
            await relay_task


async def _drive(
    market: Marketplace, duration_s: float, snapshot: Callable[[], Awaitable[_Snapshot]], *, live: bool
) -> None:
    """Drive the marketplace for ``duration_s`` with the live view, then until everything is drained."""
    snap = _Snapshot()
    with Live(_view(market.expected, snap, "starting"), refresh_per_second=4, transient=not live) as screen:
        driving = asyncio.create_task(market.run(duration_s))
        stable = 0
        while stable < 2:
            await asyncio.sleep(1.0)
            try:
                snap = await snapshot()
            except EventBusError as exc:  # a broker or database blinking: the view waits a turn
                if not exc.retriable:
                    raise
                stable = 0
                continue
            phase = "driving the marketplace" if not driving.done() else "draining"
            screen.update(_view(market.expected, snap, phase))
            stable = stable + 1 if driving.done() and snap.drained else 0
        await driving


async def _open_screens(
    stack: AsyncExitStack,
    settings: Settings,
    groups: list[ConsumerGroup],
    sock: socket.socket,
    gateway: DemoGateway,
    market: Marketplace,
    database: Database | None = None,
) -> asyncio.Task[None]:
    """Serve the screens over the demo's topics, print sign-in links (the operator console's too), open a browser.

    Returns the task that waits for SIGINT/SIGTERM, then stops the gateway.
    """
    bus = await stack.enter_async_context(EventBus.connect(settings, service="eventbus-demo-gateway", groups=groups))
    stop, force = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(serve_gateway(bus, settings, sock, stop, force, groups=groups, database=database))

    async def ended() -> None:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    stack.push_async_callback(ended)
    links = {
        f"client {market.users[0]}": f"sub={market.users[0]}&role=user",
        f"client {market.users[1]}": f"sub={market.users[1]}&role=user",
        f"coach {market.coaches[0]}": f"sub={market.coaches[0]}&role=coach",
        "admin (every coach, stats)": "sub=demo-admin&role=admin",
    }
    out = console()
    out.print(f"[bold]eventbus demo: the screens are at {gateway.url}[/bold] (development logins):")
    for who, query in links.items():
        out.print(f"  {who}: {gateway.url}#/login?{query}&go=1")
    console_url = f"{gateway.url}console/"
    out.print(
        f"  operator console (dead letters, replay, flows): {console_url}#/login?sub=demo-operator&role=operator&go=1"
    )
    if gateway.open_browser:
        webbrowser.open(f"{gateway.url}#/login?{links[f'client {market.users[0]}']}&go=1")

    async def until_signal() -> None:
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, signalled.set)
        try:
            await signalled.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            force.set()  # the demo is over: do not wait for browsers to hang up
            stop.set()

    return asyncio.create_task(until_signal())


def _summary(checks: list[Check]) -> None:
    table = Table("check", "result", "detail", title="eventbus demo: summary")
    for check in checks:
        table.add_row(check.name, "[green]ok[/green]" if check.passed else "[red]FAILED[/red]", escape(check.detail))
    console().print(table)


@click.command()
@click.option("--duration", type=click.FloatRange(min=1), default=20, show_default=True, help="Seconds of traffic.")
@click.option("--no-live", is_flag=True, help="No live view (for logs and CI); the summary is still printed.")
@click.option("--gateway", "with_gateway", is_flag=True, help="Serve the screens too, and keep them up until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --gateway: the address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="With --gateway.")
@click.option("--no-browser", is_flag=True, help="With --gateway: print the links, open no browser.")
def demo(duration: float, no_live: bool, with_gateway: bool, host: str, port: int, no_browser: bool) -> None:
    """The main job: the five groups on a live marketplace, then a summary that checks itself.

    Starts the embedded broker unless EVENTBUS_BOOTSTRAP_SERVERS is set; uses a
    temporary SQLite database unless EVENTBUS_DATABASE_URL is set, and Redis
    when EVENTBUS_REDIS_URL is set. Bookings go through the transactional outbox.
    With --gateway the browser screens show the marketplace live (development logins).
    Exits 0 only when every check holds.
    """
    logging.basicConfig(level=logging.ERROR)
    configure_telemetry("eventbus-demo")
    gateway = DemoGateway(host, port, open_browser=not no_browser) if with_gateway else None
    with cli_errors():
        checks = asyncio.run(run_demo(duration, live=not no_live, gateway=gateway, on_summary=_summary))
    if not all(check.passed for check in checks):
        raise click.exceptions.Exit(1)
