"""The gateway's token checks and authorization table: bad tokens are refused, nobody reads another's events."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from infra._gateway_auth import (
    READABLE_TYPES,
    AuthenticationError,
    ForbiddenError,
    InvalidFilterError,
    Principal,
    TokenVerifier,
    resolve_types,
    visible_to,
)
from infra._gateway_config import HttpGatewayConfig
from infra._settings import Settings
from schemas import CATALOG, CoachStatusChanged, Event, NotificationSent, SessionCreated, UserCreditsUpdated
from schemas.errors import ConfigurationError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256-and-even-for-hs512!!"  # noqa: S105 - a test key


def _claims(sub: str = "u-1", *, exp_in: float = 86_400, **more: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time() + exp_in), **more}


def _hs(claims: dict[str, Any], secret: str | bytes = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def rsa_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "gateway.pub.pem"
    path.write_bytes(_public_pem(rsa_key))
    return path


def _user(sub: str = "u-1", *roles: str, coach_id: str | None = None) -> Principal:
    return Principal(sub, frozenset(roles or {"user"}), sub, coach_id or sub)


def _booking(user: str, coach: str) -> SessionCreated:
    return SessionCreated.model_validate(
        {
            "session_id": f"s-{user}-{coach}",
            "coach_id": coach,
            "user_id": user,
            "scheduled_at": datetime.now(UTC) + timedelta(days=1),
            "session_type": "intro",
            "cost_credits": 10,
        }
    )


# -- tokens ------------------------------------------------------------------------------------------


def test_a_valid_token_gives_the_principal_with_ids_defaulting_to_sub() -> None:
    verifier = TokenVerifier(HttpGatewayConfig(jwt_secret=SECRET))
    who = verifier.verify(_hs(_claims("u-1", roles=["user"])))
    assert who == Principal("u-1", frozenset({"user"}), "u-1", "u-1")
    coach = verifier.verify(_hs(_claims("acct-7", role="coach", coach_id="c-7")))
    assert (coach.roles, coach.user_id, coach.coach_id) == (frozenset({"coach"}), "acct-7", "c-7")
    assert verifier.verify(_hs(_claims("u-9"))).roles == frozenset({"user"})  # no role claim: least privilege


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (_hs(_claims(exp_in=-60)), "expired"),
        (_hs(_claims(), secret="another-secret-of-a-good-length-another-secret-of-a-good-length"), "Signature"),  # noqa: S106
        (_hs({"sub": "u-1"}), "exp"),
        (_hs({"exp": int(time.time()) + 86_400}), "sub"),
        (_hs(_claims(sub="")), "sub"),
        (_hs(_claims(roles="admin")), "roles"),
        (_hs(_claims(user_id=7)), "user_id"),
        (_hs(_claims(), algorithm="HS512"), "not accepted"),
        (f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(roles=['admin']))}.", "not accepted"),
        (f"{_b64({'alg': 'NONE'})}.{_b64(_claims(roles=['admin']))}.", "not accepted"),
        ("garbage", "malformed"),
        ("", "malformed"),
    ],
)
def test_tokens_that_are_not_valid_are_refused_saying_why(token: str, why: str) -> None:
    verifier = TokenVerifier(HttpGatewayConfig(jwt_secret=SECRET))
    with pytest.raises(AuthenticationError, match=why):
        verifier.verify(token)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(HttpGatewayConfig(jwt_secret=SECRET, jwt_audience="gateway", jwt_issuer="idp"))
    assert verifier.verify(_hs(_claims(aud="gateway", iss="idp"))).subject == "u-1"
    for claims in (_claims(aud="other", iss="idp"), _claims(aud="gateway", iss="evil"), _claims()):
        with pytest.raises(AuthenticationError):
            verifier.verify(_hs(claims))
    with pytest.raises(AuthenticationError, match="audience"):  # a token for some audience, where none is expected
        TokenVerifier(HttpGatewayConfig(jwt_secret=SECRET)).verify(_hs(_claims(aud="billing")))


def test_rs256_tokens_are_checked_with_the_public_key(rsa_key: rsa.RSAPrivateKey, rsa_file: Path) -> None:
    verifier = TokenVerifier(HttpGatewayConfig(jwt_public_key_file=rsa_file))
    assert verifier.algorithms == ("RS256",)  # ES256 dropped: the key is RSA
    assert verifier.verify(jwt.encode(_claims(roles=["coach"]), rsa_key, algorithm="RS256")).roles == {"coach"}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthenticationError, match="Signature"):
        verifier.verify(jwt.encode(_claims(), other, algorithm="RS256"))


def test_the_public_key_never_serves_as_an_hmac_secret(rsa_key: rsa.RSAPrivateKey, rsa_file: Path) -> None:
    public_pem = _public_pem(rsa_key)
    forged = _forge_hs256(_claims(roles=["admin"]), public_pem)
    only_key = TokenVerifier(HttpGatewayConfig(jwt_public_key_file=rsa_file))
    with pytest.raises(AuthenticationError, match="not accepted"):
        only_key.verify(forged)
    both = TokenVerifier(HttpGatewayConfig(jwt_secret=SECRET, jwt_public_key_file=rsa_file))
    with pytest.raises(AuthenticationError, match="Signature"):  # HS tokens are checked with the secret only
        both.verify(forged)


def _forge_hs256(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed with ``key`` as the HMAC secret, by hand (PyJWT refuses PEM keys as secrets)."""
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_es256_with_an_ec_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(_public_pem(key))
    verifier = TokenVerifier(HttpGatewayConfig(jwt_public_key_file=path))
    assert verifier.algorithms == ("ES256",)
    assert verifier.verify(jwt.encode(_claims(), key, algorithm="ES256")).subject == "u-1"


