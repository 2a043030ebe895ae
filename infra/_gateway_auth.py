"""Who may read and publish what through the HTTP gateway: token checks, principals, the authorization table.

A request carries a JWT (``Authorization: Bearer <token>``, or ``?access_token=`` for EventSource). The token must
be signed with an accepted algorithm (never ``none``; the key is picked by the algorithm's family, so a public key
can never serve as an HMAC secret), and carry ``exp`` and ``sub``. Roles come from a ``roles`` list claim and/or a
``role`` string (neither: ``user``); ``user_id`` and ``coach_id`` claims default to ``sub``.

The authorization table (``READABLE_TYPES``, derived from the event models)::

    role      reads (a type filter naming anything else: 403)              sees of those events
    admin     every type, system:error (dead letters) and cache:* too      all of them
    operator  what admin reads; in the console it may also replay dead     all of them
              letters and reset offsets (``may_operate``)
    coach     types carrying a user_id or coach_id: session:*, coach:*,    those whose user_id is theirs, or
              payment:*, notification:*, user:credits_updated              whose coach_id is theirs
    user      types carrying a user_id: session:*, payment:*,              those whose user_id is theirs
              notification:* (user_id: the recipient), user:credits_updated
    service   nothing (it publishes: every type but system:*)              -

``cache:*`` (internal invalidations) and ``system:error`` (dead letters hold other users' raw records) are admin
only. A principal with several roles gets the union. A glob filter (``session:*``, ``*``) is narrowed to the types
the role reads; a glob matching only types it may not read is 403, one matching no type at all is 400.

Example: ``visible_to(verifier.verify(token), event)``
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from schemas import CATALOG, Event
from schemas.errors import ConfigurationError, EventBusError

from ._gateway_config import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, HttpGatewayConfig

__all__ = [
    "ADMIN",
    "COACH",
    "DEV_TOKEN_MAX_TTL_S",
    "OPERATOR",
    "PUBLISHABLE_TYPES",
    "READABLE_TYPES",
    "ROLES",
    "SERVICE",
    "USER",
    "AuthenticationError",
    "ForbiddenError",
    "InvalidFilterError",
    "Principal",
    "TokenVerifier",
    "principal_of",
    "readable_types",
    "resolve_types",
    "visible_to",
]

ADMIN = "admin"
COACH = "coach"
USER = "user"
SERVICE = "service"
OPERATOR = "operator"
ROLES = (ADMIN, OPERATOR, COACH, USER, SERVICE)
"""The roles the gateway knows; any other role in a token grants nothing."""

DEV_TOKEN_MAX_TTL_S = 3600
"""Development tokens live at most this long (seconds)."""
_ADMIN_ONLY_PREFIXES = ("system:", "cache:")


def _carrying(*fields: str) -> frozenset[str]:
    """The catalog types whose model has one of ``fields``, less the admin-only ones."""
    return frozenset(
        spec.event_type
        for spec in CATALOG
        if any(name in spec.model.model_fields for name in fields)
        and not spec.event_type.startswith(_ADMIN_ONLY_PREFIXES)
    )


READABLE_TYPES: Mapping[str, frozenset[str]] = {
    ADMIN: frozenset(CATALOG.event_types),
    OPERATOR: frozenset(CATALOG.event_types),
    COACH: _carrying("user_id", "coach_id"),
    USER: _carrying("user_id"),
    SERVICE: frozenset(),
}
"""Role -> the event types it may stream (what each sees of them: ``visible_to``)."""

PUBLISHABLE_TYPES: Mapping[str, frozenset[str]] = {
    ADMIN: frozenset(CATALOG.event_types),
    SERVICE: frozenset(t for t in CATALOG.event_types if not t.startswith("system:")),
}
"""Role -> the event types it may publish (``POST /v1/events/{type}``); dead letters come from the runtime only."""


class AuthenticationError(EventBusError):
    """No token, or one that is not valid (signature, algorithm, expiry, claims): HTTP 401."""


class ForbiddenError(EventBusError):
    """A valid token whose roles do not allow the request: HTTP 403."""


class InvalidFilterError(EventBusError):
    """A type filter naming no catalog type: HTTP 400."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for. Example: ``Principal("u-1", frozenset({"user"}), "u-1", "u-1").is_admin``"""

    subject: str
    roles: frozenset[str]
    user_id: str
    coach_id: str

    @property
    def is_admin(self) -> bool:
        """Whether the principal sees everything (an ``operator`` too: it reads what admin reads)."""
        return ADMIN in self.roles or OPERATOR in self.roles

    @property
    def may_operate(self) -> bool:
        """Whether the principal may change things in the console (replay dead letters, reset offsets)."""
        return OPERATOR in self.roles

    @property
    def readable(self) -> frozenset[str]:
        """The event types the principal may stream (the union over its roles)."""
        return readable_types(self.roles)

    def may_publish(self, event_type: str) -> bool:
        """Whether ``POST /v1/events/{event_type}`` is allowed."""
        return any(event_type in PUBLISHABLE_TYPES.get(role, frozenset()) for role in self.roles)


