"""The fail-soft cache and the rate limiter against the Upstash emulator (real SDK)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter

from devkit.upstash_emulator import UpstashEmulator
from shared import cache, config, ratelimit, redis
from shared.clock import utcnow
from shared.legacy import keys
from shared.providers import KeywordData


@pytest.fixture
def redis_env(upstash: UpstashEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@localhost/unused")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", upstash.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", upstash.token)
    monkeypatch.delenv("PRIVACY_MODE", raising=False)
    monkeypatch.delenv("RATE_LIMIT_ENABLED", raising=False)
    reload_settings()
    yield
    reload_settings()


def reload_settings() -> None:
    config.get_settings.cache_clear()
    redis.reset_redis()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections and never answers: a Redis slower than any timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def point_redis_at(url: str, monkeypatch: pytest.MonkeyPatch, timeout: str = "0.3") -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", url)
    monkeypatch.setenv("REDIS_TIMEOUT_S", timeout)
    reload_settings()


# --- cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        (["seo", "tools"], "kw:United States:en:phrase:2bbb2bb4a7032e9d"),
        (["tools", " seo "], "kw:United States:en:phrase:2bbb2bb4a7032e9d"),
        (["seo tools", "keyword research"], "kw:United States:en:phrase:c49615d4c2f21ba2"),
    ],
)
def test_keyword_key_keeps_the_original_test_vectors(keywords: list[str], expected: str) -> None:
    assert cache.keyword_key(keywords, "United States", "en", "phrase") == expected
    assert cache.keyword_key(keywords, "United States", None, "phrase") == expected


def test_provider_is_part_of_the_key() -> None:
    mock = cache.provider_keyword_key(["seo"], "Worldwide", "en", "exact", "mock")
    real = cache.provider_keyword_key(["seo"], "Worldwide", "en", "exact", "dataforseo")
    assert mock != real and mock.startswith(cache.keyword_key(["seo"], "Worldwide", "en", "exact"))


def row(keyword: str) -> KeywordData:
    return {"keyword": keyword, "searchVolume": 1, "cpc": None, "competition": None,
            "intent": None}  # fmt: skip


def test_cached_rows_come_back_in_the_requests_order() -> None:
    rows = [row("a"), row("b"), row("c")]
    ordered = cache.in_request_order(rows, ["c", " a", "b"])
    assert ordered is not None and [r["keyword"] for r in ordered] == ["c", "a", "b"]
    assert cache.in_request_order([row("a")], ["a", "a"]) is None  # one row per keyword asked
    assert cache.in_request_order([row("a"), row("b")], ["a", "c"]) is None


ANY_JSON: TypeAdapter[Any] = TypeAdapter(Any)


@pytest.mark.usefixtures("redis_env")
def test_json_roundtrip_with_ttl(upstash: UpstashEmulator) -> None:
    key = f"kw:test:{uuid.uuid4()}"
    value = {"data": [row("seo")], "metadata": {"cachedAt": "2026-01-01T00:00:00.000Z",
                                                 "provider": "Mock"}}  # fmt: skip
    assert cache.set_json(key, value, ttl_seconds=120) is True
    assert cache.get_json(key, cache.KeywordEntry) == value
    client = redis.get_redis()
    assert client is not None and 0 < client.ttl(key) <= 120


@pytest.mark.usefixtures("redis_env")
def test_privacy_mode_neither_reads_nor_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    key = f"kw:test:{uuid.uuid4()}"
    assert cache.set_json(key, {"x": 1})
    monkeypatch.setenv("PRIVACY_MODE", "true")
    reload_settings()
    assert cache.get_json(key, ANY_JSON) is None
    assert cache.set_json(f"{key}:2", {"x": 2}) is False
    monkeypatch.delenv("PRIVACY_MODE")
    reload_settings()
    assert cache.get_json(f"{key}:2", ANY_JSON) is None


@pytest.mark.usefixtures("redis_env")
def test_cache_is_a_miss_when_redis_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    with UpstashEmulator() as doomed:
        point_redis_at(doomed.url, monkeypatch)
        monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", doomed.token)
        reload_settings()
        assert cache.set_json("kw:stopped", {"x": 1})
    # The emulator is gone now: reads miss, writes report failure, nothing raises.
    assert cache.get_json("kw:stopped", ANY_JSON) is None
    assert cache.set_json("kw:stopped", {"x": 2}) is False


@pytest.mark.usefixtures("redis_env")
def test_cache_is_a_miss_within_the_timeout_when_redis_hangs(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_redis_at(black_hole, monkeypatch, timeout="0.3")
    started = time.monotonic()
    assert cache.get_json("kw:slow", ANY_JSON) is None
    assert cache.set_json("kw:slow", {"x": 1}) is False
    assert time.monotonic() - started < 3  # two calls bounded by 0.3 s each, generous slack


# --- rate limiting -------------------------------------------------------------------------


@pytest.mark.usefixtures("redis_env")
def test_n_allowed_then_refused_with_a_reset_time() -> None:
    who = f"u:{uuid.uuid4()}"
    decisions = [ratelimit.check("keywords", who, 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.retry_after is not None and 3500 < refused.retry_after <= 3600
    headers = refused.headers()
    assert headers["X-RateLimit-Limit"] == "3" and headers["Retry-After"] == str(
        refused.retry_after
    )
    assert headers["X-RateLimit-Reset"].endswith("Z")


@pytest.mark.usefixtures("redis_env")
def test_one_window_has_one_reset_and_a_retry_then_is_allowed() -> None:
    """Every answer of a window names the same end, to the millisecond, whenever in the window
    it comes (the reset was now + the key's TTL in whole seconds: it moved from answer to answer
    and could fall before the window's real end); Retry-After never sends a client back early."""
    who = f"u:{uuid.uuid4()}"
    start = utcnow()
    checks = [
        ratelimit.check("keywords", who, 2, now=start + timedelta(milliseconds=elapsed))
        for elapsed in (0, 480, 1_730)
    ]
    assert [d.allowed for d in checks] == [True, True, False]
    end = start + timedelta(seconds=ratelimit.WINDOW_SECONDS)
    assert {d.reset_at for d in checks} == {end}
    assert len({d.headers()["X-RateLimit-Reset"] for d in checks}) == 1
    refused = checks[-1]
    assert refused.retry_after == 3599  # 3598.27 s left, rounded up
    assert not ratelimit.check("keywords", who, 2, now=end - timedelta(milliseconds=1)).allowed
    at_reset = ratelimit.check("keywords", who, 2, now=end)
    assert (at_reset.allowed, at_reset.remaining) == (True, 1)
    assert at_reset.reset_at == end + timedelta(seconds=ratelimit.WINDOW_SECONDS)


@pytest.mark.usefixtures("redis_env")
@pytest.mark.parametrize(
    "stored",
    [
        "1:253402300799999",  # 9999-12-31T23:59:59.999Z
        "1:253402300800000",  # year 10000: a 500 OverflowError on every limited route
        "1:99999999999999999",  # refused (the script failed) until the key expired
        "1:{end}",  # a millisecond past the longest window and the clock skew allowed
        "99999999999999999999:{start}",  # a count past exact integers
    ],
)
def test_a_stored_window_no_check_could_have_started_starts_a_new_one(stored: str) -> None:
    """An end more than a window after now (another writer, a corrupted value) cannot be this
    window's end, nor a count past exact integers a count: a new window, as for a bare count
    (report s52 t4 D1)."""
    who = f"u:{uuid.uuid4()}"
    key = keys.rate_limit("keywords", who)
    start = utcnow()
    end = start + timedelta(seconds=ratelimit.WINDOW_SECONDS)
    client = redis.get_redis()
    assert client is not None
    furthest = unix_ms(end) + ratelimit.CLOCK_SKEW_MS
    client.set(key, stored.format(start=unix_ms(start), end=furthest + 1), ex=3600)
    decision = ratelimit.check("keywords", who, 10, now=start)
    assert (decision.allowed, decision.remaining, decision.reset_at) == (True, 9, end)
    assert client.get(key) == f"1:{unix_ms(end)}"


@pytest.mark.usefixtures("redis_env")
def test_a_window_begun_by_a_clock_ahead_within_the_skew_is_kept() -> None:
    """Another container whose clock is ahead began the window: this one, behind by up to
    CLOCK_SKEW_MS, counts in it rather than starting a new one (or failing on its reply)."""
    who = f"u:{uuid.uuid4()}"
    start = utcnow()
    ahead = start + timedelta(milliseconds=ratelimit.CLOCK_SKEW_MS)
    begun = ratelimit.check("keywords", who, 10, now=ahead)
    behind = ratelimit.check("keywords", who, 10, now=start)
    assert (behind.allowed, behind.remaining, behind.reset_at) == (True, 8, begun.reset_at)


@pytest.mark.usefixtures("redis_env")
def test_the_stored_window_is_written_in_whole_digits_however_far_its_end() -> None:
    """Lua wrote a number past 10**14 as `2.534023008e+14`, which its own pattern could not read
    back: every check in a window near year 9999 started a new one (report s52 t4 D1)."""
    who = f"u:{uuid.uuid4()}"
    start = datetime(9999, 12, 31, 22, tzinfo=UTC)
    checks = [ratelimit.check("keywords", who, 10, now=start) for _ in range(2)]
    assert [d.remaining for d in checks] == [9, 8]
    client = redis.get_redis()
    assert client is not None
    assert client.get(keys.rate_limit("keywords", who)) == f"2:{unix_ms(start) + 3_600_000}"


def unix_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@pytest.mark.usefixtures("redis_env")
def test_endpoints_and_identities_have_separate_budgets() -> None:
    who = f"u:{uuid.uuid4()}"
    for _ in range(10):
        ratelimit.check("health", who, 60)
    assert ratelimit.check("keywords", who, 1).allowed  # health traffic spent nothing here
    assert not ratelimit.check("keywords", who, 1).allowed
    assert ratelimit.check("keywords", f"u:{uuid.uuid4()}", 1).allowed


def test_identity_is_the_user_or_the_address_alone() -> None:
    assert ratelimit.identity("user_1", "203.0.113.9") == "u:user_1"
    assert ratelimit.identity("user_1", "2001:db8:1::9") == "u:user_1"
    assert ratelimit.identity(None, "203.0.113.9") == "ip:203.0.113.9"
    assert ratelimit.identity(None, None) == "ip:unknown"


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("2001:db8:1:2::9", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:3::9", "ip:2001:db8:1:3::/64"),
        ("fe80::1", "ip:fe80::/64"),
        ("203.0.113.9", "ip:203.0.113.9"),  # one IPv4 address is one client (or one NAT)
    ],
)
def test_an_anonymous_ipv6_client_is_its_64(ip: str, expected: str) -> None:
    """A /64 is what one IPv6 client is handed and may send from any address of."""
    assert ratelimit.identity(None, ip) == expected


