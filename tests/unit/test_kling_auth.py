"""Bearer keys are sent as is; JWTs follow Kling's signing rules and are cached and re-signed."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from kling_pipeline.kling.auth import BearerKeyAuth, JwtAuth, KlingAuth
from tests.fakes import FixedClock

AK = "ak-test"
SK = "sk-test-secret-0123456789abcdef0123"


def decode(header: str) -> dict[str, Any]:
    scheme, token = header.split(" ", 1)
    assert scheme == "Bearer"
    return jwt.decode(token, SK, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False})


def test_both_satisfy_the_protocol() -> None:
    auths: list[KlingAuth] = [BearerKeyAuth("k"), JwtAuth(AK, SK)]
    assert all(a.authorization().startswith("Bearer ") for a in auths)


def test_bearer_key_is_sent_as_is_and_refresh_keeps_it() -> None:
    auth = BearerKeyAuth("sk-relay-123")
    assert auth.authorization() == "Bearer sk-relay-123"
    auth.refresh()
    assert auth.authorization() == "Bearer sk-relay-123"
    assert "sk-relay-123" not in repr(auth)


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_bearer_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="api_key: must not be empty"):
        BearerKeyAuth(key)


def test_jwt_header_and_claims_follow_kling() -> None:
    clock = FixedClock(1_800_000_000.0)
    header = JwtAuth(AK, SK, clock=clock.seconds).authorization()
    token = header.removeprefix("Bearer ")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    now = int(clock.seconds())
    assert decode(header) == {"iss": AK, "exp": now + 1800, "nbf": now - 5}


def test_jwt_is_signed_with_the_secret_key() -> None:
    token = JwtAuth(AK, SK).authorization().removeprefix("Bearer ")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-enough-length-000", algorithms=["HS256"])
    assert jwt.decode(token, SK, algorithms=["HS256"])["iss"] == AK  # valid now


def test_custom_ttl_sets_expiry() -> None:
    clock = FixedClock(1_800_000_000.0)
    assert (
        decode(JwtAuth(AK, SK, ttl_seconds=600, clock=clock.seconds).authorization())["exp"]
        == int(clock.seconds()) + 600
    )


def test_token_is_cached_until_sixty_seconds_before_expiry() -> None:
    clock = FixedClock(1_800_000_000.0)
    auth = JwtAuth(AK, SK, clock=clock.seconds)
    first = auth.authorization()
    clock.advance(seconds=1800 - 61)  # 61 s left: still good
    assert auth.authorization() == first
    clock.advance(seconds=1)  # 60 s left: re-sign
    second = auth.authorization()
    assert second != first
    assert decode(second)["exp"] == int(clock.seconds()) + 1800


def test_refresh_signs_a_different_token_even_within_the_same_second() -> None:
    clock = FixedClock(1_800_000_000.0)
    auth = JwtAuth(AK, SK, clock=clock.seconds)
    first = auth.authorization()
    auth.refresh()
    second = auth.authorization()
    auth.refresh()
    third = auth.authorization()
    assert len({first, second, third}) == 3
    assert decode(third)["nbf"] <= int(clock.seconds())  # still valid now


def test_refresh_later_signs_with_the_current_time() -> None:
    clock = FixedClock(1_800_000_000.0)
    auth = JwtAuth(AK, SK, clock=clock.seconds)
    auth.authorization()
    clock.advance(seconds=900)
    auth.refresh()
    assert decode(auth.authorization())["nbf"] == int(clock.seconds()) - 5


@pytest.mark.parametrize(
    ("access_key", "secret_key", "ttl", "message"),
    [
        ("", SK, 1800, "access_key: must not be empty"),
        (AK, "", 1800, "secret_key: must not be empty"),
        (AK, SK, 60, r"ttl_seconds: must be more than 60 \(got 60\)"),
    ],
)
def test_invalid_jwt_settings_are_refused(access_key: str, secret_key: str, ttl: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JwtAuth(access_key, secret_key, ttl_seconds=ttl)


def test_smallest_ttl_is_accepted() -> None:
    assert JwtAuth(AK, SK, ttl_seconds=61).authorization().startswith("Bearer ")


def test_repr_hides_the_secret() -> None:
    assert SK not in repr(JwtAuth(AK, SK))
