"""``HttpGatewayConfig``: how ``eventbus gateway`` checks tokens and paces its streams.

Set through ``EVENTBUS_HTTP_*`` settings (``Settings.http_config()``). The gateway refuses to
start without a way to check tokens: an HS256 secret, a public key file (RS256/ES256), or,
for development only, ``dev_tokens`` (the gateway then signs its own short-lived tokens).

Example: ``HttpGatewayConfig(jwt_secret="a-secret-of-at-least-32-characters-long").jwt_algorithms == ("HS256",)``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["ASYMMETRIC_ALGORITHMS", "HMAC_ALGORITHMS", "MIN_SECRET_LENGTH", "HttpGatewayConfig"]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
"""Algorithms checked with ``jwt_secret``."""
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
"""Algorithms checked with the public key of ``jwt_public_key_file``."""
MIN_SECRET_LENGTH = 32
"""RFC 7518 (3.2): an HS256 key is at least 256 bits."""


class HttpGatewayConfig(BaseModel):
    """Token checks and stream pacing of the HTTP gateway.

    ``jwt_algorithms`` defaults to what the keys allow: ``HS256`` with a secret, ``RS256`` and ``ES256``
    with a public key (the key's type then keeps the one that fits). ``none`` is never accepted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    jwt_secret: SecretStr | None = None
    """The HMAC secret of HS256 tokens (at least 32 characters)."""
    jwt_public_key_file: Path | None = None
    """A PEM public key (RSA or EC) checking RS256/ES256 tokens; never a private key."""
    jwt_algorithms: tuple[str, ...] = ()
    """The algorithms a token may use; empty: derived from the secret and the key."""
    jwt_audience: str | None = None
    """When set, tokens must carry this ``aud``; when unset, tokens carrying an ``aud`` are refused."""
    jwt_issuer: str | None = None
    """When set, tokens must carry this ``iss``."""
    dev_tokens: bool = False
    """Development only: ``POST /dev/token`` issues short-lived tokens (signed with the secret, or a random one)."""
    queue_size: int = Field(default=1000, ge=1)
    """Events a stream may fall behind before it is closed as too slow."""
    heartbeat_s: float = Field(default=15.0, gt=0)
    """Seconds between ``: ping`` comments on an idle stream; a client that takes no write for two is cut."""

    @model_validator(mode="before")
    @classmethod
    def _derive_algorithms(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("jwt_algorithms"):
            derived = (["HS256"] if data.get("jwt_secret") else []) + (
                ["RS256", "ES256"] if data.get("jwt_public_key_file") else []
            )
            return {**data, "jwt_algorithms": tuple(derived)}
        return data

    @model_validator(mode="after")
    def _check_keys(self) -> HttpGatewayConfig:
        unknown = [name for name in self.jwt_algorithms if name not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
        if unknown:
            known = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
            msg = f"jwt_algorithms: {', '.join(unknown)} not accepted ('none' never is); choose among {known}"
            raise ValueError(msg)
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"jwt_secret must be at least {MIN_SECRET_LENGTH} characters (256 bits for HS256)")
        if HMAC_ALGORITHMS.intersection(self.jwt_algorithms) and self.jwt_secret is None:
            raise ValueError("jwt_algorithms names an HS algorithm, but no jwt_secret is set")
        if ASYMMETRIC_ALGORITHMS.intersection(self.jwt_algorithms) and self.jwt_public_key_file is None:
            raise ValueError("jwt_algorithms names an RS/PS/ES algorithm, but no jwt_public_key_file is set")
        return self
