"""The HTTP gateway: the bus's events as Server-Sent Events, publishing for other languages, stats and history.

Every instance reads the topics itself through its ``EventBus``; nothing is shared between instances but Kafka,
so a browser may reconnect to any of them with ``Last-Event-ID`` (the cursor of the last event it got) and
resume in every partition at once. Each stream has a bounded queue: a client that falls ``queue_size`` events
behind gets ``event: error`` with the reason and is disconnected, and the others never wait for it. Who sees
what: ``infra._gateway_auth``.

Endpoints::

    GET  /v1/events?types=session:*,coach:status_changed   SSE (any role that reads events)
    POST /v1/events/{type}                                  publish one event (service, admin): 201 + position
    GET  /v1/stats, GET /v1/history?limit=&type=            admin
    GET  /healthz, GET /readyz                              no token
    POST /dev/token                                         only with dev tokens enabled
    GET  /docs, /openapi.json                               OpenAPI
    GET  /, /ui/, /v1/ui/*                                  the browser screens (infra._gateway_ui)
    GET  /console/, /v1/console/*                           the operator console (infra._console_api)

Example::

    async with EventBus.connect(settings) as bus:
        app = create_app(bus, settings.http_config())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any

import uvicorn
import yaml
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from schemas import CATALOG
from schemas.errors import (
    BrokerError,
    EventBusError,
    EventValidationError,
    MessageTooLargeError,
)

from ._asyncapi import asyncapi_document
from ._gateway_auth import (
    COACH,
    DEV_TOKEN_MAX_TTL_S,
    AuthenticationError,
    ForbiddenError,
    InvalidFilterError,
    Principal,
    TokenVerifier,
    resolve_types,
    visible_to,
)
from ._gateway_config import HttpGatewayConfig
from ._telemetry import instrument_gateway
from .bus import CursorExpiredError, Delivered, EventBus, InvalidCursorError, SlowConsumerError

if TYPE_CHECKING:
    from ._console_api import ConsoleSources

__all__ = [
    "Admin",
    "Authenticated",
    "DevTokenRequest",
    "GatewayServer",
    "begin_shutdown",
    "create_app",
    "dev_token",
    "healthz",
    "history",
    "publish_event",
    "readyz",
    "sse_frame",
    "stats",
    "stream_events",
]

log = logging.getLogger("eventbus.gateway")

_READY_TIMEOUT_S = 5.0
_UNPROCESSABLE = 422  # by number: starlette renamed the constants (422 and 413) between versions
_TOO_LARGE = 413
_RETRY_MS = 2000
"""What EventSource waits before reconnecting (the SSE ``retry`` field)."""


class _State:
    def __init__(self, bus: EventBus, config: HttpGatewayConfig, verifier: TokenVerifier) -> None:
        self.bus = bus
        self.config = config
        self.verifier = verifier
        self.stopping = asyncio.Event()


def _app_state(app: FastAPI) -> _State:
    state: _State = app.state.gateway
    return state


def _state(request: Request) -> _State:
    return _app_state(request.app)


def begin_shutdown(app: FastAPI) -> None:
    """End every open stream now (clients reconnect elsewhere with their ``Last-Event-ID``); ``/readyz`` turns 503.

    Example: ``begin_shutdown(app); server.should_exit = True``
    """
    _app_state(app).stopping.set()


def sse_frame(*, data: str | None = None, event: str | None = None, id: str | None = None) -> bytes:  # noqa: A002
    """One Server-Sent Events message. ``id=""`` clears the client's last event id.

    Example: ``sse_frame(event="reset", data='{"reason": "..."}')``
    """
    head = ""
    if id is not None:
        head = f"id: {id}\n" if id else "id\n"
    if event is not None:
        head += f"event: {event}\n"
    body = data or ""
    if "\n" in body:  # each line its own data field (never for JSON: it has no raw newline)
        body = body.replace("\n", "\ndata: ")
    return f"{head}data: {body}\n\n".encode()


_PING = b": ping\n\n"


def _visible_about(who: Principal) -> list[tuple[str, str]]:
    """What ``visible_to`` shows a non-admin is about these (field, value) pairs; the bus finds streams by them.

    It must cover every event ``visible_to`` accepts (``visible_to`` still decides among them).
    """
    pairs = [("user_id", who.user_id)]
    if COACH in who.roles:
        pairs.append(("coach_id", who.coach_id))
    return pairs


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Waker:
    """The stream loop's ``asyncio.wait(..., return_when=FIRST_COMPLETED, timeout=...)``: the futures it watches
    call it when done; ``wait`` returns then or after the timeout. One future and one timer per wait, where
    ``asyncio.wait`` also builds sets and adds and removes a callback on every future, per event and ping."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def __call__(self, _: object = None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None


