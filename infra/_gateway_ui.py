"""The gateway's browser screens: the single-page app of ``infra/web`` at ``/ui/``, and the three calls it makes.

The screens are plain HTML, CSS and JavaScript modules shipped inside the package (no CDN, no build step), one page
with hash routes: ``#/login`` (the development stand-in when dev tokens are on, otherwise a field to paste a token),
``#/bookings`` (the client's booking status, as the original ``SessionBooking``), ``#/coaches`` (live coach
statuses, ``CoachMonitoring``), ``#/notifications`` (notifications as they arrive, with the notification group's
templates) and ``#/stats`` (``/v1/stats`` every 5 seconds, ``EventBusStats``). They read one
``GET /v1/events`` stream (``EventSource`` with ``?access_token=``), which resumes itself with ``Last-Event-ID``.

Endpoints::

    GET  /                              redirect to /ui/
    GET  /ui/                           the screens (static files, with a strict Content-Security-Policy)
    GET  /v1/ui/config                  no token: whether the login stand-in is on, the stats refresh period
    GET  /v1/ui/me                      who the token speaks for, and the event types it reads
    POST /v1/ui/notifications/render    title, body, icon and actions of a notification event, from the templates

Example: ``mount_ui(app, config)`` (``create_app`` does it)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse
from jinja2 import TemplateError
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from consumers.groups.notifications import TemplateSet, TemplateVariableError, load_templates, snake_case_keys
from schemas import CATALOG, NotificationRequested, NotificationSent, NotificationType
from schemas.errors import EventValidationError

from ._gateway_app import Authenticated
from ._gateway_auth import ROLES
from ._gateway_config import HttpGatewayConfig

__all__ = [
    "STATS_INTERVAL_S",
    "WEB_DIR",
    "RenderedNotification",
    "UiFiles",
    "me",
    "mount_ui",
    "render_notification",
    "root",
    "ui_config",
]

WEB_DIR = Path(__file__).with_name("web")
"""The app's files (``index.html``, CSS, JavaScript modules), package data."""

STATS_INTERVAL_S = 5
"""How often the stats screen asks ``/v1/stats`` (the original ``EventBusStats`` interval)."""

_UNPROCESSABLE = 422
_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
_SECURITY_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class UiFiles(StaticFiles):
    """``StaticFiles`` of ``WEB_DIR`` whose every answer carries the screens' security headers.

    The Content-Security-Policy allows only this origin's scripts and styles: event text that slipped into
    markup could not run. Example: ``app.mount("/ui", UiFiles(directory=WEB_DIR, html=True))``
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file's response (or 404), with the security headers."""
        response = await super().get_response(path, scope)
        response.headers.update(_SECURITY_HEADERS)
        return response


@dataclass(frozen=True, slots=True)
class _UiState:
    dev_tokens: bool


@dataclass(frozen=True, slots=True)
class RenderedNotification:
    """What a notification shows. ``body`` is None when the event does not carry it (``notification:sent``).

    Example: ``RenderedNotification("Hi", "Welcome", "info", [{"action": "view", "title": "Ver"}], "custom")``
    """

    title: str
    body: str | None
    icon: str | None
    actions: list[dict[str, str]]
    notification_type: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON answer of ``POST /v1/ui/notifications/render``."""
        return {
            "title": self.title,
            "body": self.body,
            "icon": self.icon,
            "actions": self.actions,
            "notification_type": self.notification_type,
        }


@lru_cache(maxsize=1)
def _templates() -> TemplateSet:
    return load_templates()


def _static_actions(kind: NotificationType) -> tuple[str | None, list[dict[str, str]]]:
    """The template's icon and the buttons whose titles need no values (for events carrying no values)."""
    template = _templates()[kind]
    actions = []
    for action, title in template.actions:
        try:
            actions.append({"action": action, "title": title.render(dict(template.defaults)).strip()})
        except TemplateError:
            continue  # a button title made of values this event does not carry
    return template.icon, actions