def readable_types(roles: Iterable[str]) -> frozenset[str]:
    """The union of what ``roles`` may read. Example: ``"system:error" in readable_types(["admin"])``"""
    return frozenset().union(*(READABLE_TYPES.get(role, frozenset()) for role in roles))


def resolve_types(principal: Principal, filters: Sequence[str]) -> list[str]:
    """The concrete event types a stream of ``filters`` (types or globs; empty: everything) serves ``principal``.

    ``InvalidFilterError`` for a filter matching no catalog type, ``ForbiddenError`` for a type (or a glob
    matching only types) the principal may not read. Example: ``resolve_types(user, ["session:*"])``
    """
    readable = principal.readable
    if not readable:
        raise ForbiddenError(f"the roles {sorted(principal.roles)} read no events")
    wanted: list[str] = []
    for pattern in filters or ["*"]:
        matched = [spec.event_type for spec in CATALOG.matching(pattern)]
        if not matched:
            raise InvalidFilterError(f"types: {pattern!r} matches no event type")
        allowed = [event_type for event_type in matched if event_type in readable]
        if not allowed:
            raise ForbiddenError(f"types: {pattern!r} is not readable with the roles {sorted(principal.roles)}")
        wanted.extend(event_type for event_type in allowed if event_type not in wanted)
    return wanted


def visible_to(principal: Principal, event: Event) -> bool:
    """Whether ``principal`` may see ``event``: admin everything; others events about them, of types they read.

    About them: the event's ``user_id`` is theirs (for notifications, the recipient), or, for a coach, its
    ``coach_id`` is theirs. Example: ``visible_to(user_u1, session_of_u2) is False``
    """
    if principal.is_admin:
        return True
    if event.event_type not in principal.readable:
        return False
    user_id = getattr(event, "user_id", None)
    if isinstance(user_id, str) and user_id == principal.user_id:
        return True
    coach_id = getattr(event, "coach_id", None)
    return COACH in principal.roles and isinstance(coach_id, str) and coach_id == principal.coach_id


