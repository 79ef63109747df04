"""Kling's two ways in: a Bearer API key, or an HS256 JWT signed with the secret key (iss = access key)."""

from __future__ import annotations

import hmac

import jwt

from devstack.kling_simulator.config import SimulatorConfig
from devstack.kling_simulator.errors import KlingError


def check_authorization(header: str | None, config: SimulatorConfig) -> None:
    """Raise the KlingError (1000-1004) Kling would answer with, or return if the caller is let in."""
    if not config.auth_required:
        return
    if not header or not header.strip():
        raise KlingError(1001)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise KlingError(1002, "Authorization is invalid: expected 'Bearer <token>'")
    if config.api_key and hmac.compare_digest(token.encode(), config.api_key.encode()):
        return
    if config.access_key and config.secret_key and token.count(".") == 2:
        _check_jwt(token, config.access_key, config.secret_key)
        return
    raise KlingError(1000, "Authentication failed: unknown API key")


def _check_jwt(token: str, access_key: str, secret_key: str) -> None:
    try:
        claims = jwt.decode(
            token,
            secret_key,
            algorithms=["HS256"],
            options={"require": ["iss", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise KlingError(1004) from None
    except jwt.ImmatureSignatureError:
        raise KlingError(1003) from None
    except jwt.InvalidSignatureError:
        raise KlingError(1000, "Authentication failed: token signature does not match") from None
    except jwt.InvalidTokenError as exc:
        raise KlingError(1002, f"Authorization is invalid: {exc}") from None
    if claims.get("iss") != access_key:
        raise KlingError(1000, "Authentication failed: unknown access key")