def test_the_gateway_refuses_to_start_without_a_way_to_check_tokens(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_HTTP_JWT_SECRET"):
        TokenVerifier(HttpGatewayConfig())
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigurationError, match="not a PEM public key"):
        TokenVerifier(HttpGatewayConfig(jwt_public_key_file=private))
    with pytest.raises(ConfigurationError, match="cannot read"):
        TokenVerifier(HttpGatewayConfig(jwt_public_key_file=tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"http_jwt_secret": "short"}, "EVENTBUS_HTTP_JWT_SECRET"),
        ({"http_jwt_secret": SECRET, "http_jwt_algorithms": ["none"]}, "EVENTBUS_HTTP_JWT_ALGORITHMS"),
        ({"http_jwt_algorithms": ["HS256"]}, "EVENTBUS_HTTP_JWT_SECRET"),
        ({"http_jwt_secret": SECRET, "http_jwt_algorithms": ["RS256"]}, "EVENTBUS_HTTP_JWT_PUBLIC_KEY_FILE"),
        ({"http_queue_size": 0}, "EVENTBUS_HTTP_QUEUE_SIZE"),
    ],
)
def test_invalid_http_settings_name_the_variable(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings(**fields).http_config()


def test_settings_build_the_http_config_and_mask_the_secret() -> None:
    settings = Settings(http_jwt_secret=SECRET, http_heartbeat_s=2.5, http_dev_tokens=True)
    config = settings.http_config()
    assert (config.jwt_algorithms, config.heartbeat_s, config.dev_tokens, config.queue_size) == (
        ("HS256",),
        2.5,
        True,
        1000,
    )
    assert SECRET not in str(settings.describe()) + repr(config)


def test_dev_tokens_only_when_enabled_and_short_lived() -> None:
    with pytest.raises(ConfigurationError, match="disabled"):
        TokenVerifier(HttpGatewayConfig(jwt_secret=SECRET)).issue("u-1", ["user"])
    dev = TokenVerifier(HttpGatewayConfig(dev_tokens=True))  # a random per-process secret
    token = dev.issue("c-1", ["coach"], ttl_s=10**6, coach_id="c-1")
    assert dev.verify(token).roles == {"coach"}
    assert jwt.decode(token, options={"verify_signature": False})["exp"] <= time.time() + 3600
    with pytest.raises(AuthenticationError):  # another process's secret
        TokenVerifier(HttpGatewayConfig(dev_tokens=True)).verify(token)


# -- the authorization table -------------------------------------------------------------------------


def test_the_table_keeps_dead_letters_and_cache_events_for_admins() -> None:
    assert READABLE_TYPES["admin"] == set(CATALOG.event_types)
    for role in ("user", "coach", "service"):
        assert not {t for t in READABLE_TYPES[role] if t.startswith(("system:", "cache:"))}
    assert {"session:created", "notification:sent", "user:credits_updated", "payment:failed"} <= READABLE_TYPES["user"]
    assert not {t for t in READABLE_TYPES["user"] if t.startswith("coach:")}
    assert {"coach:status_changed", "session:created"} <= READABLE_TYPES["coach"]
    assert READABLE_TYPES["service"] == frozenset()


def test_type_filters_are_narrowed_refused_or_rejected() -> None:
    user = _user()
    assert resolve_types(user, []) == [t for t in CATALOG.event_types if t in READABLE_TYPES["user"]]
    assert resolve_types(user, ["*"]) == resolve_types(user, [])
    assert resolve_types(user, ["session:*", "session:created"]) == [
        spec.event_type for spec in CATALOG.matching("session:*")
    ]
    for forbidden in (["system:error"], ["cache:*"], ["coach:status_changed"], ["session:*", "system:*"]):
        with pytest.raises(ForbiddenError):
            resolve_types(user, forbidden)
    with pytest.raises(InvalidFilterError):
        resolve_types(user, ["sesion:*"])
    with pytest.raises(ForbiddenError):
        resolve_types(_user("svc", "service"), ["session:*"])
    assert resolve_types(_user("c-1", "coach"), ["session:*", "coach:status_changed"])[-1] == "coach:status_changed"
    assert "system:error" in resolve_types(_user("root", "admin"), ["system:*"])


def test_visible_to_shows_events_about_the_principal_only() -> None:
    mine, theirs = _booking("u-1", "c-1"), _booking("u-2", "c-2")
    status = CoachStatusChanged(coach_id="c-1", old_status="online", new_status="busy")
    balance = UserCreditsUpdated(user_id="u-1", delta=-10, balance=90, reason="session_completed")
    note = NotificationSent(
        notification_id="n-1", user_id="u-2", notification_type="session_confirmed", channel="in_app", title="t"
    )
    events: list[Event] = [mine, theirs, status, balance, note]

    def seen(who: Principal) -> list[Event]:
        return [event for event in events if visible_to(who, event)]

    assert seen(_user("u-1")) == [mine, balance]
    assert seen(_user("u-2")) == [theirs, note]
    assert seen(_user("c-1", "coach")) == [mine, status]
    assert seen(Principal("acct", frozenset({"coach"}), "u-2", "c-1")) == [mine, theirs, status, note]
    assert seen(_user("c-1", "user")) == []  # the coach id counts for the coach role only
    assert seen(_user("svc", "service")) == []
    assert seen(_user("root", "admin")) == events
    assert seen(_user("root", "operator")) == events  # an operator reads what admin reads
    assert seen(_user("u-1", "auditor")) == []  # an unknown role grants nothing