def _render(event: NotificationRequested | NotificationSent) -> RenderedNotification:
    kind = event.notification_type
    if isinstance(event, NotificationSent):
        icon, actions = _static_actions(kind)
        return RenderedNotification(event.title, None, icon, actions, kind.value)
    if event.custom_template is not None:
        custom = event.custom_template
        buttons = [{"action": item.action, "title": item.title} for item in custom.actions]
        return RenderedNotification(custom.title, custom.body, custom.icon, buttons, kind.value)
    content = _templates()[kind].render(snake_case_keys(event.data))
    buttons = [{"action": item.action, "title": item.title} for item in content.actions]
    return RenderedNotification(content.title, content.body, content.icon, buttons, kind.value)


_ui_router = APIRouter(tags=["screens"])


@_ui_router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The screens are the gateway's home page."""
    return RedirectResponse("ui/", status_code=307)


@_ui_router.get("/v1/ui/config")
async def ui_config(request: Request) -> dict[str, Any]:
    """What the login screen needs before anyone signs in (no token): whether the stand-in is on, and the roles.

    ``dev_tokens`` is true only when the gateway issues development tokens (``POST /dev/token``).
    """
    state: _UiState = request.app.state.ui
    return {
        "dev_tokens": state.dev_tokens,
        "roles": [role for role in ROLES if role != "service"],
        "stats_interval_s": STATS_INTERVAL_S,
        "version": request.app.version,
    }


@_ui_router.get("/v1/ui/me")
async def me(who: Authenticated) -> dict[str, Any]:
    """Who the token speaks for, as the gateway sees it, and the event types it may stream (401 when invalid)."""
    return {
        "sub": who.subject,
        "roles": sorted(who.roles),
        "user_id": who.user_id,
        "coach_id": who.coach_id,
        "is_admin": who.is_admin,
        "readable": [event_type for event_type in CATALOG.event_types if event_type in who.readable],
    }


@_ui_router.post("/v1/ui/notifications/render")
async def render_notification(
    event: Annotated[dict[str, Any], Body(description="A notification:requested or notification:sent event's JSON.")],
    _: Authenticated,
) -> dict[str, Any]:
    """Title, body, icon and actions of a notification event, as the notification group renders them.

    ``notification:requested``: its ``custom_template`` as given, otherwise its type's template with ``data``.
    ``notification:sent`` carries its title only: the template's icon and buttons, no body. 422 for anything else
    or a template lacking a value.
    """
    metadata = event.get("metadata")
    event_type = metadata.get("event_type") if isinstance(metadata, dict) else None
    if event_type not in (NotificationRequested.event_type, NotificationSent.event_type):
        detail = {"message": "only notification:requested and notification:sent events are rendered"}
        raise HTTPException(_UNPROCESSABLE, detail=detail)
    try:
        parsed = CATALOG.parse(str(event_type), event)
        assert isinstance(parsed, NotificationRequested | NotificationSent)  # noqa: S101 - the catalog's model
        return _render(parsed).as_dict()
    except EventValidationError as exc:
        raise HTTPException(_UNPROCESSABLE, detail={"message": exc.message, "fields": exc.fields}) from exc
    except TemplateVariableError as exc:
        raise HTTPException(_UNPROCESSABLE, detail={"message": exc.message, "missing": exc.missing}) from exc


def mount_ui(app: FastAPI, config: HttpGatewayConfig) -> None:
    """Serve the screens on ``app``: ``/`` → ``/ui/``, the static app, and its ``/v1/ui/*`` calls.

    Example: ``mount_ui(create_app(bus, config), config)``
    """
    app.state.ui = _UiState(dev_tokens=config.dev_tokens)
    app.include_router(_ui_router)
    app.mount("/ui", UiFiles(directory=WEB_DIR, html=True), name="ui")