class TokenVerifier:
    """Checks bearer tokens against the configured keys; issues development tokens when enabled.

    ``ConfigurationError`` at construction when there is no way to check tokens (no secret, no public key,
    no dev tokens) or the key file is not a PEM public key. Example: ``TokenVerifier(config).verify(token)``
    """

    def __init__(self, config: HttpGatewayConfig) -> None:
        self._config = config
        self._secret: bytes | None = None
        self._public_key: RSAPublicKey | EllipticCurvePublicKey | None = None
        algorithms = list(config.jwt_algorithms)
        if config.jwt_secret is not None:
            self._secret = config.jwt_secret.get_secret_value().encode()
        if config.jwt_public_key_file is not None:
            self._public_key = _load_public_key(config.jwt_public_key_file)
            fits = ("RS", "PS") if isinstance(self._public_key, RSAPublicKey) else ("ES",)
            # A key of one type never checks the other type's tokens (RS256 with an EC key, say).
            algorithms = [a for a in algorithms if a in HMAC_ALGORITHMS or a.startswith(fits)]
        if config.dev_tokens:
            if self._secret is None:
                self._secret = secrets.token_bytes(32)  # per process: its tokens are good here only
            if "HS256" not in algorithms:
                algorithms.append("HS256")
        if not algorithms or (self._secret is None and self._public_key is None):
            raise ConfigurationError(
                "the gateway checks tokens with EVENTBUS_HTTP_JWT_SECRET (HS256) or EVENTBUS_HTTP_JWT_PUBLIC_KEY_FILE"
                " (RS256/ES256), with an algorithm of EVENTBUS_HTTP_JWT_ALGORITHMS that fits it; set one"
                " (or EVENTBUS_HTTP_DEV_TOKENS=true, for development only)"
            )
        self.algorithms: tuple[str, ...] = tuple(algorithms)

    def _key_for(self, algorithm: str) -> bytes | RSAPublicKey | EllipticCurvePublicKey | None:
        if algorithm in HMAC_ALGORITHMS:
            return self._secret
        if algorithm in ASYMMETRIC_ALGORITHMS:
            return self._public_key
        return None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; ``AuthenticationError`` saying why not otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"malformed token: {exc}") from exc
        algorithm = str(header.get("alg"))
        key = self._key_for(algorithm) if algorithm in self.algorithms else None
        if key is None:
            raise AuthenticationError(f"token algorithm {algorithm!r} is not accepted here")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._config.jwt_audience,
                issuer=self._config.jwt_issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from exc
        return principal_of(claims)

    def issue(self, subject: str, roles: Sequence[str], *, ttl_s: int = 900, **claims: str) -> str:
        """A development token (HS256) for ``subject``; ``ConfigurationError`` unless dev tokens are enabled.

        Example: ``verifier.issue("u-1", ["user"], ttl_s=300)``
        """
        if not self._config.dev_tokens or self._secret is None:
            raise ConfigurationError("development tokens are disabled (EVENTBUS_HTTP_DEV_TOKENS)")
        now = int(time.time())
        payload: dict[str, Any] = {
            **claims,
            "sub": subject,
            "roles": list(roles),
            "iat": now,
            "exp": now + max(1, min(ttl_s, DEV_TOKEN_MAX_TTL_S)),
        }
        if self._config.jwt_audience is not None:
            payload["aud"] = self._config.jwt_audience
        if self._config.jwt_issuer is not None:
            payload["iss"] = self._config.jwt_issuer
        return jwt.encode(payload, self._secret, algorithm="HS256")


def principal_of(claims: Mapping[str, Any]) -> Principal:
    """The principal of verified claims; ``AuthenticationError`` when they are malformed."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError("invalid token: sub must be a non-empty string")
    roles: set[str] = set()
    listed = claims.get("roles", [])
    if not isinstance(listed, list) or not all(isinstance(role, str) for role in listed):
        raise AuthenticationError("invalid token: roles must be a list of strings")
    roles.update(listed)
    single = claims.get("role")
    if single is not None:
        if not isinstance(single, str):
            raise AuthenticationError("invalid token: role must be a string")
        roles.add(single)
    ids = {}
    for name in ("user_id", "coach_id"):
        value = claims.get(name, subject)
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"invalid token: {name} must be a non-empty string")
        ids[name] = value
    return Principal(subject, frozenset(roles or {USER}), ids["user_id"], ids["coach_id"])


def _load_public_key(path: Path) -> RSAPublicKey | EllipticCurvePublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"EVENTBUS_HTTP_JWT_PUBLIC_KEY_FILE: cannot read {str(path)!r}: {exc}") from exc
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigurationError(
            f"EVENTBUS_HTTP_JWT_PUBLIC_KEY_FILE: {str(path)!r} is not a PEM public key (a private key never belongs"
            " here)"
        ) from exc
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise ConfigurationError(f"EVENTBUS_HTTP_JWT_PUBLIC_KEY_FILE: {type(key).__name__} keys are not supported")
    return key
