"""Clerk's JWKS (`CLERK_JWKS_URL`) as a container reads it, over real HTTP
(tests/support/fake_jwks.py): what a failed read does, how often the endpoint is read, and which
keys stay trusted. The key source's clock is moved instead of waited for."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from shared import auth, jwks
from shared.config import Settings
from tests.support.fake_jwks import FakeJwks
from tests.support.http import ISSUER, logged


@pytest.fixture
def fake() -> Iterator[FakeJwks]:
    with FakeJwks() as server:
        yield server
    auth._key_source.cache_clear()


def settings_for(url: str) -> Settings:
    return Settings(
        database_url="postgresql://u:p@localhost/db", clerk_jwks_url=url, clerk_issuer=ISSUER
    )


class Clock:
    """`time.monotonic` for a key source, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/.well-known/jwks.json"


HTML = b"<html><body>Cloudflare: error 522</body></html>"
# (status, body, content type) a JWKS endpoint may answer, and the failure it is logged as.
FAILED_READS = {
    "html": ((200, HTML, "text/html"), "not_json"),
    "not_json": ((200, b"{{{not json", "application/json"), "not_json"),
    "not_utf8": ((200, b'{"keys": "\xff"}', "application/json"), "not_json"),
    "a_list": ((200, b"[]", "application/json"), "not_a_key_set"),
    "keys_not_a_list": ((200, b'{"keys": "k1"}', "application/json"), "not_a_key_set"),
    "no_keys": ((200, b"{}", "application/json"), "not_a_key_set"),
    "empty": ((200, b'{"keys": []}', "application/json"), "no_usable_key"),
    "garbage_key": (
        (200, b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "!!", "e": "AQAB"}]}', "text/plain"),
        "no_usable_key",
    ),
    "status_500": ((500, b"oops", "text/plain"), "status"),
    "status_404": ((404, b"Not found", "text/html"), "status"),
}


@pytest.mark.parametrize("mode", sorted(FAILED_READS))
def test_a_failed_read_leaves_tokens_unverifiable_and_logs_one_warning(
    fake: FakeJwks, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Never an exception of its own (an HTML page made every token-bearing request a 500), and
    one WARNING naming the host and what went wrong, so an outage is not read as bad tokens; a
    second token within the failure's memory costs no second read."""
    (status, body, content_type), failure = FAILED_READS[mode]
    fake.answer(status, body, content_type)
    caplog.set_level(logging.INFO, logger="keyflash")
    token = fake.token("k1", "user_a")
    for _ in range(2):
        with pytest.raises(auth.KeysUnavailable):
            auth.verify_session_token(token, settings_for(fake.url))
    assert fake.fetches == 1
    [line] = logged(caplog, "jwks_fetch_failed")
    expected = {"host": "127.0.0.1", "failure": failure}
    if failure == "status":
        expected["status"] = status
    assert {key: line[key] for key in (*expected, "retryInS")} == {**expected, "retryInS": 5}
    [record] = [r for r in caplog.records if "jwks_fetch_failed" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert token not in caplog.text and fake.url not in caplog.text


def test_a_refused_connection_is_logged_as_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="keyflash")
    url = _closed_port_url()
    try:
        with FakeJwks() as other, pytest.raises(auth.KeysUnavailable):
            auth.verify_session_token(other.token("k1", "user_a"), settings_for(url))
    finally:
        auth._key_source.cache_clear()
    [line] = logged(caplog, "jwks_fetch_failed")
    assert (line["host"], line["failure"]) == ("127.0.0.1", "unreachable")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("clerk.example.com/.well-known/jwks.json", "ValueError"),  # no scheme
        (f"https://{'a' * 64}.example.com/.well-known/jwks.json", "UnicodeError"),  # not IDNA
        ("https://[clerk.example.com/.well-known/jwks.json", "ValueError"),  # no host to log
    ],
)
def test_a_url_urllib_cannot_read_is_a_failed_read(
    caplog: pytest.LogCaptureFixture, url: str, error: str
) -> None:
    """The settings refuse such a URL, but an exception other than our own read failures
    escaped as a 500 with a stack trace, and a read per request."""
    caplog.set_level(logging.INFO, logger="keyflash")
    try:
        with FakeJwks() as other:
            token = other.token("k1", "user_a")
            for _ in range(2):
                with pytest.raises(auth.KeysUnavailable):
                    auth.verify_session_token(token, settings_for(url))
    finally:
        auth._key_source.cache_clear()
    [line] = logged(caplog, "jwks_fetch_failed")
    assert (line["failure"], line["error"]) == ("unexpected", error)
    assert url not in caplog.text


