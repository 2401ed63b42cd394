"""Routes verifying Clerk tokens with `CLERK_JWKS_URL` (no `CLERK_JWT_KEY`), through the real
handlers and a real JWKS endpoint (tests/support/fake_jwks.py): what callers get when the
JWKS cannot be read (tests/core/test_jwks_reads.py has how often it is read and what is kept)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from shared import auth, config
from tests.support.fake_jwks import FakeJwks
from tests.support.http import Caller, Keys, logged

ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Nothing here depends on the lane: the direct one only."""
    return direct_database_url


@pytest.fixture
def fake(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJwks]:
    with FakeJwks() as server:
        monkeypatch.setenv("CLERK_JWT_KEY", "")
        monkeypatch.setenv("CLERK_JWKS_URL", server.url)
        config.get_settings.cache_clear()
        yield server
    auth._key_source.cache_clear()


@pytest.fixture
def caller(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_token_signed_by_a_published_key_is_accepted(fake: FakeJwks, caller: Caller) -> None:
    result = caller("searches", "GET", "/api/searches", headers=bearer(fake.token("k2", "u_a")))
    assert result.status == 200, result.text


def test_a_key_the_jwks_does_not_publish_is_an_invalid_token(
    fake: FakeJwks, caller: Caller
) -> None:
    fake.publish("k2")
    token = fake.token("k1", "user_a")
    result = caller("searches", "GET", "/api/searches", headers=bearer(token))
    assert result.status == 401, result.text
    assert result.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    flags = caller("flags", "GET", "/api/flags", headers=bearer(token))
    assert flags.status == 200, flags.text


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param((200, b"<html>Cloudflare error 522</html>", "text/html"), id="html"),
        pytest.param((200, b"{{{not json", "application/json"), id="not_json"),
        pytest.param((200, b'{"keys": []}', "application/json"), id="empty"),
        pytest.param((500, b"oops", "text/plain"), id="status_500"),
    ],
)
def test_an_unreadable_jwks_is_a_503_where_a_session_is_needed_and_anonymous_where_optional(
    fake: FakeJwks,
    caller: Caller,
    caplog: pytest.LogCaptureFixture,
    answer: tuple[int, bytes, str],
) -> None:
    """Our dependency failing, not the caller's token: a 401 would sign the user out, so routes
    needing a session answer 503 with `Retry-After` (never the 500 an HTML page caused), and
    `GET /api/flags` serves the caller as anonymous."""
    fake.answer(*answer)
    caplog.set_level(logging.INFO, logger="keyflash")
    token = fake.token("k1", "user_a")
    result = caller("searches", "GET", "/api/searches", headers=bearer(token))
    assert result.status == 503, result.text
    assert set(result.json) == ENVELOPE_KEYS
    assert result.json["statusCode"] == 503
    assert result.headers["retry-after"] == "5"
    assert "www-authenticate" not in result.headers
    [failed] = logged(caplog, "request_failed")
    assert (failed["status"], failed["reason"]) == (503, "clerk_keys_unavailable")
    flags = caller("flags", "GET", "/api/flags", headers=bearer(token))
    anonymous = caller("flags", "GET", "/api/flags")
    assert (flags.status, flags.json) == (200, anonymous.json)
