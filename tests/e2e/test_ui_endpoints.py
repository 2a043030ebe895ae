"""The screens' HTTP side, in process (no browser, no broker): static files and their headers, ``/v1/ui/*``.

Also the app's own rule, checked on its source: no markup is ever built from strings (no ``innerHTML``), so event
text cannot become markup, and every module the page imports ships in the package.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from infra._gateway_app import create_app
from infra._gateway_config import HttpGatewayConfig
from infra._gateway_ui import WEB_DIR
from infra.bus import EventBus

SECRET = "in-process-screens-secret-long-enough-for-hs256"  # noqa: S105 - a test key


def bearer(sub: str, *roles: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "roles": list(roles), "exp": int(time.time()) + 600}, SECRET)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=[False, True], ids=["dev-tokens-off", "dev-tokens-on"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    async with EventBus.in_memory() as bus:
        app = create_app(bus, HttpGatewayConfig(jwt_secret=SECRET, dev_tokens=request.param))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as opened:
            yield opened


async def test_the_home_page_redirects_to_the_screens_served_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    home = await client.get("/")
    assert home.status_code == 307
    assert home.headers["location"] == "ui/"
    page = await client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = await client.get("/ui/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert (await client.get("/ui/missing.js")).status_code == 404
    assert "/ui/" not in (await client.get("/openapi.json")).json()["paths"]


async def test_the_config_says_whether_the_stand_in_is_on_without_a_token(client: httpx.AsyncClient) -> None:
    config = (await client.get("/v1/ui/config")).json()
    dev_token = await client.post("/dev/token", json={"sub": "u-1"})
    assert config["dev_tokens"] is (dev_token.status_code == 200)
    if not config["dev_tokens"]:
        assert dev_token.status_code == 404
    assert config["stats_interval_s"] == 5
    assert "service" not in config["roles"]


async def test_me_says_who_the_token_is_and_what_it_reads(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/ui/me")).status_code == 401
    coach = (await client.get("/v1/ui/me", headers=bearer("c-1", "coach"))).json()
    assert coach["sub"] == coach["coach_id"] == "c-1"
    assert coach["roles"] == ["coach"]
    assert coach["is_admin"] is False
    assert "coach:status_changed" in coach["readable"]
    assert "system:error" not in coach["readable"]
    admin = (await client.get("/v1/ui/me", headers=bearer("root", "admin"))).json()
    assert admin["is_admin"] is True
    assert "system:error" in admin["readable"]


def requested(**fields: Any) -> dict[str, Any]:
    return {
        "notification_id": "n-1",
        "user_id": "u-1",
        "notification_type": "custom",
        "metadata": {"event_type": "notification:requested"},
        **fields,
    }


async def test_notifications_are_rendered_with_the_groups_templates(client: httpx.AsyncClient) -> None:
    auth = bearer("u-1", "user")
    custom = {"title": "Hola", "body": "<b>hi</b>", "icon": "info", "actions": [{"action": "view", "title": "Ver"}]}
    answer = await client.post("/v1/ui/notifications/render", json=requested(custom_template=custom), headers=auth)
    assert answer.json() == {
        "title": "Hola",
        "body": "<b>hi</b>",
        "icon": "info",
        "actions": [{"action": "view", "title": "Ver"}],
        "notification_type": "custom",
    }
    values = {"coachName": "Ada", "sessionDate": "2025-06-02 14:00 UTC", "sessionType": "intro"}
    event = requested(notification_type="session_confirmed", data=values)
    rendered = (await client.post("/v1/ui/notifications/render", json=event, headers=auth)).json()
    assert rendered["title"] == "Sesión confirmada"
    assert rendered["body"] == "Tu sesión de intro con Ada está confirmada para el 2025-06-02 14:00 UTC."
    assert rendered["actions"] == [{"action": "view", "title": "Ver sesión"}]
    sent = {
        "notification_id": "n-2",
        "user_id": "u-1",
        "notification_type": "credits_updated",
        "channel": "in_app",
        "title": "Créditos actualizados",
        "metadata": {"event_type": "notification:sent"},
    }
    delivered = (await client.post("/v1/ui/notifications/render", json=sent, headers=auth)).json()
    assert delivered == {
        "title": "Créditos actualizados",
        "body": None,
        "icon": "coins",
        "actions": [{"action": "buy", "title": "Comprar créditos"}],
        "notification_type": "credits_updated",
    }


async def test_rendering_refuses_what_it_cannot_render(client: httpx.AsyncClient) -> None:
    auth = bearer("u-1", "user")
    url = "/v1/ui/notifications/render"
    lacking = await client.post(url, json=requested(notification_type="session_confirmed"), headers=auth)
    assert lacking.status_code == 422
    assert lacking.json()["detail"]["missing"] == ["coach_name", "session_date", "session_type"]
    other = await client.post(url, json={"metadata": {"event_type": "session:created"}}, headers=auth)
    assert other.status_code == 422
    invalid = await client.post(url, json=requested(notification_type="nope"), headers=auth)
    assert invalid.status_code == 422
    assert "notification_type" in invalid.json()["detail"]["fields"]
    assert (await client.post(url, json=requested())).status_code == 401


def test_the_app_never_builds_markup_from_strings_and_ships_every_module_it_imports() -> None:
    sources = sorted(WEB_DIR.rglob("*.js"))
    assert {path.name for path in sources} >= {"app.js", "api.js", "live.js", "dom.js", "bookings.js", "stats.js"}
    forbidden = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert not forbidden.search(text), f"{path.name} builds markup from a string"
        for imported in re.findall(r'from "(\.{1,2}/[^"]+)"', text):
            assert (path.parent / imported).resolve().is_file(), f"{path.name} imports {imported}, not shipped"
    index = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for asset in re.findall(r'(?:src|href)="([\w./-]+\.(?:js|css|svg))"', index):
        assert (WEB_DIR / asset).is_file(), asset
