"""How a request proves who it is: a relay's Bearer key, or Kling's own AK/SK-signed JWT."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

JWT_TTL_SECONDS = 1800
JWT_NOT_BEFORE_SKEW = 5  # Kling's documented nbf = now - 5 s
JWT_RESIGN_MARGIN = 60  # re-sign this long before expiry so a token never expires in flight


class KlingAuth(Protocol):
    """Supplies the `Authorization` header; `refresh` is called after Kling refuses it with 1003/1004."""

    def authorization(self) -> str: ...

    def refresh(self) -> None: ...


class BearerKeyAuth:
    """An API key sent as is: `Authorization: Bearer <key>` (relays, and Kling's plain API keys)."""

    def __init__(self, api_key: str) -> None:
        key = api_key.strip()
        if not key:
            raise ValueError("api_key: must not be empty")
        self._header = f"Bearer {key}"

    def authorization(self) -> str:
        return self._header

    def refresh(self) -> None:
        """A static key cannot be re-signed; nothing to do."""

    def __repr__(self) -> str:  # never print the key
        return "BearerKeyAuth(api_key=***)"


class JwtAuth:
    """Kling's official signing: HS256 JWT `{"iss": ak, "exp": now+ttl, "nbf": now-5}`, cached until
    it is within a minute of expiry or `refresh()` is called."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        ttl_seconds: int = JWT_TTL_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_key.strip():
            raise ValueError("access_key: must not be empty")
        if not secret_key:
            raise ValueError("secret_key: must not be empty")
        if ttl_seconds <= JWT_RESIGN_MARGIN:
            raise ValueError(f"ttl_seconds: must be more than {JWT_RESIGN_MARGIN} (got {ttl_seconds})")
        self._access_key = access_key.strip()
        self._secret_key = secret_key
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._signed_at = 0
        self._expires_at = 0

    def authorization(self) -> str:
        with self._lock:
            now = int(self._clock())
            if self._token is None or now >= self._expires_at - JWT_RESIGN_MARGIN:
                self._sign(now)
            assert self._token is not None
            return f"Bearer {self._token}"

    def refresh(self) -> None:
        """Sign a new token now. Claims have one-second resolution, so the signing moment is moved
        past the previous one: a refresh within the same second must not reproduce the refused token."""
        with self._lock:
            self._sign(max(int(self._clock()), self._signed_at + 1))

    def _sign(self, now: int) -> None:
        import jwt  # deferred: with `cryptography` installed it costs ~35 ms of cold start, and relays use keys

        payload = {"iss": self._access_key, "exp": now + self._ttl, "nbf": now - JWT_NOT_BEFORE_SKEW}
        self._token = jwt.encode(payload, self._secret_key, algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"})
        self._signed_at = now
        self._expires_at = now + self._ttl

    def __repr__(self) -> str:
        return f"JwtAuth(access_key={self._access_key!r}, secret_key=***, ttl_seconds={self._ttl})"