def test_a_body_over_the_cap_is_a_failed_read_though_it_holds_the_keys(
    fake: FakeJwks, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A JWKS is a few KB: a larger answer (a wrong URL, a hostile endpoint) is not read into a
    container's memory to the end."""
    caplog.set_level(logging.INFO, logger="keyflash")
    key_set = json.dumps({"keys": [fake.jwk("k1")]}).encode()
    fake.answer(200, key_set[:-1] + b" " * jwks.MAX_BODY_BYTES + b"}")
    with pytest.raises(jwks.Unavailable):
        jwks.KeySource(fake.url, clock=clock).key("k1")
    [line] = logged(caplog, "jwks_fetch_failed")
    assert line["failure"] == "too_large"


def test_a_redirect_is_a_failed_read_and_not_followed(
    fake: FakeJwks, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """urllib followed redirects, https to http included: the keys that verify every session
    come from the configured URL or from nowhere."""
    caplog.set_level(logging.INFO, logger="keyflash")
    with FakeJwks() as elsewhere:
        fake.answer(302, b"", "text/plain", {"Location": elsewhere.url})
        with pytest.raises(jwks.Unavailable):
            jwks.KeySource(fake.url, clock=clock).key("k1")
        assert elsewhere.fetches == 0
    [line] = logged(caplog, "jwks_fetch_failed")
    assert (line["failure"], line["status"]) == ("status", 302)


def test_only_http_urls_are_read(fake: FakeJwks, clock: Clock, tmp_path: Path) -> None:
    """urllib read `file:`, `data:` and `ftp:` URLs too (the settings refuse them as well)."""
    key_set = json.dumps({"keys": [fake.jwk("k1")]})
    path = tmp_path / "jwks.json"
    path.write_text(key_set)
    for url in (path.as_uri(), "data:application/json," + quote(key_set)):
        with pytest.raises(jwks.Unavailable):
            jwks.KeySource(url, clock=clock).key("k1")


def test_a_hanging_read_is_shared_by_the_requests_waiting_for_it(fake: FakeJwks) -> None:
    """One read at a time: those arriving meanwhile wait for it (at most its timeout) and take
    its result, instead of each running a read of their own in turn (nine requests took 5 to
    44.5 s while the JWKS hung)."""
    fake.hang()
    token = fake.token("k1", "user_a")
    settings = settings_for(fake.url)
    outcomes: list[str] = []

    def request() -> None:
        try:
            auth.verify_session_token(token, settings)
            outcomes.append("verified")
        except auth.KeysUnavailable:
            outcomes.append("unavailable")

    first = threading.Thread(target=request)
    first.start()
    assert fake.received.wait(10)
    others = [threading.Thread(target=request) for _ in range(8)]
    for thread in others:
        thread.start()
    fake.release()  # the held read ends with no answer: a failed read
    for thread in [first, *others]:
        thread.join(30)
    assert outcomes == ["unavailable"] * 9
    assert fake.fetches == 1


def test_every_read_replaces_the_whole_key_set(fake: FakeJwks, clock: Clock) -> None:
    """A key Clerk withdrew (after a leak) stops verifying at the next read: when the set is 5
    minutes old, or sooner when a token names a key the set lacks."""
    source = jwks.KeySource(fake.url, clock=clock)
    fake.publish("k1", "k2")
    assert source.key("k1") is not None
    fake.publish("k2")
    clock.now += jwks.FRESH_S - 1
    assert source.key("k1") is not None  # still fresh: not read again
    assert fake.fetches == 1
    clock.now += 1
    assert source.key("k1") is None
    assert source.key("k2") is not None
    assert fake.fetches == 2

    fake.publish("k3")
    clock.now += jwks.MIN_INTERVAL_S
    assert source.key("k3") is not None  # an unknown kid: read again
    assert source.key("k2") is None
    assert fake.fetches == 3


def test_an_unknown_kid_is_read_again_at_most_once_per_interval(
    fake: FakeJwks, clock: Clock
) -> None:
    """A key Clerk just published verifies within seconds (it waited up to 30 s), and tokens
    naming keys nobody published still cannot make the container read the JWKS per request."""
    source = jwks.KeySource(fake.url, clock=clock)
    fake.publish("k1")
    assert source.key("k1") is not None
    fake.publish("k1", "k2")
    clock.now += jwks.MIN_INTERVAL_S - 1
    for index in range(100):
        assert source.key(f"bogus{index}") is None
    assert source.key("k2") is None
    assert fake.fetches == 1
    clock.now += 1
    assert source.key("k2") is not None
    for index in range(100):
        assert source.key(f"bogus{index}") is None
    assert fake.fetches == 2


def test_a_failed_read_is_remembered_and_the_last_keys_kept(fake: FakeJwks, clock: Clock) -> None:
    """During an outage a container reads the JWKS at most once per interval, and serves the
    keys of its last good read for up to an hour (a warm container's users stay signed in);
    once the JWKS answers again, its set is the one trusted."""
    source = jwks.KeySource(fake.url, clock=clock)
    fake.publish("k1", "k2")
    assert source.key("k1") is not None
    fake.answer(500, b"down", "text/plain")
    clock.now += jwks.FRESH_S
    assert source.key("k1") is not None
    assert source.key("k2") is not None
    assert fake.fetches == 2
    with pytest.raises(jwks.Unavailable):  # the last read failed: the token may be fine
        source.key("k3")
    clock.now += jwks.MIN_INTERVAL_S
    assert source.key("k1") is not None
    assert fake.fetches == 3
    clock.now = 1000.0 + jwks.KEEP_S
    with pytest.raises(jwks.Unavailable):
        source.key("k1")
    fake.publish("k2")
    clock.now += jwks.MIN_INTERVAL_S
    assert source.key("k2") is not None
    assert source.key("k1") is None


def test_a_cold_container_without_keys_reads_once_per_interval(
    fake: FakeJwks, clock: Clock
) -> None:
    source = jwks.KeySource(fake.url, clock=clock)
    fake.answer(200, HTML, "text/html")
    for _ in range(20):
        with pytest.raises(jwks.Unavailable):
            source.key("k1")
    assert fake.fetches == 1
    fake.publish("k1")
    clock.now += jwks.MIN_INTERVAL_S
    assert source.key("k1") is not None
    assert fake.fetches == 2


def test_a_new_kid_waiting_past_a_slow_read_is_unavailable_not_invalid(
    fake: FakeJwks, clock: Clock
) -> None:
    """Clerk rotated its key and the read that would find it is slow: a request that stops
    waiting for it has learned nothing, so its token may be valid (a 503, not the 401 that would
    sign the user out). `wait=0` stands for a wait that ran out."""
    source = jwks.KeySource(fake.url, clock=clock, wait=0)
    fake.publish("k1")
    assert source.key("k1") is not None
    clock.now += jwks.FRESH_S
    fake.hang()
    renewing = threading.Thread(target=source.key, args=("k1",))  # holds a key: reads, no wait
    renewing.start()
    try:
        assert fake.received.wait(10)
        with pytest.raises(jwks.Unavailable):
            source.key("k2")
    finally:
        fake.release()
        renewing.join(30)
    assert fake.fetches == 2  # the first read and the held one: the waiter read nothing