@pytest.mark.usefixtures("redis_env")
@pytest.mark.parametrize(("fail_safe", "allowed"), [("open", True), ("closed", False)])
def test_fail_safe_decides_within_the_timeout_when_redis_hangs(
    black_hole: str, monkeypatch: pytest.MonkeyPatch, fail_safe: str, allowed: bool
) -> None:
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", fail_safe)
    point_redis_at(black_hole, monkeypatch, timeout="0.3")
    started = time.monotonic()
    decision = ratelimit.check("keywords", "u:slow", 10)
    assert time.monotonic() - started < 2  # bounded by REDIS_TIMEOUT_S, generous slack
    assert decision.allowed is allowed
    if allowed:  # not counted: the window's count and end are unknown, so not claimed
        assert decision.headers() == {"X-RateLimit-Limit": "10"}
    else:
        assert decision.retry_after == 60


@pytest.mark.usefixtures("redis_env")
@pytest.mark.parametrize(("fail_safe", "allowed"), [("open", True), ("closed", False)])
def test_fail_safe_when_redis_is_down(
    monkeypatch: pytest.MonkeyPatch, fail_safe: str, allowed: bool
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", fail_safe)
    point_redis_at(f"http://127.0.0.1:{port}", monkeypatch)
    assert ratelimit.check("keywords", "u:down", 10).allowed is allowed


def test_disabled_limiter_allows_without_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@localhost/unused")
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "false")
    monkeypatch.delenv("UPSTASH_REDIS_REST_URL", raising=False)
    reload_settings()
    decision = ratelimit.check("keywords", "u:any", 10)
    assert (decision.allowed, decision.remaining) == (True, 10)
    assert set(decision.headers()) == {  # the original's: no limit, so the whole budget left
        "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
    }  # fmt: skip
    reload_settings()


def test_production_needs_no_rate_limit_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter keys nothing with RATE_LIMIT_HMAC_SECRET any more: production needs only the
    tombstones' key (ACCOUNT_HMAC_SECRET, which RATE_LIMIT_HMAC_SECRET may still stand in for)."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@localhost/unused")
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv("RATE_LIMIT_HMAC_SECRET", raising=False)
    monkeypatch.setenv("ACCOUNT_HMAC_SECRET", "a" * 32)
    reload_settings()
    assert config.get_settings().is_production
    reload_settings()


def test_redis_client_has_a_timeout_and_no_telemetry(
    redis_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_TIMEOUT_S", "0.7")
    reload_settings()
    client = redis.get_redis()
    assert client is not None
    assert client._http._client.timeout.read == 0.7
    assert not any(h.lower().startswith("upstash-telemetry") for h in client._headers)
