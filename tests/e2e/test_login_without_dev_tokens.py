"""Without development tokens the login screen has no stand-in at all: a token field only, and ``/dev/token`` is 404.

The same screens, served by ``eventbus gateway`` with ``EVENTBUS_HTTP_DEV_TOKENS=false`` and an HS256 secret.
"""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Gateway, Screens, booking, live, service_token, unique, user_token

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def dev_tokens() -> bool:
    """This module's gateway issues no development tokens."""
    return False


async def test_the_login_offers_only_a_token_field_and_dev_token_is_404(
    screens: Screens, gateway: Gateway, http: httpx.AsyncClient
) -> None:
    assert (await http.post(f"{gateway.url}/dev/token", json={"sub": "root", "roles": ["admin"]})).status_code == 404
    assert (await http.get(f"{gateway.url}/v1/ui/config")).json()["dev_tokens"] is False

    page = await screens.page()
    await page.goto(f"{gateway.url}/ui/#/login?sub=root&role=admin&go=1")  # a stand-in link: it does nothing here
    await page.get_by_test_id("token-input").wait_for()
    assert await page.get_by_test_id("dev-login").count() == 0
    assert await page.get_by_test_id("login-sub").count() == 0
    assert await page.get_by_test_id("login-submit").count() == 0
    assert await page.locator("input").count() == 0  # the token textarea is the only field
    assert await page.evaluate("sessionStorage.length") == 0
    assert "issues no development tokens" in await page.inner_text("main")

    forged = user_token("u-x", "admin", secret="not-the-gateways-secret-0123456789")  # noqa: S106 - another key
    await page.get_by_label("Access token").fill(forged)
    await page.get_by_test_id("token-submit").click()
    error = page.get_by_test_id("login-error")
    await error.wait_for()
    assert "invalid token" in (await error.inner_text()).lower()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_a_pasted_token_signs_in_and_streams(screens: Screens, gateway: Gateway, http: httpx.AsyncClient) -> None:
    client = unique("u7")
    page = await screens.page()
    await page.goto(f"{gateway.url}/ui/")
    await page.get_by_label("Access token").fill(user_token(client, "user"))
    await page.get_by_test_id("token-submit").click()
    await page.wait_for_url("**/ui/#/bookings")
    await live(page)
    session = unique("s")
    published = await http.post(
        f"{gateway.url}/v1/events/session:created",
        json=booking(client, session),
        headers={"Authorization": f"Bearer {service_token()}"},
    )
    assert published.status_code == 201, published.text
    await page.locator(f'[data-testid="booking"][data-session-id="{session}"]').wait_for(timeout=5000)
    assert await page.get_by_test_id("who-sub").inner_text() == client