class _EventStream(Response):
    """The SSE response: owns the bus stream and closes it however the response ends."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[Delivered],
        stack: AsyncExitStack,
        *,
        reset: str | None,
        heartbeat_s: float,
        stopping: asyncio.Event,
    ) -> None:
        # Not Response.__init__: it would give an empty body and "content-length: 0".
        self.status_code = status.HTTP_200_OK
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._events = events
        self._stack = stack
        self._reset = reset
        self._heartbeat_s = heartbeat_s
        self._stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if await self._pump(receive, send):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._stack.aclose()

    async def _write(self, send: Send, body: bytes) -> bool:
        """Send ``body``; False when the client has not taken a write for two heartbeats (it is cut)."""
        try:
            async with asyncio.timeout(2 * self._heartbeat_s):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            log.warning("SSE client took no data for %.1f s: disconnected", 2 * self._heartbeat_s)
            return False
        return True

    async def _pump(self, receive: Receive, send: Send) -> bool:
        """Relay events, pings, then a reason; True when the response may be completed normally."""
        disconnected: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(receive))
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        pending: asyncio.Future[Any] | None = None
        iterator = aiter(self._events)
        waker = _Waker()
        disconnected.add_done_callback(waker)
        stopping.add_done_callback(waker)
        try:
            if not await self._write(send, f"retry: {_RETRY_MS}\n: connected\n\n".encode()):
                return False
            if self._reset is not None:
                reset = json.dumps({"reason": "cursor_expired", "message": self._reset})
                if not await self._write(send, sse_frame(event="reset", id="", data=reset)):
                    return False
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(iterator))
                    pending.add_done_callback(waker)
                if not (pending.done() or disconnected.done() or stopping.done()):
                    await waker.wait(self._heartbeat_s)
                if disconnected.done():
                    return False
                if stopping.done():
                    return True
                if not pending.done():
                    body = _PING
                else:
                    try:
                        item = pending.result()
                    except SlowConsumerError as exc:
                        reason = json.dumps({"reason": "slow_consumer", "message": exc.message})
                        return await self._write(send, sse_frame(event="error", data=reason))
                    finally:
                        pending = None
                    body = sse_frame(id=item.cursor, event=item.event.event_type, data=item.event.model_dump_json())
                if not await self._write(send, body):
                    return False
        finally:
            for task in (pending, disconnected, stopping):
                if task is not None:
                    task.cancel()
            for task in (pending, disconnected, stopping):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, EventBusError):
                        await task


class DevTokenRequest(BaseModel):
    """What ``POST /dev/token`` signs."""

    sub: str = Field(min_length=1)
    roles: list[str] = Field(default_factory=lambda: ["user"])
    user_id: str | None = Field(default=None, min_length=1)
    coach_id: str | None = Field(default=None, min_length=1)
    ttl_s: int = Field(default=900, ge=1, le=DEV_TOKEN_MAX_TTL_S)


def _package_version() -> str:
    try:
        return version("eventbus")
    except PackageNotFoundError:
        return "0"


def _problem(code: int, message: str, **more: Any) -> HTTPException:
    headers = None
    if code == status.HTTP_401_UNAUTHORIZED:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return HTTPException(code, detail={"message": message, **more}, headers=headers)


_bearer = HTTPBearer(auto_error=False, description="A JWT: sub, exp, roles (admin, coach, user, service).")


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    access_token: Annotated[str | None, Query(description="The token, for EventSource (no headers).")] = None,
) -> Principal:
    token = credentials.credentials if credentials is not None else access_token
    if not token:
        raise _problem(status.HTTP_401_UNAUTHORIZED, "a bearer token is required")
    try:
        return _state(request).verifier.verify(token)
    except AuthenticationError as exc:
        raise _problem(status.HTTP_401_UNAUTHORIZED, exc.message) from exc


def _admin(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not who.is_admin:
        raise _problem(status.HTTP_403_FORBIDDEN, "admin only")
    return who


Authenticated = Annotated[Principal, Depends(_principal)]
Admin = Annotated[Principal, Depends(_admin)]
_router = APIRouter()
_dev_router = APIRouter(tags=["development"])


@_router.get(
    "/v1/events",
    tags=["events"],
    status_code=status.HTTP_200_OK,
    response_class=_EventStream,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream."}},
)
async def stream_events(
    request: Request,
    who: Authenticated,
    types: Annotated[str | None, Query(description="Comma-separated types or globs; default: all readable.")] = None,
    last_event_id: Annotated[str | None, Query(description="Resume after this event (or Last-Event-ID).")] = None,
) -> Response:
    """The events the token may see, live, as Server-Sent Events; resumable by event id.

    Each event: ``id`` (the resume cursor), ``event`` (its type), ``data`` (its JSON). A cursor the topics no
    longer hold gives ``event: reset`` then live events; a client too slow gets ``event: error`` and is cut.
    """
    state = _state(request)
    filters = [part.strip() for part in (types or "").split(",") if part.strip()]
    try:
        wanted = resolve_types(who, filters)
    except InvalidFilterError as exc:
        raise _problem(status.HTTP_400_BAD_REQUEST, exc.message) from exc
    except ForbiddenError as exc:
        raise _problem(status.HTTP_403_FORBIDDEN, exc.message) from exc
    after = request.headers.get("last-event-id") or last_event_id or None
    where = about = None
    if not who.is_admin:
        where, about = partial(visible_to, who), _visible_about(who)
    opened = partial(state.bus.stream, wanted, where=where, about=about, max_queue=state.config.queue_size)
    stack = AsyncExitStack()
    reset = None
    try:
        try:
            events = await stack.enter_async_context(opened(after=after))
        except CursorExpiredError as exc:
            reset = exc.message
            events = await stack.enter_async_context(opened())
    except InvalidCursorError as exc:
        await stack.aclose()
        raise _problem(status.HTTP_400_BAD_REQUEST, f"Last-Event-ID: {exc.message}") from exc
    except EventBusError as exc:
        await stack.aclose()
        raise _problem(status.HTTP_503_SERVICE_UNAVAILABLE, exc.message) from exc
    except BaseException:
        await stack.aclose()
        raise
    return _EventStream(events, stack, reset=reset, heartbeat_s=state.config.heartbeat_s, stopping=state.stopping)


@_router.post("/v1/events/{event_type}", tags=["events"], status_code=status.HTTP_201_CREATED)
async def publish_event(
    request: Request,
    event_type: str,
    data: Annotated[dict[str, Any], Body(description="The event's fields; metadata is optional.")],
    who: Authenticated,
) -> dict[str, Any]:
    """Validate and publish one event (roles service, admin), as ``eventbus publish`` does; 201 + position.

    422 names the invalid fields; 404 for a type not in the catalog.
    """
    if not any(who.may_publish(known) for known in CATALOG.event_types):
        raise _problem(status.HTTP_403_FORBIDDEN, "publishing needs the role service or admin")
    if event_type not in CATALOG:
        raise _problem(status.HTTP_404_NOT_FOUND, f"unknown event type {event_type!r}")
    if not who.may_publish(event_type):
        raise _problem(status.HTTP_403_FORBIDDEN, f"{event_type} is not published through the gateway")
    try:
        result = await _state(request).bus.publish(event_type, data)
    except EventValidationError as exc:
        errors = [{"field": path, "problem": problem} for path, problem in exc.errors]
        raise _problem(_UNPROCESSABLE, exc.message, fields=exc.fields, errors=errors) from exc
    except MessageTooLargeError as exc:
        raise _problem(_TOO_LARGE, exc.message) from exc
    except BrokerError as exc:
        raise _problem(status.HTTP_503_SERVICE_UNAVAILABLE, exc.message) from exc
    return {**result.as_dict(), "event_type": event_type}


@_router.get("/v1/stats", tags=["admin"])
async def stats(request: Request, _: Admin) -> dict[str, Any]:
    """The original getStats(): total events, subscriptions, events by type (admin)."""
    try:
        found = await _state(request).bus.stats()
    except EventBusError as exc:
        raise _problem(status.HTTP_503_SERVICE_UNAVAILABLE, exc.message) from exc
    return found.as_dict()


@_router.get("/v1/history", tags=["admin"])
async def history(
    request: Request,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    type: Annotated[str, Query(description="A type or glob.")] = "*",  # noqa: A002 - the bus's name
) -> list[dict[str, Any]]:
    """The last ``limit`` events whose type matches ``type``, oldest first (admin)."""
    if not CATALOG.matching(type):
        raise _problem(status.HTTP_400_BAD_REQUEST, f"type {type!r} matches no event type")
    try:
        events = await _state(request).bus.history(limit, type=type)
    except EventBusError as exc:
        raise _problem(status.HTTP_503_SERVICE_UNAVAILABLE, exc.message) from exc
    return [event.model_dump(mode="json") for event in events]


@_router.get("/asyncapi.json", tags=["contract"])
async def asyncapi_json(request: Request) -> JSONResponse:
    """The AsyncAPI 3.0 document of the topics and events (no token: it is the public contract)."""
    return JSONResponse(request.app.state.asyncapi)


@_router.get("/asyncapi.yaml", tags=["contract"])
async def asyncapi_yaml_document(request: Request) -> Response:
    """The same document as YAML."""
    text = yaml.safe_dump(request.app.state.asyncapi, sort_keys=False, allow_unicode=True)
    return Response(text, media_type="application/yaml")


@_router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@_router.get("/readyz", tags=["health"], responses={503: {"description": "Stopping, or the broker is unreachable."}})
async def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: not stopping, and the broker answers (through the bus)."""
    state = _state(request)
    if state.stopping.is_set():
        return JSONResponse({"status": "stopping"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            await state.bus.stats()
    except (EventBusError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, EventBusError) else "the broker did not answer in time"
        body = {"status": "unavailable", "reason": reason}
        return JSONResponse(body, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse({"status": "ready"})


@_dev_router.post("/dev/token")
async def dev_token(request: Request, wanted: DevTokenRequest) -> dict[str, Any]:
    """Development only: a short-lived HS256 token for any subject and roles."""
    claims = {name: value for name in ("user_id", "coach_id") if (value := getattr(wanted, name)) is not None}
    token = _state(request).verifier.issue(wanted.sub, wanted.roles, ttl_s=wanted.ttl_s, **claims)
    return {"access_token": token, "token_type": "bearer", "expires_in": wanted.ttl_s}


def create_app(
    bus: EventBus,
    config: HttpGatewayConfig,
    *,
    asyncapi: Mapping[str, Any] | None = None,
    console: ConsoleSources | None = None,
) -> FastAPI:
    """The gateway's ASGI app over an open ``bus`` (which it never opens or closes).

    ``asyncapi`` is the contract served at ``/asyncapi.json`` and ``/asyncapi.yaml`` (the catalog's, without
    a topic prefix, by default); with ``console`` (its cluster, groups, database) the operator console too.
    ``ConfigurationError`` when ``config`` gives no way to check tokens.
    Example: ``create_app(bus, config)``
    """
    verifier = TokenVerifier(config)
    app = FastAPI(
        title="eventbus gateway",
        version=_package_version(),
        description="The coaching marketplace's events over HTTP: Server-Sent Events, publishing, stats, history.",
    )
    app.state.gateway = _State(bus, config, verifier)
    app.state.asyncapi = dict(asyncapi) if asyncapi is not None else asyncapi_document()
    app.include_router(_router)
    instrument_gateway(app)  # HTTP spans, only when OpenTelemetry is configured
    from ._gateway_ui import mount_ui  # noqa: PLC0415 - it imports this module's auth dependencies

    mount_ui(app, config)
    if console is not None:  # the operator console (infra._console_api), at /console/
        from ._console_api import mount_console  # noqa: PLC0415 - it imports this module's auth dependencies

        mount_console(app, console)
    if config.dev_tokens:
        log.warning("development tokens are enabled: anyone can get a token with any role from POST /dev/token")
        app.include_router(_dev_router)
    return app


class GatewayServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: whoever runs it stops it (``should_exit``).

    Example: ``await GatewayServer(uvicorn.Config(app, lifespan="off")).serve(sockets=[sock])``
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Nothing: ``eventbus gateway`` (or a test) handles the signals."""
        yield
